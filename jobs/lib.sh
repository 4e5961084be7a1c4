# shellcheck shell=bash
# Sourced by the jobs/*.sh scripts (not run): the repository, the dpmpi binary, and dpm_launch, which starts
# a command on N ranks with mpirun or srun --mpi=pmix, with one OpenBLAS thread per rank and each rank bound
# to a core by default. See docs/cluster.md.
#
# Environment (every variable optional):
#   DPM_ROOT   the repository (default: the directory above jobs/). dpmpi runs in it, so relative paths
#              inside job files are the repository's (data/fashion-mnist.h5). Relative paths in these
#              variables are the start directory's (under Slurm: the submit directory); an input file
#              missing there is looked up in the repository (JOB=jobs/fmnist-mlp.ini works from anywhere)
#   DPMPI      the dpmpi binary (default: $DPM_ROOT/build/dpmpi)
#   LAUNCHER   srun | mpirun (default: srun inside a Slurm job, mpirun outside). srun always runs with
#              --mpi=pmix: Debian's Open MPI has no PMI-2 support
#   NP         ranks (default: SLURM_NTASKS inside a Slurm job, 2 outside)
#   OPENBLAS_NUM_THREADS  OpenBLAS threads per rank (default 1: one rank per core is the fastest layout)
#   BIND       core | none: mpirun --bind-to (default core when OPENBLAS_NUM_THREADS=1 and the ranks fit on
#              the cores, none otherwise: a threaded rank bound to one core runs its threads on that core);
#              with srun, set it to pass --cpu-bind=cores|none (default: the cluster's task plugin decides)
#   PPN        ranks per node (mpirun --map-by ppr:PPN:node, srun --ntasks-per-node)
#   HOSTFILE   mpirun --hostfile, for several machines without Slurm
#   MPIRUN_ARGS, SRUN_ARGS  extra launcher flags (words split on spaces)

DPM_ROOT=${DPM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export DPM_ROOT
dpm_start_dir=${dpm_start_dir:-$PWD}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

dpm_log() { echo "[$(date '+%F %T')] $*"; }
dpm_die() { echo "dpmpi job: error: $*" >&2; exit 2; }

# dpm_path P: an input path made absolute: as is if absolute, from the start directory if it exists there,
# else from DPM_ROOT. dpm_out P: an output path made absolute (from the start directory).
dpm_path() {
  case $1 in
  /*) echo "$1" ;;
  *) if [ -e "$dpm_start_dir/$1" ]; then echo "$dpm_start_dir/$1"; else echo "$DPM_ROOT/$1"; fi ;;
  esac
}
dpm_out() { case $1 in /*) echo "$1" ;; *) echo "$dpm_start_dir/$1" ;; esac; }

DPMPI=$(dpm_path "${DPMPI:-$DPM_ROOT/build/dpmpi}")
[ -x "$DPMPI" ] || dpm_die "no dpmpi binary at $DPMPI (build it: cmake -S . -B build && cmake --build build -j; or set DPMPI)"
if [ -n "${SLURM_JOB_ID:-}" ]; then
  LAUNCHER=${LAUNCHER:-srun}
  NP=${NP:-${SLURM_NTASKS:-1}}
else
  LAUNCHER=${LAUNCHER:-mpirun}
  NP=${NP:-2}
fi
case $LAUNCHER in srun | mpirun) ;; *) dpm_die "LAUNCHER=$LAUNCHER: expected srun or mpirun" ;; esac
cd "$DPM_ROOT" || dpm_die "cannot enter $DPM_ROOT"

# the cores this job may use on one node: the Slurm allocation, else the machine
dpm_cores() { echo "${SLURM_CPUS_ON_NODE:-$(nproc)}"; }

# dpm_launcher N: the launcher command for N ranks into the array DPM_CMD (run: "${DPM_CMD[@]}" COMMAND...)
dpm_launcher() {
  local n=$1 cmd=() per_node=${PPN:-$1}
  [ "$per_node" -gt "$n" ] && per_node=$n
  if [ "$LAUNCHER" = srun ]; then
    [ -n "${SLURM_JOB_ID:-}" ] || dpm_die "LAUNCHER=srun needs a Slurm allocation (sbatch or salloc)"
    cmd=(srun --mpi=pmix -n "$n" --kill-on-bad-exit=1)
    # more ranks than the allocation has tasks: oversubscribe the cores (scaling sweeps, tests)
    [ "$n" -gt "${SLURM_NTASKS:-$n}" ] && cmd+=(--overcommit)
    [ -n "${PPN:-}" ] && cmd+=(--ntasks-per-node="$PPN")
    case ${BIND:-} in core | cores) cmd+=(--cpu-bind=cores) ;; none) cmd+=(--cpu-bind=none) ;; esac
    # shellcheck disable=SC2206
    cmd+=(${SRUN_ARGS:-})
  else
    cmd=(mpirun -np "$n")
    [ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
    local bind=${BIND:-}
    if [ -z "$bind" ]; then
      if [ "$OPENBLAS_NUM_THREADS" = 1 ] && [ "$per_node" -le "$(dpm_cores)" ]; then bind=core; else bind=none; fi
    fi
    # more ranks on a node than cores: allowed, never bound (Open MPI refuses to bind two ranks to a core)
    if [ -z "${HOSTFILE:-}" ] && [ "$per_node" -gt "$(dpm_cores)" ]; then cmd+=(--oversubscribe); bind=none; fi
    [ "$bind" = cores ] && bind=core
    cmd+=(--bind-to "$bind" -x OPENBLAS_NUM_THREADS)
    [ -n "${HOSTFILE:-}" ] && cmd+=(--hostfile "$(dpm_path "$HOSTFILE")")
    [ -n "${PPN:-}" ] && cmd+=(--map-by "ppr:$PPN:node")
    # shellcheck disable=SC2206
    cmd+=(${MPIRUN_ARGS:-})
  fi
  DPM_CMD=("${cmd[@]}")
}

# dpm_launch N COMMAND...: COMMAND on N ranks with $LAUNCHER; returns its exit status
dpm_launch() {
  local n=$1; shift
  dpm_launcher "$n"
  dpm_log "launch: ${DPM_CMD[*]} $*"
  "${DPM_CMD[@]}" "$@"
}

# dpm_done_rate FILE: the examples/s of the `done:` line dpmpi train printed into FILE
dpm_done_rate() { sed -nE 's/^done: .*\(([0-9.]+) examples\/s.*/\1/p' "$1" | tail -1; }
