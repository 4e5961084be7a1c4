#!/usr/bin/env bash
# Checkpoints end to end: a seeded run resumed from a checkpoint ends bitwise identical to the
# uninterrupted run (model, optimizer, ledger, epsilon: no step accounted twice or missed); resumed on
# another grid (2x1 -> 1x2) it ends within 1e-5; SIGUSR1/SIGTERM finish the step, checkpoint and exit 75
# on every rank, and the run resumes; secure runs store no seed; truncated and bit-flipped checkpoints
# are rejected cleanly (status 2, one message) or, when the damage misses every byte that matters,
# resume to the exact uninterrupted result — never a crash; a different model is rejected by name;
# stats_printed (output.private_stats) is carried over resumes into the export.
# Usage: bash tests/cli/cli_ckpt.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=600
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
epsilon = 2
delta = 1e-4
clip = 1
[checkpoint]
every = 5
[run]
seed = 5
INI
same_h5() { h5diff -q "$1" "$2" "$3" "$3" >/dev/null 2>&1; }
final_eps() { grep '^done:' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/'; }

# uninterrupted: 20 steps, checkpoints at 5, 10, 15, 20
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/full" --checkpoint.keep=10
[ "$(rc)" = 0 ] && ok || { bad "uninterrupted run"; cat "$tmp/err" >&2; }
eps_full=$(final_eps)
check "4 checkpoints kept" test "$(ls "$tmp/full"/ckpt-*.h5 | wc -l)" = 4
ref=$tmp/full/ckpt-00000020.h5

# resume from the newest valid of a directory (step 10), same grid: bitwise
mkdir -p "$tmp/part" && cp "$tmp/full/ckpt-00000005.h5" "$tmp/full/ckpt-00000010.h5" "$tmp/part/"
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/part" --resume "$tmp/part"
[ "$(rc)" = 0 ] && ok || { bad "resume"; cat "$tmp/err" >&2; }
check "resume says where from" has "$tmp/out" "resumed from $tmp/part/ckpt-00000010.h5: step 10 of 20"
for g in /model /optimizer /privacy; do check "resumed $g bitwise identical" same_h5 "$ref" "$tmp/part/ckpt-00000020.h5" $g; done
check "epsilon after resume = uninterrupted ($eps_full)" test "$(final_eps)" = "$eps_full"
check "keep = 3 by default" test "$(ls "$tmp/part"/ckpt-*.h5 | wc -l)" = 3

# another grid: 2x1 checkpoint resumed on 1x2
mkdir -p "$tmp/grid" && cp "$tmp/full/ckpt-00000010.h5" "$tmp/grid/"
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/grid" --resume "$tmp/grid/ckpt-00000010.h5" --grid.stages=2
[ "$(rc)" = 0 ] && ok || { bad "resume on 1x2"; cat "$tmp/err" >&2; }
h5_close "2x1 -> 1x2 within 1e-5 relative (per tensor, max norm)" "$ref" "$tmp/grid/ckpt-00000020.h5" /model 1e-5
check "1x2: same epsilon" test "$(final_eps)" = "$eps_full"

# a signal: finish the step, checkpoint, exit 75 everywhere (SIGUSR1 to mpirun, which forwards it;
# SIGTERM to the ranks themselves, as Slurm does); each run resumes from the previous one's checkpoint
long=(--train.epochs=100000 --privacy.epsilon=50 --train.eval_every=100000 --checkpoint.dir="$tmp/sig"
      --checkpoint.every=100000000)
signal_run() { # signal_run SIGNAL WHO [ARGS]: start a long 2-rank run, signal it after its first steps
  local sig=$1 who=$2; shift 2
  timeout 120 "$mpiexec" -q --allow-run-as-root --oversubscribe --bind-to none -np 2 "$dpmpi" train "$tmp/job.ini" "${long[@]}" "$@" \
    >"$tmp/sig.out" 2>"$tmp/sig.err" &
  local pid=$! mp=""
  for i in $(seq 200); do grep -aq '^step' "$tmp/sig.out" 2>/dev/null && break; sleep 0.1; done
  mp=$(pgrep -P $pid)
  if [ "$who" = mpirun ]; then kill -$sig $mp; else kill -$sig $(pgrep -P $mp); fi
  wait $pid
  echo $? >"$tmp/sig.rc"
}
signal_run USR1 mpirun
check "SIGUSR1 to mpirun: exit status 75 (got $(cat "$tmp/sig.rc"))" test "$(cat "$tmp/sig.rc")" = 75
check "SIGUSR1: the stop is announced" grep -aq "stopped by signal 10" "$tmp/sig.out"
check "SIGUSR1: one checkpoint written" test "$(ls "$tmp/sig"/ckpt-*.h5 | wc -l)" = 1
first=$(basename "$(ls "$tmp/sig"/ckpt-*.h5)")
signal_run TERM ranks --resume "$tmp/sig"
check "SIGTERM to the ranks: exit status 75 (got $(cat "$tmp/sig.rc"))" test "$(cat "$tmp/sig.rc")" = 75
check "SIGTERM: the run resumed from the first checkpoint" grep -aq "resumed from $tmp/sig/$first" "$tmp/sig.out"
check "SIGTERM: a second checkpoint" test "$(ls "$tmp/sig"/ckpt-*.h5 | wc -l)" = 2

# crash safety: kill -9 the whole job, or one rank, at random instants while it writes a checkpoint every
# step; the newest checkpoint left must always read cleanly (metadata, ledger and every checksummed dataset)
kills=0
for k in $(seq 1 12); do
  rm -rf "$tmp/crash"
  "$mpiexec" -q --allow-run-as-root --oversubscribe --bind-to none -np 2 "$dpmpi" train "$tmp/job.ini" "${long[@]}" \
    --checkpoint.dir="$tmp/crash" --checkpoint.every=1 --checkpoint.keep=2 >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 200); do [ -n "$(ls "$tmp/crash" 2>/dev/null | grep -v tmp | grep ckpt-)" ] && break; sleep 0.05; done
  sleep "0.$(( (k * 37) % 10 ))$(( k % 10 ))"
  ranks=$(pgrep -P $pid)
  if [ $((k % 2)) = 0 ]; then kill -9 $pid $ranks; else kill -9 $(echo $ranks | cut -d' ' -f1); fi
  wait $pid 2>/dev/null
  pkill -9 -P $pid 2>/dev/null
  kills=$((kills + 1))
  newest=$(ls "$tmp/crash"/ckpt-*.h5 2>/dev/null | sort | tail -1)
  if [ -z "$newest" ]; then bad "kill $k: no checkpoint left"; continue; fi
  run 1 ckpt info "$tmp/crash"
  if [ "$(rc)" = 0 ] && grep -q "checkpoint: $newest" "$tmp/out" && h5dump "$newest" >/dev/null 2>&1; then ok
  else bad "kill $k: the newest checkpoint $newest does not read cleanly"; cat "$tmp/err" >&2; fi
done
echo "crash safety: $kills kill -9 points tried while checkpointing every step"

# secure mode: no seed anywhere in the file
sed '/^\[run\]/,$d' "$tmp/job.ini" >"$tmp/secure.ini"
run 1 train "$tmp/secure.ini" --checkpoint.dir="$tmp/sec"
[ "$(rc)" = 0 ] && ok || { bad "secure run"; cat "$tmp/err" >&2; }
h5dump -A "$tmp/sec/ckpt-00000020.h5" >"$tmp/sec.txt"
check "secure: no seed attribute" bash -c "! grep -q 'ATTRIBUTE \"seed\"' '$tmp/sec.txt'"
check "secure: reproducible = 0" bash -c "grep -A4 'ATTRIBUTE \"reproducible\"' '$tmp/sec.txt' | grep -q '(0): 0'"

# inspect and release
run 1 ckpt info "$tmp/full"
check "ckpt info: the newest checkpoint" has "$tmp/out" "checkpoint: $ref"
check "ckpt info: epsilon as the run reported" has "$tmp/out" "privacy: epsilon $(printf %.4f "$eps_full" | cut -c1-5)"
check "ckpt info: the ledger" has_re "$tmp/out" "subsampled-gaussian q 0.1 sigma [0-9.]+ x 20"
run 2 export "$tmp/full" "$tmp/released.h5"
[ "$(rc)" = 0 ] && ok || { bad "export"; cat "$tmp/err" >&2; }
h5dump -A "$tmp/released.h5" >"$tmp/rel.txt" 2>&1
for a in epsilon delta accountant sampling_rate noise_multiplier steps clipping clip n_train; do
  check "released model has $a" grep -q "ATTRIBUTE \"$a\"" "$tmp/rel.txt"
done
check "released model: no optimizer, no seed" bash -c "! grep -qE 'optimizer|\"seed\"|\"job\"' '$tmp/rel.txt'"
check "released model: parameters equal the checkpoint's" same_h5 "$ref" "$tmp/released.h5" /model
h5py_check "h5py reads the checkpoint and the released model" '
import sys, h5py, numpy as np
c, r = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert c.attrs["format"] == "dpmpi-checkpoint" and c.attrs["step"] == 20, dict(c.attrs)
assert "[privacy]" in c.attrs["job"] and c.attrs["reproducible"] == 1
w = c["model/layer_001/weight"]
assert w.shape == (16, 6) and w.dtype == np.float32 and w.fletcher32, (w.shape, w.dtype)
assert len(c["privacy/privacy_ledger"]) >= 1 and "count" in c["privacy/privacy_ledger"].dtype.names
assert r.attrs["format"] == "dpmpi-model" and r.attrs["clipping"] == "flat" and 0 < r.attrs["epsilon"] < 50
assert "job" not in r.attrs and "seed" not in r.attrs and "optimizer" not in r
assert np.array_equal(r["model/layer_001/weight"][:], w[:])
' "$ref" "$tmp/released.h5"
expect_usage_error 1 "expected 2 arguments" export "$tmp/full"

# stats_printed: 1 if any segment of the run printed private-batch statistics (output.private_stats),
# carried over resumes in both orders; 0 only when no segment did. The export and --ledger report it.
attr() { h5dump -a "$2" "$1" 2>/dev/null | sed -nE 's/^ *\(0\): ([0-9]+)$/\1/p'; }
check "default run: the checkpoint records stats_printed 1" test "$(attr "$ref" stats_printed)" = 1
check "default run: the export records stats_printed 1" test "$(attr "$tmp/released.h5" stats_printed)" = 1
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/quiet" --output.private_stats=false --checkpoint.keep=10
[ "$(rc)" = 0 ] && ok || { bad "release-mode run"; cat "$tmp/err" >&2; }
check "release run: same model as the default run" same_h5 "$ref" "$tmp/quiet/ckpt-00000020.h5" /model
check "release run: stats_printed 0" test "$(attr "$tmp/quiet/ckpt-00000020.h5" stats_printed)" = 0
run 1 export "$tmp/quiet" "$tmp/quiet.h5"
check "release run: the export records stats_printed 0" test "$(attr "$tmp/quiet.h5" stats_printed)" = 0
run 1 privacy --ledger "$tmp/quiet.h5" --json
check "privacy --ledger: stats_printed false" has "$tmp/out" '"stats_printed": false'
run 1 ckpt info "$tmp/quiet"
check "ckpt info: not printed" has "$tmp/out" "private-batch statistics: not printed"
resume_stats() { # resume_stats FROM_CKPT PRIVATE_STATS: resume to the end, print the final stats_printed
  rm -rf "$tmp/mix" && mkdir -p "$tmp/mix" && cp "$1" "$tmp/mix/"
  run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/mix" --resume "$tmp/mix" --output.private_stats="$2"
  [ "$(rc)" = 0 ] || { bad "resume $1 with private_stats $2"; cat "$tmp/err" >&2; }
  attr "$tmp/mix/ckpt-00000020.h5" stats_printed
}
check "printed, then a release segment: still 1" test "$(resume_stats "$tmp/full/ckpt-00000010.h5" false)" = 1
run 1 export "$tmp/mix" "$tmp/mix.h5"
check "printed, then a release segment: the export records 1" test "$(attr "$tmp/mix.h5" stats_printed)" = 1
check "release segment, then printed: 1" test "$(resume_stats "$tmp/quiet/ckpt-00000010.h5" true)" = 1
check "release segments only: 0" test "$(resume_stats "$tmp/quiet/ckpt-00000010.h5" false)" = 0

# errors: missing, a different model, a complete run
expect_usage_error 1 "no-such" train "$tmp/job.ini" --resume "$tmp/no-such"
expect_usage_error 2 "layer 3 differs" train "$tmp/job.ini" --resume "$tmp/full/ckpt-00000010.h5" \
  --model.layers="dense out=16; tanh; dense out=9; relu; dense out=4"
expect_usage_error 1 "the run is complete" train "$tmp/job.ini" --resume "$ref"

# damage: truncations and bit flips of the step-10 checkpoint; each resume must fail cleanly, or (damage
# in bytes nothing reads) end exactly at the uninterrupted result
src=$tmp/full/ckpt-00000010.h5
size=$(stat -c %s "$src")
rejected=0 harmless=0 trials=0
for k in $(seq 1 40); do
  mkdir -p "$tmp/dmg" && rm -f "$tmp/dmg"/*
  if [ $((k % 4)) = 0 ]; then
    head -c $((size * k / 41)) "$src" >"$tmp/dmg/ckpt-00000010.h5"
  else
    cp "$src" "$tmp/dmg/ckpt-00000010.h5"
    off=$(( (k * 2654435761) % size ))
    printf "$(printf '\\%03o' $(( ( $(od -An -tu1 -j $off -N1 "$src") ^ (1 << (k % 8)) ) )))" |
      dd of="$tmp/dmg/ckpt-00000010.h5" bs=1 seek=$off conv=notrunc status=none
  fi
  run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/dmg" --resume "$tmp/dmg/ckpt-00000010.h5"
  trials=$((trials + 1))
  if [ "$(rc)" = 2 ] && [ "$(grep -c . "$tmp/err")" = 1 ]; then rejected=$((rejected + 1))
  elif [ "$(rc)" = 0 ] && same_h5 "$ref" "$tmp/dmg/ckpt-00000020.h5" /model; then harmless=$((harmless + 1))
  else bad "damaged checkpoint $k (rc $(rc)): neither rejected nor harmless"; sed 's/^/    /' "$tmp/err" | head -3 >&2; fi
done
echo "damaged checkpoints: $trials tried, $rejected rejected, $harmless harmless (damage outside used bytes)"
check "most damaged checkpoints rejected" test $rejected -ge 20

finish cli_ckpt
