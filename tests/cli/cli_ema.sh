#!/usr/bin/env bash
# train.ema_decay end to end (issue 19, item 3): the parameters' exponential moving average is
# post-processing. A seeded DP-SGD run with EMA trains exactly the run without it (/model bitwise, the same
# ledger and epsilon: the ledger is unchanged); every evaluation also reports the EMA model's accuracy (the
# eval line and the metrics file); the checkpoints store /ema, which follows ema_t = d ema_{t-1} + (1 - d) p_t
# (recomputed in float64 from the per-step checkpoints' parameters); `dpmpi export` releases the EMA
# (attribute ema = 1) or, without EMA, the parameters (ema = 0); a resume from step 10 ends with /ema
# bitwise the uninterrupted run's; ema_decay outside [0, 1) and an EMA resume from a checkpoint without /ema
# are refused with one line on every rank.
# Usage: bash tests/cli/cli_ema.sh BUILD_DIR SOURCE_DIR
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
physical_batch_size = 40
lr = 0.5
[privacy]
noise_multiplier = 1.0
delta = 1e-4
clip = 1
[checkpoint]
every = 1
keep = 30
[run]
seed = 11
INI
same_h5() { h5diff -q "$1" "$2" "$3" "$4" >/dev/null 2>&1; }
attr() { /usr/bin/python3 -c 'import sys, h5py; v = h5py.File(sys.argv[1], "r").attrs.get(sys.argv[2]); print("absent" if v is None else v)' "$@"; }

run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/plain" --output.metrics="$tmp/plain.jsonl"
[ "$(rc)" = 0 ] && ok || { bad "run without EMA"; cat "$tmp/err" >&2; }
cp "$tmp/out" "$tmp/plain.out"
run 2 train "$tmp/job.ini" --train.ema_decay=0.8 --checkpoint.dir="$tmp/ema" --output.metrics="$tmp/ema.jsonl"
[ "$(rc)" = 0 ] && ok || { bad "run with EMA"; cat "$tmp/err" >&2; }
cp "$tmp/out" "$tmp/ema.out"
A=$tmp/plain/ckpt-00000020.h5 B=$tmp/ema/ckpt-00000020.h5

check "eval line reports the EMA model" has_re "$tmp/ema.out" '^eval  step 20 .*test accuracy [0-9.]+%  test loss [0-9.]+  EMA test accuracy [0-9.]+%  EMA test loss [0-9.]+  epsilon'
check "no EMA figure without EMA" bash -c "! grep -q EMA '$tmp/plain.out'"
check "metrics carry ema_test_accuracy" has "$tmp/ema.jsonl" '"ema_test_accuracy": '
check "EMA does not change training: /model bitwise" same_h5 "$A" "$B" /model /model
check "EMA does not change the ledger" same_h5 "$A" "$B" /privacy /privacy
eps_a=$(sed -nE 's/^eval  step 20 .*epsilon ([0-9.]+) .*/\1/p' "$tmp/plain.out")
eps_b=$(sed -nE 's/^eval  step 20 .*epsilon ([0-9.]+) .*/\1/p' "$tmp/ema.out")
check "the same epsilon with and without EMA ($eps_a, $eps_b)" test -n "$eps_a" -a "$eps_a" = "$eps_b"
run 1 privacy --ledger "$A"; sed "s|$tmp/plain/||g" "$tmp/out" >"$tmp/la"
run 1 privacy --ledger "$B"; sed "s|$tmp/ema/||g" "$tmp/out" >"$tmp/lb"
check "privacy --ledger: the same report" cmp "$tmp/la" "$tmp/lb"
check "no /ema without EMA" bash -c "! h5ls '$A' | grep -q '^ema'"

h5py_check "/ema_t = 0.8 /ema_(t-1) + 0.2 /model_t for t = 11..20 (float64 recomputation), and differs from /model" '
import sys, h5py, numpy as np
d = sys.argv[1]
ck = lambda t: h5py.File("%s/ckpt-%08d.h5" % (d, t), "r")
def slab(f, g):
    return np.concatenate([f[g][l][n][...].astype(np.float64).ravel() for l in sorted(f[g]) for n in sorted(f[g][l])])
e = slab(ck(10), "ema")
for t in range(11, 21):
    e = 0.8 * e + 0.2 * slab(ck(t), "model")
got, p = slab(ck(20), "ema"), slab(ck(20), "model")
err = np.max(np.abs(got - e)) / np.max(np.abs(e))
assert err < 1e-5, err
assert np.max(np.abs(got - p)) > 1e-3 * np.max(np.abs(p)), "EMA equals the parameters"
print(err)
' "$tmp/ema"

run 1 export "$B" "$tmp/ema-model.h5"
[ "$(rc)" = 0 ] && ok || { bad "export with EMA"; cat "$tmp/err" >&2; }
check "export of an EMA run releases /ema as /model" same_h5 "$B" "$tmp/ema-model.h5" /ema /model
check "export attribute ema = 1" test "$(attr "$tmp/ema-model.h5" ema)" = 1
run 1 export "$A" "$tmp/plain-model.h5"
check "export without EMA releases the parameters" same_h5 "$A" "$tmp/plain-model.h5" /model /model
check "export attribute ema = 0" test "$(attr "$tmp/plain-model.h5" ema)" = 0

mkdir -p "$tmp/part" && cp "$tmp/ema/ckpt-00000010.h5" "$tmp/part/"
run 2 train "$tmp/job.ini" --train.ema_decay=0.8 --checkpoint.dir="$tmp/part" --resume "$tmp/part"
[ "$(rc)" = 0 ] && ok || { bad "resume with EMA"; cat "$tmp/err" >&2; }
check "resumed from step 10: /ema bitwise the uninterrupted run's" same_h5 "$B" "$tmp/part/ckpt-00000020.h5" /ema /ema
check "resumed: /model bitwise" same_h5 "$B" "$tmp/part/ckpt-00000020.h5" /model /model

mkdir -p "$tmp/noema" && cp "$tmp/plain/ckpt-00000010.h5" "$tmp/noema/"
expect_usage_error 2 "ema" train "$tmp/job.ini" --train.ema_decay=0.8 --checkpoint.dir="$tmp/noema" --resume "$tmp/noema"
expect_usage_error 2 "ema_decay = 1: expected a number in [0, 1)" train "$tmp/job.ini" --train.ema_decay=1
finish cli_ema
