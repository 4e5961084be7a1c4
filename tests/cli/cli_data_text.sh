#!/usr/bin/env bash
# `dpmpi data convert --from text` and `--from tokens` end to end: a Debian text corpus (the licence
# texts of base-files, /usr/share/common-licenses, and the copyright files of /usr/share/doc joined with a
# '%' separator line) converted on 1 and 2 ranks; its rows checked against an independent Python
# implementation of the windowing and every document rebuilt from its windows; `data info` on 1 and 3
# ranks (the same digest); NumPy .npy files written by NumPy itself (formats 1.0, 2.0, 3.0; int32, int64,
# uint16) read back with h5py; the user errors; and `dpmpi train` refusing a token dataset with an image
# model. Python with NumPy and h5py (Debian's python3-h5py) is the reference.
# Usage: bash tests/cli/cli_data_text.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"
lic=/usr/share/common-licenses
py=/usr/bin/python3

# --- the licence corpus, one document per file, split by document hash; on 1 and on 2 ranks ---
for np in 1 2; do
  run "$np" data convert --from text --context 128 --test-fraction 0.25 --out "$tmp/lic$np.h5" "$lic"/*
  check "np=$np text convert exits 0 (status $(rc))" test "$(rc)" = 0
  check "np=$np: train counts printed" has_re "$tmp/out" "train: [0-9]+ documents \(0 empty skipped\), [0-9]+ windows of 129 tokens, [0-9]+ target tokens, [0-9]+ windows padded"
  check "np=$np: test counts printed" has_re "$tmp/out" "test: [1-9][0-9]* documents"
  check "np=$np: the tokenizer named" has "$tmp/out" "byte tokens: vocab 257, end-of-text 256, pad 255"
  check "np=$np: no temporary file left" test -z "$(ls "$tmp" | grep '\.tmp\.')"
done
check "1-rank and 2-rank conversions are identical" h5diff -q "$tmp/lic1.h5" "$tmp/lic2.h5"
cp "$tmp/out" "$tmp/convert.out"

# the rows against an independent implementation (Python): documents rebuilt from the windows, each
# document in one split, and each split's rows equal to the windows of its documents in file order
h5py_check "text rows: windows, EOT, padding, split by document, against Python" '
import sys, glob, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
a = f.attrs
assert a["format"] == "dpmpi-dataset" and a["format_version"] == 2 and a["kind"] == "tokens", dict(a)
assert a["vocab"] == 257 and a["pad_id"] == 255 and a["eot_id"] == 256 and a["tokenizer"] == "bytes" and a["source"] == "text"
T = int(sys.argv[2])
def windows(doc):
    seq = [256] + list(doc) + [256]
    rows = []
    for k in range(0, len(seq) - 1, T):
        w = seq[k:k + T + 1]
        rows.append(w + [255] * (T + 1 - len(w)))
    return rows
def rebuild(rows):
    docs, cur = [], None
    for r in rows:
        if r[0] == 256:
            assert cur is None, "a document never closed"
            cur = []
        else:
            assert cur is not None and r[0] == cur[-1], "a continuation row does not start at the last target"
        for t in r[1:]:
            if cur is None:
                assert t == 255, "id after the closing EOT"
            elif t == 256:
                docs.append(bytes(cur)); cur = None
            else:
                assert t < 255; cur.append(t)
    assert cur is None
    return docs
files = sorted(glob.glob(sys.argv[3] + "/*"))
texts = [open(p, "rb").read() for p in files]
got, total = {}, 0
for s in ("train", "test"):
    x = f[s + "/tokens"]
    assert x.dtype == np.int32 and x.shape[1] == T + 1 and x.fletcher32
    rows = x[:].tolist()
    docs = rebuild(rows)
    total += len(docs)
    for d in docs:  # (GPL is a link to GPL-3: identical documents land in the same split)
        assert d in texts, "a rebuilt document is not a file"
        assert got.get(d, s) == s, "a document in two splits"
        got[d] = s
    want = [w for t in texts if t in docs for w in windows(t)]
    assert want == rows, s + ": rows differ from the Python windows"
assert total == len([t for t in texts if t]), "documents lost"
print(total, "documents")
' "$tmp/lic1.h5" 128 "$lic"

# --- data info on 1 and 3 ranks: the same digest, every id read by its shard's rank ---
for np in 1 3; do
  run "$np" data info "$tmp/lic1.h5"
  check "np=$np info exits 0" test "$(rc)" = 0
  check "np=$np info: token attributes" has "$tmp/out" "token data: vocab 257, pad id 255, end-of-text id 256, tokenizer bytes"
  check "np=$np info: context" has "$tmp/out" "context T = 128"
  check "np=$np info: padding counted" has_re "$tmp/out" "padding \(masked out of the loss\): /train [0-9]+ of [0-9]+ targets, /test [0-9]+ of [0-9]+"
  check "np=$np info: shards" has "$tmp/out" "read as $np shard"
  grep -E '^digest: /train [0-9a-f]{16}, /test [0-9a-f]{16} ' "$tmp/out" | sed 's/ (read as.*//' >"$tmp/digest$np"
  check "np=$np info: the digests" test "$(wc -l <"$tmp/digest$np")" = 1
done
check "info: digests equal on 1 and 3 ranks" cmp -s "$tmp/digest1" "$tmp/digest3"
train_windows=$(grep -oE '^train: [0-9]+ examples' "$tmp/out" | grep -oE '[0-9]+')
check "info: the converter's window count" has "$tmp/convert.out" "$train_windows windows of 129 tokens"

# --- test files by name; --per-document ---
run 1 data convert --from text --context 64 --test "$lic/GPL-3" --test "$lic/Apache-2.0" --out "$tmp/byfile.h5" \
  "$lic/BSD" "$lic/MPL-2.0" "$lic/Artistic"
check "split by file (status $(rc))" test "$(rc)" = 0
check "split by file: 2 test documents" has_re "$tmp/out" "test: 2 documents"
run 1 data convert --from text --context 64 --per-document --test "$lic/GPL-3" --out "$tmp/perdoc.h5" "$lic/BSD" "$lic/MPL-2.0"
check "--per-document (status $(rc))" test "$(rc)" = 0
check "--per-document: truncations counted" has "$tmp/out" "--per-document: 2 training and 1 test documents truncated to their first 64 targets"
check "--per-document: one window per document" has "$tmp/out" "train: 2 documents (0 empty skipped), 2 windows of 65 tokens"
h5py_check "--per-document rows: EOT, then the first 64 bytes" '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
rows = f["train/tokens"][:]
for r, p in zip(rows, sys.argv[2:]):
    b = open(p, "rb").read()
    assert r[0] == 256 and list(r[1:]) == list(b[:64]), p
' "$tmp/perdoc.h5" "$lic/BSD" "$lic/MPL-2.0"

# --- documents separated by a line: Debian copyright files joined with '%' lines (fortune style) ---
n_docs=0
: >"$tmp/copyrights.txt"
for f in $(ls /usr/share/doc/*/copyright | head -120); do
  if iconv -f UTF-8 -t UTF-8 "$f" >/dev/null 2>&1 && ! grep -qx '%' "$f" && [ -s "$f" ]; then
    cat "$f" >>"$tmp/copyrights.txt"
    [ -z "$(tail -c 1 "$f")" ] || echo >>"$tmp/copyrights.txt"
    echo % >>"$tmp/copyrights.txt"
    n_docs=$((n_docs + 1))
  fi
done
check "at least 50 UTF-8 copyright files found ($n_docs)" test "$n_docs" -ge 50
run 1 data convert --from text --context 256 --separator % --test-fraction 0.2 --out "$tmp/sep.h5" "$tmp/copyrights.txt"
check "--separator (status $(rc))" test "$(rc)" = 0
got_docs=$(grep -oE '^dpmpi: (train|test): [0-9]+ documents' "$tmp/out" | awk '{ n += $3 } END { print n }')
check "--separator: $n_docs documents ($got_docs)" test "$got_docs" = "$n_docs"
check "--separator: the trailing separator leaves one empty document" has_re "$tmp/out" "\(1 empty skipped\)"
h5py_check "--separator: documents rebuilt equal the copyright files, identical ones in one split" '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
docs, cur = [], b""
for line in open(sys.argv[2], "rb").read().splitlines(keepends=True):
    if line.rstrip(b"\r\n") == b"%":
        if cur: docs.append(cur)
        cur = b""
    else:
        cur += line
if cur: docs.append(cur)
seen = {}
for s in ("train", "test"):
    cur, n = None, 0
    for r in f[s + "/tokens"][:].tolist():
        if r[0] == 256: cur = []
        for t in r[1:]:
            if cur is None: continue
            if t == 256:
                d = bytes(cur); assert d in docs; assert seen.get(d, s) == s, "a duplicate in both splits"; seen[d] = s; cur = None; n += 1
            elif t != 255: cur.append(t)
    assert n > 0, s
assert set(seen) == set(docs)
' "$tmp/sep.h5" "$tmp/copyrights.txt"

# --- text errors (on 2 ranks too: every rank exits 2, one line) ---
printf 'fine\nstill fine\nnot \xff fine\n' >"$tmp/bad.txt"
for np in 1 2; do
  expect_usage_error "$np" "bad.txt:3:5: invalid UTF-8 (byte 0xFF); text files must be UTF-8" data convert --from text \
    --context 8 --test-fraction 0.5 --out "$tmp/x.h5" "$lic/BSD" "$tmp/bad.txt"
done
for np in 1; do
  expect_usage_error "$np" "--from text needs --context T" data convert --from text --test-fraction 0.5 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--from text needs --test FILES or --test-fraction X, not both" data convert --from text \
    --context 8 --test "$lic/GPL-3" --test-fraction 0.5 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--from text needs --test FILES or --test-fraction X" data convert --from text --context 8 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--from text needs training files" data convert --from text --context 8 --test "$lic/BSD" --out "$tmp/x.h5"
  expect_usage_error "$np" "--context needs an integer in [1, 16777216], not '0'" data convert --from text --context 0 --test-fraction 0.5 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--test-fraction needs a number in (0, 1), not '1'" data convert --from text --context 8 --test-fraction 1 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--vocab is for --from tokens" data convert --from text --context 8 --vocab 9 --test-fraction 0.5 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "no document of the 1 went to the test split" data convert --from text --context 8 --test-fraction 0.001 --out "$tmp/x.h5" "$lic/BSD"
  expect_usage_error "$np" "--context is for --from text" data convert --from tokens --context 8 --train a.npy --test b.npy --vocab 9 --out "$tmp/x.h5"
  expect_usage_error "$np" "--train is given twice" data convert --from tokens --train a.npy --train c.npy --test b.npy --vocab 9 --out "$tmp/x.h5"
  expect_usage_error "$np" "--from tokens needs --vocab V" data convert --from tokens --train a.npy --test b.npy --out "$tmp/x.h5"
  check "np=$np failed conversions leave no output" test ! -e "$tmp/x.h5"
done

# --- token arrays written by NumPy: every dtype and format version ---
if $py -c 'import numpy' 2>/dev/null; then
  $py - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(5)
def save(name, a, version):
    with open(f"{d}/{name}", "wb") as f:
        np.lib.format.write_array(f, a, version=version)
ids = rng.integers(0, 50257, size=(37, 17))
ids[3, 10:] = -100                                   # padding at the end of row 3
save("i4_v1.npy", ids.astype("<i4"), (1, 0))
save("i8_v2.npy", ids.astype("<i8"), (2, 0))
save("te_v1.npy", ids[:5].astype("<i4"), (1, 0))
save("te_l9.npy", ids[:5, :9].astype("<i4"), (2, 0))
u = rng.integers(0, 65536, size=(11, 17)).astype("<u2")
save("u2_v3.npy", u, (3, 0))
save("u2_te.npy", u[:3], (1, 0))
save("fortran.npy", np.asfortranarray(ids.astype("<i4")), (1, 0))
big = ids.astype("<i4"); big[20, 7] = 50257
save("big.npy", big, (1, 0))
save("empty.npy", np.zeros((0, 17), "<i4"), (1, 0))
rag = np.empty(2, dtype=object); rag[0] = [1, 2, 3]; rag[1] = [4, 5]
np.save(f"{d}/ragged.npy", rag, allow_pickle=True)
np.save(f"{d}/f4.npy", ids.astype("<f4"))
PY
  for tr in i4_v1 i8_v2; do
    run 1 data convert --from tokens --train "$tmp/$tr.npy" --test "$tmp/te_v1.npy" --vocab 50257 --pad-id -100 --out "$tmp/$tr.h5"
    check "tokens $tr (status $(rc))" test "$(rc)" = 0
    h5py_check "tokens $tr: ids read back" '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f.attrs["kind"] == "tokens" and f.attrs["vocab"] == 50257 and f.attrs["pad_id"] == -100 and f.attrs["tokenizer"] == "external"
assert (f["train/tokens"][:] == np.load(sys.argv[2])).all() and (f["test/tokens"][:] == np.load(sys.argv[3])).all()
' "$tmp/$tr.h5" "$tmp/$tr.npy" "$tmp/te_v1.npy"
  done
  check "int32 and int64 inputs give the same rows" h5diff -q "$tmp/i4_v1.h5" "$tmp/i8_v2.h5" /train/tokens /train/tokens
  run 1 data convert --from tokens --train "$tmp/u2_v3.npy" --test "$tmp/u2_te.npy" --vocab 65536 --out "$tmp/u2.h5"
  check "tokens uint16 .npy 3.0 (status $(rc))" test "$(rc)" = 0
  h5py_check "tokens u2: ids read back" '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert (f["train/tokens"][:] == np.load(sys.argv[2]).astype(np.int64)).all() and f.attrs["pad_id"] == -1
' "$tmp/u2.h5" "$tmp/u2_v3.npy"
  for np in 1 3; do
    run "$np" data info "$tmp/i4_v1.h5"
    check "np=$np info tokens: attributes" has "$tmp/out" "token data: vocab 50257, pad id -100, end-of-text id -1 (none), tokenizer external"
    check "np=$np info tokens: 7 padded targets" has "$tmp/out" "padding (masked out of the loss): /train 7 of 592 targets, /test 7 of 80"
    grep -E '^digest: ' "$tmp/out" | sed 's/ (read as.*//' >"$tmp/tdigest$np"
    check "np=$np info tokens: the digests" test "$(wc -l <"$tmp/tdigest$np")" = 1
  done
  check "info tokens: digests equal on 1 and 3 ranks" cmp -s "$tmp/tdigest1" "$tmp/tdigest3"
  expect_usage_error 2 "big.npy: row 20, column 7: token id 50257 is outside [0, 50257)" data convert --from tokens --train "$tmp/big.npy" --test "$tmp/te_v1.npy" --vocab 50257 --pad-id -100 --out "$tmp/x.h5"
  for np in 1; do
    expect_usage_error "$np" "fortran.npy: fortran_order is True" data convert --from tokens --train "$tmp/fortran.npy" --test "$tmp/te_v1.npy" --vocab 50257 --pad-id -100 --out "$tmp/x.h5"
    expect_usage_error "$np" "big.npy: row 20, column 7: token id 50257 is outside [0, 50257) (--vocab 50257) and is not the pad id -100" data convert --from tokens --train "$tmp/big.npy" --test "$tmp/te_v1.npy" --vocab 50257 --pad-id -100 --out "$tmp/x.h5"
    expect_usage_error "$np" "i4_v1.npy: row 3, column 10: token id -100 is outside [0, 50257) (--vocab 50257, no --pad-id)" data convert --from tokens --train "$tmp/i4_v1.npy" --test "$tmp/te_v1.npy" --vocab 50257 --out "$tmp/x.h5"
    expect_usage_error "$np" "empty.npy: empty array (0 rows)" data convert --from tokens --train "$tmp/empty.npy" --test "$tmp/te_v1.npy" --vocab 50257 --out "$tmp/x.h5"
    expect_usage_error "$np" "ragged.npy: dtype '|O' is not supported (an object array: ragged rows?" data convert --from tokens --train "$tmp/ragged.npy" --test "$tmp/te_v1.npy" --vocab 50257 --out "$tmp/x.h5"
    expect_usage_error "$np" "f4.npy: dtype '<f4' is not supported" data convert --from tokens --train "$tmp/f4.npy" --test "$tmp/te_v1.npy" --vocab 50257 --out "$tmp/x.h5"
    head -c 300 "$tmp/i4_v1.npy" >"$tmp/cut.npy"
    expect_usage_error "$np" "cut.npy: truncated: the header says 37 x 17 <i4 (2516 bytes of data) but the file holds 172" data convert --from tokens --train "$tmp/cut.npy" --test "$tmp/te_v1.npy" --vocab 50257 --pad-id -100 --out "$tmp/x.h5"
    expect_usage_error "$np" "te_l9.npy has rows of 9 ids but $tmp/i4_v1.npy has 17; both splits need the same T + 1" data convert --from tokens --train "$tmp/i4_v1.npy" --test "$tmp/te_l9.npy" --vocab 50257 --pad-id -100 --out "$tmp/x.h5"
    expect_usage_error "$np" "lic1.h5: not a NumPy .npy file" data convert --from tokens --train "$tmp/lic1.h5" --test "$tmp/te_v1.npy" --vocab 9 --out "$tmp/x.h5"
    check "np=$np failed token conversions leave no output" test ! -e "$tmp/x.h5"
  done
else
  bad "numpy missing for /usr/bin/python3 (apt-get install python3-h5py pulls it in)"
fi

# --- dpmpi train refuses a token dataset with an image / feature model: one line, every rank ---
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/lic1.h5
[model]
layers = dense out=32; relu; dense out=10
[train]
steps = 2
batch_size = 16
[privacy]
noise_multiplier = 1.0
delta = 1e-5
clip = 1
[run]
seed = 1
INI
for np in 1 2; do
  expect_usage_error "$np" "lic1.h5: holds token data (kind = tokens, context 128, vocab 257); the [model] layers of $tmp/job.ini take images or feature vectors" train "$tmp/job.ini"
done

finish cli_data_text
