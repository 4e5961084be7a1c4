#!/usr/bin/env bash
# The corpora of private fine-tuning (issue 16), from Debian packages, as byte-token HDF5 sets (context 128):
#   public:  WordNet's glosses (package wordnet-base), the pretraining corpus: every synset's gloss of
#            data.noun/verb/adj/adv (the text after " | "), 16 to a document, 1% of the documents (by a hash of
#            their text) the test split -> data/wordnet-glosses.h5 (the same recipe and file as
#            jobs/gpt-pretrain.sh; kept when it exists)
#   private: the fortune cookies of package fortunes (/usr/share/games/fortunes, every file but ascii-art and
#            translate-me), one document per fortune ('%' lines separate them), 10% of the documents (by a
#            hash of their text: identical fortunes land together, so no text is on both sides) the test split,
#            with canaries inserted into the training split only -> data/fortunes-canaries.h5; the canary
#            file (the secrets, keep it with the private data) -> data/fortunes-canaries.json
# Canaries: pattern 'my code is ######' (10^6 candidates: dpmpi audit exposure ranks them exactly), K of each
# repetition count 0 (controls, never inserted), 1, 4 and 16; each repetition is one training document and
# one window, so a canary repeated r times is r rows: DP covers it only by group privacy of size r.
# The secrets come from the OS CSPRNG, or from CANARY_SEED for a reproducible set.
#   jobs/finetune-data.sh
# Environment (defaults): DATA_DIR (data), CANARY_SEED (none: secure), CANARIES_PER_REPEAT K (4), FORCE=1 rebuilds
# the private set and its canaries; DPMPI and the rest as in jobs/lib.sh. Prints both sets' sizes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

data_dir=$(dpm_out "${DATA_DIR:-$DPM_ROOT/data}")
mkdir -p "$data_dir"
wn=/usr/share/wordnet fort=/usr/share/games/fortunes
install_pkg() { # install_pkg PACKAGE: apt-get as root, else sudo
  dpm_log "installing $1"
  if [ "$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends "$1" > /dev/null || dpm_die "apt-get install $1 failed"
  else sudo apt-get install -y --no-install-recommends "$1" > /dev/null || dpm_die "could not install $1 (apt-get install $1)"; fi
}
[ -f "$wn/data.noun" ] || install_pkg wordnet-base
[ -f "$fort/cookie" ] || install_pkg fortunes
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

public=$data_dir/wordnet-glosses.h5
if [ ! -f "$public" ]; then
  dpm_log "public corpus: WordNet glosses -> $public"
  for f in noun verb adj adv; do
    [ -f "$wn/data.$f" ] || dpm_die "$wn/data.$f missing (apt-get install wordnet-base)"
    # licence lines start with two spaces; a synset line's gloss follows " | "
    awk '!/^  / { i = index($0, " | "); if (i) { g = substr($0, i + 3); sub(/ +$/, "", g); print g; if (++n % 16 == 0) print "" } }' "$wn/data.$f"
    echo
  done > "$tmp/glosses.txt"
  "$DPMPI" data convert --from text --context 128 --test-fraction 0.01 --separator '' --out "$public.tmp.$$" "$tmp/glosses.txt"
  mv -f "$public.tmp.$$" "$public"
fi

private=$data_dir/fortunes-canaries.h5 canaries=$data_dir/fortunes-canaries.json
if [ ! -f "$private" ] || [ ! -f "$canaries" ] || [ "${FORCE:-0}" = 1 ]; then
  seed=()
  [ -n "${CANARY_SEED:-}" ] && seed=(--seed "$CANARY_SEED")
  "$DPMPI" audit canaries --pattern 'my code is ######' --repeats 0,1,4,16 --per-repeat "${CANARIES_PER_REPEAT:-4}" \
    "${seed[@]}" --out "$canaries"
  files=()
  for f in "$fort"/*; do
    case $(basename "$f") in *.dat | *.u8 | ascii-art | translate-me) continue ;; esac
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || dpm_die "no fortune files in $fort (apt-get install fortunes)"
  dpm_log "private corpus: ${#files[@]} fortune files with the canaries of $canaries -> $private"
  "$DPMPI" data convert --from text --context 128 --test-fraction 0.1 --separator % --canaries "$canaries" \
    --out "$private.tmp.$$" "${files[@]}" | grep -E '^dpmpi: (train|test):'
  mv -f "$private.tmp.$$" "$private"
fi

for f in "$public" "$private"; do
  "$DPMPI" data info "$f" | grep -E '^(train|test|padding)' | sed "s|^|$(basename "$f"): |"
done
n=$("$DPMPI" data info "$private" | sed -nE 's/^train: ([0-9]+) examples.*/\1/p')
dpm_log "private training rows N = ${n:-?}: delta = min(1/N^1.1, 1e-5) for the DP fine-tuning runs"
