#!/usr/bin/env bash
# Private hyper-parameter selection (Papernot and Steinke 2022; docs/accountant.md): runs the job K times, K
# drawn secretly (dpmpi privacy --draw-runs) from a truncated negative binomial with mean M, each run with
# hyper-parameters drawn at random from the candidates given, every run at the SAME sampling rate, noise
# multiplier and length, and reports the best run and the epsilon of the whole selection (what releasing that
# best model costs), not just of one run.
#   jobs/sweep.sh JOB --runs M [--eta H] [--epsilon E] [--score accuracy|perplexity] \
#                 --try train.lr=1,2,4 [--try privacy.clip=0.05,0.1 ...] [-- --section.key=value ...]
# --epsilon E: every run's noise multiplier is calibrated so that the whole selection spends E (RDP); without
# it the job's privacy.noise_multiplier is used and the selection's epsilon is printed. Candidates may not
# change the accounting: privacy.* keys other than clip and clipping, train.batch_size, train.epochs,
# train.steps and data.* are refused. The score is the last evaluation's test accuracy (or perplexity) on the
# job's test split: those records choose the released model but are not training data (not covered).
# Do not stop or restart a sweep because of its results: the bound needs all K runs, K drawn once.
# Environment: RUN_DIR (runs/sweep-DATE: one directory per run), and jobs/lib.sh's (NP, LAUNCHER, DPMPI...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || dpm_die "usage: jobs/sweep.sh JOB --runs M [--eta H] [--epsilon E] --try KEY=V1,V2,... [-- overrides]"
job=$(dpm_path "$1"); shift
[ -f "$job" ] || dpm_die "$job: no such job file"
runs="" eta=1 target="" score=accuracy tries=() extra=()
while [ $# -gt 0 ]; do
  case $1 in
  --runs) runs=${2:?--runs needs a value}; shift 2 ;;
  --eta) eta=${2:?--eta needs a value}; shift 2 ;;
  --epsilon) target=${2:?--epsilon needs a value}; shift 2 ;;
  --score) score=${2:?--score needs a value}; shift 2 ;;
  --try) tries+=("${2:?--try needs KEY=V1,V2,...}"); shift 2 ;;
  --) shift; extra=("$@"); break ;;
  *) dpm_die "sweep: unknown argument '$1'" ;;
  esac
done
[ -n "$runs" ] || dpm_die "sweep: --runs M (the mean number of runs) is required"
[ ${#tries[@]} -gt 0 ] || dpm_die "sweep: give at least one --try KEY=V1,V2,..."
case $score in accuracy | perplexity) ;; *) dpm_die "sweep: --score $score: expected accuracy or perplexity" ;; esac
for t in "${tries[@]}"; do
  key=${t%%=*}
  [[ $t == *=* && -n ${t#*=} ]] || dpm_die "sweep: --try $t: expected KEY=V1,V2,..."
  case $key in
  privacy.clip | privacy.clipping) ;;
  privacy.* | train.batch_size | train.epochs | train.steps | data.*)
    dpm_die "sweep: --try $key: the runs must share the sampling rate, noise and length (that key changes them)" ;;
  esac
done

# the job's value of section.key (the last override wins), or $3
job_value() {
  local sec=${1%%.*} key=${1#*.} v
  v=$(awk -v s="$sec" -v k="$key" '
    /^[ \t]*[#;]/ { next } /^[ \t]*\[/ { gsub(/[][ \t]/, ""); cur = $0; next }
    cur == s { line = $0; sub(/[ \t]*[#;].*$/, "", line); n = index(line, "=");
      if (n) { name = substr(line, 1, n - 1); gsub(/[ \t]/, "", name);
        if (name == k) { val = substr(line, n + 1); gsub(/^[ \t]+|[ \t]+$/, "", val) } } }
    END { print val }' "$job")
  for o in "${extra[@]}"; do [[ $o == --$1=* ]] && v=${o#--$1=}; done
  echo "${v:-$2}"
}
data=$(job_value data.train "")
[ -n "$data" ] || dpm_die "$job: [data] train is not set"
case $data in /*) ;; *) data=$DPM_ROOT/$data ;; esac
n=$("$DPMPI" data info "$data" | sed -nE 's/^train: ([0-9]+) examples.*/\1/p' | head -1)
[ -n "$n" ] || dpm_die "$data: dpmpi data info gives no training count"
batch=$(job_value train.batch_size 256) epochs=$(job_value train.epochs "") steps=$(job_value train.steps "")
delta=$(job_value privacy.delta 1e-5)
q=$(awk -v b="$batch" -v n="$n" 'BEGIN { printf "%.17g", b / n }')
if [ -z "$steps" ]; then
  steps=$(awk -v e="$epochs" -v b="$batch" -v n="$n" 'BEGIN { x = e * n / b; r = int(x + 0.5); print r }')
fi
if [ -n "$target" ]; then
  sigma=$("$DPMPI" privacy -q "$q" -T "$steps" -d "$delta" -e "$target" --tuning-runs "$runs" --tuning-eta "$eta" --json |
    sed -nE 's/.*"noise_multiplier": ([0-9.e+-]+).*/\1/p')
  [ -n "$sigma" ] || dpm_die "sweep: no noise multiplier reaches epsilon $target for the selection"
else
  sigma=$(job_value privacy.noise_multiplier "")
  [ -n "$sigma" ] || dpm_die "$job: set [privacy] noise_multiplier or give --epsilon E (the selection's total)"
fi
sel=$("$DPMPI" privacy -q "$q" -s "$sigma" -T "$steps" -d "$delta" --tuning-runs "$runs" --tuning-eta "$eta")
one=$("$DPMPI" privacy -q "$q" -s "$sigma" -T "$steps" -d "$delta" --json | sed -nE 's/.*"epsilon": ([0-9.e+-]+).*/\1/p')
k=$("$DPMPI" privacy --tuning-runs "$runs" --tuning-eta "$eta" --draw-runs)
run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/sweep-$(date +%Y%m%d-%H%M%S)}")
mkdir -p "$run_dir"
dpm_log "sweep: $k runs (drawn: K ~ truncated negative binomial, eta $eta, mean $runs), q $q, sigma $sigma, $steps steps each"
best="" best_i=0
for i in $(seq 1 "$k"); do
  pick=()
  for t in "${tries[@]}"; do
    key=${t%%=*}
    v=$(tr ',' '\n' <<<"${t#*=}" | shuf -n 1 --random-source=/dev/urandom)
    pick+=("--$key=$v")
  done
  d=$run_dir/run-$i
  mkdir -p "$d"
  echo "${pick[*]}" >"$d/hyperparameters"
  dpm_log "run $i/$k: ${pick[*]}"
  dpm_launch "$NP" "$DPMPI" train "$job" "${extra[@]}" "${pick[@]}" --privacy.noise_multiplier="$sigma" \
    --privacy.accountant=rdp --privacy.epsilon="$(awk -v e="$one" 'BEGIN { printf "%.9g", e * 1.000001 + 1e-9 }')" \
    --checkpoint.dir="$d" --output.metrics="$d/metrics.jsonl" >"$d/out" 2>&1 || dpm_die "run $i failed: see $d/out"
  # the run's ledger is exactly one run's mechanism: q, sigma, steps
  "$DPMPI" privacy --ledger "$d" >"$d/ledger" || dpm_die "run $i: its checkpoint ledger does not read"
  awk -v q="$q" -v s="$sigma" -v t="$steps" '/subsampled-gaussian/ { rows++;
      if (($3 - q) ^ 2 > (1e-6 * q) ^ 2 || ($5 - s) ^ 2 > (1e-5 * s) ^ 2 || $7 != t) bad = 1 }
    END { exit !(rows == 1 && !bad) }' "$d/ledger" || dpm_die "run $i: its ledger is not one run of q $q, sigma $sigma, $steps steps ($d/ledger)"
  field=test_accuracy; [ "$score" = perplexity ] && field=test_perplexity
  s=$(tail -1 "$d/metrics.jsonl" | sed -nE "s/.*\"$field\": ([0-9.e+-]+).*/\\1/p")
  [ -n "$s" ] || s=nan
  echo "$s" >"$d/score"
  dpm_log "run $i/$k: $field $s"
  if [ "$s" != nan ] && { [ -z "$best" ] || awk -v a="$s" -v b="$best" -v p="$score" \
      'BEGIN { exit !(p == "accuracy" ? a > b : a < b) }'; }; then best=$s best_i=$i; fi
done
[ -n "$best" ] || dpm_die "sweep: no run produced a score"
echo "best run: $run_dir/run-$best_i ($(cat "$run_dir/run-$best_i/hyperparameters")), $field $best"
echo "one run alone: epsilon $one (delta $delta, rdp)"
echo "the selection (what releasing the best run costs): $sel"
echo "run-$best_i" >"$run_dir/best"
