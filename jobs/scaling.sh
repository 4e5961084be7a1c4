#!/usr/bin/env bash
# Strong and weak scaling sweeps: dpmpi train with a few steps on each rank count, the examples/s of each
# run's `done:` line (time in training steps only: no start-up, loading or evaluation) collected into a CSV.
# Strong: the same logical batch on every rank count. Weak: BATCH_PER_RANK examples per replica.
# Runs as is with mpirun (no Slurm), and is what jobs/scaling.sbatch runs inside a Slurm allocation.
#   jobs/scaling.sh                                       (both sweeps over 1, 2, 4, ... up to NP ranks)
#   MODE=weak RANKS="1 2 4 8" STEPS=50 jobs/scaling.sh --privacy.clipping=per-layer
# Environment (defaults): MODE (both | strong | weak), RANKS (STAGES times powers of 2 below NP, then NP), STAGES (1:
# pipeline stages per replica; every rank count must be a multiple), JOB (jobs/fmnist-cnn.ini), DATA (the
# job file's), STEPS (20), BATCH (strong: 1024), BATCH_PER_RANK (weak: 256 per replica), RUN_DIR
# (runs/scaling-JOBID: one output file per run), CSV (RUN_DIR/scaling.csv), and the launch settings of
# jobs/lib.sh (LAUNCHER, NP, OPENBLAS_NUM_THREADS, BIND, PPN, HOSTFILE, DPMPI, DPM_ROOT).
# CSV columns: mode, ranks, replicas, stages, batch_size, steps, examples_per_s, wall_s (the launch, start-up
# included), efficiency (examples/s per rank relative to the sweep's first rank count; 1 = perfect).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode=${MODE:-both}
stages=${STAGES:-1}
steps=${STEPS:-20}
batch=${BATCH:-1024}
per_rank=${BATCH_PER_RANK:-256}
job=$(dpm_path "${JOB:-jobs/fmnist-cnn.ini}")
run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/scaling-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}")
csv=$(dpm_out "${CSV:-$run_dir/scaling.csv}")
if [ -z "${RANKS:-}" ]; then
  RANKS="" r=$stages
  while [ "$r" -lt "$NP" ]; do RANKS="$RANKS $r"; r=$((r * 2)); done
  RANKS="$RANKS $NP"
fi
read -r -a ranks <<<"$RANKS"
case $mode in both) modes="strong weak" ;; strong | weak) modes=$mode ;; *) dpm_die "MODE=$mode: expected strong, weak or both" ;; esac
[ -f "$job" ] || dpm_die "JOB=$job: no such job file"
for n in "${ranks[@]}"; do [ $((n % stages)) = 0 ] || dpm_die "RANKS: $n ranks is not a multiple of STAGES=$stages"; done
data_args=()
[ -n "${DATA:-}" ] && data_args=(--data.train="$(dpm_path "$DATA")" --data.test="$(dpm_path "$DATA")")
mkdir -p "$run_dir" "$(dirname "$csv")"
echo "mode,ranks,replicas,stages,batch_size,steps,examples_per_s,wall_s,efficiency" >"$csv"
dpm_log "scaling: $job, modes $modes, ranks ${ranks[*]}, $stages stage(s), $steps steps, $LAUNCHER -> $csv"

for m in $modes; do
  base_rate="" base_ranks=""
  for n in "${ranks[@]}"; do
    replicas=$((n / stages))
    if [ "$m" = strong ]; then b=$batch; else b=$((per_rank * replicas)); fi
    out=$run_dir/$m-np$n.out
    t0=$(date +%s.%N)
    status=0
    dpm_launch "$n" "$DPMPI" train "$job" "${data_args[@]}" --train.steps="$steps" --train.batch_size="$b" \
      --grid.replicas="$replicas" --grid.stages="$stages" --train.eval_every=1e9 \
      --output.metrics="$run_dir/$m-np$n.metrics.jsonl" "$@" >"$out" 2>&1 || status=$?
    t1=$(date +%s.%N)
    rate=$(dpm_done_rate "$out")
    if [ "$status" != 0 ] || [ -z "$rate" ]; then
      tail -20 "$out" >&2
      dpm_die "$m scaling on $n ranks failed (status $status), see $out"
    fi
    [ -z "$base_rate" ] && base_rate=$rate base_ranks=$n
    eff=$(awk -v r="$rate" -v n="$n" -v r0="$base_rate" -v n0="$base_ranks" 'BEGIN { printf "%.3f", (r / n) / (r0 / n0) }')
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    echo "$m,$n,$replicas,$stages,$b,$steps,$rate,$wall,$eff" >>"$csv"
    dpm_log "$m: $n ranks ($replicas x $stages), batch $b: $rate examples/s, efficiency $eff, $wall s"
  done
done
echo "scaling results ($csv):"
awk -F, '{ printf "%-6s %5s %8s %6s %10s %5s %14s %7s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$csv"
