#!/usr/bin/env bash
# jobs/sweep.sh end to end (private hyper-parameter selection, Papernot and Steinke 2022) on a small blobs
# dataset, 1 rank: the number of runs is the one drawn (one directory per run), each run's ledger is one run at
# the calibrated sigma, the best run is the best score, and the selection's epsilon printed is the one of
# `dpmpi privacy --tuning-runs` (at most the --epsilon asked for); candidates that change the accounting are
# refused. The bound itself is tested in tests/privacy/test_tuning.c.
# Usage: bash tests/cli/cli_sweep.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=400
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 400 100
cat >"$tmp/job.ini" <<EOF2
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=4
[train]
steps = 6
batch_size = 64
lr = 0.5
[privacy]
epsilon = 8
delta = 1e-5
clip = 1
EOF2
export DPMPI=$dpmpi NP=1 LAUNCHER=mpirun RUN_DIR=$tmp/sweep
sweep=${2:?usage: $0 BUILD_DIR SOURCE_DIR}/jobs/sweep.sh
bash "$sweep" "$tmp/job.ini" --runs 2 --epsilon 8 --try train.lr=0.05,0.5,2 --try privacy.clip=0.5,1 >"$tmp/out" 2>"$tmp/err"
code=$?
check "the sweep runs (status $code)" test "$code" = 0
[ "$code" = 0 ] || { tail -20 "$tmp/err" "$tmp/out" >&2; }
k=$(sed -nE 's/.*sweep: ([0-9]+) runs \(drawn.*/\1/p' "$tmp/out")
check "it says how many runs were drawn ($k)" test -n "$k"
check "one directory per drawn run" test "$(find "$tmp/sweep" -maxdepth 1 -name 'run-*' | wc -l)" = "$k"
sigma=$(sed -nE 's/.*q [0-9.e-]+, sigma ([0-9.e+-]+), 6 steps each.*/\1/p' "$tmp/out")
want=$("$dpmpi" privacy -q 0.16 -T 6 -d 1e-5 -e 8 --tuning-runs 2 --json | sed -nE 's/.*"noise_multiplier": ([0-9.e+-]+).*/\1/p')
check "the runs' sigma ($sigma) is the one calibrated for the selection ($want)" test "$sigma" = "$want"
for d in "$tmp"/sweep/run-*; do
  check "$(basename "$d"): its ledger is one run of 6 steps at sigma $sigma" \
    grep -qE "subsampled-gaussian q 0.16 sigma $(printf %.6g "$sigma") x 6$" "$d/ledger"
done
best=$(cat "$tmp/sweep/best")
top=$(cat "$tmp"/sweep/run-*/score | sort -g | tail -1)
check "the best run ($best) has the top score ($top)" test "$(cat "$tmp/sweep/$best/score")" = "$top"
sel=$("$dpmpi" privacy -q 0.16 -s "$sigma" -T 6 -d 1e-5 --tuning-runs 2)
check "the selection's epsilon is dpmpi privacy --tuning-runs's" has "$tmp/out" "the selection (what releasing the best run costs): $sel"
e=$(sed -nE 's/^rdp   epsilon ([0-9.e+-]+) .*/\1/p' <<<"$sel")
check "and at most the 8 asked for ($e)" awk -v e="$e" 'BEGIN { exit !(e <= 8) }'

bash "$sweep" "$tmp/job.ini" --runs 2 --try train.batch_size=32,64 >"$tmp/out" 2>"$tmp/err"
check "a candidate changing the sampling rate is refused" grep -q "must share the sampling rate" "$tmp/err"
bash "$sweep" "$tmp/job.ini" --runs 2 --try train.lr=1 >"$tmp/out" 2>"$tmp/err"
check "without --epsilon the job must fix the noise" grep -q "set \[privacy\] noise_multiplier or give --epsilon" "$tmp/err"
finish cli_sweep
