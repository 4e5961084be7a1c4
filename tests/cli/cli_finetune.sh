#!/usr/bin/env bash
# Fine-tuning with frozen tensors (train.trainable): a byte-level GPT trained a few steps is the base
# (--init of its checkpoint); DP fine-tuning with AdamW and weight decay (which would move any parameter it
# touched) of h.1.* and ln_f.* leaves every other tensor bitwise equal to the base on grids 1x1, 2x1 and 1x2,
# moves every trainable one, stores optimizer state for the trainable tensors only, prints the noise dimension
# = the trainable tensors' sizes counted from the file, and ends the same on every grid (1e-5); a resumed
# fine-tuning run ends bitwise equal to the uninterrupted one; a pattern that matches nothing is one error line.
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
for lg in a["model"]:
    for name in a["model"][lg]:
        x, y = a["model"][lg][name][()], b["model"][lg][name][()]
        train = any(fnmatch.fnmatchcase(name, p) for p in pats)
        has_state = name in b["optimizer/exp_avg"][lg] if lg in b["optimizer/exp_avg"] else False
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
# grid invariance of the fine-tuned model
for grid in 2x1 1x2; do
  check "$grid = 1x1 within 1e-5" "$py" - "$(ls "$tmp"/ft-1x1/ckpt-*.h5 | tail -1)" "$(ls "$tmp/ft-$grid"/ckpt-*.h5 | tail -1)" <<'PY'
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
expect_usage_error 2 "[train] trainable: pattern 'h.9.*' matches no tensor" train "$tmp/job.ini" --init "$base" \
  --train.trainable="h.0.*, h.9.*"
echo "cli_finetune: $passed passed, $failed failed"
[ "$failed" = 0 ]
