#!/usr/bin/env bash
# train.optimizer = adamw end to end (issue 15, item 3): DP-Adam trains (the header names the optimizer);
# its checkpoints hold the Adam state (/optimizer/exp_avg, /optimizer/exp_avg_sq per layer in global shapes,
# the update count /optimizer step, root attribute optimizer); a run killed with kill -9 and resumed ends
# bitwise identical to the uninterrupted one (model and Adam state), and so does a resume from an
# intermediate checkpoint; resumed on other grids (1x1, 1x2 pipeline, 2x2) it ends within 1e-5; SGD stays
# the default with its checkpoint layout, and an SGD checkpoint written before the optimizer attribute
# existed resumes SGD bitwise as before; resuming with another optimizer, or an AdamW run from a checkpoint
# without Adam state, is refused with one clear line on every rank; damaged optimizer records are refused.
# Usage: bash tests/cli/cli_adamw.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=400
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 1000 300
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=8; relu; dense out=4
[train]
optimizer = adamw
steps = 20
batch_size = 100
physical_batch_size = 30
lr = 0.01
weight_decay = 0.01
lr_schedule = cosine
warmup_epochs = 0.5
[privacy]
noise_multiplier = 1.0
delta = 1e-4
clip = 1
[checkpoint]
every = 5
keep = 10
[run]
seed = 7
INI
same_h5() { h5diff -q "$1" "$2" "$3" "$3" >/dev/null 2>&1; }
attr() { # attr FILE NAME [GROUP]: an attribute's value (h5py), "absent" when missing
  /usr/bin/python3 -c 'import sys, h5py; f = h5py.File(sys.argv[1], "r"); o = f[sys.argv[3]] if len(sys.argv) > 3 else f
v = o.attrs.get(sys.argv[2]); print("absent" if v is None else (v.decode() if isinstance(v, bytes) else v))' "$@"
}
opt_groups=(/optimizer/exp_avg /optimizer/exp_avg_sq)

# ---- an uninterrupted DP-Adam run on 2 replicas ---------------------------------------------------
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/full"
[ "$(rc)" = 0 ] && ok || { bad "uninterrupted adamw run"; cat "$tmp/err" >&2; }
check "header names the optimizer and its hyperparameters" has "$tmp/out" \
  "optimizer: adamw (beta1 0.9, beta2 0.999, eps 1e-08, decoupled weight decay 0.01), on the privatized (noisy clipped sum / q N) gradient"
acc=$(sed -nE 's/^eval  step 20 .*test accuracy ([0-9.]+)%.*/\1/p' "$tmp/out")
# chance is 25%; over run.seed 1-8 the 20-step accuracy is 60-91% (one seed's draw is no finer measure)
check "DP-Adam learns the blobs in 20 steps: test accuracy $acc% > 50%" awk -v a="$acc" 'BEGIN { exit !(a > 50) }'
ref=$tmp/full/ckpt-00000020.h5
check "checkpoint: optimizer = adamw" test "$(attr "$ref" optimizer)" = adamw
check "checkpoint: /optimizer step = 20 updates" test "$(attr "$ref" step /optimizer)" = 20
check "checkpoint at 10: /optimizer step = 10" test "$(attr "$tmp/full/ckpt-00000010.h5" step /optimizer)" = 10
h5py_check "checkpoint: Adam moments per layer in global shapes, v >= 0, no SGD momentum" '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
for g in ("exp_avg", "exp_avg_sq"):
    for l in ("layer_001", "layer_003", "layer_005"):
        for n in ("weight", "bias"):
            a, p = f["optimizer"][g][l][n], f["model"][l][n]
            assert a.shape == p.shape and a.dtype == np.float32, (g, l, n, a.shape, p.shape)
            assert np.all(np.isfinite(a[...])) and np.any(a[...] != 0), (g, l, n)
            if g == "exp_avg_sq": assert np.all(a[...] >= 0)
assert "layer_001" not in f["optimizer"], "SGD momentum groups in an AdamW checkpoint"
' "$ref"

# ---- resume from an intermediate checkpoint, same grid: bitwise ----------------------------------
mkdir -p "$tmp/part" && cp "$tmp/full/ckpt-00000010.h5" "$tmp/part/"
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/part" --resume "$tmp/part"
[ "$(rc)" = 0 ] && ok || { bad "resume adamw"; cat "$tmp/err" >&2; }
check "resume says where from" has "$tmp/out" "resumed from $tmp/part/ckpt-00000010.h5: step 10 of 20"
for g in /model "${opt_groups[@]}" /privacy; do
  check "resumed from step 10: $g bitwise identical" same_h5 "$ref" "$tmp/part/ckpt-00000020.h5" $g
done
check "resumed: /optimizer step 20" test "$(attr "$tmp/part/ckpt-00000020.h5" step /optimizer)" = 20

# ---- kill -9 in the middle of a longer run, resume: bitwise the uninterrupted run -----------------
long=(--train.steps=300 --checkpoint.every=20 --output.log_every=100 --train.eval_every=100)
run 2 train "$tmp/job.ini" "${long[@]}" --checkpoint.dir="$tmp/long"
[ "$(rc)" = 0 ] && ok || { bad "long adamw run"; cat "$tmp/err" >&2; }
"$mpiexec" -q --allow-run-as-root --oversubscribe --bind-to none -np 2 "$dpmpi" train "$tmp/job.ini" \
  "${long[@]}" --checkpoint.dir="$tmp/k9" >"$tmp/k9.out" 2>&1 &
pid=$! # mpirun; its children are the ranks
for i in $(seq 1000); do [ -f "$tmp/k9/ckpt-00000040.h5" ] && break; sleep 0.02; done
ranks=$(pgrep -P $pid)
kill -9 $ranks $pid 2>/dev/null; { wait $pid; } 2>/dev/null
for i in $(seq 100); do ps -p "$(echo $ranks | tr ' ' ,)" >/dev/null 2>&1 || break; sleep 0.05; done # gone
newest=$(ls "$tmp/k9"/ckpt-*.h5 | sort | tail -1)
kstep=$(attr "$newest" step)
check "kill -9 stopped the run before its end (newest checkpoint: step $kstep of 300)" test "$kstep" -lt 300
run 2 train "$tmp/job.ini" "${long[@]}" --checkpoint.dir="$tmp/k9" --resume "$tmp/k9"
[ "$(rc)" = 0 ] && ok || { bad "resume after kill -9"; cat "$tmp/err" >&2; }
check "resumed after kill -9 from step $kstep" has "$tmp/out" "resumed from $newest: step $kstep of 300"
for g in /model "${opt_groups[@]}"; do
  check "kill -9 + resume: $g bitwise the uninterrupted run's" same_h5 "$tmp/long/ckpt-00000300.h5" "$tmp/k9/ckpt-00000300.h5" $g
done
check "kill -9 + resume: /optimizer step 300" test "$(attr "$tmp/k9/ckpt-00000300.h5" step /optimizer)" = 300

# ---- resume on other grids: the state is stored per layer in global shapes ------------------------
for grid in "1 1" "2 2" "4 2"; do
  set -- $grid; np=$1 S=$2
  d=$tmp/grid-$np-$S
  mkdir -p "$d" && cp "$tmp/full/ckpt-00000010.h5" "$d/"
  run $np train "$tmp/job.ini" --checkpoint.dir="$d" --resume "$d/ckpt-00000010.h5" --grid.stages=$S
  [ "$(rc)" = 0 ] && ok || { bad "resume on $np ranks, $S stages"; cat "$tmp/err" >&2; }
  for g in /model "${opt_groups[@]}"; do
    h5_close "2x1 -> $((np / S))x$S: $g within 1e-5 relative (per tensor, max norm)" "$ref" "$d/ckpt-00000020.h5" $g 1e-5
  done
done
# the run itself on a 1x2 pipeline: each stage holds the Adam state of its own layers
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/pipe" --grid.stages=2
[ "$(rc)" = 0 ] && ok || { bad "adamw on a 1x2 pipeline"; cat "$tmp/err" >&2; }
for g in /model "${opt_groups[@]}"; do
  h5_close "1x2 pipeline run: $g within 1e-5 of the 2x1 run (per tensor, max norm)" "$ref" "$tmp/pipe/ckpt-00000020.h5" $g 1e-5
done

# ---- SGD: the default, its layout, and old checkpoints --------------------------------------------
sgd=(--train.optimizer=sgd --train.lr=0.3)
sed '/^optimizer = adamw$/d' "$tmp/job.ini" >"$tmp/sgd.ini" # a job file that never names an optimizer
run 1 train "$tmp/sgd.ini" --train.lr=0.3 --checkpoint.dir="$tmp/sgd"
[ "$(rc)" = 0 ] && ok || { bad "sgd run"; cat "$tmp/err" >&2; }
check "no train.optimizer: SGD, named in the header" has "$tmp/out" "optimizer: sgd (momentum 0.9, weight decay 0.01)"
sref=$tmp/sgd/ckpt-00000020.h5
check "SGD checkpoint: optimizer = sgd" test "$(attr "$sref" optimizer)" = sgd
h5py_check "SGD checkpoint: the momentum under /optimizer/layer_III as before, no Adam state" '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
assert f["optimizer/layer_001/weight"].shape == f["model/layer_001/weight"].shape
assert "exp_avg" not in f["optimizer"] and "exp_avg_sq" not in f["optimizer"]
' "$sref"
# an SGD checkpoint as dpmpi wrote it before train.optimizer existed: no optimizer attribute, no step
cp "$tmp/sgd/ckpt-00000010.h5" "$tmp/old.h5"
/usr/bin/python3 -c 'import sys, h5py; f = h5py.File(sys.argv[1], "r+"); del f.attrs["optimizer"]; del f["optimizer"].attrs["step"]' "$tmp/old.h5"
mkdir -p "$tmp/oldrun" && cp "$tmp/old.h5" "$tmp/oldrun/ckpt-00000010.h5"
run 1 train "$tmp/sgd.ini" --train.lr=0.3 --checkpoint.dir="$tmp/oldrun" --resume "$tmp/oldrun"
[ "$(rc)" = 0 ] && ok || { bad "resume an old SGD checkpoint"; cat "$tmp/err" >&2; }
for g in /model /optimizer; do
  check "old SGD checkpoint resumed: $g bitwise the uninterrupted SGD run's" same_h5 "$sref" "$tmp/oldrun/ckpt-00000020.h5" $g
done

# ---- refusals: one line, status 2, every rank ------------------------------------------------------
for np in 1 2; do
  expect_usage_error $np "old.h5: written by a run with train.optimizer = sgd, the job says adamw (the checkpoint holds no Adam state" \
    train "$tmp/job.ini" --resume "$tmp/old.h5"
  expect_usage_error $np "ckpt-00000010.h5: written by a run with train.optimizer = sgd, the job says adamw" \
    train "$tmp/job.ini" --resume "$tmp/sgd/ckpt-00000010.h5"
  expect_usage_error $np "ckpt-00000010.h5: written by a run with train.optimizer = adamw, the job says sgd" \
    train "$tmp/job.ini" "${sgd[@]}" --resume "$tmp/full/ckpt-00000010.h5"
done
expect_usage_error 1 "[train] optimizer = 'adam': expected one of sgd|adamw" train "$tmp/job.ini" --train.optimizer=adam
expect_usage_error 2 "[train] adam_beta2 = 1: expected a number in [0, 1)" train "$tmp/job.ini" --train.adam_beta2=1
# damaged optimizer records: an unknown optimizer name, an update count beyond the step, no second moment
damage() { # damage NAME PYTHON: a copy of the step-10 AdamW checkpoint, changed by PYTHON (f = the file)
  cp "$tmp/full/ckpt-00000010.h5" "$tmp/$1.h5"
  /usr/bin/python3 -c "import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r+'); $2" "$tmp/$1.h5"
}
damage badname 'f.attrs["optimizer"] = "adamax"'
expect_usage_error 2 "badname.h5: checkpoint attributes are missing or damaged" train "$tmp/job.ini" --resume "$tmp/badname.h5"
damage badstep 'f["optimizer"].attrs["step"] = np.int64(11)'
expect_usage_error 1 "badstep.h5: checkpoint attributes are missing or damaged" train "$tmp/job.ini" --resume "$tmp/badstep.h5"
damage nov 'del f["optimizer/exp_avg_sq"]'
expect_usage_error 2 "nov.h5: /optimizer/exp_avg_sq/layer_001: missing" train "$tmp/job.ini" --resume "$tmp/nov.h5"

finish cli_adamw
