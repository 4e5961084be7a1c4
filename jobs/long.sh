#!/usr/bin/env bash
# A long training run that survives time limits, preemption and node failures: checkpoints every
# CKPT_EVERY steps; on SIGUSR1 or SIGTERM (to this script) it passes the signal on to the launcher, dpmpi
# finishes the step, writes a checkpoint and exits with status 75; inside a Slurm job the script then
# requeues the job (scontrol requeue; after SIGUSR1 only: SIGTERM means scancel or the limit itself), and
# every start resumes from the newest valid checkpoint of CKPT_DIR.
# What jobs/long.sbatch runs (#SBATCH --signal=B:USR1@300 --requeue --open-mode=append). Without Slurm it
# exits 75 after a signal, and running it again with the same RUN_DIR resumes.
#   RUN_DIR=runs/cnn-long jobs/long.sh [--section.key=value ...]
# Environment (defaults): JOB (jobs/fmnist-cnn.ini), DATA (the job file's), STEPS (the job file's length),
# RUN_DIR (runs/long-JOBID, the same across requeues of one job; runs/long without Slurm), CKPT_DIR
# (RUN_DIR/checkpoints), CKPT_EVERY (100 steps), REQUEUE (1: requeue after a signal inside Slurm; 0: end
# the job with status 75), and the launch settings of jobs/lib.sh.
# Exit status: 0 done (or already complete), 75 stopped after a checkpoint (requeued inside Slurm), else
# dpmpi's status.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

job=$(dpm_path "${JOB:-jobs/fmnist-cnn.ini}")
run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/long${SLURM_JOB_ID:+-$SLURM_JOB_ID}}")
ckpt_dir=$(dpm_out "${CKPT_DIR:-$run_dir/checkpoints}")
[ -f "$job" ] || dpm_die "JOB=$job: no such job file"
mkdir -p "$run_dir"

# A signal before dpmpi runs: no work to save, requeue at once. While it runs: pass it on (mpirun and srun
# forward it to the ranks). Bash runs a trap only between commands, hence the launcher in the background.
stop_signal="" launcher_pid=""
on_signal() {
  stop_signal=$1
  dpm_log "received SIG$1${launcher_pid:+, passing it on to the launcher (pid $launcher_pid)}"
  if [ -n "$launcher_pid" ]; then kill -s "$1" "$launcher_pid" 2>/dev/null || true; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# The run stopped after a checkpoint: requeue inside Slurm after SIGUSR1 (the warning the job asked for);
# SIGTERM comes from scancel, the time limit itself or preemption, where Slurm decides what happens next.
requeue_or_stop() {
  if [ -n "${SLURM_JOB_ID:-}" ] && [ "${REQUEUE:-1}" = 1 ] && [ "$stop_signal" != TERM ]; then
    dpm_log "requeueing job $SLURM_JOB_ID; the next start resumes from $ckpt_dir"
    scontrol requeue "$SLURM_JOB_ID" || dpm_die "scontrol requeue $SLURM_JOB_ID failed (submit with --requeue)"
  elif [ -n "${SLURM_JOB_ID:-}" ]; then
    dpm_log "stopped after a checkpoint (SIG$stop_signal: no requeue); resubmit with RUN_DIR=$run_dir to resume"
  else
    dpm_log "stopped after a checkpoint; run again with RUN_DIR=$run_dir to resume"
  fi
  exit 75
}

dpm_log "long run: job ${SLURM_JOB_ID:-(no Slurm)}, start $((${SLURM_RESTART_COUNT:-0} + 1)) on $(hostname -s), $job on $NP ranks ($LAUNCHER), checkpoints in $ckpt_dir"
resume=()
if compgen -G "$ckpt_dir/ckpt-*.h5" >/dev/null; then
  info=$("$DPMPI" ckpt info "$ckpt_dir") || dpm_die "no valid checkpoint in $ckpt_dir"
  read -r at total < <(echo "$info" | sed -nE 's/^step: ([0-9]+) of ([0-9]+).*/\1 \2/p')
  [ -n "${total:-}" ] || dpm_die "no 'step: N of M' line in: dpmpi ckpt info $ckpt_dir"
  if [ "$at" = "$total" ]; then
    dpm_log "the run is complete: $(echo "$info" | grep '^checkpoint:')"
    exit 0
  fi
  dpm_log "resuming at step $at of $total"
  resume=(--resume "$ckpt_dir")
fi
[ -n "$stop_signal" ] && requeue_or_stop

args=(train "$job" --checkpoint.dir="$ckpt_dir" --checkpoint.every="${CKPT_EVERY:-100}"
      --output.metrics="$run_dir/metrics.jsonl")
[ -n "${DATA:-}" ] && args+=(--data.train="$(dpm_path "$DATA")" --data.test="$(dpm_path "$DATA")")
[ -n "${STEPS:-}" ] && args+=(--train.steps="$STEPS")
dpm_launcher "$NP"
dpm_log "launch: ${DPM_CMD[*]} $DPMPI ${args[*]} ${resume[*]} $*"
"${DPM_CMD[@]}" "$DPMPI" "${args[@]}" "${resume[@]}" "$@" &
launcher_pid=$!
# wait returns early (status > 128) when a trapped signal arrives: wait again while the launcher runs
while :; do
  status=0
  wait "$launcher_pid" || status=$?
  [ "$status" -gt 128 ] || break
  kill -0 "$launcher_pid" 2>/dev/null && continue
  again=0
  wait "$launcher_pid" || again=$? # it ended meanwhile: its own status (127: that was it)
  [ "$again" != 127 ] && status=$again
  break
done
launcher_pid=""
dpm_log "dpmpi exited with status $status"
case $status in
0) exit 0 ;;
75) requeue_or_stop ;;
*) # the signal reached a rank before its handler was installed: the newest checkpoint is still there
   [ -n "$stop_signal" ] && requeue_or_stop
   exit "$status" ;;
esac
