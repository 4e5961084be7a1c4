#!/usr/bin/env bash
# A refactor changes no behaviour: seeded runs of two builds give bitwise-identical metrics lines and
# checkpoint parameters (MLP 1x1 and 2x1, tanh CNN 1x2 per-device, tanh CNN per-layer), on Fashion-MNIST.
# Usage: bench/refactor_check.sh OLD_BUILD_DIR NEW_BUILD_DIR DATA.h5 [STEPS=30]
# DATA.h5: e.g. from `dpmpi data convert --from idx` of /usr/share/datasets/fashion-mnist.
set -euo pipefail
old=$1 new=$2 data=$3 steps=${4:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
cnn="conv out=16 kernel=8 stride=2 pad=3; tanh; maxpool kernel=2 stride=1; conv out=32 kernel=4 stride=2; tanh; maxpool kernel=2 stride=1; flatten; dense out=32; tanh; dense out=10"
mlp="dense out=512; relu; dense out=10"
cases=("mlp 1 1 1 flat" "mlp 2 2 1 flat" "cnn 2 1 2 per-device" "cnn 1 1 1 per-layer")
status=0
for c in "${cases[@]}"; do
  set -- $c
  layers=$mlp; [ "$1" = cnn ] && layers=$cnn
  for b in old new; do
    dir=$old; [ $b = new ] && dir=$new
    rm -rf "$work/$b"; mkdir -p "$work/$b"
    cat >"$work/$b/job.ini" <<INI
[data]
train = $data
[model]
layers = $layers
[train]
steps = $steps
batch_size = 256
physical_batch_size = 128
lr = 0.5
momentum = 0.9
eval_every = 0.05
[privacy]
noise_multiplier = 1.1
delta = 1e-5
clip = 1
clipping = $5
[run]
seed = 11
[checkpoint]
dir = $work/$b/ck
[output]
metrics = $work/$b/m.jsonl
INI
    mpirun -np "$2" --oversubscribe --bind-to none "$dir/dpmpi" train "$work/$b/job.ini" --grid.replicas="$3" \
      --grid.stages="$4" >"$work/$b/out" 2>&1 || { echo "$c: $b build failed"; tail -3 "$work/$b/out"; status=1; }
  done
  # the metrics lines without the wall-clock throughput
  strip() { sed -E 's/"examples_per_second": [0-9.e+-]+, //' "$1"; }
  same_m=no
  [ -s "$work/old/m.jsonl" ] && [ -s "$work/new/m.jsonl" ] && cmp -s <(strip "$work/old/m.jsonl") <(strip "$work/new/m.jsonl") &&
    same_m=yes
  same_p=no
  /usr/bin/python3 - "$work/old/ck" "$work/new/ck" <<'PY' && same_p=yes
import sys, glob, h5py, numpy as np
a, b = (h5py.File(sorted(glob.glob(d + "/ckpt-*.h5"))[-1], "r") for d in sys.argv[1:3])
names = []
a["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
sys.exit(0 if names and all(np.array_equal(a["model"][n][()], b["model"][n][()]) for n in names) else 1)
PY
  echo "$c: metrics identical: $same_m ($(grep -c . "$work/new/m.jsonl") lines), parameters bitwise identical: $same_p"
  [ $same_m = yes ] && [ $same_p = yes ] || status=1
done
exit $status
