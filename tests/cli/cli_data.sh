#!/usr/bin/env bash
# `dpmpi data`: convert the real Fashion-MNIST files, check `data info` and the HDF5 layout (h5dump),
# that conversion prints no exact statistic of the training pixels unless --print-stats, and that bad
# invocations exit 2 with exactly one "dpmpi: error:" line, on 1 and 2 ranks.
# Usage: bash tests/cli/cli_data.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
fm=${DPM_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
source "$(dirname "$0")/../lib_cli.sh"

idx_args=(--from idx --train-images "$fm/train-images-idx3-ubyte.gz" --train-labels "$fm/train-labels-idx1-ubyte.gz"
          --test-images "$fm/t10k-images-idx3-ubyte.gz" --test-labels "$fm/t10k-labels-idx1-ubyte.gz")

# --- conversion of the real files, on 1 rank and on 2 ranks (rank 0 converts, the other waits) ---
for np in 1 2; do
  out=$tmp/fmnist$np.h5
  run "$np" data convert "${idx_args[@]}" --out "$out"
  check "np=$np convert exits 0 (status $(rc))" test "$(rc)" = 0
  check "np=$np convert wrote $out" test -s "$out"
  check "np=$np no temporary file left" test -z "$(ls "$tmp" | grep '\.tmp\.')"
done
if command -v h5diff >/dev/null; then
  check "1-rank and 2-rank conversions hold the same data" h5diff -q "$tmp/fmnist1.h5" "$tmp/fmnist2.h5"
fi
fmh5=$tmp/fmnist1.h5

# --- info ---
for np in 1 2; do
  run "$np" data info "$fmh5"
  check "np=$np info exits 0" test "$(rc)" = 0
  check "info: 10 classes" has "$tmp/out" "10 classes"
  check "info: train count" has "$tmp/out" "train: 60000 examples"
  check "info: test count" has "$tmp/out" "test: 10000 examples"
  check "info: image shape" has "$tmp/out" "images 28x28x1"
  check "info: x type" has "$tmp/out" "x: uint8 60000 x 28 x 28 x 1"
  check "info: y type" has "$tmp/out" "y: int32 10000"
  check "info: train histogram" has "$tmp/out" "0:6000 1:6000 2:6000 3:6000 4:6000 5:6000 6:6000 7:6000 8:6000 9:6000"
  check "info: test histogram" has "$tmp/out" "0:1000 1:1000 2:1000 3:1000 4:1000 5:1000 6:1000 7:1000 8:1000 9:1000"
  check "info: fixed, data-independent normalization by default" has "$tmp/out" "mean 0.500000 std 0.500000"
  check "info: Fletcher32 checksums" has "$tmp/out" "checksums: Fletcher32 on every chunk of x and y"
  check "np=$np info prints once" test "$(grep -c '^train:' "$tmp/out")" = 1
done

# --- the default conversion prints no statistic of the private training pixels; --print-stats does ---
# (exact figures of Fashion-MNIST's training pixels: mean 0.286041 std 0.353024; any leading digits count)
run 1 data convert "${idx_args[@]}" --out "$tmp/fm_quiet.h5"
check "default convert exits 0" test "$(rc)" = 0
check "default convert: the fixed normalization is named" has "$tmp/out" "fixed normalization mean 0.5 std 0.5 (data-independent)"
check "default convert: no training-pixel mean or std printed" test "$(grep -cE '0\.28[0-9]|0\.35[0-9]|training pixels have' "$tmp/out")" = 0
run 1 data convert "${idx_args[@]}" --print-stats --out "$tmp/fm_print.h5"
check "--print-stats: the exact statistics, marked as not covered" has "$tmp/out" "the training pixels have mean 0.286041 std 0.353024 (/ 255; exact statistics of the private data, NOT covered by the DP guarantee)"
check "--print-stats stores the same fixed normalization" h5diff -q "$tmp/fm_quiet.h5" "$tmp/fm_print.h5"
expect_usage_error 1 "--print-stats is for --from idx" data convert --from csv --train a --test b --label-column y --print-stats --out "$tmp/x.h5"
expect_usage_error 2 "--print-stats prints on the progress lines: drop -q" data convert "${idx_args[@]}" --print-stats -q --out "$tmp/x.h5"

# --- normalization from the training pixels (opt-in, not covered by DP) and public constants ---
run 1 data convert "${idx_args[@]}" --pixel-stats-from-data --out "$tmp/fm_stats.h5"
check "--pixel-stats-from-data warns that DP does not cover it" has "$tmp/out" "NOT covered by the DP guarantee"
run 1 data info "$tmp/fm_stats.h5"
check "from-data normalization: Fashion-MNIST mean 0.2860" has "$tmp/out" "mean 0.2860"
check "from-data normalization: std 0.3530" has "$tmp/out" "std 0.3530"
run 1 data convert "${idx_args[@]}" --pixel-mean 0.3 --pixel-std 0.4 --out "$tmp/fm_pub.h5"
run 1 data info "$tmp/fm_pub.h5"
check "public constants are stored" has "$tmp/out" "mean 0.300000 std 0.400000"
rm -f "$tmp/fm_stats.h5" "$tmp/fm_pub.h5"

# --- the layout seen by h5dump ---
if command -v h5dump >/dev/null; then
  h5dump -H "$fmh5" >"$tmp/h5" 2>&1
  check "h5dump -H reads the file" test $? = 0
  for want in 'GROUP "train"' 'GROUP "test"' 'DATASET "x"' 'DATASET "y"' 'ATTRIBUTE "num_classes"' \
              'ATTRIBUTE "format"' 'ATTRIBUTE "format_version"' 'ATTRIBUTE "mean"' 'ATTRIBUTE "std"' \
              '( 60000, 28, 28, 1 )' '( 10000, 28, 28, 1 )' '( 60000 )' '( 10000 )' 'H5T_STD_U8LE' 'H5T_STD_I32LE'; do
    check "h5dump shows $want" has "$tmp/h5" "$want"
  done
  check "num_classes is 10" has <(h5dump -a /num_classes "$fmh5") "(0): 10"
  h5py_check "h5py reads the dataset (checksummed chunks, str attributes, 6000 of each class)" '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f.attrs["format"] == "dpmpi-dataset" and f.attrs["source"] == "idx" and f.attrs["num_classes"] == 10
x, y = f["train/x"], f["train/y"]
assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8 and x.fletcher32 and y.fletcher32
assert (np.bincount(y[:], minlength=10) == 6000).all()
assert 0.28 < x[:1000].mean() / 255 < 0.30
' "$fmh5"
else
  bad "h5dump not installed (apt-get install hdf5-tools)"
fi

# --- CSV ---
printf 'a,label,b\n0.5,0,1\n1.5,1,-2\n2.5,2,3e-1\n' >"$tmp/train.csv"
printf 'a,label,b\n7,2,8\n' >"$tmp/test.csv"
run 1 data convert --from csv --train "$tmp/train.csv" --test "$tmp/test.csv" --label-column label --out "$tmp/c.h5" -q
check "csv convert exits 0" test "$(rc)" = 0
check "csv convert -q is quiet" test ! -s "$tmp/out" -a ! -s "$tmp/err"
run 1 data info "$tmp/c.h5"
check "csv info exits 0" test "$(rc)" = 0
check "csv info: classes" has "$tmp/out" "3 classes"
check "csv info: features" has "$tmp/out" "x: float32 3 x 2 (N x d), 2 features"
check "csv info: histogram" has "$tmp/out" "0:1 1:1 2:1"

# --- help ---
for args in "data --help" "data convert --help" "data info --help" "data convert -h"; do
  run 1 $args
  check "dpmpi $args exits 0" test "$(rc)" = 0
  check "dpmpi $args prints usage" has "$tmp/out" "Usage: dpmpi data"
done

# --- user errors: status 2, one line, on every rank count ---
for np in 1 2; do
  expect_usage_error "$np" "missing command" data
  expect_usage_error "$np" "unknown command 'frobnicate'" data frobnicate
  expect_usage_error "$np" "unknown option --bogus" data convert --bogus
  expect_usage_error "$np" "--out" data convert "${idx_args[@]}"
  expect_usage_error "$np" "--from" data convert --out "$tmp/x.h5"
  expect_usage_error "$np" "--from must be idx, csv, text or tokens, not 'png'" data convert --from png --out "$tmp/x.h5"
  expect_usage_error "$np" "--test-labels" data convert --from idx --train-images a --train-labels b --test-images c --out "$tmp/x.h5"
  expect_usage_error "$np" "--train is for --from csv" data convert "${idx_args[@]}" --train a --out "$tmp/x.h5"
  expect_usage_error "$np" "needs a value" data convert --out
  expect_usage_error "$np" "unexpected argument 'extra'" data convert "${idx_args[@]}" --out "$tmp/x.h5" extra
  expect_usage_error "$np" "no-such-file: cannot open" data convert --from idx --train-images "$tmp/no-such-file" \
    --train-labels "$fm/train-labels-idx1-ubyte.gz" --test-images "$fm/t10k-images-idx3-ubyte.gz" \
    --test-labels "$fm/t10k-labels-idx1-ubyte.gz" --out "$tmp/x.h5"
  expect_usage_error "$np" "bad IDX magic" data convert --from idx --train-images "$fm/train-labels-idx1-ubyte.gz" \
    --train-labels "$fm/train-labels-idx1-ubyte.gz" --test-images "$fm/t10k-images-idx3-ubyte.gz" \
    --test-labels "$fm/t10k-labels-idx1-ubyte.gz" --out "$tmp/x.h5"
  expect_usage_error "$np" "count mismatch" data convert --from idx --train-images "$fm/train-images-idx3-ubyte.gz" \
    --train-labels "$fm/t10k-labels-idx1-ubyte.gz" --test-images "$fm/t10k-images-idx3-ubyte.gz" \
    --test-labels "$fm/t10k-labels-idx1-ubyte.gz" --out "$tmp/x.h5"
  expect_usage_error "$np" "label column 'nope' not found" data convert --from csv --train "$tmp/train.csv" \
    --test "$tmp/test.csv" --label-column nope --out "$tmp/x.h5"
  check "np=$np failed conversions leave no output" test ! -e "$tmp/x.h5"
  expect_usage_error "$np" "missing.h5: cannot open" data info "$tmp/missing.h5"
  # non-finite features are rejected with the file, line and column (an Inf would escape clipping)
  for bad in nan inf -Infinity; do
    printf 'a,label,b\n0.5,0,1\n1.5,1,%s\n' "$bad" >"$tmp/bad.csv"
    expect_usage_error "$np" "bad.csv:3:7: column 'b': value '$bad' is not finite" data convert --from csv \
      --train "$tmp/bad.csv" --test "$tmp/test.csv" --label-column label --out "$tmp/x.h5"
  done
  printf 'a,label,b\n0.5,0,1\n1.5,1,1e39\n' >"$tmp/bad.csv"
  expect_usage_error "$np" "bad.csv:3:7: column 'b': value '1e39' is outside the float32 range" data convert --from csv \
    --train "$tmp/bad.csv" --test "$tmp/test.csv" --label-column label --out "$tmp/x.h5"
  expect_usage_error "$np" "not an HDF5 file" data info "$tmp/train.csv"
  expect_usage_error "$np" "missing the dataset FILE" data info
done
check "no temporary file left after failures" test -z "$(ls "$tmp" | grep '\.tmp\.')"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
