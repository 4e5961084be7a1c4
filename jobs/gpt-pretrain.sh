#!/usr/bin/env bash
# Pretrains the small byte-level GPT of jobs/gpt-pretrain.ini WITHOUT privacy on a public corpus, WordNet's
# glosses (Debian package wordnet-base, installed if missing), and leaves the model where private
# fine-tuning expects it:
#   runs/gpt-pretrain/model.h5        the released model (dpmpi export): dpmpi train FT.ini --init runs/gpt-pretrain/model.h5
#   runs/gpt-pretrain/ckpt-STEP.h5    the final checkpoint; metrics.jsonl (one line per evaluation); train.log
# Then prints the test perplexity against the unigram baseline (the test split's perplexity under the training
# bytes' frequencies with add-one smoothing, from dpmpi data info).
#   jobs/gpt-pretrain.sh [--section.key=value ...]        (arguments are job-file overrides)
# Environment (defaults): JOB (jobs/gpt-pretrain.ini), DATA (data/wordnet-glosses.h5, built once), RUN_DIR
# (runs/gpt-pretrain; its checkpoints, metrics and model.h5 are replaced), STEPS (the job file's), NP (2) and the launch settings of jobs/lib.sh.
#
# The corpus: the gloss of every synset of data.noun, data.verb, data.adj and data.adv (the text after " | ",
# without the licence header), one per line, 16 glosses to a document (documents are separated by an empty
# line); 1% of the documents, chosen by a hash of their text, are the test split. Context 128, byte tokens.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

job=$(dpm_path "${JOB:-jobs/gpt-pretrain.ini}")
data=$DPM_ROOT/data/wordnet-glosses.h5
if [ -n "${DATA:-}" ]; then data=$(dpm_out "$DATA"); fi
run_dir=$(dpm_out "${RUN_DIR:-$DPM_ROOT/runs/gpt-pretrain}")
wn=/usr/share/wordnet
[ -f "$job" ] || dpm_die "JOB=$job: no such job file"

if [ ! -f "$wn/data.noun" ]; then
  dpm_log "installing wordnet-base (WordNet's database: the corpus)"
  DPM_WITH_CORPORA=1 "$DPM_ROOT/scripts/install-deps.sh" || dpm_die "could not install wordnet-base (scripts/install-deps.sh)"
fi

if [ ! -f "$data" ]; then
  dpm_log "building the WordNet gloss corpus into $data"
  mkdir -p "$(dirname "$data")"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for f in noun verb adj adv; do
    [ -f "$wn/data.$f" ] || dpm_die "$wn/data.$f missing (apt-get install wordnet-base)"
    # licence lines start with two spaces; a synset line's gloss follows " | "
    awk '!/^  / { i = index($0, " | "); if (i) { g = substr($0, i + 3); sub(/ +$/, "", g); print g; if (++n % 16 == 0) print "" } }' "$wn/data.$f"
    echo
  done > "$tmp/glosses.txt"
  # under a temporary name: two jobs converting at once never see a half-written file
  "$DPMPI" data convert --from text --context 128 --test-fraction 0.01 --separator '' --out "$data.tmp.$$" "$tmp/glosses.txt"
  mv -f "$data.tmp.$$" "$data"
fi

unigram=$("$DPMPI" data info "$data" | sed -nE 's/^unigram baseline .*perplexity ([0-9.]+).*/\1/p')
[ -n "$unigram" ] || dpm_die "dpmpi data info $data printed no unigram baseline"
dpm_log "unigram baseline of $data: test perplexity $unigram"

mkdir -p "$run_dir"
rm -f "$run_dir"/ckpt-*.h5 "$run_dir/metrics.jsonl" "$run_dir/model.h5" # a new run: no older checkpoints to confuse
args=(train "$job" --data.train="$data" --data.test="$data" --checkpoint.dir="$run_dir"
      --output.metrics="$run_dir/metrics.jsonl")
[ -n "${STEPS:-}" ] && args+=(--train.steps="$STEPS")
dpm_log "gpt-pretrain: $job on $NP ranks ($LAUNCHER), data $data, run directory $run_dir"
t0=$SECONDS
dpm_launch "$NP" "$DPMPI" "${args[@]}" "$@" 2>&1 | tee "$run_dir/train.log"
[ "${PIPESTATUS[0]}" = 0 ] || dpm_die "training failed (log: $run_dir/train.log)"
wall=$((SECONDS - t0))

ckpt=$(ls -1 "$run_dir"/ckpt-*.h5 | awk -F'ckpt-' '{ print $NF "\t" $0 }' | sort -n | tail -1 | cut -f2)
"$DPMPI" export "$ckpt" "$run_dir/model.h5" > /dev/null
ppl=$(tail -1 "$run_dir/metrics.jsonl" | sed -nE 's/.*"test_perplexity": ([0-9.]+).*/\1/p')
steps=$(tail -1 "$run_dir/metrics.jsonl" | sed -nE 's/^\{"step": ([0-9]+).*/\1/p')
params=$(sed -nE 's/^total: ([0-9]+) params.*/\1/p' "$run_dir/train.log" | head -1)
dpm_log "gpt-pretrain: test perplexity $ppl (unigram baseline $unigram) after $steps steps, $params parameters, $wall s on $NP ranks"
dpm_log "gpt-pretrain: model $run_dir/model.h5 (from $ckpt)"
awk -v p="$ppl" -v u="$unigram" 'BEGIN { exit !(p < u) }' || dpm_die "test perplexity $ppl is not below the unigram baseline $unigram"
