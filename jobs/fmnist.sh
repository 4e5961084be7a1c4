#!/usr/bin/env bash
# Fashion-MNIST DP-SGD training: converts the dataset once if it is missing, then runs dpmpi train on NP
# ranks. Runs as is with mpirun (no Slurm), and is what jobs/fmnist.sbatch runs inside a Slurm job.
#   jobs/fmnist.sh [--section.key=value ...]          (arguments are job-file overrides)
#   NP=4 JOB=jobs/fmnist-mlp.ini jobs/fmnist.sh
# Environment (defaults): JOB (jobs/fmnist-cnn.ini), DATA (data/fashion-mnist.h5 in the repository), FMNIST_SRC (the IDX files
# to convert DATA from, /usr/share/datasets/fashion-mnist: Debian package dataset-fashion-mnist), STEPS (the
# job file's length; a number overrides it), RUN_DIR (runs/fmnist-JOBID: the metrics file), and the launch
# settings of jobs/lib.sh (LAUNCHER, NP, OPENBLAS_NUM_THREADS, BIND, PPN, HOSTFILE, DPMPI, DPM_ROOT).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

job=$(dpm_path "${JOB:-jobs/fmnist-cnn.ini}")
data=$DPM_ROOT/data/fashion-mnist.h5
if [ -n "${DATA:-}" ]; then data=$(dpm_path "$DATA"); [ -e "$data" ] || data=$(dpm_out "$DATA"); fi
src=${FMNIST_SRC:-/usr/share/datasets/fashion-mnist}
run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/fmnist-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}")
[ -f "$job" ] || dpm_die "JOB=$job: no such job file"
mkdir -p "$run_dir"

if [ ! -f "$data" ]; then
  dpm_log "converting Fashion-MNIST from $src to $data"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$src/$f.gz" ] || [ -f "$src/$f" ] || dpm_die "FMNIST_SRC=$src: no $f(.gz) (apt-get install dataset-fashion-mnist)"
  done
  idx() { if [ -f "$src/$1.gz" ]; then echo "$src/$1.gz"; else echo "$src/$1"; fi; }
  mkdir -p "$(dirname "$data")"
  # under a temporary name: two jobs converting at once never see a half-written file
  "$DPMPI" data convert --from idx --train-images "$(idx train-images-idx3-ubyte)" \
    --train-labels "$(idx train-labels-idx1-ubyte)" --test-images "$(idx t10k-images-idx3-ubyte)" \
    --test-labels "$(idx t10k-labels-idx1-ubyte)" --out "$data.tmp.$$"
  mv -f "$data.tmp.$$" "$data"
fi

args=(train "$job" --data.train="$data" --data.test="$data" --output.metrics="$run_dir/metrics.jsonl")
[ -n "${STEPS:-}" ] && args+=(--train.steps="$STEPS")
dpm_log "fmnist: $job on $NP ranks ($LAUNCHER), data $data, metrics $run_dir/metrics.jsonl"
dpm_launch "$NP" "$DPMPI" "${args[@]}" "$@"
