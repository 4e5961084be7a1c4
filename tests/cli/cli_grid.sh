#!/usr/bin/env bash
# `dpmpi train` on process grids: a seeded run ends at the same test accuracy and loss on 1x1, 2x1, 1x2,
# 3x1, 1x3 and 2x2 (flat and per-layer clipping), per-device clipping on 2x2 matches 1x2; the header
# shows the grid and the stages. Grid errors and a failure on one replica's ranks only: status 2 and one
# message on every rank, no hang.
# Usage: bash tests/cli/cli_grid.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=400
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 1000 300
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=8; relu; dense out=4
[train]
epochs = 2
batch_size = 100
physical_batch_size = 16
lr = 0.5
[privacy]
noise_multiplier = 1.0
delta = 1e-4
clip = 1
[run]
seed = 11
INI

# the final evaluation line of a run: accuracy and loss
final() { grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*test accuracy ([0-9.]+)%  test loss ([0-9.]+).*/\1 \2/'; }
same_eval() { # same_eval WHAT REF GOT: equal accuracy, loss within 1e-3
  awk -v r="$2" -v g="$3" 'BEGIN { split(r, a, " "); split(g, b, " "); d = a[2] - b[2]; if (d < 0) d = -d;
    exit !(a[1] == b[1] && d <= 1e-3 && a[1] != "") }' && ok || bad "$1: final eval '$3', 1x1 gave '$2'"
}

for mode in flat per-layer; do
  run 1 train "$tmp/job.ini" --privacy.clipping=$mode
  [ "$(rc)" = 0 ] && ok || { bad "1x1 $mode run failed"; cat "$tmp/err" >&2; }
  ref=$(final)
  for g in "2 1" "1 2" "3 1" "1 3"; do
    set -- $g
    run $(($1 * $2)) train "$tmp/job.ini" --privacy.clipping=$mode --grid.replicas=$1 --grid.stages=$2
    [ "$(rc)" = 0 ] && ok || { bad "${1}x$2 $mode run failed"; cat "$tmp/err" >&2; }
    same_eval "${1}x$2 $mode" "$ref" "$(final)"
  done
done
run 2 train "$tmp/job.ini" --grid.stages=2
check "header names the grid" has "$tmp/out" "1 replica x 2 pipeline stages"
check "header lists the stages" has_re "$tmp/out" "^stage 1: layers [0-9]-5, [0-9]+ params"
run 2 train "$tmp/job.ini" --grid.stages=2 --grid.stage_layers=1,4
check "explicit split" has "$tmp/out" "stage 0: layers 1-1, 112 params"

# 2x2 on 4 ranks: flat against 1x1, per-device against 1x2
run 1 train "$tmp/job.ini"
ref=$(final)
run 4 train "$tmp/job.ini" --grid.replicas=2 --grid.stages=2
same_eval "2x2 flat" "$ref" "$(final)"
run 2 train "$tmp/job.ini" --grid.stages=2 --privacy.clipping=per-device
check "per-device header" has "$tmp/out" "per-device clipping: each of the 2 stages"
ref=$(final)
run 4 train "$tmp/job.ini" --grid.replicas=2 --grid.stages=2 --privacy.clipping=per-device
same_eval "2x2 per-device" "$ref" "$(final)"

# grid errors: every rank exits 2, one message
expect_usage_error 3 "2 stages do not divide the 3 ranks" train "$tmp/job.ini" --grid.stages=2
expect_usage_error 2 "3 replicas x 1 stages = 3 ranks, but the job has 2" train "$tmp/job.ini" --grid.replicas=3 --grid.stages=1
expect_usage_error 2 "3 replicas do not divide the 2 ranks" train "$tmp/job.ini" --grid.replicas=3
expect_usage_error 3 "3 pipeline stages but the model has only 2 layers" train "$tmp/job.ini" --grid.stages=3 \
  --model.layers="dense out=8; dense out=4"
expect_usage_error 2 "sum to 2 but the model has 5 layers" train "$tmp/job.ini" --grid.stages=2 --grid.stage_layers=1,1
expect_usage_error 1 "device_split" train "$tmp/job.ini" --privacy.device_split=halves

# a failure on one replica only: a non-finite value in the second half of the training set (read by
# replica 1 alone on a 2x1 and a 2x2 grid), written into a contiguous copy and checksummed again, as a
# file with a NaN in it written by another tool would be
h5repack -l CONTI "$tmp/blobs.h5" "$tmp/plain.h5" || bad "h5repack -l CONTI"
python3 - "$tmp/plain.h5" "$tmp/nan.h5" <<'PY' || bad "could not make the file with a NaN"
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
# /train/x is 1000 x 6 float32; find row 900's first value by its bytes (unique in the file)
rows = [l.split(",") for l in open(sys.argv[1].replace("plain.h5", "train.csv")).read().split("\n")[1:] if l]
pat = struct.pack("<f", float(rows[900][0])) + struct.pack("<f", float(rows[900][1]))
at = data.find(pat)
assert at >= 0 and data.find(pat, at + 1) < 0
data[at:at + 4] = struct.pack("<f", float("nan"))
open(sys.argv[2], "wb").write(data)
PY
h5repack -f FLET "$tmp/nan.h5" "$tmp/bad.h5" || bad "h5repack -f FLET"
expect_usage_error 2 "row 900" train "$tmp/job.ini" --data.train="$tmp/bad.h5" --data.test="$tmp/blobs.h5"
expect_usage_error 4 "row 900" train "$tmp/job.ini" --data.train="$tmp/bad.h5" --data.test="$tmp/blobs.h5" \
  --grid.replicas=2 --grid.stages=2

finish cli_grid
