#!/usr/bin/env bash
# `dpmpi train` on a training set holding extreme but finite examples (features 3e38, -3e38, 1e19, mixed
# signs, subnormal): every clipping mode on 1 and 2 ranks (2x1, 1x2) trains to the accuracy of the clean
# set, the test loss stays finite and the checkpointed parameters hold no Inf or NaN. The sensitivity
# bound itself is asserted in tests/train/test_grid.c (adversarial examples); this is the same code end to end.
# Usage: bash tests/cli/cli_extreme.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 2000 500
{ cat "$tmp/train.csv"
  echo "3e38,3e38,3e38,3e38,3e38,3e38,0"
  echo "-3e38,3e38,-3e38,3e38,-3e38,3e38,1"
  echo "1e19,1e19,1e19,1e19,1e19,1e19,2"
  echo "1e-40,-1e-40,1e-40,-1e-40,1e-40,-1e-40,3"
  echo "3.4e38,0,0,0,0,0,1"; } >"$tmp/extreme.csv"
run 1 data convert --from csv --train "$tmp/extreme.csv" --test "$tmp/test.csv" --label-column label --out "$tmp/x.h5"
check "convert accepts finite extreme values" test "$(rc)" = 0
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/x.h5
[model]
layers = dense out=16; relu; dense out=16; tanh; dense out=4
[train]
epochs = 3
batch_size = 100
physical_batch_size = 32
lr = 0.5
[privacy]
noise_multiplier = 0.8
delta = 1e-4
clip = 1
[run]
seed = 3
INI
for mode in flat per-layer per-device; do
  for grid in "1 1 1" "2 2 1" "2 1 2"; do
    set -- $grid
    rm -rf "$tmp/ck"
    run "$1" train "$tmp/job.ini" --privacy.clipping=$mode --grid.replicas=$2 --grid.stages=$3 \
      --checkpoint.dir="$tmp/ck"
    if [ "$(rc)" = 0 ]; then ok; else bad "$mode on $2x$3: status $(rc)"; sed 's/^/    /' "$tmp/err" | tail -5 >&2; continue; fi
    line=$(grep '^eval' "$tmp/out" | tail -1)
    acc=$(echo "$line" | sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/')
    loss=$(echo "$line" | sed -E 's/.*test loss ([^ ]+).*/\1/')
    awk -v a="$acc" 'BEGIN { exit !(a >= 85) }' && ok || bad "$mode on $2x$3: test accuracy $acc% < 85%"
    awk -v l="$loss" 'BEGIN { exit !(l + 0 == l && l < 10) }' && ok || bad "$mode on $2x$3: test loss '$loss'"
    h5py_check "$mode on $2x$3: the checkpoint's parameters are finite" '
import sys, glob, h5py, numpy as np
f = h5py.File(sorted(glob.glob(sys.argv[1] + "/ckpt-*.h5"))[-1], "r")
bad = []
f["model"].visititems(lambda n, o: bad.append(n) if isinstance(o, h5py.Dataset) and not np.all(np.isfinite(o[()])) else None)
sys.exit(1 if bad else 0)' "$tmp/ck"
  done
done
finish cli_extreme
