#!/usr/bin/env bash
# Resume is honest (docs/accountant.md, "What the ledger counts"; issue 12 items 2-5):
#  - a model with any seeded step stays labelled reproducible (header, eval lines, metrics, checkpoint,
#    ckpt info, export) after a secure resume, with the seeded step ranges;
#  - the ledger counts every step the run journal knows of: resuming a checkpoint older than the run's
#    newest is refused, and with --resume-branch the ledger keeps the abandoned steps; steps lost in a
#    crash after the newest checkpoint are counted; a clean stop (signal) adds no phantom steps;
#  - the checkpoint's delta and budget hold: another delta or epsilon is refused, privacy.rebudget applies
#    the new ones to the whole ledger, and the budget stops the resumed run;
#  - other training data with the same N is refused; the digest is the same on every grid.
# Errors: status 2 and one line, on 1 and 2 ranks.
# Usage: bash tests/cli/cli_resume.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 1000 300
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=4
[train]
steps = 20
batch_size = 100
physical_batch_size = 50
lr = 0.5
[privacy]
delta = 1e-4
clip = 1
[checkpoint]
every = 5
keep = 10
[output]
log_every = 5
INI
budget=(--privacy.epsilon=2)          # sigma calibrated so that the 20 steps spend epsilon 2
fixed=(--privacy.noise_multiplier=1.1) # no budget: epsilon grows with every step in the ledger
attr() { # attr FILE NAME: the value of a root attribute (h5py), e.g. "1" or "[[ 0 10]]"
  /usr/bin/python3 -c 'import sys, h5py; v = h5py.File(sys.argv[1], "r").attrs.get(sys.argv[2]); print("absent" if v is None else str(v).replace("\n", ""))' "$1" "$2"
}
ledger_count() { sed -nE 's/^  subsampled-gaussian q [0-9.e-]+ sigma [0-9.e-]+ x ([0-9]+)$/\1/p' "$tmp/out"; }
eps_of() { # eps_of STEPS SIGMA DELTA: dpmpi privacy's RDP epsilon
  "$dpmpi" privacy --sampling-rate 0.1 --noise-multiplier "$2" --steps "$1" --delta "$3" --json |
    sed -nE 's/.*"accountant": "rdp".*"epsilon": ([0-9.e+-]+).*/\1/p'
}
info_eps() { sed -nE 's/^privacy: epsilon ([0-9.]+) at .*/\1/p' "$tmp/out"; }

# ---- 2. the reproducibility label is sticky -------------------------------------------------------
run 2 train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/seeded"
[ "$(rc)" = 0 ] && ok || { bad "seeded run"; cat "$tmp/err" >&2; }
mkdir -p "$tmp/lab" && cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/lab/" # the checkpoint alone: no journal
run 2 train "$tmp/job.ini" "${budget[@]}" --checkpoint.dir="$tmp/lab" --resume "$tmp/lab" --output.metrics="$tmp/lab.jsonl"
[ "$(rc)" = 0 ] && ok || { bad "secure resume of a seeded checkpoint"; cat "$tmp/err" >&2; }
check "header: this segment is secure" has "$tmp/out" "randomness: secure"
check "header: the seeded steps are named" has "$tmp/out" "randomness: but steps [0, 10) of this model ran SEEDED (run.seed = 5)"
check "eval lines stay [seeded]" has_re "$tmp/out" "^eval  step 20 .*\[seeded\]$"
check "metrics: reproducible true" has "$tmp/lab.jsonl" '"reproducible": true'
check "metrics: never reproducible false" bash -c "! grep -q '\"reproducible\": false' '$tmp/lab.jsonl'"
c20=$tmp/lab/ckpt-00000020.h5
check "checkpoint: reproducible = 1" test "$(attr "$c20" reproducible)" = 1
check "checkpoint: seeded_steps [0, 10)" test "$(attr "$c20" seeded_steps)" = "[[ 0 10]]"
check "checkpoint: the seeded segment's seed only" test "$(attr "$c20" seed)" = 5
run 1 ckpt info "$tmp/lab"
check "ckpt info: SEEDED with the ranges" has "$tmp/out" "randomness: SEEDED (reproducible; not for a private release): steps [0, 10) ran seeded"
run 2 export "$tmp/lab" "$tmp/lab-model.h5"
[ "$(rc)" = 0 ] && ok || { bad "export"; cat "$tmp/err" >&2; }
check "export: reproducible = 1" test "$(attr "$tmp/lab-model.h5" reproducible)" = 1
check "export: seeded_steps [0, 10)" test "$(attr "$tmp/lab-model.h5" seeded_steps)" = "[[ 0 10]]"
check "export: no seed" test "$(attr "$tmp/lab-model.h5" seed)" = absent
# secure first, then seeded: the later range; a seeded resume of a seeded run: one merged range
run 1 train "$tmp/job.ini" "${budget[@]}" --checkpoint.dir="$tmp/sec"
mkdir -p "$tmp/sec2" && cp "$tmp/sec/ckpt-00000010.h5" "$tmp/sec2/"
check "secure run: reproducible = 0, no ranges" test "$(attr "$tmp/sec2/ckpt-00000010.h5" reproducible)/$(attr "$tmp/sec2/ckpt-00000010.h5" seeded_steps)" = "0/absent"
run 1 train "$tmp/job.ini" "${budget[@]}" --run.seed=9 --checkpoint.dir="$tmp/sec2" --resume "$tmp/sec2"
check "secure then seeded: seeded_steps [10, 20)" test "$(attr "$tmp/sec2/ckpt-00000020.h5" seeded_steps)" = "[[10 20]]"
mkdir -p "$tmp/seed2" && cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/seed2/"
run 1 train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/seed2" --resume "$tmp/seed2"
check "seeded then seeded: one range [0, 20)" test "$(attr "$tmp/seed2/ckpt-00000020.h5" seeded_steps)" = "[[ 0 20]]"

# ---- 3. the ledger sees every step that ran -------------------------------------------------------
run 2 train "$tmp/job.ini" "${fixed[@]}" --checkpoint.dir="$tmp/full"
[ "$(rc)" = 0 ] && ok || { bad "fixed-sigma run"; cat "$tmp/err" >&2; }
check "the run journal is next to the checkpoints" test "$(ls "$tmp/full"/journal-* | wc -l)" = 1
for np in 1 2; do
  expect_usage_error $np "step 10 is not the run's newest checkpoint" train "$tmp/job.ini" "${fixed[@]}" \
    --checkpoint.dir="$tmp/full" --resume "$tmp/full/ckpt-00000010.h5"
  check "np=$np: the refusal names the newest checkpoint and the flag" has "$tmp/err" "records ckpt-00000020.h5 (step 20)"
  check "np=$np: ... and the flag" has "$tmp/err" "--resume-branch"
done
run 2 train "$tmp/job.ini" "${fixed[@]}" --checkpoint.dir="$tmp/full" --resume "$tmp/full/ckpt-00000010.h5" --resume-branch
[ "$(rc)" = 0 ] && ok || { bad "--resume-branch"; cat "$tmp/err" >&2; }
check "the branch is announced" has "$tmp/out" "note: the run journal records 10 steps beyond this checkpoint's ledger"
check "the journal records the branch" grep -qx "branch 10 20 10" "$tmp/full"/journal-*
check "the old branch's later checkpoints are set aside" test -f "$tmp/full/abandoned-20-ckpt-00000020.h5"
check "... by name" test -f "$tmp/full/abandoned-20-ckpt-00000015.h5"
run 1 ckpt info "$tmp/full/ckpt-00000020.h5"
check "forced branch: the ledger holds 20 + 10 abandoned steps (got $(ledger_count))" test "$(ledger_count)" = 30
check "forced branch: recorded as not used by the model" has "$tmp/out" "of which 10 steps this model did not use"
e30=$(eps_of 30 1.1 1e-4)
check "forced branch: epsilon $(info_eps) is that of 30 steps ($e30)" \
  test "$(info_eps)" = "$(printf %.6f "$e30")"
check "steps_abandoned = 10 in the checkpoint" test "$(attr "$tmp/full/ckpt-00000020.h5" steps_abandoned)" = 10
run 1 ckpt info "$tmp/full/abandoned-20-ckpt-00000020.h5"
check "the abandoned checkpoint counts the new branch too (got $(ledger_count))" test "$(ledger_count)" = 30
run 1 export "$tmp/full/abandoned-20-ckpt-00000020.h5" "$tmp/abandoned-model.h5"
check "its export: epsilon of 30 steps" test "$(printf %.6f "$(attr "$tmp/abandoned-model.h5" epsilon)")" = "$(printf %.6f "$e30")"
# the export's ledger is the one its epsilon comes from (30 steps), and --ledger on the set-aside
# checkpoint counts its journal's steps as ckpt info does
ledger_eps() { sed -nE 's/.*"accountant": "rdp".*"epsilon": ([0-9.e+-]+).*/\1/p' "$tmp/out"; }
run 1 privacy --ledger "$tmp/abandoned-model.h5" --accountant rdp --json
check "privacy --ledger of the export: epsilon of 30 steps" test "$(printf %.6f "$(ledger_eps)")" = "$(printf %.6f "$e30")"
run 2 privacy --ledger "$tmp/full/abandoned-20-ckpt-00000020.h5" --accountant rdp --json
check "privacy --ledger of the set-aside checkpoint: epsilon of 30 steps" \
  test "$(printf %.6f "$(ledger_eps)")" = "$(printf %.6f "$e30")"
# the old branch's newest (ckpt-20 of the first branch was replaced; ckpt-15 too): resuming the branch
# point again is refused again
expect_usage_error 2 "is not the run's newest checkpoint" train "$tmp/job.ini" "${fixed[@]}" \
  --checkpoint.dir="$tmp/full" --resume "$tmp/full/ckpt-00000005.h5"
# a crash inside the block of steps [10, 15): the journal announced it, the newest checkpoint is step 10;
# the last line, cut before its fsync, is ignored
run 1 train "$tmp/job.ini" "${fixed[@]}" --checkpoint.dir="$tmp/c0"
mkdir -p "$tmp/crash" && cp "$tmp/c0/ckpt-00000005.h5" "$tmp/c0/ckpt-00000010.h5" "$tmp/crash/"
j=$(basename "$tmp/c0"/journal-*)
sed '/^run 10 15 15$/q' "$tmp/c0/$j" >"$tmp/crash/$j" && printf 'ckpt 15 1' >>"$tmp/crash/$j"
run 2 train "$tmp/job.ini" "${fixed[@]}" --checkpoint.dir="$tmp/crash" --resume "$tmp/crash"
[ "$(rc)" = 0 ] && ok || { bad "resume after a crash"; cat "$tmp/err" >&2; }
check "crash: the lost steps are announced" has "$tmp/out" "records 5 steps beyond this checkpoint's ledger (run after it and lost"
run 1 ckpt info "$tmp/crash"
check "crash: the ledger holds 20 + 5 lost steps (got $(ledger_count))" test "$(ledger_count)" = 25
# the same with a real kill -9 inside a block of 50000 announced steps: the resumed ledger holds what the
# journal announced beyond the newest checkpoint
kill9=(--train.steps=400000 --output.log_every=50000 --checkpoint.every=50000 --train.eval_every=100000
       --checkpoint.dir="$tmp/k9")
timeout 120 "$dpmpi" train "$tmp/job.ini" "${fixed[@]}" "${kill9[@]}" >"$tmp/k9.out" 2>&1 &
pid=$!
for i in $(seq 400); do ls "$tmp/k9"/ckpt-*.h5 >/dev/null 2>&1 && break; sleep 0.05; done
sleep 0.5
kill -9 $(pgrep -P $pid); { wait $pid; } 2>/dev/null
newest=$(ls "$tmp/k9"/ckpt-*.h5 | sort | tail -1)
announced=$(awk 'NF >= 3 && $1 != "#" { t = ($1 == "run" ? $4 : ($1 == "ckpt" && $3 < t ? t : $3)) } END { print t }' "$tmp/k9"/journal-*)
lost=$(( announced - $(attr "$newest" step) ))
check "kill -9: the journal announced steps beyond the newest checkpoint ($lost)" test "$lost" -gt 0
signal_run1() { # a 1-rank run of ARGS, SIGUSR1 half a second into its steps
  timeout 120 "$dpmpi" train "$tmp/job.ini" "$@" >"$tmp/sig.out" 2>"$tmp/sig.err" &
  local pid=$!
  for i in $(seq 200); do grep -aq '^randomness' "$tmp/sig.out" 2>/dev/null && break; sleep 0.05; done
  sleep 0.5
  kill -USR1 $(pgrep -P $pid) # dpmpi, not timeout
  wait $pid
  echo $? >"$tmp/sig.rc"
}
signal_run1 "${fixed[@]}" "${kill9[@]}" --resume "$tmp/k9"
check "kill -9: resumed, stopped by a signal (got $(cat "$tmp/sig.rc"))" test "$(cat "$tmp/sig.rc")" = 75
check "kill -9: the lost steps are announced" has "$tmp/sig.out" "records $lost steps beyond this checkpoint's ledger"
run 1 ckpt info "$tmp/k9"
step=$(sed -nE 's/^step: ([0-9]+) of .*/\1/p' "$tmp/out")
check "kill -9: the ledger ($(ledger_count)) = steps run ($step) + the $lost lost" test "$(ledger_count)" = $((step + lost))
# a damaged journal line is an error naming the file and line, not a guess
mkdir -p "$tmp/dj" && cp "$tmp/c0/ckpt-00000010.h5" "$tmp/dj/"
{ sed '/^run 10 15 15$/q' "$tmp/c0/$j"; echo "run 15 2O 20"; } >"$tmp/dj/$j"
expect_usage_error 2 "$tmp/dj/$j:8: damaged journal line 'run 15 2O 20'" train "$tmp/job.ini" "${fixed[@]}" \
  --checkpoint.dir="$tmp/dj" --resume "$tmp/dj"
# a clean stop by a signal inside a long announced block adds no phantom steps on resume
long=(--train.steps=400000 --output.log_every=200000 --train.eval_every=100000 --checkpoint.every=100000000
      --checkpoint.dir="$tmp/sig")
signal_stop() { signal_run1 "${fixed[@]}" "${long[@]}" "$@"; }
signal_stop
check "signal: stopped with 75 (got $(cat "$tmp/sig.rc"))" test "$(cat "$tmp/sig.rc")" = 75
signal_stop --resume "$tmp/sig"
check "signal: resumed and stopped again (got $(cat "$tmp/sig.rc"))" test "$(cat "$tmp/sig.rc")" = 75
check "signal: no steps beyond the checkpoint's" bash -c "! grep -q 'beyond this checkpoint' '$tmp/sig.out'"
run 1 ckpt info "$tmp/sig"
step=$(sed -nE 's/^step: ([0-9]+) of .*/\1/p' "$tmp/out")
check "signal: the ledger ($(ledger_count)) counts exactly the steps run ($step)" test "$(ledger_count)" = "$step"

# ---- 4. budget and delta hold on resume -----------------------------------------------------------
mkdir -p "$tmp/bud" && cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/bud/"
for np in 1 2; do
  expect_usage_error $np "the run's guarantee is at privacy.delta = 0.0001, the job says 1e-08" train "$tmp/job.ini" \
    "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/bud" --resume "$tmp/bud" --privacy.delta=1e-8
  expect_usage_error $np "the run's budget is privacy.epsilon = 2, the job says 3" train "$tmp/job.ini" \
    --privacy.epsilon=3 --run.seed=5 --checkpoint.dir="$tmp/bud" --resume "$tmp/bud"
done
# rebudget: the whole ledger at the new delta: at 1e-8 the 10 steps alone exceed epsilon 2
expect_usage_error 2 "the budget privacy.epsilon = 2 is spent: the ledger's 10 steps are at epsilon 3.0" \
  train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/bud" --resume "$tmp/bud" \
  --privacy.delta=1e-8 --privacy.rebudget=true
# at delta 1e-5 and budget 2.2 the run stops before it would be exceeded (20 steps would spend 2.43)
run 2 train "$tmp/job.ini" --privacy.epsilon=2.2 --run.seed=5 --checkpoint.dir="$tmp/bud" --resume "$tmp/bud" \
  --privacy.delta=1e-5 --privacy.rebudget=true
[ "$(rc)" = 0 ] && ok || { bad "rebudget"; cat "$tmp/err" >&2; }
check "rebudget: announced" has "$tmp/out" "note: privacy.rebudget: the whole ledger is accounted at delta 1e-05 (was 0.0001), budget epsilon 2.2 (was 2"
check "rebudget: the budget stops the run early" has_re "$tmp/out" "note: the budget epsilon = 2.2 allows [0-9]+ of the 10 remaining steps"
run 1 ckpt info "$tmp/bud"
check "rebudget: the checkpoint's guarantee is at the new delta" has "$tmp/out" "at delta 1e-05"
e=$(info_eps)
check "rebudget: epsilon $e in (2, 2.2]" awk -v e="$e" 'BEGIN { exit !(e > 2 && e <= 2.2) }'
newest=$(ls "$tmp/bud"/ckpt-*.h5 | tail -1)
check "rebudget: the checkpoint keeps the new delta and budget" test "$(attr "$newest" delta)/$(attr "$newest" epsilon_budget)" = 1e-05/2.2
expect_usage_error 2 "the run's guarantee is at privacy.delta = 1e-05, the job says 0.0001" train "$tmp/job.ini" \
  --privacy.epsilon=2.2 --run.seed=5 --checkpoint.dir="$tmp/bud" --resume "$tmp/bud"
# the budget holds across a forced branch: abandoned steps leave no room
run 1 train "$tmp/job.ini" "${budget[@]}" --checkpoint.dir="$tmp/bb"
expect_usage_error 2 "the budget privacy.epsilon = 2 is spent" train "$tmp/job.ini" "${budget[@]}" \
  --checkpoint.dir="$tmp/bb" --resume "$tmp/bb/ckpt-00000010.h5" --resume-branch
run 1 train "$tmp/job.ini" "${budget[@]}" --checkpoint.dir="$tmp/bb" --resume "$tmp/bb/ckpt-00000005.h5" \
  --resume-branch --privacy.epsilon=2.3 --privacy.rebudget=true
check "budget 2.3 after a branch: the run stops early" has_re "$tmp/out" "note: the budget epsilon = 2.3 allows [0-9]+ of the 15 remaining steps"
run 1 ckpt info "$tmp/bb"
e=$(info_eps)
check "budget 2.3 after a branch: epsilon $e <= 2.3" awk -v e="$e" 'BEGIN { exit !(e > 2 && e <= 2.3) }'

# ---- 5. the same data on resume -------------------------------------------------------------------
awk -F, 'NR == 2 { $1 = $1 + 0.5 } { print }' OFS=, "$tmp/train.csv" >"$tmp/train2.csv"
"$dpmpi" data convert --from csv --train "$tmp/train2.csv" --test "$tmp/test.csv" --label-column label \
  --out "$tmp/blobs2.h5" >/dev/null || bad "convert blobs2"
mkdir -p "$tmp/data" && cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/data/"
for np in 1 2; do
  expect_usage_error $np "written for other training data: $tmp/blobs2.h5 /train has the same 1000 examples" \
    train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/data" --resume "$tmp/data" \
    --data.train="$tmp/blobs2.h5" --data.test="$tmp/blobs.h5"
done
# the digest does not depend on the grid: written on 2 replicas, resumed on 1 rank and on 2 stages
for np in 1 2; do
  mkdir -p "$tmp/g$np" && cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/g$np/"
  run $np train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --checkpoint.dir="$tmp/g$np" --resume "$tmp/g$np" --grid.stages=$np
  [ "$(rc)" = 0 ] && ok || { bad "same data on a 1x$np grid"; cat "$tmp/err" >&2; }
  check "1x$np: the digest is carried" test "$(attr "$tmp/g$np/ckpt-00000020.h5" data_digest)" = "$(attr "$tmp/seeded/ckpt-00000010.h5" data_digest)"
done

# ---- old format ---------------------------------------------------------------------------------
cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/old.h5"
/usr/bin/python3 -c 'import sys, h5py, numpy as np; h5py.File(sys.argv[1], "r+").attrs["format_version"] = np.int32(1)' "$tmp/old.h5"
expect_usage_error 2 "checkpoint format version 1, this dpmpi reads version 2 (version 1 has no run journal" \
  train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --resume "$tmp/old.h5"
# another random-stream version (rng.h: DPM_RNG_STREAM_VERSION): refused, the run would not continue its streams
check "checkpoints record the random-stream version" test "$(attr "$tmp/seeded/ckpt-00000010.h5" rng_stream)" = 2
cp "$tmp/seeded/ckpt-00000010.h5" "$tmp/stream1.h5"
/usr/bin/python3 -c 'import sys, h5py; del h5py.File(sys.argv[1], "r+").attrs["rng_stream"]' "$tmp/stream1.h5"
run 1 ckpt info "$tmp/stream1.h5"
check "ckpt info names the stream version" has "$tmp/out" "random streams: version 1 (Philox4x64-10: not resumable by this dpmpi)"
expect_usage_error 2 "random streams (sampling, noise) are version 1 (Philox4x64-10); this dpmpi draws version 2" \
  train "$tmp/job.ini" "${budget[@]}" --run.seed=5 --resume "$tmp/stream1.h5"
expect_usage_error 1 "--resume-branch needs --resume PATH" train "$tmp/job.ini" "${budget[@]}" --resume-branch
# an unknown accountant or clipping mode (a damaged attribute) is refused, never read as another one
for a in accountant clipping; do
  cp "$tmp/full/ckpt-00000020.h5" "$tmp/bad-$a.h5"
  /usr/bin/python3 -c 'import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], "r+"); f.attrs.modify(sys.argv[2], np.int32(7))' \
    "$tmp/bad-$a.h5" "$a"
  expect_usage_error 1 "bad-$a.h5: checkpoint attributes are missing or damaged" ckpt info "$tmp/bad-$a.h5"
done

finish cli_resume
