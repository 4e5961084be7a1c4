#!/usr/bin/env bash
# Private fine-tuning, shown (issue 16): pretrain on public text, fine-tune on private text, measure what the
# model memorized. Steps:
#   1. jobs/finetune-data.sh: the public corpus (WordNet glosses), the private one (fortunes) with canaries
#      'my code is ######' inserted 0 (controls), 1, 4 and 16 times into its training split
#   2. the base model: pretrained WITHOUT privacy on the public corpus (jobs/gpt-pretrain.ini if it exists,
#      else jobs/finetune-base.ini), exported; kept in RUN_DIR/base when it is there (FORCE_BASE=1 redoes it)
#   3. each variant of jobs/finetune.ini from the base (--init), the same steps, batch and learning rate:
#        base        the base model itself, evaluated (one step at lr 1e-30, no privacy: the weights stay)
#        nonprivate  full fine-tuning without privacy
#        dp-eps8     full DP fine-tuning at epsilon 8, delta = min(1/N^1.1, 1e-5)
#        dp-eps3     the same at epsilon 3
#   4. dpmpi audit exposure of every variant (exact ranks among the 10^6 candidates, or AUDIT=sample:M)
# and prints the table: held-out private perplexity, epsilon, mean exposure per repetition count.
#   jobs/finetune.sh [VARIANT ...]          (default: all four)
# Environment (defaults): RUN_DIR (runs/finetune), PRE_STEPS (the pretraining job's steps), STEPS and BATCH
# (fine-tuning: the job file's), AUDIT (all: exact ranks; sample:M estimates them), NP (2), FORCE_BASE, the
# data script's variables (CANARY_SEED, ...), and jobs/lib.sh's launch settings. A quick check of the whole
# pipeline: PRE_STEPS=20 STEPS=4 BATCH=32 AUDIT=sample:1000 jobs/finetune.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/finetune}")
data=$DPM_ROOT/data/fortunes-canaries.h5 canaries=$DPM_ROOT/data/fortunes-canaries.json
public=$DPM_ROOT/data/wordnet-glosses.h5
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base nonprivate dp-eps8 dp-eps3)
mkdir -p "$run_dir"
t_start=$SECONDS

DATA_DIR=$DPM_ROOT/data "$DPM_ROOT/jobs/finetune-data.sh"

# ---- 2. the base model ----
base=$run_dir/base-model/model.h5
if [ ! -f "$base" ] || [ "${FORCE_BASE:-0}" = 1 ]; then
  pre_job=$DPM_ROOT/jobs/gpt-pretrain.ini
  [ -f "$pre_job" ] || pre_job=$DPM_ROOT/jobs/finetune-base.ini
  bdir=$run_dir/base-model
  rm -rf "$bdir" && mkdir -p "$bdir"
  dpm_log "finetune: pretraining the base model ($pre_job, no privacy: public data) on $NP ranks"
  pre=()
  [ -n "${PRE_STEPS:-}" ] && pre=(--train.steps="$PRE_STEPS")
  dpm_launch "$NP" "$DPMPI" train "$pre_job" --data.train="$public" --data.test="$public" --checkpoint.dir="$bdir" \
    --output.metrics="$bdir/metrics.jsonl" "${pre[@]}" > "$bdir/train.log" 2>&1 || dpm_die "pretraining failed (log: $bdir/train.log)"
  ckpt=$(ls -1 "$bdir"/ckpt-*.h5 | sort | tail -1)
  "$DPMPI" export "$ckpt" "$base" > /dev/null
  dpm_log "finetune: base model $base, public test perplexity $(tail -1 "$bdir/metrics.jsonl" | sed -nE 's/.*"test_perplexity": ([0-9.]+).*/\1/p')"
fi

# ---- 3. the variants ----
n=$("$DPMPI" data info "$data" | sed -nE 's/^train: ([0-9]+) examples.*/\1/p')
delta=$(awk -v n="$n" 'BEGIN { d = exp(-1.1 * log(n)); if (d > 1e-5) d = 1e-5; printf "%.3g", d }')
dpm_log "finetune: private training rows N = $n, delta = $delta"
table=$run_dir/table.txt
printf '%-11s %10s %9s %8s %8s %8s %8s %7s\n' variant test_ppl epsilon "exp@0x" "exp@1x" "exp@4x" "exp@16x" wall_s > "$table"
for v in "${variants[@]}"; do
  case $v in
  base) over=(--privacy.enabled=false --train.steps=1 --train.lr=1e-30) ;;
  nonprivate) over=(--privacy.enabled=false) ;;
  dp-eps8) over=(--privacy.epsilon=8 --privacy.delta="$delta") ;;
  dp-eps3) over=(--privacy.epsilon=3 --privacy.delta="$delta") ;;
  *) dpm_die "unknown variant '$v' (base, nonprivate, dp-eps8, dp-eps3)" ;;
  esac
  [ -n "${STEPS:-}" ] && [ "$v" != base ] && over+=(--train.steps="$STEPS")
  [ -n "${BATCH:-}" ] && over+=(--train.batch_size="$BATCH")
  vdir=$run_dir/$v
  rm -rf "$vdir" && mkdir -p "$vdir"
  dpm_log "finetune: $v (${over[*]})"
  t0=$SECONDS
  dpm_launch "$NP" "$DPMPI" train "$DPM_ROOT/jobs/finetune.ini" --init "$base" --data.train="$data" --data.test="$data" \
    --checkpoint.dir="$vdir" --output.metrics="$vdir/metrics.jsonl" "${over[@]}" > "$vdir/train.log" 2>&1 ||
    dpm_die "$v: training failed (log: $vdir/train.log)"
  wall=$((SECONDS - t0))
  ppl=$(tail -1 "$vdir/metrics.jsonl" | sed -nE 's/.*"test_perplexity": ([0-9.]+).*/\1/p')
  eps=$(tail -1 "$vdir/metrics.jsonl" | sed -nE 's/.*"epsilon": ([0-9.]+).*/\1/p')
  [ -n "$eps" ] || eps=none
  [ "$v" = base ] && eps=-
  dpm_launch "$NP" "$DPMPI" audit exposure "$vdir" --canaries "$canaries" --candidates "${AUDIT:-all}" --json "$vdir/exposure.json" > "$vdir/exposure.txt" ||
    dpm_die "$v: audit failed"
  cat "$vdir/exposure.txt"
  line=$(grep '^mean exposure by repeats' "$vdir/exposure.txt")
  ex() { echo "$line" | sed -nE "s/.* $1x ([0-9.]+) .*/\\1/p"; }
  printf '%-11s %10s %9s %8s %8s %8s %8s %7s\n' "$v" "$ppl" "$eps" "$(ex 0)" "$(ex 1)" "$(ex 4)" "$(ex 16)" "$wall" >> "$table"
done
dpm_log "finetune: held-out private perplexity and mean canary exposure (of log2 10^6 = 19.93; chance ~1.44), $((SECONDS - t_start)) s"
cat "$table"
