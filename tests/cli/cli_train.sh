#!/usr/bin/env bash
# `dpmpi train` end to end on a small synthetic CSV dataset: DP and non-private runs learn, the output
# has progress, evaluation and epsilon lines and a JSON-lines metrics file with the contract keys, the
# seeded mode says so everywhere, calibration meets the target epsilon, a 2-rank run with run.seed ends
# at the same accuracy as the 1-rank run; output.private_stats = false prints only DP-safe values; user errors exit 2 on every rank with one message, never hang.
# Usage: bash tests/cli/cli_train.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

# 4 Gaussian blobs in 6 dimensions, 2000 training and 500 test rows
make_blobs 2000 500
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=4
[train]
epochs = 3
batch_size = 100
physical_batch_size = 32
lr = 0.5
[privacy]
epsilon = 4
delta = 1e-4
clip = 1
[output]
metrics = $tmp/m.jsonl
INI

# DP run on 2 ranks: learns, reports epsilon <= target, writes the metrics file
run 2 train "$tmp/job.ini"
if [ "$(rc)" = 0 ]; then ok; else bad "DP run failed (rc $(rc))"; cat "$tmp/err" >&2; fi
has_re "$tmp/out" "noise multiplier [0-9.]+ \(calibrated\)" && ok || bad "calibration line"
has_re "$tmp/out" "^step +[0-9]+/60 .*loss .*ex/s .*eps .*ETA" && ok || bad "progress line"
has_re "$tmp/out" "randomness: secure" && ok || bad "secure mode announced"
acc=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/')
awk -v a="$acc" 'BEGIN { exit !(a >= 85) }' && ok || bad "DP test accuracy $acc% < 85%"
eps=$(grep '^done' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/')
awk -v e="$eps" 'BEGIN { exit !(e <= 4 && e >= 3.99) }' && ok || bad "final epsilon $eps not within 0.01 below target 4"
n=$(grep -c . "$tmp/m.jsonl")
[ "$n" = 3 ] && ok || bad "metrics lines: $n, expected 3 (one per epoch)"
for k in step epoch epsilon delta test_accuracy test_loss examples_per_second; do
  has_re "$tmp/m.jsonl" "\"$k\": " && ok || bad "metrics key $k"
done
has_re "$tmp/m.jsonl" '"reproducible": false' && ok || bad "metrics: reproducible false"

# seeded: 1 and 2 ranks agree on the final test loss (grid invariance, to print precision)
run 1 train "$tmp/job.ini" --run.seed=7 --output.metrics="$tmp/s1.jsonl"
has_re "$tmp/out" "SEEDED" && ok || bad "seeded run announced"
has_re "$tmp/out" "\[seeded\]" && ok || bad "seeded tag on progress lines"
l1=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test loss ([0-9.]+).*/\1/')
run 2 train "$tmp/job.ini" --run.seed=7 --output.metrics="$tmp/s2.jsonl"
l2=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test loss ([0-9.]+).*/\1/')
[ -n "$l1" ] && [ "$l1" = "$l2" ] && ok || bad "seeded test loss 1 rank $l1 != 2 ranks $l2"
has_re "$tmp/s2.jsonl" '"reproducible": true' && ok || bad "metrics: reproducible true"

# release mode (output.private_stats = false): progress, done and metrics lines carry DP-safe values only.
# Seed 12 with an expected batch of 2 (q = 0.001) draws an empty first batch: the private line shows the
# realized throughput (0 examples/s); the release line must show the expected batch's (q*N / time > 0)
# and nothing else of the batch (no loss, train accuracy, clipped fraction)
one=(--run.seed=12 --train.batch_size=2 --train.steps=1 --privacy.epsilon=50)
run 1 train "$tmp/job.ini" "${one[@]}" --output.metrics="$tmp/p1.jsonl"
check "private stats on (default): the seed's batch is empty (ex/s 0)" has_re "$tmp/out" "^step 1/1 .* loss .* train acc .* clipped .* ex/s 0  eps"
check "private stats on: the header discloses it" has "$tmp/out" "note: progress lines show noiseless statistics of the private batches"
check "metrics: private_stats true" has_re "$tmp/p1.jsonl" '"examples_per_second": 0.0, .*"private_stats": true'
run 1 train "$tmp/job.ini" "${one[@]}" --output.private_stats=false --output.metrics="$tmp/r1.jsonl"
check "release run exits 0" test "$(rc)" = 0
check "release progress line: only step, epoch, lr, expected ex/s, epsilon, ETA, elapsed" \
  has_re "$tmp/out" "^step 1/1  epoch [0-9.]+  lr [0-9.e+-]+  ex/s [1-9][0-9]* \(expected batch\)  eps [0-9.]+  ETA [0-9hms?]+  elapsed [0-9]+s  \[seeded\]$"
check "release: no progress line with batch statistics" test "$(grep '^step' "$tmp/out" | grep -cE 'loss|train acc|clipped')" = 0
check "release: no disclosure note" test "$(grep -c 'noiseless statistics' "$tmp/out")" = 0
check "release done line: expected-batch throughput" has_re "$tmp/out" "^done: 1 steps in .* \([1-9][0-9]* examples/s in training steps, from the expected batch\)"
check "release metrics: examples_per_second from the expected batch, private_stats false" \
  has_re "$tmp/r1.jsonl" '"examples_per_second": [1-9][0-9.]*, .*"private_stats": false'
run 2 train "$tmp/job.ini" --run.seed=7 --output.private_stats=false --output.metrics="$tmp/r2.jsonl"
check "release run on 2 ranks, 60 steps: every progress line DP-safe" \
  test "$(grep -cE '^step +[0-9]+/60  epoch [0-9.]+  lr [0-9.e+-]+  ex/s [0-9]+ \(expected batch\)  eps [0-9.]+  ETA [0-9hms?]+  elapsed [0-9]+s  \[seeded\]$' "$tmp/out")" = "$(grep -c '^step' "$tmp/out")"
l2r=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test loss ([0-9.]+).*/\1/')
check "release mode trains the same model (test loss $l2r = $l2)" test "$l2r" = "$l2"

# non-private baseline on the same path
run 2 train "$tmp/job.ini" --privacy.enabled=false --output.metrics="$tmp/np.jsonl"
check "non-private run of a DP job: privacy.epsilon ignored with one warning" test "$(grep -c . "$tmp/err")" = 1 -a "$(rc)" = 0
has "$tmp/err" "privacy.enabled = false: ignoring privacy.epsilon (the non-private baseline" && ok || bad "warning line"
sed -i '/^epsilon = 4$/d' "$tmp/job.ini"
run 2 train "$tmp/job.ini" --privacy.enabled=false --output.metrics="$tmp/np.jsonl"
has_re "$tmp/out" "privacy: DISABLED" && ok || bad "non-private announced"
acc=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/')
awk -v a="$acc" 'BEGIN { exit !(a >= 90) }' && ok || bad "non-private test accuracy $acc% < 90%"
has_re "$tmp/np.jsonl" '"epsilon": null' && ok || bad "non-private metrics epsilon null"

# given sigma and a budget: stops before the budget
run 1 train "$tmp/job.ini" --privacy.noise_multiplier=1.5 --privacy.epsilon=2 --train.epochs=10
has_re "$tmp/out" "allows [0-9]+ of the 200 steps" && ok || bad "budget note"
eps=$(grep '^done' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/')
awk -v e="$eps" 'BEGIN { exit !(e <= 2) }' && ok || bad "budgeted run spent $eps > 2"

# the tight accountant: calibrated sigma is smaller than RDP's for the same target, the spend stays within it
run 1 train "$tmp/job.ini" --privacy.epsilon=2 --privacy.accountant=tight
s_tight=$(grep -oE 'noise multiplier [0-9.]+' "$tmp/out" | awk '{print $3}')
eps=$(grep '^done' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/')
run 1 train "$tmp/job.ini" --privacy.epsilon=2 --privacy.accountant=rdp
s_rdp=$(grep -oE 'noise multiplier [0-9.]+' "$tmp/out" | awk '{print $3}')
awk -v t="$s_tight" -v r="$s_rdp" 'BEGIN { exit !(t > 0 && t < r) }' && ok || bad "tight sigma $s_tight not below rdp sigma $s_rdp"
awk -v e="$eps" 'BEGIN { exit !(e <= 2 && e >= 1.99) }' && ok || bad "tight-accounted run spent $eps, not within 0.01 below 2"

# user errors: status 2 on every rank, one message, no hang
printf '[data]\ntrain = %s\n[model]\nlayers = dense out=4\n[train]\nepochs = 1\nlearning_rate = 1\n[privacy]\nepsilon = 1\n' \
  "$tmp/blobs.h5" >"$tmp/bad.ini"
for np in 1 2; do
  expect_usage_error $np "unknown key 'learning_rate'" train "$tmp/bad.ini"
  expect_usage_error $np "lr = 'fast'" train "$tmp/job.ini" --train.lr=fast --privacy.epsilon=1
  expect_usage_error $np "layer 1" train "$tmp/job.ini" --model.layers="dense outt=3" --privacy.epsilon=1
  expect_usage_error $np "4 classes" train "$tmp/job.ini" --model.layers="dense out=3" --privacy.epsilon=1
  expect_usage_error $np "no-such.h5" train "$tmp/job.ini" --data.train="$tmp/no-such.h5" --privacy.epsilon=1
  expect_usage_error $np "batch_size" train "$tmp/job.ini" --train.batch_size=5000 --privacy.epsilon=1
  expect_usage_error $np "cannot calibrate" train "$tmp/job.ini" --privacy.epsilon=1e-9
  expect_usage_error $np "no job file" train
done
# docs/jobfile.md is the --help-keys output
src=${2:?}
run 1 train --help-keys
check "docs/jobfile.md matches dpmpi train --help-keys" diff -q "$tmp/out" <(sed -n '/^```$/,/^```$/p' "$src/docs/jobfile.md" | sed '1d;$d')
run 1 train --help
[ "$(rc)" = 0 ] && has_re "$tmp/out" "usage: dpmpi train" && ok || bad "train --help"

finish cli_train
