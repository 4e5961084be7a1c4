#!/usr/bin/env bash
# Damaged dataset files: the converter writes x and y in chunks with a Fletcher32 checksum each and
# checksummed HDF5 metadata, so truncations and random bit flips of a dataset file are either rejected
# (status 2, one "dpmpi: error:" line, on every rank) or — when they miss every byte that is read — give
# exactly the undamaged run's model. Training silently on damaged pixels or labels is a failure.
# A file without checksums (written by an older dpmpi or by hand) is read with a warning.
# Usage: bash tests/cli/cli_data_damage.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
fm=${DPM_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
source "$(dirname "$0")/../lib_cli.sh"

# The first 6000 training and 1000 test images of Fashion-MNIST as IDX files (two checksummed chunks of
# 3000 images in /train/x, so a shard boundary falls inside a chunk on 4 ranks).
idx_head() { # idx_head GZ_FILE KIND(3 images, 1 labels) N OUT
  local n=$3 hdr
  hdr=$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(( (n >> 24) & 255 )) $(( (n >> 16) & 255 )) $(( (n >> 8) & 255 )) $(( n & 255 )))
  if [ "$2" = 3 ]; then
    { printf "\\x00\\x00\\x08\\x03$hdr\\x00\\x00\\x00\\x1c\\x00\\x00\\x00\\x1c"; zcat "$1" | tail -c +17 | head -c $((n * 784)); } >"$4"
  else
    { printf "\\x00\\x00\\x08\\x01$hdr"; zcat "$1" | tail -c +9 | head -c "$n"; } >"$4"
  fi
}
idx_head "$fm/train-images-idx3-ubyte.gz" 3 6000 "$tmp/tr-img"
idx_head "$fm/train-labels-idx1-ubyte.gz" 1 6000 "$tmp/tr-lab"
idx_head "$fm/t10k-images-idx3-ubyte.gz" 3 1000 "$tmp/te-img"
idx_head "$fm/t10k-labels-idx1-ubyte.gz" 1 1000 "$tmp/te-lab"
run 1 data convert --from idx --train-images "$tmp/tr-img" --train-labels "$tmp/tr-lab" \
  --test-images "$tmp/te-img" --test-labels "$tmp/te-lab" --out "$tmp/fm.h5" -q
check "convert the 6000-image subset (status $(rc))" test "$(rc)" = 0
run 1 data info "$tmp/fm.h5"
check "info: checksums on x and y" has "$tmp/out" "checksums: Fletcher32 on every chunk of x and y"
check "info: 6000 training images" has "$tmp/out" "train: 6000 examples"
if command -v h5dump >/dev/null; then
  h5dump -p -H "$tmp/fm.h5" >"$tmp/h5" 2>&1
  check "h5dump: /train/x in chunks of 3000 images" has "$tmp/h5" "CHUNKED ( 3000, 28, 28, 1 )"
  check "h5dump: Fletcher32 on the datasets" test "$(grep -c 'CHECKSUM FLETCHER32' "$tmp/h5")" = 4
fi

cat >"$tmp/job.ini" <<INI
[data]
train = DATA
[model]
layers = dense out=32; relu; dense out=10
[train]
steps = 8
batch_size = 200
physical_batch_size = 64
lr = 0.1
eval_every = 4
[privacy]
noise_multiplier = 1.0
delta = 1e-5
clip = 1
[run]
seed = 3
INI
same_h5() { h5diff -q "$1" "$2" "$3" "$3" >/dev/null 2>&1; }
train_on() { # train_on NP FILE CKPT_DIR: 8 seeded steps with evaluation; checkpoint at the end
  rm -rf "$3"
  run "$1" train "$tmp/job.ini" --data.train="$2" --checkpoint.dir="$3"
}

train_on 2 "$tmp/fm.h5" "$tmp/ref"
check "undamaged run (status $(rc))" test "$(rc)" = 0
check "undamaged run: no checksum warning" test ! -s "$tmp/err"
ref=$tmp/ref/ckpt-00000008.h5
check "undamaged run wrote its checkpoint" test -s "$ref"
train_on 4 "$tmp/fm.h5" "$tmp/ref4"
check "4 ranks (shards split a chunk) end as 2 ranks within 1e-6 absolute (rounding of the sums)" h5diff -q -d 1e-6 "$ref" "$tmp/ref4/ckpt-00000008.h5" /model /model

# damage: every 4th trial a truncation, the rest one flipped bit at a pseudo-random offset
size=$(stat -c %s "$tmp/fm.h5")
rejected=0 harmless=0 trials=0
for k in $(seq 1 48); do
  dmg=$tmp/dmg.h5
  if [ $((k % 4)) = 0 ]; then
    head -c $((size * k / 49)) "$tmp/fm.h5" >"$dmg"
  else
    cp "$tmp/fm.h5" "$dmg"
    off=$(( (k * 2654435761) % size ))
    printf "$(printf '\\%03o' $(( ( $(od -An -tu1 -j $off -N1 "$tmp/fm.h5") ^ (1 << (k % 8)) ) )))" |
      dd of="$dmg" bs=1 seek=$off conv=notrunc status=none
  fi
  np=$(( k % 3 == 0 ? 1 : 2 ))
  train_on $np "$dmg" "$tmp/d"
  trials=$((trials + 1))
  if [ "$(rc)" = 2 ] && [ "$(grep -c . "$tmp/err")" = 1 ] && grep -q '^dpmpi: error: ' "$tmp/err"; then
    rejected=$((rejected + 1))
  elif [ "$(rc)" = 0 ] && same_h5 "$ref" "$tmp/d/ckpt-00000008.h5" /model; then
    harmless=$((harmless + 1))
  else
    bad "damaged dataset $k (np $np, status $(rc)): neither rejected nor harmless"
    sed 's/^/    /' "$tmp/err" | head -3 >&2
  fi
done
echo "damaged dataset files: $trials tried, $rejected rejected, $harmless harmless (damage outside bytes read)"
check "most damaged dataset files rejected ($rejected of $trials)" test $rejected -ge 40

# a file without checksums still reads, with a warning naming it
h5repack -l CONTI "$tmp/fm.h5" "$tmp/plain.h5" 2>/dev/null
if [ -s "$tmp/plain.h5" ]; then
  train_on 2 "$tmp/plain.h5" "$tmp/p"
  check "unchecked file trains (status $(rc))" test "$(rc)" = 0
  check "unchecked file: one warning naming it" has "$tmp/err" "warning: $tmp/plain.h5 has no checksums"
  check "unchecked file: same model as the checked one" same_h5 "$ref" "$tmp/p/ckpt-00000008.h5" /model
  run 1 data info "$tmp/plain.h5"
  check "info: no checksums" has "$tmp/out" "checksums: none"
else
  bad "h5repack did not write a contiguous copy"
fi

finish cli_data_damage
