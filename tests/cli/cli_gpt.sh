#!/usr/bin/env bash
# `dpmpi train` with a GPT on token data end to end: a byte-level GPT (embed; 2 blocks; lm_head) trained
# with DP-SGD on the Debian licence texts converted with `dpmpi data convert --from text`; the final
# parameters are the same (within 1e-5 relative, read with h5py) on grids 1x1, 2x1, 1x2 (a pipeline between
# the blocks) and 2x2, with flat and per-layer clipping; checkpoint tensors carry the Hugging Face names;
# a 2-rank run resumed from its middle checkpoint ends bitwise equal to the uninterrupted run; evaluations
# print test perplexity; a tied head on a pipeline and a GPT on labelled data are refused with one line.
# Usage: bash tests/cli/cli_gpt.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3
run 1 data convert --from text --context 16 --test-fraction 0.25 --out "$tmp/lic.h5" /usr/share/common-licenses/*
check "text convert exits 0 (status $(rc))" test "$(rc)" = 0

job() { # job TIED: a small GPT job on the licence corpus
  cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/lic.h5
[model]
layers = embed vocab=257 context=16 width=16; block heads=2; block heads=2; lm_head tied=$1
[train]
optimizer = adamw
steps = 6
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
}
# params_close A B: every tensor of /model in A and B within 1e-5 of its largest value
params_close() {
  "$py" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = []
a["model"].visit(lambda n: names.append(n) if isinstance(a["model"][n], h5py.Dataset) else None)
assert names, "no tensors"
worst = 0
for n in names:
    x, y = a["model"][n][()], b["model"][n][()]
    assert x.shape == y.shape, (n, x.shape, y.shape)
    worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
assert worst <= 1e-5, worst
PY
}

job 0
for clip in flat per-layer; do
  for grid in 1x1 2x1 1x2 2x2; do
    D=${grid%x*} S=${grid#*x}
    run $((D * S)) train "$tmp/job.ini" --grid.replicas=$D --grid.stages=$S --privacy.clipping=$clip \
      --checkpoint.dir="$tmp/ck-$clip-$grid"
    check "$clip $grid: train exits 0 (status $(rc))" test "$(rc)" = 0
    check "$clip $grid: perplexity printed" has_re "$tmp/out" "test loss [0-9.]+  test perplexity [0-9.]+"
    [ "$grid" = 1x1 ] && continue
    check "$clip $grid: parameters equal the 1x1 run's within 1e-5" \
      params_close "$tmp/ck-$clip-$grid/ckpt-00000006.h5" "$tmp/ck-$clip-1x1/ckpt-00000006.h5"
  done
done
check "checkpoint tensors carry the Hugging Face names" "$py" -c "
import h5py, sys
f = h5py.File('$tmp/ck-flat-1x1/ckpt-00000006.h5', 'r')['model']
n = []; f.visit(n.append)
for want in ['wte.weight', 'wpe.weight', 'h.0.attn.c_attn.weight', 'h.1.mlp.c_proj.bias', 'ln_f.weight', 'lm_head.weight']:
    assert any(x.endswith('/' + want) for x in n), (want, n)
"

# tied head: 1x1 and 2x1 agree; on a pipeline it is refused
job 1
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/tied1"
check "tied 1x1 exits 0 (status $(rc))" test "$(rc)" = 0
run 2 train "$tmp/job.ini" --grid.replicas=2 --checkpoint.dir="$tmp/tied2" --checkpoint.every=3
check "tied 2x1 exits 0 (status $(rc))" test "$(rc)" = 0
check "tied 2x1 equals 1x1 within 1e-5" params_close "$tmp/tied2/ckpt-00000006.h5" "$tmp/tied1/ckpt-00000006.h5"
expect_usage_error 2 "tied=1 uses the embed layer's wte, which is on another pipeline stage" train "$tmp/job.ini" --grid.stages=2

# checkpoint + resume on 2 ranks: bitwise the uninterrupted run
# (the middle checkpoint copied alone: in its own directory the run journal would refuse an older checkpoint)
mkdir -p "$tmp/half" && cp "$tmp/tied2/ckpt-00000003.h5" "$tmp/half/"
run 2 train "$tmp/job.ini" --grid.replicas=2 --resume "$tmp/half/ckpt-00000003.h5" --checkpoint.dir="$tmp/tied2r"
check "resume exits 0 (status $(rc)): $(cat $tmp/err)" test "$(rc)" = 0
check "resumed run's parameters are bitwise the uninterrupted run's" \
  h5diff -q "$tmp/tied2r/ckpt-00000006.h5" "$tmp/tied2/ckpt-00000006.h5" /model /model

# a GPT on labelled data is refused
make_blobs 200 50
sed -i "s|train = .*|train = $tmp/blobs.h5|" "$tmp/job.ini"
expect_usage_error 2 "is a GPT, which takes token data" train "$tmp/job.ini"
finish cli_gpt
