#!/usr/bin/env bash
# The jobs/ scripts under a real Slurm: scripts/slurm-local.sh starts munged, slurmctld and slurmd on this
# machine in a private directory (own slurm.conf, munge key and socket, ports), and every daemon is
# stopped by PID when the test ends, fails or is killed. Each jobs/*.sbatch script is submitted from a
# directory outside the repository with small settings (a 2000-example Fashion-MNIST subset, blobs, a few
# steps), with srun --mpi=pmix and with mpirun as launchers; the test waits by polling scontrol (every wait
# bounded) and checks exit codes, accuracy and `done:` lines, the scaling CSV, and the requeue cycles:
# - preemption: SIGUSR1 to the batch shell through Slurm -> the step finishes, checkpoint, exit 75 -> the
#   job requeues itself -> it resumes and completes: ran twice, final epsilon and model equal to an
#   uninterrupted run's (seeded, same grid: bitwise);
# - time limit: #SBATCH --signal=B:USR1@55 with --time=1 (Slurm's own warning, never sent by the test)
#   reaches dpmpi through the script and mpirun, which checkpoints, exits 75 and requeues the job.
# The mpirun wrappers (jobs/*.sh) run without Slurm too, including a signal and a resume.
# Needs root and the Debian packages slurm-wlm and munge (DPM_WITH_SLURM=1 scripts/install-deps.sh).
# Usage: bash tests/cli/cli_slurm.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
# ctest: serial
source "$(dirname "$0")/../lib_cli.sh"
src=$(cd "${2:?usage: $0 BUILD_DIR SOURCE_DIR}" && pwd)
t_begin=$SECONDS
phase() { echo "cli_slurm: $1 done at $((SECONDS - t_begin)) s"; }

missing=()
for b in munged munge slurmctld slurmd sbatch srun scontrol scancel sinfo h5diff; do
  command -v "$b" >/dev/null || missing+=("$b")
done
if [ ${#missing[@]} != 0 ]; then
  bad "Slurm is not installed (missing ${missing[*]}): run DPM_WITH_SLURM=1 scripts/install-deps.sh, or as root
  apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge"
  finish cli_slurm
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  bad "the local Slurm cluster needs root (slurmd starts the jobs as their user)"
  finish cli_slurm
  exit 1
fi

cluster=$tmp/cluster
cleanup() {
  bash "$src/scripts/slurm-local.sh" stop "$cluster" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
if ! SLURM_LOCAL_WATCH=$$ bash "$src/scripts/slurm-local.sh" start "$cluster"; then
  bad "the local Slurm cluster did not start"
  finish cli_slurm
  exit 1
fi
export SLURM_CONF=$cluster/slurm.conf
ok
srun --mpi=list >"$tmp/mpilist" 2>&1
check "srun --mpi=list offers pmix" has_re "$tmp/mpilist" '^[[:space:]]*pmix'

# ---- helpers: job fields from scontrol, bounded waits -------------------------------------------------------
field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
# wait_job ID SECONDS: poll until the job has ended (a requeue is not an end); prints its final JobState
wait_job() {
  local id=$1 end=$((SECONDS + $2)) st=""
  while [ $SECONDS -lt $end ]; do
    st=$(field "$id" JobState)
    case $st in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
      echo "$st"; return 0 ;;
    esac
    sleep 0.3
  done
  scancel "$id" 2>/dev/null
  echo "still $st after $2 s"
  return 1
}
# wait_for SECONDS COMMAND...: poll every 0.1 s until the command succeeds
wait_for() {
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $end ]; do "$@" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
# job_ok NAME ID OUTFILE: the job completed with exit code 0:0 (else show its output)
job_ok() {
  local st
  st=$(wait_job "$2" 90)
  if [ "$st" = COMPLETED ] && [ "$(field "$2" ExitCode)" = 0:0 ]; then ok
  else bad "$1 (job $2): $st, exit code $(field "$2" ExitCode)"; tail -30 "$3" >&2; fi
}
eps_of() { sed -nE 's/^done: .*epsilon ([0-9.]+) at delta.*/\1/p' "$1" | tail -1; }
acc_of() { sed -nE 's/^eval .*test accuracy ([0-9.]+)%.*/\1/p' "$1" | tail -1; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 > b + 0) }'; }
same_h5() { h5diff -q "$1" "$2" "$3" "$3" >/dev/null 2>&1; }

# ---- data: a 2000-example Fashion-MNIST subset (IDX files cut from the Debian package), blobs ------------------
fm=/usr/share/datasets/fashion-mnist
mkdir -p "$tmp/idx" "$tmp/work"
idx_subset() { # idx_subset NAME N HEADER_BYTES ITEM_BYTES: the first N items, the count in the header fixed
  local f=$fm/$1.gz n=$2
  { zcat "$f" | head -c 4
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((n >> 24 & 255)) $((n >> 16 & 255)) $((n >> 8 & 255)) $((n & 255)))"
    zcat "$f" | head -c $(($3 + n * $4)) | tail -c +9; } >"$tmp/idx/$1"
}
if [ -f "$fm/train-images-idx3-ubyte.gz" ]; then
  idx_subset train-images-idx3-ubyte 2000 16 784
  idx_subset train-labels-idx1-ubyte 2000 8 1
  idx_subset t10k-images-idx3-ubyte 500 16 784
  idx_subset t10k-labels-idx1-ubyte 500 8 1
  ok
else
  bad "no Fashion-MNIST in $fm (apt-get install dataset-fashion-mnist)"
fi
make_blobs 2000 300
# the long run: seeded (the resumed run must end bitwise equal), a few seconds of compute on 2 ranks, so that
# a signal sent at its first progress line (step 20) arrives long before its end
cat >"$tmp/long.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=256; tanh; dense out=256; tanh; dense out=4
[train]
steps = 600
batch_size = 200
physical_batch_size = 200
lr = 0.2
eval_every = 100000
[privacy]
epsilon = 4
delta = 1e-4
[run]
seed = 7
[output]
log_every = 20
INI
# the time-limit run: never ends by itself (fixed noise multiplier, no calibration), one rank
cat >"$tmp/endless.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=8; tanh; dense out=4
[train]
steps = 100000000
batch_size = 100
eval_every = 100000000
[privacy]
noise_multiplier = 1.0
delta = 1e-4
[output]
log_every = 20000
INI
export DPMPI=$dpmpi # DPM_ROOT stays unset: the scripts find the repository themselves
work=$tmp/work       # every job is submitted from here, outside the repository
cd "$work" || exit 1

# ---- time limit: Slurm's own warning signal, 55 s before a 1-minute limit (slurmctld checks every 30 s) -------
tl_id=$(LAUNCHER=mpirun BIND=none JOB="$tmp/endless.ini" RUN_DIR="$tmp/tl" CKPT_EVERY=100000000 \
  sbatch --parsable -n 1 --time=1 --signal=B:USR1@55 "$src/jobs/long.sbatch")
check "time-limit job submitted" test -n "$tl_id"
tl_out=$work/dpmpi-long-$tl_id.out

# ---- meanwhile, the mpirun wrappers without Slurm ----------------------------------------------------------
env -u SLURM_CONF LAUNCHER=mpirun NP=2 JOB="$tmp/long.ini" RUN_DIR="$tmp/ref" CKPT_EVERY=1000 \
  timeout 120 bash "$src/jobs/long.sh" >"$tmp/ref.out" 2>&1
check "jobs/long.sh with mpirun, uninterrupted: status 0" test $? = 0
check "uninterrupted: mpirun -np 2 launch" has "$tmp/ref.out" "launch: mpirun -np 2 --allow-run-as-root --bind-to core"
eps_ref=$(eps_of "$tmp/ref.out")
check "uninterrupted: final epsilon ($eps_ref)" gt "$eps_ref" 3.9
ref_ckpt=$tmp/ref/checkpoints/ckpt-00000600.h5
check "uninterrupted: final checkpoint" test -f "$ref_ckpt"

# a signal to the wrapper: passed on to mpirun, checkpoint, status 75; run again: resumes and completes
env -u SLURM_CONF NP=2 JOB="$tmp/long.ini" RUN_DIR="$tmp/local" CKPT_EVERY=1000 \
  bash "$src/jobs/long.sh" >"$tmp/local1.out" 2>&1 &
pid=$!
if wait_for 60 grep -q '^step' "$tmp/local1.out"; then kill -USR1 $pid; else bad "jobs/long.sh: no progress line"; fi
gone() { ! kill -0 "$1"; }
wait_for 60 gone $pid || { bad "jobs/long.sh did not end within 60 s of SIGUSR1"; kill -TERM $pid; }
wait $pid
st=$?
check "jobs/long.sh + SIGUSR1: status 75 (got $st)" test $st = 75
check "jobs/long.sh + SIGUSR1: dpmpi stopped by the signal" has "$tmp/local1.out" "stopped by signal 10"
check "jobs/long.sh + SIGUSR1: says how to resume" has "$tmp/local1.out" "run again with RUN_DIR=$tmp/local"
env -u SLURM_CONF NP=2 JOB="$tmp/long.ini" RUN_DIR="$tmp/local" CKPT_EVERY=1000 \
  timeout 120 bash "$src/jobs/long.sh" >"$tmp/local2.out" 2>&1
check "jobs/long.sh again: status 0" test $? = 0
check "jobs/long.sh again: resumed" has "$tmp/local2.out" "resumed from $tmp/local/checkpoints/ckpt-"
check "jobs/long.sh again: epsilon of the uninterrupted run" test "$(eps_of "$tmp/local2.out")" = "$eps_ref"
check "jobs/long.sh again: model bitwise equal to the uninterrupted run" same_h5 "$ref_ckpt" "$tmp/local/checkpoints/ckpt-00000600.h5" /model
env -u SLURM_CONF NP=2 JOB="$tmp/long.ini" RUN_DIR="$tmp/local" timeout 60 bash "$src/jobs/long.sh" >"$tmp/local3.out" 2>&1
check "jobs/long.sh on a complete run: status 0, nothing run" test $? = 0
check "jobs/long.sh on a complete run: says so" has "$tmp/local3.out" "the run is complete"

env -u SLURM_CONF NP=2 DATA=fm.h5 FMNIST_SRC="$tmp/idx" STEPS=16 RUN_DIR=run-fmnist-local JOB=jobs/fmnist-mlp.ini \
  timeout 120 bash "$src/jobs/fmnist.sh" --train.batch_size=256 --run.seed=3 >"$tmp/fm-local.out" 2>&1
check "jobs/fmnist.sh with mpirun: status 0" test $? = 0
check "jobs/fmnist.sh: converted the IDX files into the start directory" test -f "$work/fm.h5"
check "jobs/fmnist.sh: metrics in RUN_DIR, relative to the start directory" test -s "$work/run-fmnist-local/metrics.jsonl"
check "jobs/fmnist.sh: MLP accuracy > 50% after 16 steps (got $(acc_of "$tmp/fm-local.out"))" gt "$(acc_of "$tmp/fm-local.out")" 50
check "jobs/fmnist.sh: nothing written into the repository" test ! -e "$src/fm.h5" -a ! -e "$src/run-fmnist-local" -a ! -e "$src/fmnist-mlp.metrics.jsonl"

phase "mpirun wrappers without Slurm"

# ---- back to the time-limit job: Slurm signals the batch shell, the script passes it on, requeues ---------
if wait_for 75 grep -q 'requeueing job' "$tl_out"; then ok; else bad "time limit: no requeue within 75 s"; fi
check "time limit: the batch shell received SIGUSR1 from Slurm" has "$tl_out" "received SIGUSR1, passing it on to the launcher"
check "time limit: launched with mpirun inside the allocation" has "$tl_out" "launch: mpirun -np 1 --allow-run-as-root --bind-to none"
check "time limit: dpmpi stopped by the signal" has "$tl_out" "stopped by signal 10"
check "time limit: dpmpi exited with status 75" has "$tl_out" "dpmpi exited with status 75"
any_file() { compgen -G "$1" >/dev/null; }
check "time limit: a checkpoint" any_file "$tmp/tl/checkpoints/ckpt-*.h5"
requeued() { [ "$(field "$tl_id" Restarts)" = 1 ]; }
check "time limit: the job was requeued (Restarts=1)" wait_for 20 requeued
scancel "$tl_id"
check "time limit: cancelled after the requeue" test "$(wait_job "$tl_id" 30)" = CANCELLED
phase "time-limit cycle"

# ---- Fashion-MNIST: srun --mpi=pmix (converts the subset), and mpirun inside the allocation ------------------
id=$(DATA="$tmp/fm2.h5" FMNIST_SRC="$tmp/idx" STEPS=16 RUN_DIR="$tmp/fm-srun" \
  sbatch --parsable "$src/jobs/fmnist.sbatch" --train.batch_size=256 --run.seed=1)
out=$work/dpmpi-fmnist-$id.out
job_ok "fmnist.sbatch (CNN, srun)" "$id" "$out"
check "fmnist.sbatch: repository found from another directory" has "$out" "fmnist: $src/jobs/fmnist-cnn.ini on 2 ranks (srun)"
check "fmnist.sbatch: srun --mpi=pmix" has "$out" "launch: srun --mpi=pmix -n 2"
check "fmnist.sbatch: converted the subset" has "$out" "2000 images of 28x28"
check "fmnist.sbatch: 2 ranks" has "$out" "on 2 ranks: 2 replicas x 1 pipeline stage"
check "fmnist.sbatch: CNN accuracy > 40% after 16 steps (got $(acc_of "$out"))" gt "$(acc_of "$out")" 40
check "fmnist.sbatch: done line with epsilon 3" has_re "$out" '^done: 16 steps .*epsilon 2\.99[0-9]* at delta 1e-05'
check "fmnist.sbatch: metrics file" test -s "$tmp/fm-srun/metrics.jsonl"

id=$(LAUNCHER=mpirun JOB=jobs/fmnist-mlp.ini DATA="$tmp/fm2.h5" STEPS=16 RUN_DIR="$tmp/fm-mpirun" \
  sbatch --parsable "$src/jobs/fmnist.sbatch" --train.batch_size=256 --run.seed=1)
out=$work/dpmpi-fmnist-$id.out
job_ok "fmnist.sbatch (MLP, mpirun)" "$id" "$out"
check "fmnist.sbatch: mpirun inside the allocation, bound to cores" has "$out" "launch: mpirun -np 2 --allow-run-as-root --bind-to core"
check "fmnist.sbatch: no conversion when the data exist" bash -c "! grep -q converting '$out'"
check "fmnist.sbatch: MLP accuracy > 50% (got $(acc_of "$out"))" gt "$(acc_of "$out")" 50
check "fmnist.sbatch: done line" has_re "$out" '^done: 16 steps .*examples/s'

phase "fmnist.sbatch"

# ---- scaling sweeps: CSV rows with examples/s from the done lines ------------------------------------------
csv_ok() { # csv_ok FILE ROWS: header and ROWS rows, each with positive examples/s; the first row's efficiency 1
  awk -F, -v rows="$2" 'NR == 1 { ok = ($0 == "mode,ranks,replicas,stages,batch_size,steps,examples_per_s,wall_s,efficiency") }
    NR > 1 { n++; if (!($7 > 0 && $8 > 0 && $9 > 0)) ok = 0; if (first[$1]++ == 0 && $9 != "1.000") ok = 0 }
    END { exit !(ok && n == rows) }' "$1" || { echo "  unexpected CSV:" >&2; sed 's/^/    /' "$1" >&2; return 1; }
}
id=$(MODE=both RANKS="1 2" JOB=jobs/fmnist-mlp.ini DATA="$tmp/fm2.h5" STEPS=10 BATCH=512 BATCH_PER_RANK=256 \
  RUN_DIR="$tmp/sc-srun" sbatch --parsable "$src/jobs/scaling.sbatch")
out=$work/dpmpi-scaling-$id.out
job_ok "scaling.sbatch (srun, strong and weak, 1 and 2 ranks)" "$id" "$out"
check "scaling.sbatch: CSV with 4 rows" csv_ok "$tmp/sc-srun/scaling.csv" 4
check "scaling.sbatch: strong, 2 ranks: batch 512 on 2 replicas" grep -q '^strong,2,2,1,512,10,' "$tmp/sc-srun/scaling.csv"
check "scaling.sbatch: weak, 2 ranks: 256 per replica" grep -q '^weak,2,2,1,512,10,' "$tmp/sc-srun/scaling.csv"
check "scaling.sbatch: weak, 1 rank: 256" grep -q '^weak,1,1,1,256,10,' "$tmp/sc-srun/scaling.csv"
check "scaling.sbatch: srun job steps" has "$tmp/sc-srun/strong-np1.out" "launch: srun --mpi=pmix -n 1"
check "scaling.sbatch: one output per run" has_re "$tmp/sc-srun/weak-np2.out" '^done: 10 steps'
check "scaling.sbatch: results table in the job output" has_re "$out" '^weak +2 +2 +1 +512 +10 '


id=$(LAUNCHER=mpirun MODE=strong RANKS="1 2 4" STAGES=1 JOB="$tmp/long.ini" STEPS=30 BATCH=400 \
  RUN_DIR="$tmp/sc-mpirun" sbatch --parsable "$src/jobs/scaling.sbatch")
out=$work/dpmpi-scaling-$id.out
job_ok "scaling.sbatch (mpirun, 1, 2 and 4 ranks on 2 cores)" "$id" "$out"
check "scaling.sbatch: CSV with 3 rows" csv_ok "$tmp/sc-mpirun/scaling.csv" 3
check "scaling.sbatch: 4 ranks on 2 cores oversubscribed, unbound" has "$tmp/sc-mpirun/strong-np4.out" "launch: mpirun -np 4 --allow-run-as-root --oversubscribe --bind-to none"
check "scaling.sbatch: 4 ranks ran" grep -q '^strong,4,4,1,400,30,' "$tmp/sc-mpirun/scaling.csv"

phase "scaling.sbatch"

# ---- preemption: SIGUSR1 to the batch shell (what --signal=B:USR1 and preemption send) -> 75 -> requeue -> resume
id=$(JOB="$tmp/long.ini" RUN_DIR="$tmp/pre" CKPT_EVERY=1000 sbatch --parsable "$src/jobs/long.sbatch")
out=$work/dpmpi-long-$id.out
if wait_for 60 grep -q '^step' "$out"; then
  scancel --batch --signal=USR1 "$id"
  ok
else
  bad "long.sbatch: no progress line within 60 s"; tail "$out" >&2
fi
job_ok "long.sbatch (srun): signal, requeue, resume, complete" "$id" "$out"
check "long.sbatch: the job ran twice (Restarts=1)" test "$(field "$id" Restarts)" = 1
check "long.sbatch: first start" has "$out" "long run: job $id, start 1 on"
check "long.sbatch: second start" has "$out" "long run: job $id, start 2 on"
check "long.sbatch: dpmpi stopped by the signal" has "$out" "stopped by signal 10"
check "long.sbatch: status 75, then requeued" has "$out" "dpmpi exited with status 75"
check "long.sbatch: requeued itself" has "$out" "requeueing job $id"
check "long.sbatch: resumed with --resume" has "$out" "resumed from $tmp/pre/checkpoints/ckpt-"
check "long.sbatch: srun --mpi=pmix" has "$out" "launch: srun --mpi=pmix -n 2"
check "long.sbatch: completed (one done line)" test "$(grep -c '^done:' "$out")" = 1
check "long.sbatch: final epsilon = uninterrupted run's ($eps_ref, got $(eps_of "$out"))" test "$(eps_of "$out")" = "$eps_ref"
check "long.sbatch: final model bitwise equal to the uninterrupted run's" \
  same_h5 "$ref_ckpt" "$tmp/pre/checkpoints/ckpt-00000600.h5" /model
check "long.sbatch: ledger equal to the uninterrupted run's" same_h5 "$ref_ckpt" "$tmp/pre/checkpoints/ckpt-00000600.h5" /privacy

grep -E '^\[|^stopped|^resumed|^done' "$out" | sed 's/^/  long.sbatch: /'
phase "long.sbatch preemption cycle"

# ---- the cluster stops cleanly and leaves nothing behind ---------------------------------------------------
pids=$(cat "$cluster"/*.pid 2>/dev/null)
bash "$src/scripts/slurm-local.sh" stop "$cluster"
left=""
for p in $pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
check "every daemon stopped (left:$left)" test -z "$left"
none_left() { # no daemon of this cluster, no dpmpi of this test, no slurmstepd/slurmscriptd of this slurm.conf
  local p
  pgrep -f "$cluster/|dpmpi train $tmp/" >/dev/null && return 1
  for p in $(pgrep -f 'slurmstepd|slurmscriptd'); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF" && return 1
  done
  return 0
}
check "no daemon, slurmstepd or dpmpi of the test left" none_left
finish cli_slurm
