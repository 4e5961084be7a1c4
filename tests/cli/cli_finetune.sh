#!/usr/bin/env bash
# Fine-tuning with frozen tensors (train.trainable): a byte-level GPT trained a few steps is the base
# (--init of its checkpoint); DP fine-tuning with AdamW and weight decay (which would move any parameter it
# touched) of h.1.* and ln_f.* leaves every other tensor bitwise equal to the base on grids 1x1, 2x1 and 1x2,
# moves every trainable one, stores optimizer state for the trainable tensors only, prints the noise dimension
# = the trainable tensors' sizes counted from the file, and ends the same on every grid (1e-5); a resumed
# fine-tuning run ends as the uninterrupted one; the same for LoRA (train.lora_rank: only the adapters train,
# the noise dimension is their parameter count, also with per-device clipping on a pipeline); a pattern that
# matches nothing and an unknown LoRA target are one error line each; a pipeline stage with nothing to train
# (per-device and flat clipping) ends as 1x1; `model export` of a LoRA checkpoint writes
# the merged model (= base + (alpha/r) A B, checked with numpy) or, --adapters-only, the adapters alone.
# Usage: bash tests/cli/cli_finetune.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3
run 1 data convert --from text --context 16 --test-fraction 0.25 --out "$tmp/lic.h5" /usr/share/common-licenses/*
check "text convert exits 0 (status $(rc))" test "$(rc)" = 0

cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/lic.h5
[model]
layers = embed vocab=257 context=16 width=16; block heads=2; block heads=2; lm_head tied=0
[train]
optimizer = adamw
weight_decay = 0.1
steps = 4
batch_size = 24
physical_batch_size = 8
lr = 0.01
[privacy]
noise_multiplier = 1.0
delta = 1e-5
clip = 1
[run]
seed = 5
INI
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/base"
check "base run exits 0 (status $(rc))" test "$(rc)" = 0
base=$(ls "$tmp"/base/ckpt-*.h5 | tail -1)

# frozen BASE FT PATTERN...: tensors matching no pattern bitwise equal, matching ones changed; optimizer
# state only for the trainable ones; prints the trainable count
frozen() {
  "$py" - "$@" <<'PY'
import sys, fnmatch, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
pats = sys.argv[3:]
n_train = n_frozen = 0
for lg in b["model"]:
    for name in b["model"][lg]:
        y = b["model"][lg][name][()]
        train = any(fnmatch.fnmatchcase(name, p) for p in pats)
        has_state = name in b["optimizer/exp_avg"][lg] if lg in b["optimizer/exp_avg"] else False
        if name not in a["model"][lg]:  # a LoRA adapter: trains, B moved away from its zero start
            assert train and has_state, ("adapter without state", name)
            assert np.any(y != 0), ("adapter still zero", name)
            n_train += y.size
            continue
        x = a["model"][lg][name][()]
        if train:
            assert np.any(x != y), ("trainable tensor did not move", name)
            assert has_state, ("no optimizer state", name)
            n_train += x.size
        else:
            assert x.tobytes() == y.tobytes(), ("frozen tensor changed", name, float(np.max(np.abs(x - y))))
            assert not has_state, ("optimizer state for a frozen tensor", name)
            n_frozen += 1
assert n_frozen > 0 and n_train > 0
print(n_train)
PY
}
for grid in 1x1 2x1 1x2; do
  D=${grid%x*} S=${grid#*x}
  run $((D * S)) train "$tmp/job.ini" --init "$base" --grid.replicas=$D --grid.stages=$S --train.steps=6 \
    --train.trainable="h.1.*, ln_f.*" --checkpoint.dir="$tmp/ft-$grid"
  check "$grid: fine-tuning exits 0 (status $(rc))" test "$(rc)" = 0
  cp "$tmp/out" "$tmp/out-$grid"
  ft=$(ls "$tmp/ft-$grid"/ckpt-*.h5 | tail -1)
  n=$(frozen "$base" "$ft" 'h.1.*' 'ln_f.*')
  check "$grid: frozen tensors bitwise unchanged, trainable ones moved, state for trainable only" test -n "$n"
  check "$grid: noise dimension = trainable parameters ($n)" has_re "$tmp/out-$grid" "noise dimension $n\$"
done
# LoRA (rank 2, alpha 4) on the attention's c_attn and the MLP's c_fc, flat and per-device clipping (on the
# pipeline each stage clips its own adapters): the base bitwise unchanged, the adapters trained
for grid in 1x1 2x1 1x2 1x2pd; do
  g=${grid%pd} D=${g%x*} S=${g#*x} clip=flat
  [ "$grid" = 1x2pd ] && clip=per-device
  run $((D * S)) train "$tmp/job.ini" --init "$base" --grid.replicas=$D --grid.stages=$S --train.steps=6 \
    --train.lora_rank=2 --train.lora_alpha=4 --train.lora_targets="attn.c_attn mlp.c_fc" --privacy.clipping=$clip \
    --checkpoint.dir="$tmp/lora-$grid"
  check "LoRA $grid: exits 0 (status $(rc)): $(head -c 300 "$tmp/err")" test "$(rc)" = 0
  cp "$tmp/out" "$tmp/out-lora-$grid"
  n=$(frozen "$base" "$(ls "$tmp/lora-$grid"/ckpt-*.h5 | tail -1)" '*.lora_*')
  check "LoRA $grid: base bitwise unchanged, adapters trained with state" test -n "$n"
  # 2 blocks x rank 2 x ((16 + 48) + (16 + 64))
  check "LoRA $grid: noise dimension = adapter parameters ($n = 576)" test "$n" = 576
  check "LoRA $grid: header prints it" has_re "$tmp/out-lora-$grid" "noise dimension 576\$"
  check "LoRA $grid: the layer list records the adapters" has "$tmp/out-lora-$grid" "block heads=2 lora=2 lora_alpha=4 lora_targets=5"
done
# grid invariance of the fine-tuned models (full and LoRA)
for grid in 2x1 1x2 lora-2x1 lora-1x2; do
  ref=ft-1x1 dir=ft-$grid
  case $grid in lora-*) ref=lora-1x1 dir=$grid ;; esac
  check "$grid = 1x1 within 1e-5" "$py" - "$(ls "$tmp/$ref"/ckpt-*.h5 | tail -1)" "$(ls "$tmp/$dir"/ckpt-*.h5 | tail -1)" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
worst = 0
for lg in a["model"]:
    for n in a["model"][lg]:
        x, y = a["model"][lg][n][()], b["model"][lg][n][()]
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
assert worst <= 1e-5, worst
PY
done
# resume in the middle (on a 1x2 pipeline; the middle checkpoint copied alone, as cli_gpt.sh does): the same
# parameters as the uninterrupted 1x1 run (1e-5: the pipeline sums in another order), AdamW's state restored
run 1 train "$tmp/job.ini" --init "$base" --train.steps=6 --train.trainable="h.1.*, ln_f.*" \
  --checkpoint.dir="$tmp/ftr" --checkpoint.every=3
mkdir -p "$tmp/half" && cp "$tmp/ftr/ckpt-00000003.h5" "$tmp/half/"
run 2 train "$tmp/job.ini" --resume "$tmp/half/ckpt-00000003.h5" --grid.stages=2 --train.steps=6 \
  --train.trainable="h.1.*, ln_f.*" --checkpoint.dir="$tmp/ftr2"
check "resume exits 0 (status $(rc)): $(cat "$tmp/err")" test "$(rc)" = 0
check "resumed fine-tuning = uninterrupted (1e-5)" "$py" - "$tmp/ftr/ckpt-00000006.h5" "$tmp/ftr2/ckpt-00000006.h5" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
for lg in a["model"]:
    for n in a["model"][lg]:
        x, y = a["model"][lg][n][()], b["model"][lg][n][()]
        assert float(np.max(np.abs(x - y))) <= 1e-5 * max(float(np.max(np.abs(y))), 1e-30), n
PY
# a pipeline stage with nothing to train (h.0.* only: stage 1 holds h.1 and the head, all frozen): per-device
# clipping (params split: that stage gets threshold 0) and flat clipping on 1x2 end as 1x1 (1e-5), because
# the trainable stage's threshold is all of C
run 1 train "$tmp/job.ini" --init "$base" --train.steps=3 --train.trainable="h.0.*" --checkpoint.dir="$tmp/st-1x1"
for clip in per-device flat; do
  run 2 train "$tmp/job.ini" --init "$base" --train.steps=3 --train.trainable="h.0.*" --grid.stages=2 \
    --privacy.clipping=$clip --privacy.device_split=params --checkpoint.dir="$tmp/st-$clip"
  check "1x2 $clip, a stage without trainable tensors: exits 0 (status $(rc))" test "$(rc)" = 0
  check "1x2 $clip, a stage without trainable tensors = 1x1 (1e-5)" "$py" - "$tmp/st-1x1/ckpt-00000003.h5" \
    "$tmp/st-$clip/ckpt-00000003.h5" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
for lg in a["model"]:
    for n in a["model"][lg]:
        x, y = a["model"][lg][n][()], b["model"][lg][n][()]
        assert np.all(np.isfinite(y)), n
        assert float(np.max(np.abs(x - y))) <= 1e-5 * max(float(np.max(np.abs(x))), 1e-30), n
PY
done
# LoRA resumed on another grid: the uninterrupted run's parameters (1e-5)
run 1 train "$tmp/job.ini" --init "$base" --train.steps=6 --train.lora_rank=2 --checkpoint.dir="$tmp/lr" --checkpoint.every=3
mkdir -p "$tmp/lhalf" && cp "$tmp/lr/ckpt-00000003.h5" "$tmp/lhalf/"
run 2 train "$tmp/job.ini" --resume "$tmp/lhalf/ckpt-00000003.h5" --grid.replicas=2 --train.steps=6 --train.lora_rank=2 \
  --checkpoint.dir="$tmp/lr2"
check "LoRA resume exits 0 (status $(rc)): $(cat "$tmp/err")" test "$(rc)" = 0
check "LoRA resumed = uninterrupted (1e-5)" "$py" - "$tmp/lr/ckpt-00000006.h5" "$tmp/lr2/ckpt-00000006.h5" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
for lg in a["model"]:
    for n in a["model"][lg]:
        x, y = a["model"][lg][n][()], b["model"][lg][n][()]
        assert float(np.max(np.abs(x - y))) <= 1e-5 * max(float(np.max(np.abs(y))), 1e-30), n
PY
# export of a LoRA checkpoint: merged (every tensor of the file = the checkpoint's base, the adapted weights
# + (alpha/r) A B computed here in float64 within 1e-6), and --adapters-only (the adapters transposed to
# [r, in] / [out, r], bitwise; adapter_config.json with r, lora_alpha, scale, target_modules)
lck=$(ls "$tmp"/lora-1x1/ckpt-*.h5 | tail -1)
mkdir -p "$tmp/merged" "$tmp/adapters"
run 1 model export "$lck" --to safetensors "$tmp/merged/model.safetensors"
check "merged export exits 0 (status $(rc)): $(cat "$tmp/err")" test "$(rc)" = 0
run 1 model export "$lck" --to safetensors "$tmp/adapters/a.safetensors" --adapters-only
check "adapters export exits 0 (status $(rc)): $(cat "$tmp/err")" test "$(rc)" = 0
check "merged = base + (alpha/r) B A, adapters = the checkpoint's" "$py" - "$lck" "$tmp/merged/model.safetensors" \
  "$tmp/adapters/a.safetensors" "$tmp/adapters/adapter_config.json" <<'PY'
import sys, json, struct, h5py, numpy as np
def st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__": continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype="<f4").reshape(v["shape"])
    return out
f = h5py.File(sys.argv[1], "r")
ck = {}
for lg in f["model"]:
    for n in f["model"][lg]: ck[n] = f["model"][lg][n][()]
merged, ad, cfg = st(sys.argv[2]), st(sys.argv[3]), json.load(open(sys.argv[4]))
assert cfg["r"] == 2 and cfg["lora_alpha"] == 4 and cfg["scale"] == 2, cfg
assert cfg["target_modules"] == ["attn.c_attn", "mlp.c_fc"], cfg
s = cfg["lora_alpha"] / cfg["r"]
adapted = 0
for n, w in merged.items():
    a = n[:-len(".weight")] + ".lora_A.weight" if n.endswith(".weight") else None
    if a in ck:
        want = ck[n].astype(np.float64) + s * (ck[a].astype(np.float64) @ ck[n.replace(".weight", ".lora_B.weight")].astype(np.float64))
        assert np.max(np.abs(w - want)) <= 1e-6 * max(np.max(np.abs(want)), 1), n
        assert np.max(np.abs(w - ck[n])) > 0, ("adapter had no effect", n)
        adapted += 1
    else:
        assert w.tobytes() == ck[n].astype("<f4").tobytes(), n
assert adapted == 4, adapted
assert sorted(ad) == sorted(k for k in ck if ".lora_" in k), sorted(ad)
for n, x in ad.items():
    assert x.tobytes() == np.ascontiguousarray(ck[n].T).astype("<f4").tobytes(), n
PY
expect_usage_error 1 "has no LoRA adapters" model export "$base" --to safetensors "$tmp/adapters/b.safetensors" --adapters-only
expect_usage_error 1 "[train] lora_targets: 'mlp.c_xx' is not a block linear" train "$tmp/job.ini" --init "$base" \
  --train.lora_rank=2 --train.lora_targets="attn.c_attn mlp.c_xx"
expect_usage_error 2 "[train] trainable: pattern 'h.9.*' matches no tensor" train "$tmp/job.ini" --init "$base" \
  --train.trainable="h.0.*, h.9.*"
echo "cli_finetune: $passed passed, $failed failed"
[ "$failed" = 0 ]
