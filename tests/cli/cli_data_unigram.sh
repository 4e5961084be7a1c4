#!/usr/bin/env bash
# dpmpi data info's unigram baseline of token data: the test split's mean -log p(target) under the training
# targets' frequencies with add-one smoothing over the vocabulary, p(v) = (n_train(v) + 1) / (n_train + V),
# padding excluded. Checked against the same figure computed from the raw text (byte-level conversion: a
# document b1..bn has the targets b1..bn and one end-of-text), independently of the HDF5 file, on 1 and 2
# ranks (every rank counts its shard). Also: labelled data prints no baseline.
# Usage: bash tests/cli/cli_data_unigram.sh BUILD_DIR SOURCE_DIR
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3

printf 'the cat sat on the mat\nand the dog sat too\n' > "$tmp/a.txt"
printf 'zebras are striped\n' > "$tmp/b.txt"
printf 'the cat and the zebra\n' > "$tmp/t1.txt"
printf 'a new byte: q\n' > "$tmp/t2.txt"
run 1 data convert --from text --context 8 --test "$tmp/t1.txt" --test "$tmp/t2.txt" --out "$tmp/u.h5" "$tmp/a.txt" "$tmp/b.txt"
check "convert exits 0 (status $(rc))" test "$(rc)" = 0

want=$("$py" - "$tmp" <<'PY'
import math, sys
d = sys.argv[1]
V, EOT = 257, 256
def targets(names):
    out = []
    for n in names:
        out += list(open(d + "/" + n, "rb").read()) + [EOT]
    return out
tr, te = targets(["a.txt", "b.txt"]), targets(["t1.txt", "t2.txt"])
cnt = [0] * V
for v in tr: cnt[v] += 1
ce = -sum(math.log((cnt[v] + 1) / (len(tr) + V)) for v in te) / len(te)
print("test cross-entropy %.4f nats/token, perplexity %.3f" % (ce, math.exp(ce)))
PY
)
for np in 1 2; do
  run $np data info "$tmp/u.h5"
  check "$np rank(s): info exits 0 (status $(rc))" test "$(rc)" = 0
  check "$np rank(s): unigram baseline = the text's ($want)" has "$tmp/out" "add-one smoothing over vocab 257): $want"
done

make_blobs 40 20
run 1 data info "$tmp/blobs.h5"
check "labelled info exits 0 (status $(rc))" test "$(rc)" = 0
check "labelled data: no unigram line" test "$(grep -c unigram "$tmp/out")" = 0

echo "cli_data_unigram: $passed passed, $failed failed"
[ "$failed" = 0 ]
