#!/usr/bin/env bash
# train.aug_multiplicity end to end (issue 19, item 2) on a Fashion-MNIST subset (1000 training, 200 test
# images): a DP-SGD run with K = 4 views per example trains (the header says so); a second run with the
# same seed is bitwise identical (the views come from their own stream); 1 and 2 ranks agree within 1e-5
# (the views are keyed by step and global example index); the key's errors (non-image data, K above the
# physical batch, a pipeline, a negative pad) are one line on every rank. The step's mechanism (the mean of
# the views' gradients clipped once, sensitivity C) is tested in tests/train/test_aug.c.
# Usage: bash tests/cli/cli_aug.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=400
source "$(dirname "$0")/../lib_cli.sh"

fm=/usr/share/datasets/fashion-mnist
if [ ! -f "$fm/train-images-idx3-ubyte.gz" ]; then
  bad "no Fashion-MNIST in $fm (apt-get install dataset-fashion-mnist; scripts/install-deps.sh does)"
  finish cli_aug
  exit 1
fi
mkdir -p "$tmp/idx"
idx_subset() { # idx_subset NAME N HEADER_BYTES ITEM_BYTES: the first N items, the count in the header fixed
  local f=$fm/$1.gz n=$2
  { zcat "$f" | head -c 4
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((n >> 24 & 255)) $((n >> 16 & 255)) $((n >> 8 & 255)) $((n & 255)))"
    zcat "$f" | head -c $(($3 + n * $4)) | tail -c +9; } >"$tmp/idx/$1"
}
idx_subset train-images-idx3-ubyte 1000 16 784
idx_subset train-labels-idx1-ubyte 1000 8 1
idx_subset t10k-images-idx3-ubyte 200 16 784
idx_subset t10k-labels-idx1-ubyte 200 8 1
"$dpmpi" data convert --from idx --train-images "$tmp/idx/train-images-idx3-ubyte" --train-labels "$tmp/idx/train-labels-idx1-ubyte" \
  --test-images "$tmp/idx/t10k-images-idx3-ubyte" --test-labels "$tmp/idx/t10k-labels-idx1-ubyte" --out "$tmp/fm.h5" >/dev/null \
  && ok || bad "idx convert of the subset"
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/fm.h5
[model]
layers = conv out=4 kernel=4 stride=2; tanh; flatten; dense out=10
[train]
steps = 8
batch_size = 100
physical_batch_size = 32
lr = 1
aug_multiplicity = 4
aug_pad = 2
aug_flip = true
[privacy]
noise_multiplier = 1.0
delta = 1e-4
clip = 1
[checkpoint]
every = 8
[run]
seed = 3
INI
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/a"
[ "$(rc)" = 0 ] && ok || { bad "train with augmentation multiplicity"; cat "$tmp/err" >&2; }
check "header names the views" has "$tmp/out" "augmentation multiplicity: 4 views per example (crops padded by 2 pixels, left-right flips), their gradients averaged before clipping"
acc=$(sed -nE 's/^eval  step 8 .*test accuracy ([0-9.]+)%.*/\1/p' "$tmp/out")
check "it learns: test accuracy $acc% > 30% after 8 steps (chance 10%)" awk -v a="$acc" 'BEGIN { exit !(a > 30) }'
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/b"
check "the same seed twice: bitwise" h5diff -q "$tmp/a/ckpt-00000008.h5" "$tmp/b/ckpt-00000008.h5" /model /model
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/c"
[ "$(rc)" = 0 ] && ok || { bad "1-rank run"; cat "$tmp/err" >&2; }
h5_close "1 rank = 2 ranks within 1e-5" "$tmp/a/ckpt-00000008.h5" "$tmp/c/ckpt-00000008.h5" /model 1e-5
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/d" --train.aug_multiplicity=1
check "K = 1 is the ordinary step (another model)" bash -c "! h5diff -q '$tmp/a/ckpt-00000008.h5' '$tmp/d/ckpt-00000008.h5' /model /model"

make_blobs 200 50
expect_usage_error 2 "aug_multiplicity = 4: needs image data" train "$tmp/job.ini" --data.train="$tmp/blobs.h5" \
  --model.layers="dense out=4"
expect_usage_error 2 "aug_multiplicity = 64: expected at most physical_batch_size = 32" train "$tmp/job.ini" --train.aug_multiplicity=64
expect_usage_error 2 "one pipeline stage (the grid has 2)" train "$tmp/job.ini" --grid.stages=2
expect_usage_error 1 "aug_pad = -1: expected an integer >= 0" train "$tmp/job.ini" --train.aug_pad=-1
expect_usage_error 2 "not with [pca] components" train "$tmp/job.ini" --pca.components=8 --pca.noise_multiplier=1 --pca.clip=1
expect_usage_error 2 "with [privacy] adaptive = true is not supported yet" train "$tmp/job.ini" --privacy.adaptive=true
expect_usage_error 2 "with frozen tensors (train.trainable or lora_rank) is not supported yet" train "$tmp/job.ini" \
  --train.trainable="*"
finish cli_aug
