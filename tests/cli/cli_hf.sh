#!/usr/bin/env bash
# Hugging Face GPT-2 in, one DP step, Hugging Face GPT-2 out, through the CLI (issue 15, "Show"): import the
# reference checkpoint (../shared/refs/gpt), train ONE DP-SGD step on exactly reference.h5's /tokens with
# q = 1 (batch_size = N = 4), SGD lr 1, momentum 0, weight decay 0, flat clipping at reference.h5's clip 0.5
# and noise_multiplier 1e-9, export the checkpoint to safetensors, and check exported - imported =
# -clipped_sum / N within 1e-4 relative (max norm per tensor) for every tensor, tied wte included, on 1 rank
# and on 2 ranks (grid 2x1). This checks import -> norms -> clipping -> update -> export end to end. Also:
# a layer list that is not INIT.h5's GPT, --init with --resume, a non-GPT checkpoint to export, a missing
# --init file: each one error line; init_from recorded in the checkpoint, the released model and the export
# line; a dpmpi checkpoint as --init; an untied head on a pipeline (1x2) loads per stage and equals 1x1; an
# INIT.h5 -> export round trip is bitwise.
# Usage: bash tests/cli/cli_hf.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3
ref=${DPM_SHARED_DIR:-$2/../shared}/refs/gpt

run 1 model import --from safetensors --config "$ref/config.json" "$ref/model.safetensors" --out "$tmp/init.h5"
check "import exits 0 (status $(rc))" test "$(rc)" = 0

# the training rows: exactly reference.h5's /tokens, as a .npy (train and test: the same rows)
"$py" - "$ref/reference.h5" "$tmp/tok.npy" <<'PY' || bad "tokens .npy"
import sys, h5py, numpy as np
np.save(sys.argv[2], h5py.File(sys.argv[1], "r")["tokens"][()].astype(np.int32))
PY
cp "$tmp/tok.npy" "$tmp/tok_test.npy"
run 1 data convert --from tokens --train "$tmp/tok.npy" --test "$tmp/tok_test.npy" --vocab 64 --out "$tmp/tok.h5"
check "token convert exits 0 (status $(rc))" test "$(rc)" = 0

clip=$("$py" -c "import h5py; print(repr(float(h5py.File('$ref/reference.h5', 'r')['config'].attrs['clip'])))")
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/tok.h5
[model]
layers = embed vocab=64 context=16 width=32; block heads=4; block heads=4; lm_head tied=1
[train]
optimizer = sgd
steps = 1
batch_size = 4
physical_batch_size = 4
lr = 1
momentum = 0
weight_decay = 0
[privacy]
noise_multiplier = 1e-9
delta = 1e-5
clip = $clip
clipping = flat
[run]
seed = 11
INI

# one_step_matches OUT.safetensors: exported - imported = -clipped_sum / N for every tensor of the model
one_step_matches() {
  "$py" - "$1" "$ref/model.safetensors" "$ref/reference.h5" <<'PY'
import json, struct, sys, h5py, numpy as np
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4").reshape(v["shape"])
            for k, v in h.items()}
out, init, ref = load(sys.argv[1]), load(sys.argv[2]), h5py.File(sys.argv[3], "r")
N = ref["tokens"].shape[0]
cs = ref["clipped_sum"]
assert sorted(out) == sorted(init) == sorted(cs), (sorted(out), sorted(cs))
worst = 0
for name in cs:
    want = -cs[name][()] / N
    got = out[name].astype(np.float64) - init[name].astype(np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.max(np.abs(want)) > 0, name
    e = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    worst = max(worst, e)
    assert e <= 1e-4, (name, e)
print("worst relative error %.3g over %d tensors" % (worst, len(cs)))
PY
}

for grid in 1x1 2x1; do
  D=${grid%x*}
  run "$D" train "$tmp/job.ini" --init "$tmp/init.h5" --grid.replicas=$D --checkpoint.dir="$tmp/ck$grid"
  check "$grid: train --init exits 0 (status $(rc))" test "$(rc)" = 0
  check "$grid: header names the initial weights" has "$tmp/out" "initial weights: $tmp/init.h5"
  mkdir -p "$tmp/x$grid"
  run 1 model export "$tmp/ck$grid/ckpt-00000001.h5" --to safetensors "$tmp/x$grid/model.safetensors"
  check "$grid: export of the checkpoint exits 0 (status $(rc))" test "$(rc)" = 0
  check "$grid: export line says fine-tuned from" has "$tmp/out" "fine-tuned from $tmp/init.h5"
  check "$grid: config.json written" has "$tmp/x$grid/config.json" '"n_layer":	2'
  check "$grid: exported - imported = -clipped_sum / N within 1e-4 for every tensor" one_step_matches "$tmp/x$grid/model.safetensors"
done
check "checkpoint records init_from" test "$(h5dump -a /init_from "$tmp/ck1x1/ckpt-00000001.h5" | grep -c "$tmp/init.h5")" -ge 1

# the released model (dpmpi export) keeps init_from and exports too
run 1 export "$tmp/ck1x1/ckpt-00000001.h5" "$tmp/released.h5"
check "release exits 0 (status $(rc))" test "$(rc)" = 0
check "released model records init_from" test "$(h5dump -a /init_from "$tmp/released.h5" | grep -c "$tmp/init.h5")" -ge 1
mkdir -p "$tmp/xr"
run 1 model export "$tmp/released.h5" --to safetensors "$tmp/xr/model.safetensors"
check "export of the released model exits 0 (status $(rc))" test "$(rc)" = 0
check "released model exports the same step" one_step_matches "$tmp/xr/model.safetensors"

# a dpmpi checkpoint as --init: 0 steps of change there, a fresh run from its weights
run 1 train "$tmp/job.ini" --init "$tmp/ck1x1/ckpt-00000001.h5" --train.lr=1e-30 \
  --checkpoint.dir="$tmp/ckc"
check "--init from a checkpoint exits 0 (status $(rc))" test "$(rc)" = 0
check "--init from a checkpoint: its own origin named" has "$tmp/out" "itself fine-tuned from $tmp/init.h5"
mkdir -p "$tmp/xc"
run 1 model export "$tmp/ckc/ckpt-00000001.h5" --to safetensors "$tmp/xc/model.safetensors"
check "--init from a checkpoint: weights carried (lr 1e-30)" one_step_matches "$tmp/xc/model.safetensors"

# an untied head on a pipeline (1x2): each stage loads its own tensors; 1x2 = 1x1 after one step (1e-5), and with
# lr 1e-30 the export is the imported model (so stage 1's tensors came from the file, not from random init)
"$py" - "$ref/model.safetensors" "$ref/config.json" "$tmp/u" <<'PY' || bad "untied variant"
import json, os, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); meta = h.pop("__metadata__", None)
items = sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
ts = [(k, v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in items]
w = bytearray(dict((k, r) for k, _, r in ts)["wte.weight"]); w[0:4] = struct.pack("<f", 0.25)
ts.append(("lm_head.weight", [64, 32], bytes(w)))
hd, at = {}, 0
for k, sh, r in ts: hd[k] = {"dtype": "F32", "shape": sh, "data_offsets": [at, at + len(r)]}; at += len(r)
t = json.dumps(hd).encode(); t += b" " * (-(8 + len(t)) % 8)
os.makedirs(sys.argv[3], exist_ok=True)
open(sys.argv[3] + "/model.safetensors", "wb").write(struct.pack("<Q", len(t)) + t + b"".join(r for _, _, r in ts))
c = json.load(open(sys.argv[2])); c["tie_word_embeddings"] = False
json.dump(c, open(sys.argv[3] + "/config.json", "w"))
PY
run 1 model import --from safetensors --config "$tmp/u/config.json" "$tmp/u/model.safetensors" --out "$tmp/untied.h5"
check "untied import exits 0 (status $(rc))" test "$(rc)" = 0
ulayers="embed vocab=64 context=16 width=32; block heads=4; block heads=4; lm_head tied=0 vocab=64"
st_close() { # st_close A B TOL: every tensor of safetensors A and B within TOL of B's largest value
  "$py" - "$@" <<'PY'
import json, struct, sys, numpy as np
def load(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4") for k, v in h.items()}
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert sorted(a) == sorted(b) and "lm_head.weight" in a, sorted(a)
for k in a:
    e = float(np.max(np.abs(a[k].astype(np.float64) - b[k])) / np.max(np.abs(b[k])))
    assert e <= tol, (k, e)
PY
}
for grid in 1x1 1x2; do
  S=${grid#*x}
  for lr in 1 1e-30; do
    run "$S" train "$tmp/job.ini" --init "$tmp/untied.h5" --model.layers="$ulayers" --grid.stages=$S --train.lr=$lr \
      --checkpoint.dir="$tmp/cku$grid$lr"
    check "untied $grid lr $lr: train --init exits 0 (status $(rc))" test "$(rc)" = 0
    mkdir -p "$tmp/xu$grid$lr"
    run 1 model export "$tmp/cku$grid$lr/ckpt-00000001.h5" --to safetensors "$tmp/xu$grid$lr/model.safetensors"
    check "untied $grid lr $lr: export exits 0 (status $(rc))" test "$(rc)" = 0
  done
  check "untied $grid: lr 1e-30 gives back the imported weights" \
    st_close "$tmp/xu${grid}1e-30/model.safetensors" "$tmp/u/model.safetensors" 1e-6
done
check "untied: 1x2 = 1x1 after one step within 1e-5" st_close "$tmp/xu1x21/model.safetensors" "$tmp/xu1x11/model.safetensors" 1e-5
if st_close "$tmp/xu1x11/model.safetensors" "$tmp/u/model.safetensors" 1e-6 2>/dev/null; then
  bad "untied: the step of lr 1 left the weights unchanged"
else ok; fi

# a resumed segment of a --init run keeps init_from
run 1 train "$tmp/job.ini" --init "$tmp/init.h5" --train.steps=2 --checkpoint.every=1 --checkpoint.dir="$tmp/ckr"
check "2-step --init run exits 0 (status $(rc))" test "$(rc)" = 0
rm -f "$tmp/ckr/ckpt-00000002.h5"
run 1 train "$tmp/job.ini" --train.steps=2 --resume "$tmp/ckr" --resume-branch --checkpoint.dir="$tmp/ckr"
check "resume exits 0 (status $(rc))" test "$(rc)" = 0
check "resumed checkpoint keeps init_from" test "$(h5dump -a /init_from "$tmp/ckr/ckpt-00000002.h5" | grep -c "$tmp/init.h5")" -ge 1

# mismatches and misuse: one line each
expect_usage_error 1 "heads 4, 1 blocks, tied=1 but --init $tmp/init.h5 holds vocab 64, context 16, width 32, heads 4, 2 blocks" \
  train "$tmp/job.ini" --init "$tmp/init.h5" --model.layers="embed vocab=64 context=16 width=32; block heads=4; lm_head tied=1"
expect_usage_error 2 "width 16, heads 4, 2 blocks, tied=1 but --init $tmp/init.h5 holds vocab 64, context 16, width 32" \
  train "$tmp/job.ini" --init "$tmp/init.h5" --grid.replicas=2 \
  --model.layers="embed vocab=64 context=16 width=16; block heads=4; block heads=4; lm_head tied=1"
expect_usage_error 1 "tied=0 but --init $tmp/init.h5 holds" \
  train "$tmp/job.ini" --init "$tmp/init.h5" --model.layers="embed vocab=64 context=16 width=32; block heads=4; block heads=4; lm_head tied=0"
expect_usage_error 2 "--init starts a new run, --resume continues one" \
  train "$tmp/job.ini" --init "$tmp/init.h5" --resume "$tmp/ck1x1"
expect_usage_error 2 "$tmp/none.h5: not a dpmpi initial-weights file, checkpoint or model" \
  train "$tmp/job.ini" --init "$tmp/none.h5"
expect_usage_error 1 "train: --init needs an initial-weights file" train "$tmp/job.ini" --init

# a non-GPT checkpoint: export refuses it with one line
make_blobs 64 16
cat >"$tmp/mlp.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=8; relu; dense out=4
[train]
steps = 1
batch_size = 16
[privacy]
noise_multiplier = 1
[run]
seed = 1
INI
run 1 train "$tmp/mlp.ini" --checkpoint.dir="$tmp/ckm"
check "mlp train exits 0 (status $(rc))" test "$(rc)" = 0
expect_usage_error 1 "ckpt-00000001.h5: not a GPT (layers 'dense out=8; relu; dense out=4'" \
  model export "$tmp/ckm/ckpt-00000001.h5" --to safetensors "$tmp/o.safetensors"
expect_usage_error 1 "not a GPT" train "$tmp/mlp.ini" --init "$tmp/init.h5"

# INIT.h5 -> export: the imported values bitwise
mkdir -p "$tmp/xi"
run 1 model export "$tmp/init.h5" --to safetensors "$tmp/xi/model.safetensors"
check "INIT export exits 0" test "$(rc)" = 0
check "INIT export: data bytes identical to the reference's" "$py" - "$ref/model.safetensors" "$tmp/xi/model.safetensors" <<'PY'
import struct, sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
na, nb = (struct.unpack("<Q", x[:8])[0] for x in (a, b))
sys.exit(0 if a[8 + na:] == b[8 + nb:] else 1)
PY

finish cli_hf
