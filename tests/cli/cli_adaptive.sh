#!/usr/bin/env bash
# `dpmpi train` with adaptive clipping thresholds (privacy.adaptive) and automatic clipping, end to end on the
# blobs: the ledger records the effective noise multiplier of gradient and counts together, and its epsilon is
# the one `dpmpi privacy` gives for the sigma_eff computed here from the header's gradient multiplier and count
# std; calibration to an epsilon target calibrates sigma_eff; the thresholds are in the metrics lines and the
# checkpoint, a resume restores them (same grid: bitwise; 2x1 from a 1x1 checkpoint: close), per-device ones
# refuse another number of stages; automatic clipping learns; wrong combinations are one-line user errors.
# Usage: bash tests/cli/cli_adaptive.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 2000 500
# job NOISE_LINE: the job file with that [privacy] noise line (noise_multiplier, epsilon, or none)
job() {
cat <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=8; tanh; dense out=4
[train]
steps = 20
batch_size = 100
physical_batch_size = 32
lr = 0.5
[privacy]
$1
clip = 1
clipping = per-layer
adaptive = true
count_noise_fraction = 0.05
[run]
seed = 3
INI
}
job "noise_multiplier = 1.0" >"$tmp/job.ini"
job "epsilon = 2" >"$tmp/job_eps.ini"
job "" >"$tmp/job_none.ini"

# ---- the combined mechanism: sigma_eff = (sigma_g^-2 + K / (2 sigma_b)^2)^-1/2 is the ledger's ----
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/a" --checkpoint.every=10 --output.metrics="$tmp/a.jsonl"
[ "$(rc)" = 0 ] && ok || { bad "adaptive run failed (rc $(rc))"; cat "$tmp/err" >&2; }
line=$(grep '^adaptive thresholds' "$tmp/out")
K=$(echo "$line" | sed -E 's/^adaptive thresholds: ([0-9]+) .*/\1/')
sg=$(echo "$line" | sed -E 's/.*gradient \(noise multiplier ([0-9.e+-]+)\).*/\1/')
sb=$(echo "$line" | sed -E 's/.* noisy counts \(std ([0-9.e+-]+),.*/\1/')
[ "$K" = 3 ] && ok || bad "per-layer adaptive: $K thresholds, expected 3 (one per dense layer): $line"
eff=$(awk -v g="$sg" -v b="$sb" -v k="$K" 'BEGIN { printf "%.6f", 1 / sqrt(1 / (g * g) + k / (4 * b * b)) }')
awk -v e="$eff" 'BEGIN { exit !(e > 0.99999 && e < 1.00001) }' && ok || bad "sigma_g $sg, sigma_b $sb, K $K give sigma_eff $eff, not 1"
awk -v g="$sg" 'BEGIN { exit !(g > 1 / sqrt(0.95) - 1e-5 && g < 1 / sqrt(0.95) + 1e-5) }' && ok || bad "sigma_g $sg != 1/sqrt(1 - 0.05)"
eps_run=$(grep '^done' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/')
eps_ref=$("$dpmpi" privacy -q 0.05 -s "$eff" -T 20 -d 1e-5 | sed -nE 's/.*epsilon[ =:]+([0-9.]+).*/\1/p' | head -1)
awk -v a="$eps_run" -v b="$eps_ref" 'BEGIN { exit !(a > 0 && b > 0 && (a - b) < 2e-4 && (b - a) < 2e-4) }' && ok ||
  bad "epsilon of the run $eps_run, of the combined mechanism (q 0.05, sigma_eff $eff, 20 steps) $eps_ref"
h5py_check "checkpoint: ledger = one segment (q 0.05, sigma_eff 1, 20 steps), thresholds as in the metrics" '
import sys, json, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
L = f["privacy/privacy_ledger"][()]
assert len(L) == 1 and L[0]["kind"] == 0 and L[0]["q"] == 0.05 and L[0]["sigma"] == 1.0 and L[0]["count"] == 20, L
assert f.attrs["noise_multiplier"] == 1.0
thr = f.attrs["clip_thresholds"]
m = json.loads(open(sys.argv[2]).read().strip().split("\n")[-1])
assert len(thr) == 3 and np.allclose(thr, m["clip_thresholds"], rtol=1e-8, atol=0), (thr, m["clip_thresholds"])
init = 1 / np.sqrt(3)
assert np.max(np.abs(np.log(thr / init))) > 0.05, ("thresholds did not move", thr)
assert f.attrs["count_noise_fraction"] == 0.05 and f.attrs["adaptive_target_quantile"] == 0.5
' "$tmp/a/ckpt-00000020.h5" "$tmp/a.jsonl"

run 1 ckpt info "$tmp/a/ckpt-00000020.h5"
has_re "$tmp/out" "^adaptive thresholds \(target quantile 0.5, rate 0.2, 0.05 of the budget on the counts\): [0-9.e-]+ [0-9.e-]+ [0-9.e-]+$" &&
  ok || bad "ckpt info: the adaptive thresholds line"

# ---- calibration: epsilon 2 calibrates sigma_eff (the ledger's), the gradient gets sigma_eff / sqrt(1 - f) ----
run 1 train "$tmp/job_eps.ini" --checkpoint.dir="$tmp/c"
[ "$(rc)" = 0 ] && ok || { bad "calibrated adaptive run failed (rc $(rc))"; cat "$tmp/err" >&2; }
cal=$("$dpmpi" privacy -e 2 -q 0.05 -T 20 -d 1e-5 | grep -oE '[0-9]+\.[0-9]+' | head -1)
h5py_check "calibrated: the ledger's sigma is dpmpi privacy's calibrated one" '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
s = f["privacy/privacy_ledger"][()][0]["sigma"]
assert abs(s - float(sys.argv[2])) <= 1e-4 * s, (s, sys.argv[2])
' "$tmp/c/ckpt-00000020.h5" "$cal"
sg2=$(grep '^adaptive thresholds' "$tmp/out" | sed -E 's/.*gradient \(noise multiplier ([0-9.e+-]+)\).*/\1/')
awk -v g="$sg2" -v s="$cal" 'BEGIN { r = g * sqrt(0.95) / s; exit !(r > 0.9999 && r < 1.0001) }' && ok ||
  bad "calibrated: gradient noise multiplier $sg2, expected $cal / sqrt(0.95)"

# ---- resume: from step 10 the run ends where the uninterrupted one did ----
mkdir -p "$tmp/r" && cp "$tmp/a/ckpt-00000010.h5" "$tmp/r/"
run 1 train "$tmp/job.ini" --resume "$tmp/r/ckpt-00000010.h5" --checkpoint.dir="$tmp/r"
[ "$(rc)" = 0 ] && ok || { bad "resume failed (rc $(rc))"; cat "$tmp/err" >&2; }
h5py_check "resume on the same grid: thresholds and parameters bitwise those of the uninterrupted run" '
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert np.array_equal(a.attrs["clip_thresholds"], b.attrs["clip_thresholds"]), (a.attrs["clip_thresholds"], b.attrs["clip_thresholds"])
for n in ("layer_001/weight", "layer_003/weight", "layer_005/bias"):
    assert np.array_equal(a["model"][n][()], b["model"][n][()]), n
' "$tmp/a/ckpt-00000020.h5" "$tmp/r/ckpt-00000020.h5"
mkdir -p "$tmp/r2" && cp "$tmp/a/ckpt-00000010.h5" "$tmp/r2/"
run 2 train "$tmp/job.ini" --resume "$tmp/r2/ckpt-00000010.h5" --checkpoint.dir="$tmp/r2"
[ "$(rc)" = 0 ] && ok || { bad "2x1 resume of a 1x1 checkpoint failed (rc $(rc))"; cat "$tmp/err" >&2; }
h5py_check "cross-grid resume (1x1 -> 2x1): thresholds within 1e-9" '
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert np.allclose(a.attrs["clip_thresholds"], b.attrs["clip_thresholds"], rtol=1e-9, atol=0)
' "$tmp/a/ckpt-00000020.h5" "$tmp/r2/ckpt-00000020.h5"
h5_close "cross-grid resume (1x1 -> 2x1): parameters" "$tmp/a/ckpt-00000020.h5" "$tmp/r2/ckpt-00000020.h5" model 1e-5

# per-device thresholds are per stage: a 1x2 checkpoint does not resume on one stage
run 2 train "$tmp/job.ini" --privacy.clipping=per-device --grid.stages=2 --checkpoint.dir="$tmp/pd" --checkpoint.every=10
[ "$(rc)" = 0 ] && ok || { bad "per-device adaptive 1x2 run failed (rc $(rc))"; cat "$tmp/err" >&2; }
has_re "$tmp/out" "^adaptive thresholds: 2 " && ok || bad "per-device on 2 stages: 2 thresholds"
mkdir -p "$tmp/pd1" && cp "$tmp/pd/ckpt-00000010.h5" "$tmp/pd1/"
expect_usage_error 1 "per-device thresholds are one per pipeline stage" train "$tmp/job.ini" --privacy.clipping=per-device \
  --resume "$tmp/pd1/ckpt-00000010.h5"
expect_usage_error 1 "privacy.adaptive was true" train "$tmp/job.ini" --privacy.adaptive=false --privacy.clipping=per-device \
  --resume "$tmp/pd1/ckpt-00000010.h5"

# ---- automatic clipping learns, flat and per layer, and says what it does ----
for mode in automatic automatic-per-layer; do
  run 2 train "$tmp/job.ini" --privacy.adaptive=false --privacy.clipping=$mode --train.steps=60 --train.lr=2
  [ "$(rc)" = 0 ] && ok || { bad "$mode run failed (rc $(rc))"; cat "$tmp/err" >&2; }
  has_re "$tmp/out" "^automatic clipping: every example normalized" && ok || bad "$mode: header line"
  acc=$(grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/')
  awk -v a="$acc" 'BEGIN { exit !(a >= 85) }' && ok || bad "$mode: test accuracy $acc% < 85%"
done

# ---- user errors ----
expect_usage_error 1 "automatic clipping has no threshold to adapt" train "$tmp/job.ini" --privacy.clipping=automatic
# the non-private baseline of an adaptive job ignores the adaptive thresholds with the other privacy keys
run 2 train "$tmp/job.ini" --privacy.enabled=false --train.steps=2
check "--privacy.enabled=false on an adaptive job runs (rc $(rc))" test "$(rc)" = 0
check "its warning names privacy.adaptive" has "$tmp/err" "privacy.adaptive (the non-private baseline has no privacy parameters)"
expect_usage_error 1 "[privacy] count_noise_fraction = '1'" train "$tmp/job.ini" --privacy.count_noise_fraction=1
finish cli_adaptive
