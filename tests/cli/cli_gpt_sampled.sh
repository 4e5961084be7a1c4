#!/usr/bin/env bash
# One DP step of a GPT on token data with sampling rate q < 1 divides the clipped sum by the EXPECTED batch
# size q N, never by the realized one (issue 15; cli_hf.sh checks the q = 1 case against the float64
# reference). From the imported reference GPT (../shared/refs/gpt), SGD lr 1, momentum 0, noise_multiplier
# 1e-9, flat clipping at C = 0.5 (where the reference's row 0 is clipped):
#   A: N = 1 (reference row 0), batch_size 1, q = 1: update dA = -c, c = row 0's clipped gradient;
#   B: N = 8 copies of that row, batch_size 2, q = 0.25 (Poisson): every sampled example has gradient c, so
#      the update must be dB = -k c / (q N) = -k c / 2 for the realized batch size k (an integer in [0, 8]).
# For seeds 1..4 on 1 rank, and seed 1 on 2 ranks (2x1, the sample drawn per shard), k is fitted from dB and
# dA and every tensor must satisfy dB = -k c / 2 within 1e-4 (relative to its largest entry); at least one
# seed must have k not in {0, q N = 2}, where dividing by the realized k (dB = -c) would fail.
# Usage: bash tests/cli/cli_gpt_sampled.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3
ref=${DPM_SHARED_DIR:-$2/../shared}/refs/gpt

run 1 model import --from safetensors --config "$ref/config.json" "$ref/model.safetensors" --out "$tmp/init.h5"
check "import exits 0 (status $(rc))" test "$(rc)" = 0
"$py" - "$ref/reference.h5" "$tmp" <<'PY' || bad "token .npy files"
import sys, h5py, numpy as np
row = h5py.File(sys.argv[1], "r")["tokens"][0:1].astype(np.int32)
np.save(sys.argv[2] + "/one.npy", row)
np.save(sys.argv[2] + "/test.npy", row)
np.save(sys.argv[2] + "/eight.npy", np.repeat(row, 8, axis=0))
PY
run 1 data convert --from tokens --train "$tmp/one.npy" --test "$tmp/test.npy" --vocab 64 --out "$tmp/one.h5"
check "convert N = 1 exits 0 (status $(rc))" test "$(rc)" = 0
run 1 data convert --from tokens --train "$tmp/eight.npy" --test "$tmp/test.npy" --vocab 64 --out "$tmp/eight.h5"
check "convert N = 8 exits 0 (status $(rc))" test "$(rc)" = 0

cat >"$tmp/job.ini" <<INI
[model]
layers = embed vocab=64 context=16 width=32; block heads=4; block heads=4; lm_head tied=1
[train]
optimizer = sgd
steps = 1
physical_batch_size = 8
lr = 1
momentum = 0
weight_decay = 0
[privacy]
noise_multiplier = 1e-9
delta = 1e-5
clip = 0.5
clipping = flat
INI

# step NAME NP DATA BATCH SEED: one step from the reference weights, exported to $tmp/x-NAME/model.safetensors
step() {
  run "$2" train "$tmp/job.ini" --init "$tmp/init.h5" --data.train="$3" --train.batch_size="$4" --run.seed="$5" \
    --grid.replicas="$2" --checkpoint.dir="$tmp/ck-$1"
  check "$1: train exits 0 (status $(rc))" test "$(rc)" = 0
  check "$1: sampling rate as expected" has "$tmp/out" "(q = $6, Poisson)"
  mkdir -p "$tmp/x-$1"
  run 1 model export "$tmp/ck-$1/ckpt-00000001.h5" --to safetensors "$tmp/x-$1/model.safetensors"
  check "$1: export exits 0 (status $(rc))" test "$(rc)" = 0
}
step A 1 "$tmp/one.h5" 1 1 1
for s in 1 2 3 4; do step "B$s" 1 "$tmp/eight.h5" 2 "$s" 0.25; done
step B2r 2 "$tmp/eight.h5" 2 1 0.25

# expected_batch_update INIT A B...: each B's update is -k c / (q N) = k dA / 2 for an integer k; prints the k's
expected_batch_update() {
  "$py" - "$@" <<'PY'
import json, struct, sys, numpy as np
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4").reshape(v["shape"]).astype(np.float64)
            for k, v in h.items()}
init, a = load(sys.argv[1]), load(sys.argv[2])
dA = {k: a[k] - init[k] for k in init}
assert all(np.max(np.abs(dA[k])) > 0 for k in dA), "q = 1 step left a tensor unchanged"
flatA = np.concatenate([dA[k].ravel() for k in sorted(dA)])
qN, ks = 2.0, []
for path in sys.argv[3:]:
    b = load(path)
    dB = {k: b[k] - init[k] for k in init}
    flatB = np.concatenate([dB[k].ravel() for k in sorted(dB)])
    kfit = qN * float(flatB @ flatA) / float(flatA @ flatA)   # dB = (k / qN) dA
    k = int(round(kfit))
    assert 0 <= k <= 8 and abs(kfit - k) < 1e-3, (path, kfit)
    for name in dA:
        want = k / qN * dA[name]
        e = float(np.max(np.abs(dB[name] - want)) / np.max(np.abs(dA[name])))
        assert e <= 1e-4, (path, name, k, e)
    ks.append(k)
print(" ".join(map(str, ks)))
PY
}
xs=()
for s in 1 2 3 4; do xs+=("$tmp/x-B$s/model.safetensors"); done
if ks=$(expected_batch_update "$ref/model.safetensors" "$tmp/x-A/model.safetensors" "${xs[@]}" "$tmp/x-B2r/model.safetensors" 2>"$tmp/py"); then
  ok
  echo "realized batch sizes (seeds 1-4 on 1 rank, seed 1 on 2 ranks): $ks"
  # the test discriminates: some realized batch is neither q N = 2 nor empty (an empty batch updates by 0
  # under either division)
  check "some realized batch size is neither q N = 2 nor 0 ($ks)" test "$(echo "$ks" | tr ' ' '\n' | grep -cvE '^(0|2)$')" -ge 1
else
  bad "q < 1: update = -k c / (q N) for an integer k, every tensor within 1e-4"
  sed 's/^/    /' "$tmp/py" | tail -5 >&2
fi

echo "cli_gpt_sampled: $passed passed, $failed failed"
[ "$failed" = 0 ]
