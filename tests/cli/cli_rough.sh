#!/usr/bin/env bash
# The rough edges a new user hits (issue 18), each on 1 and 2 ranks:
#  (a) absurd `dpmpi privacy` arguments give an answer or one clear error, never a crash or an absurd allocation;
#  (b) divergence (--train.lr=1e30): one message naming the step and what went non-finite, status 2, the last
#      good checkpoint kept (and resumable), in DP-safe mode too;
#  (c) run extension: a larger train.steps at a fixed noise multiplier (the new epsilon printed first, the
#      budget enforced, the ledger the longer run's); refused when sigma was calibrated for the shorter run;
#  (d) --privacy.enabled=false on a DP job: its privacy keys ignored with one warning line;
#  and a model or batch that cannot fit is refused before allocation with the estimate and the memory available.
# Usage: bash tests/cli/cli_rough.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

# ---- (a) dpmpi privacy with absurd arguments ------------------------------------------------------------
# Under a 2 GB address-space limit: an attempt to allocate gigabytes fails the test instead of the machine.
lim() { (ulimit -v 2000000; run "$@"); }
# the issue's command: RDP answers (a huge epsilon), tight says its range is exceeded
lim 1 privacy --sampling-rate 0.01 --noise-multiplier 1e-9 --steps 1000000000 --delta 1e-5
check "issue command, rdp: exit 0 (got $(rc))" test "$(rc)" = 0
check "issue command, rdp: an enormous epsilon" has_re "$tmp/out" '^rdp   epsilon [0-9.]+e\+(1[5-9]|[2-9][0-9])  '
for np in 1 2; do
  lim $np privacy --sampling-rate 0.01 --noise-multiplier 1e-9 --steps 1000000000 --delta 1e-5 --accountant tight
  if [ "$(rc)" = 2 ] && [ "$(grep -c . "$tmp/err")" = 1 ] &&
     grep -q '^dpmpi: error: tight accountant: the privacy loss distribution needs more than 16777216 grid points' "$tmp/err"; then ok
  else bad "np=$np issue command, tight: status $(rc), expected 2 and one error line"; sed 's/^/    /' "$tmp/err" >&2; fi
done
# JSON stays JSON when epsilon is infinite (sigma 1e-300: every order overflows)
lim 1 privacy -q 0.01 -s 1e-300 -T 10 -d 1e-5 --json
check "sigma 1e-300: exit 0" test "$(rc)" = 0
h5py_check "sigma 1e-300 json: epsilon null, epsilon_finite false" '
import json, sys
d = json.loads(open(sys.argv[1]).read())
assert d["epsilon"] is None and d["epsilon_finite"] is False, d' "$tmp/out"
lim 1 privacy -q 0.01 -s 1e-300 -T 10 -d 1e-5
check "sigma 1e-300 text: a clear statement" has "$tmp/out" "rdp   epsilon inf  (delta 1e-05): no finite bound (the noise is too small)"
# a tiny delta: tight's truncations exceed it, said so
lim 1 privacy -q 0.01 -s 1 -T 1000 -d 1e-300 --accountant tight
check "delta 1e-300, tight: inf with the reason" has "$tmp/out" "tight epsilon inf  (delta 1e-300): no finite bound (this accountant's pessimistic truncations"
# huge sigma: epsilon ~ 0 from both (RDP: the conversion's own term; no NaN)
lim 1 privacy -q 0.01 -s 1e300 -T 1000 -d 1e-5
check "sigma 1e300, rdp: the conversion's minimum" has_re "$tmp/out" '^rdp   epsilon 0\.0035[0-9]*  '
lim 1 privacy -q 0.01 -s 1e6 -T 1000 -d 1e-5 --accountant tight
check "sigma 1e6, tight: epsilon ~ 0" has_re "$tmp/out" '^tight epsilon [0-9.e-]+  \(delta'
# q = 1, steps up to 2^63 - 1, steps beyond
lim 1 privacy -q 1 -s 1e-9 -T 9223372036854775807 -d 1e-5
check "q 1, 2^63-1 steps: exit 0" test "$(rc)" = 0
expect_usage_error 1 "--steps: '9223372036854775808' is out of range (at most 9223372036854775807)" privacy -q 0.5 -s 1 -T 9223372036854775808 -d 1e-5
expect_usage_error 2 "--steps: '1e30' is out of range" privacy -q 0.5 -s 1 -T 1e30 -d 1e-5
expect_usage_error 1 "--steps: '2.5' is not an integer" privacy -q 0.5 -s 1 -T 2.5 -d 1e-5
expect_usage_error 1 "noise multiplier inf must be positive and finite" privacy -q 0.5 -s inf -T 10 -d 1e-5
expect_usage_error 1 "sampling rate 1.5 is outside (0, 1]" privacy -q 1.5 -s 1 -T 10 -d 1e-5
# calibration at absurd lengths: an answer or one error
lim 1 privacy -q 0.01 -e 1 -T 1000000000 -d 1e-5
check "calibrate 1e9 steps, rdp: a noise multiplier" has_re "$tmp/out" '^rdp   noise multiplier [0-9.]+  '
expect_usage_error 1 "is met already at noise multiplier 0.01" privacy -q 0.01 -e 1e300 -T 10 -d 1e-5

# ---- a small DP job: 4 blobs, 1000 examples, 10 steps per epoch --------------------------------------------
make_blobs 1000 300
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=4
[train]
steps = 30
batch_size = 100
lr = 0.5
[privacy]
epsilon = 4
delta = 1e-4
[checkpoint]
every = 5
[output]
log_every = 5
[run]
seed = 3
INI
finite_ckpt() { # finite_ckpt FILE: every float dataset of the checkpoint is finite
  h5py_check "$1: every parameter finite" '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r"); bad = []
f.visititems(lambda n, o: bad.append(n) if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" and not np.isfinite(o[()]).all() else None)
assert not bad, bad' "$1"
}
newest() { ls "$1"/ckpt-*.h5 2>/dev/null | sort | tail -1; }

# ---- (b) divergence: a stop with one message, status 2, the last good checkpoint kept -------------------------
relu=(--model.layers="dense out=16; relu; dense out=16; relu; dense out=4") # overflows at lr 1e30 (tanh saturates)
diverges() { # diverges NP WHAT DIR ARGS...: status 2, one error line naming a step and WHAT; sets $dstep
  local np=$1 what=$2 dir=$3; shift 3
  rm -rf "$dir"
  run "$np" train "$tmp/job.ini" "${relu[@]}" --checkpoint.dir="$dir" "$@"
  if [ "$(rc)" = 2 ] && [ "$(grep -c . "$tmp/err")" = 1 ] &&
     grep -qE "^dpmpi: error: training diverged at step [0-9]+: $what (is|are) not finite \(NaN or Inf\)" "$tmp/err"; then ok
  else bad "np=$np $*: status $(rc), expected 2 and one 'diverged ... $what' line"; sed 's/^/    /' "$tmp/err" >&2; fi
  dstep=$(sed -nE 's/.*diverged at step ([0-9]+).*/\1/p' "$tmp/err")
}
for np in 1 2; do
  # the issue's --train.lr=1e30: the batch loss (printed with output.private_stats, the default) goes first
  diverges $np "the training loss of the batch" "$tmp/d$np" --train.lr=1e30 --checkpoint.every=1
  last=$(newest "$tmp/d$np")
  check "np=$np lr 1e30: the newest checkpoint ($last) is of the step before $dstep" \
    test "$last" = "$tmp/d$np/ckpt-$(printf %08d $((dstep - 1))).h5"
  check "np=$np: the message names it" has "$tmp/err" "the last good checkpoint is step $((dstep - 1)) in $tmp/d$np; nothing is written of this state"
  finite_ckpt "$last"
done
# DP-safe run (output.private_stats = false): the private loss is not looked at, the test loss of each
# evaluation (printed anyway) is: a test split that overflows the model stops it at step 10, before that
# step's checkpoint; the metrics file stays JSON (test_loss null)
awk 'BEGIN { print "f1,f2,f3,f4,f5,f6,label"; for (i = 0; i < 40; i++) print "3e38,3e38,3e38,3e38,3e38,3e38," i % 4 }' >"$tmp/big.csv"
"$dpmpi" data convert --from csv --train "$tmp/train.csv" --test "$tmp/big.csv" --label-column label --out "$tmp/big.h5" >/dev/null
diverges 2 "the test loss" "$tmp/d3" --data.test="$tmp/big.h5" --output.private_stats=false --output.metrics="$tmp/d3.jsonl"
check "private_stats=false: stopped at the evaluation (step $dstep)" test "$dstep" = 10
check "private_stats=false: newest checkpoint is step 5" test "$(newest "$tmp/d3")" = "$tmp/d3/ckpt-00000005.h5"
finite_ckpt "$tmp/d3/ckpt-00000005.h5"
h5py_check "metrics with a non-finite test loss are JSON" '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert rows[-1]["test_loss"] is None and rows[-1]["step"] == 10, rows[-1]' "$tmp/d3.jsonl"
# parameters overflowing in the update itself (post-processing of the noisy sum: checked in every mode)
diverges 2 "the parameters after the update" "$tmp/d4" --train.lr=1e39 --output.private_stats=false
check "lr 1e39: stopped at step 1, no checkpoint" test "$dstep" = 1 -a -z "$(newest "$tmp/d4")"
# the last good checkpoint resumes with sane data; the journal counts the steps run after it
run 1 train "$tmp/job.ini" "${relu[@]}" --checkpoint.dir="$tmp/d3" --output.private_stats=false --resume "$tmp/d3"
check "resume from the last good checkpoint (rc $(rc))" test "$(rc)" = 0
check "resume: the journal's steps after it are counted" has "$tmp/out" "note: the run journal records 5 steps beyond this checkpoint's ledger"
# a healthy run is untouched
run 2 train "$tmp/job.ini" "${relu[@]}" --checkpoint.dir="$tmp/ok"
check "healthy run exits 0 (rc $(rc))" test "$(rc)" = 0

# ---- (c) run extension ----------------------------------------------------------------------------------
eps_of() { "$dpmpi" privacy -q 0.1 -s "$1" -T "$2" -d 1e-4 --json | sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/'; }
sed '/^epsilon = 4$/d' "$tmp/job.ini" >"$tmp/fixed.ini" # no budget
fixed=(--privacy.noise_multiplier=1.1 --train.steps=10)
run 1 train "$tmp/fixed.ini" "${fixed[@]}" --checkpoint.dir="$tmp/e1"
check "fixed sigma, 10 steps (rc $(rc))" test "$(rc)" = 0
for np in 1 2; do
  rm -rf "$tmp/e$np.x" && cp -r "$tmp/e1" "$tmp/e$np.x"
  run $np train "$tmp/fixed.ini" "${fixed[@]}" --train.steps=25 --checkpoint.dir="$tmp/e$np.x" --resume "$tmp/e$np.x"
  check "np=$np extend 10 -> 25 at a fixed sigma (rc $(rc))" test "$(rc)" = 0
  e25=$(eps_of 1.1 25) e10=$(eps_of 1.1 10)
  check "np=$np the new epsilon is printed before training ($e25, was $e10)" has_re "$tmp/out" \
    "^note: the run's length changes from 10 to 25 steps at noise multiplier 1.1: epsilon $(printf %.4f "$e25") after the run \($(printf %.4f "$e10") at 10 steps"
  check "np=$np the note comes before the first step" test "$(grep -n "^note: the run's length" "$tmp/out" | cut -d: -f1)" -lt "$(grep -n '^step' "$tmp/out" | head -1 | cut -d: -f1)"
  check "np=$np the run reached step 25" test -f "$tmp/e$np.x/ckpt-00000025.h5"
  run 1 privacy --ledger "$tmp/e$np.x" --json
  check "np=$np the ledger of the extended run is 25 steps' ($e25)" has "$tmp/out" "\"epsilon\": $e25,"
done
# with a budget, still enforced: extension to 1000 steps stops at the budget
run 1 train "$tmp/fixed.ini" "${fixed[@]}" --privacy.epsilon=3 --checkpoint.dir="$tmp/e3"
run 1 train "$tmp/fixed.ini" "${fixed[@]}" --privacy.epsilon=3 --train.steps=1000 --checkpoint.dir="$tmp/e3" --resume "$tmp/e3"
check "budget: extension stops before it (rc $(rc))" has_re "$tmp/out" "^note: the budget epsilon = 3 allows [0-9]+ of the 990 remaining steps"
eps=$(sed -nE 's/^done: .*epsilon ([0-9.]+).*/\1/p' "$tmp/out")
check "budget: the extended run spent $eps <= 3" awk -v e="$eps" 'BEGIN { exit !(e > 2.5 && e <= 3) }'
# sigma calibrated from privacy.epsilon for 10 steps: a longer run is refused, and a complete run says how
run 1 train "$tmp/job.ini" --train.steps=10 --checkpoint.dir="$tmp/e4"
sig=$(sed -nE 's/^privacy: .* noise multiplier ([0-9.]+) \(calibrated\).*/\1/p' "$tmp/out")
for np in 1 2; do
  expect_usage_error $np "was calibrated so that its 10 steps spend privacy.epsilon = 4; 20 steps are refused at it (a longer run at a fixed noise: --privacy.noise_multiplier=$sig" \
    train "$tmp/job.ini" --train.steps=20 --checkpoint.dir="$tmp/e4" --resume "$tmp/e4"
done
expect_usage_error 2 "the run is complete (step 10 of 10); nothing to resume (a larger train.steps extends it, at a fixed privacy.noise_multiplier)" \
  train "$tmp/job.ini" --train.steps=10 --checkpoint.dir="$tmp/e4" --resume "$tmp/e4"
expect_usage_error 1 "the checkpoint is at step 25, the job asks for a run of 20 steps; nothing to resume" \
  train "$tmp/fixed.ini" "${fixed[@]}" --train.steps=20 --resume "$tmp/e1.x"

# ---- (d) the non-private baseline of a DP job ---------------------------------------------------------------
for np in 1 2; do
  run $np train "$tmp/job.ini" --privacy.enabled=false --privacy.noise_multiplier=2
  check "np=$np --privacy.enabled=false on a DP job runs (rc $(rc))" test "$(rc)" = 0
  check "np=$np one warning line, naming the ignored keys" test "$(cat "$tmp/err")" = \
    "dpmpi: warning: $tmp/job.ini: privacy.enabled = false: ignoring privacy.epsilon, privacy.noise_multiplier (the non-private baseline has no privacy parameters)"
  check "np=$np non-private announced" has "$tmp/out" "privacy: DISABLED"
done

# ---- memory (issue 18 item 6): refused before allocation, with the estimate and what is available -------------
wide=$(for i in $(seq 30); do printf 'dense out=40000; tanh; '; done)"dense out=4" # ~1 TB: no machine has it
for np in 1 2; do
  t0=$SECONDS
  expect_usage_error $np "the model and batch buffers need an estimated " train "$tmp/job.ini" --model.layers="$wide"
  check "np=$np the 1 TB model is refused in seconds" test $((SECONDS - t0)) -lt 30
  check "np=$np the message gives the parts and the available memory" has_re "$tmp/err" \
    "\(parameters and gradients [0-9.e+]+ GB, optimizer state [0-9.e+]+ GB, activations .*\), [0-9.e+]+ GB for the $np ranks? on this node; available: [0-9.e+]+ GB \((MemAvailable in /proc/meminfo|the cgroup's memory.max)\)"
done
deep=$(for i in $(seq 10); do printf 'dense out=2000; tanh; '; done)"dense out=4" # a micro-batch of 10^6: 10^6 x 2000 x 2 x 4 B per layer
expect_usage_error 1 "activations and kept per-example rows for micro-batches of 1000000" train "$tmp/job.ini" \
  --model.layers="$deep" --train.physical_batch_size=1000000
# a pipeline: the whole model (built once on every rank) is checked before it is built
expect_usage_error 2 "[model] layers need an estimated " train "$tmp/job.ini" --model.layers="$wide" --grid.stages=2
# the address-space limit of the process (ulimit -v) counts too: 400 M parameters under 2 GB
(ulimit -v 2000000; expect_usage_error 1 "available: " train "$tmp/job.ini" --model.layers="dense out=20000; tanh; dense out=20000; tanh; dense out=4")
check "ulimit -v: named" has "$tmp/err" "(the address-space limit, ulimit -v)"
# the issue's dense out=2000000000 is beyond a layer's range: its own clear error, as is a layer past 2^31 values
expect_usage_error 1 "layer 1 (dense): bad value '2000000000' for out (expected an integer in [1, 16777216])" train \
  "$tmp/job.ini" --model.layers="dense out=2000000000"
expect_usage_error 1 "layer 2 (dense): output or parameters too large" train "$tmp/job.ini" \
  --model.layers="dense out=16000000; dense out=16000000"

finish cli_rough
