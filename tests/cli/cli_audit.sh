#!/usr/bin/env bash
# `dpmpi audit canaries|exposure` and `data convert --canaries` end to end. A tiny byte-level GPT is trained
# non-privately for many steps on a small corpus into which 4 canaries 'my code is ###' were inserted 16
# times each (4 control canaries never inserted): each inserted canary ranks near the top of the 1000
# candidates (exposure >= 7 of log2(1000) = 9.97) while the controls stay near chance (mean exposure < 4; a
# random candidate's expectation is 1/ln 2 = 1.44). The exact rank (the digit-trie scoring, 100 forwards)
# is checked against an independent NumPy GPT-2 forward in float64 over every one of the 1000 candidates
# (ranks equal, log-likelihoods within 1e-3), against --brute-force (one full-context forward per
# candidate), and on 2 ranks against 1 rank; the sampled estimate (sample:2000) is reproducible under a seed
# and close to the exact exposure. Conversion: each repetition is its own training window, none in the test
# split, which equals the split converted without canaries; the canary file is reproducible under a seed
# and different under the secure key. Errors: bad patterns, damaged canary files, a canary longer than the
# context, options of the wrong format, a non-GPT checkpoint, too many digits for an exact rank.
# Usage: bash tests/cli/cli_audit.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3

# ---- canary files ------------------------------------------------------------------------------------
run 1 audit canaries --pattern "my code is ###" --repeats 0,16 --per-repeat 4 --seed 5 --out "$tmp/can.json"
check "audit canaries exits 0 (status $(rc))" test "$(rc)" = 0
check "audit canaries says what it wrote" has "$tmp/out" "8 canaries of pattern 'my code is ###' (3 digits, seeded), 64 training documents"
run 2 audit canaries --pattern "my code is ###" --repeats 0,16 --per-repeat 4 --seed 5 --out "$tmp/can2.json"
check "the same seed on 2 ranks gives the same file" cmp -s "$tmp/can.json" "$tmp/can2.json"
run 1 audit canaries --pattern "pin ######" --repeats 1,4 --per-repeat 3 --out "$tmp/sec1.json"
run 1 audit canaries --pattern "pin ######" --repeats 1,4 --per-repeat 3 --out "$tmp/sec2.json"
check "secure keys give different secrets" bash -c "! cmp -s '$tmp/sec1.json' '$tmp/sec2.json'"
check "secure key recorded" grep -q '"key":[[:space:]]*"secure"' "$tmp/sec1.json"
"$py" - "$tmp/can.json" "$tmp/sec1.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys
a = json.load(open(sys.argv[1]))
assert a["pattern"] == "my code is ###" and a["digits"] == 3, a
c = a["canaries"]
assert [x["repeats"] for x in c] == [0] * 4 + [16] * 4, c
assert len({x["secret"] for x in c}) == 8 and all(len(x["secret"]) == 3 and x["secret"].isdigit() for x in c)
assert all(x["text"] == "my code is " + x["secret"] for x in c)
b = json.load(open(sys.argv[2]))
assert [x["repeats"] for x in b["canaries"]] == [1, 1, 1, 4, 4, 4] and all(len(x["secret"]) == 6 for x in b["canaries"])
print("ok")
PY
check "canary files hold what was asked: $(tail -1 "$tmp/py.out")" has "$tmp/py.out" ok

# ---- a corpus with canaries ------------------------------------------------------------------------
"$py" - "$tmp/corpus.txt" <<'PY'
import random, sys
r = random.Random(1)
w = "the a one old new red big small cat dog bird fish tree house road river sat ran saw ate under over near".split()
docs = [" ".join(r.choice(w) for _ in range(r.randint(3, 6))) for _ in range(300)]
open(sys.argv[1], "w").write("\n%\n".join(docs) + "\n")
PY
run 1 data convert --from text --context 32 --separator % --test-fraction 0.1 --out "$tmp/plain.h5" "$tmp/corpus.txt"
check "convert without canaries exits 0 (status $(rc))" test "$(rc)" = 0
run 1 data convert --from text --context 32 --separator % --test-fraction 0.1 --canaries "$tmp/can.json" \
  --out "$tmp/d.h5" "$tmp/corpus.txt"
check "convert with canaries exits 0 (status $(rc))" test "$(rc)" = 0
check "convert counts the canary documents" has "$tmp/out" "train: 64 of its documents are canaries"
# at --test-fraction 0.9 too (a canary split like a document would land in the test split with chance 0.9)
run 1 data convert --from text --context 32 --separator % --test-fraction 0.9 --out "$tmp/plain9.h5" "$tmp/corpus.txt"
run 1 data convert --from text --context 32 --separator % --test-fraction 0.9 --canaries "$tmp/can.json" \
  --out "$tmp/d9.h5" "$tmp/corpus.txt"
check "convert at test fraction 0.9 exits 0 (status $(rc))" test "$(rc)" = 0
for pair in "plain.h5 d.h5" "plain9.h5 d9.h5"; do
read -r plain canaried <<<"$pair"
"$py" - "$tmp/$plain" "$tmp/$canaried" "$tmp/can.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys, h5py, numpy as np
p, d = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
can = json.load(open(sys.argv[3]))["canaries"]
pt, dt = p["train/tokens"][()], d["train/tokens"][()]
assert np.array_equal(p["test/tokens"][()], d["test/tokens"][()]), "test split changed"
assert dt.shape[0] == pt.shape[0] + 64 and np.array_equal(dt[:pt.shape[0]], pt), (pt.shape, dt.shape)
def row(text):
    ids = [256] + list(text.encode()) + [256]
    return np.array(ids + [255] * (33 - len(ids)), dtype=dt.dtype)
for x in can:
    r = row(x["text"])
    for name, a in (("train", dt), ("test", d["test/tokens"][()])):
        n = int((a == r).all(axis=1).sum())
        want = x["repeats"] if name == "train" else 0
        assert n == want, (x, name, n)
print("ok")
PY
check "$canaried: each repetition is one training window, none in test, the rest unchanged: $(tail -1 "$tmp/py.out")" has "$tmp/py.out" ok
done

# ---- a model that memorizes the repeated canaries -------------------------------------------------
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/d.h5
[model]
layers = embed vocab=257 context=32 width=32; block heads=2; lm_head tied=1
[train]
optimizer = adamw
steps = 400
batch_size = 32
physical_batch_size = 32
lr = 0.003
[privacy]
enabled = false
[run]
seed = 3
INI
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/ck"
check "train exits 0 (status $(rc))" test "$(rc)" = 0

run 1 audit exposure "$tmp/ck" --canaries "$tmp/can.json" --json "$tmp/e1.json"
check "exposure exits 0 (status $(rc))" test "$(rc)" = 0
check "exposure says the rank is exact" has "$tmp/out" "1000 candidates (10^3), rank exact (every candidate scored)"
check "exposure prints the table" has_re "$tmp/out" "^canary +secret +repeats +log-likelihood +rank +exposure"
cp "$tmp/out" "$tmp/table1"
"$py" - "$tmp/e1.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys
e = json.load(open(sys.argv[1]))
assert e["rank"] == "exact" and e["candidates"] == 1000
seen = [c["exposure"] for c in e["canaries"] if c["repeats"] == 16]
ctrl = [c["exposure"] for c in e["canaries"] if c["repeats"] == 0]
print("inserted", seen, "controls", ctrl)
assert min(seen) >= 7, "an inserted canary is not memorized"
assert sum(ctrl) / len(ctrl) < 4, "controls far above chance"
print("ok")
PY
check "inserted canaries exposed (>= 7), controls near chance (mean < 4): $(head -1 "$tmp/py.out")" has "$tmp/py.out" ok

# an independent reference: GPT-2 forward in NumPy (float64) over all 1000 candidates, ranks and log-likelihoods
"$py" - "$tmp/ck/ckpt-00000400.h5" "$tmp/can.json" "$tmp/e1.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")["model"]
t = {}
f.visititems(lambda n, o: t.__setitem__(n.split("/")[-1], o[()].astype(np.float64)) if isinstance(o, h5py.Dataset) else None)
C, H = t["wte.weight"].shape[1], 2
def ln(x, w, b):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b
def gelu(x): return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
def forward(ids):  # ids [B, L] -> log-softmax [B, L, V]
    B, L = ids.shape
    x = t["wte.weight"][ids] + t["wpe.weight"][:L]
    l = 0
    while f"h.{l}.ln_1.weight" in t:
        g = lambda k: t[f"h.{l}.{k}"]
        h = ln(x, g("ln_1.weight"), g("ln_1.bias")) @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = np.split(h, 3, axis=-1)
        sh = lambda a: a.reshape(B, L, H, C // H).transpose(0, 2, 1, 3)
        q, k, v = sh(q), sh(k), sh(v)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H)
        a = np.where(np.tril(np.ones((L, L), bool)), a, -np.inf)
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(B, L, C)
        x = x + y @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        h = gelu(ln(x, g("ln_2.weight"), g("ln_2.bias")) @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        x = x + h @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
        l += 1
    z = ln(x, t["ln_f.weight"], t["ln_f.bias"]) @ t["wte.weight"].T
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
prefix = list(b"my code is ")
P = len(prefix)
cands = [f"{v:03d}" for v in range(1000)]
ids = np.array([[256] + prefix + [ord(c) for c in s] for s in cands])
lp = forward(ids)
ll = np.array([sum(lp[i, P + k, ord(s[k])] for k in range(3)) for i, s in enumerate(cands)])
e = json.load(open(sys.argv[3]))
worst = 0
for c in e["canaries"]:
    v = int(c["secret"])
    rank = 1 + int((ll > ll[v]).sum())
    worst = max(worst, abs(ll[v] - c["log_likelihood"]))
    assert rank == c["rank"], (c, rank)
    assert abs(c["exposure"] - (np.log2(1000) - np.log2(rank))) < 1e-9, c
    assert abs(ll[v] - c["log_likelihood"]) < 1e-3, (c, ll[v])
print(f"ranks equal, worst log-likelihood difference {worst:.2e}")
print("ok")
PY
check "exact ranks equal the NumPy reference over all 1000 candidates ($(head -1 "$tmp/py.out"))" has "$tmp/py.out" ok

run 1 audit exposure "$tmp/ck" --canaries "$tmp/can.json" --brute-force --json "$tmp/eb.json"
check "brute force exits 0 (status $(rc))" test "$(rc)" = 0
check "brute force says so" has "$tmp/out" "brute force: one full forward per candidate"
run 2 audit exposure "$tmp/ck" --canaries "$tmp/can.json" --json "$tmp/e2.json"
check "2 ranks exit 0 (status $(rc))" test "$(rc)" = 0
check "2 ranks print the table once" test "$(grep -c '^canary' "$tmp/out")" = 1
"$py" - "$tmp/e1.json" "$tmp/eb.json" "$tmp/e2.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys
a, b, c = (json.load(open(p))["canaries"] for p in sys.argv[1:])
for x, y, z in zip(a, b, c):
    assert x["rank"] == y["rank"] == z["rank"], (x, y, z)
    assert abs(x["log_likelihood"] - y["log_likelihood"]) < 1e-4, (x, y)
    assert abs(x["log_likelihood"] - z["log_likelihood"]) < 1e-6, (x, z)
print("ok")
PY
check "brute force and 2 ranks give the 1-rank ranks: $(tail -1 "$tmp/py.out")" has "$tmp/py.out" ok

run 1 audit exposure "$tmp/ck" --canaries "$tmp/can.json" --candidates sample:2000 --seed 7 --json "$tmp/es.json"
check "sampled exits 0 (status $(rc))" test "$(rc)" = 0
check "sampled says so" has "$tmp/out" "rank estimated from samples"
run 2 audit exposure "$tmp/ck" --canaries "$tmp/can.json" --candidates sample:2000 --seed 7 --json "$tmp/es2.json"
"$py" - "$tmp/e1.json" "$tmp/es.json" "$tmp/es2.json" <<'PY' >"$tmp/py.out" 2>&1
import json, sys
a, s, s2 = (json.load(open(p))["canaries"] for p in sys.argv[1:])
for x, y, z in zip(a, s, s2):
    assert y["rank"] == z["rank"] and abs(y["exposure_skew_normal"] - z["exposure_skew_normal"]) < 1e-9, (y, z)
    if x["repeats"] == 0:
        assert abs(x["exposure"] - y["exposure"]) < 0.5, (x, y)
    else:
        assert y["exposure_skew_normal"] >= 6, y
print("ok")
PY
check "sampled: 2 ranks = 1 rank, controls within 0.5 of exact, inserted extrapolated >= 6: $(tail -1 "$tmp/py.out")" has "$tmp/py.out" ok

# ---- errors ----------------------------------------------------------------------------------------
expect_usage_error 1 "expected one run of '#'" audit canaries --pattern "no secret" --repeats 1 --out "$tmp/x.json"
expect_usage_error 2 "expected one run of '#'" audit canaries --pattern "## and ##" --repeats 1 --out "$tmp/x.json"
expect_usage_error 1 "not printable ASCII" audit canaries --pattern "$(printf 'caf\xc3\xa9 ##')" --repeats 1 --out "$tmp/x.json"
expect_usage_error 1 "--repeats 'a,1'" audit canaries --pattern "c ##" --repeats a,1 --out "$tmp/x.json"
expect_usage_error 1 "expected at most half of the 10 candidates" audit canaries --pattern "c #" --repeats 1 --per-repeat 6 --out "$tmp/x.json"
expect_usage_error 1 "--out FILE.json is required" audit canaries --pattern "c ##" --repeats 1
expect_usage_error 1 "unknown subcommand 'expose'" audit expose "$tmp/ck"
sed 's/"secret":[[:space:]]*"\([0-9]*\)"/"secret": "\10"/' "$tmp/can.json" >"$tmp/bad1.json"
expect_usage_error 1 "canary 1: 'secret': expected 3 decimal digits" audit exposure "$tmp/ck" --canaries "$tmp/bad1.json"
"$py" -c "
import json; a = json.load(open('$tmp/can.json')); a['canaries'][2]['text'] = 'my code is 000'
json.dump(a, open('$tmp/bad2.json', 'w'))
a = json.load(open('$tmp/can.json')); a['canaries'][1]['secret'] = a['canaries'][0]['secret']
a['canaries'][1]['text'] = a['canaries'][0]['text']; json.dump(a, open('$tmp/bad3.json', 'w'))"
expect_usage_error 1 "canary 3: 'text' is" audit exposure "$tmp/ck" --canaries "$tmp/bad2.json"
expect_usage_error 1 "secrets must be distinct" data convert --from text --context 32 --test-fraction 0.1 --canaries "$tmp/bad3.json" --out "$tmp/x.h5" "$tmp/corpus.txt"
head -c 40 "$tmp/can.json" >"$tmp/bad4.json"
expect_usage_error 1 "not a canary file" audit exposure "$tmp/ck" --canaries "$tmp/bad4.json"
expect_usage_error 1 "a canary of 14 bytes needs --context >= 15" data convert --from text --context 12 --test-fraction 0.1 --canaries "$tmp/can.json" --out "$tmp/x.h5" "$tmp/corpus.txt"
make_blobs 64 16
expect_usage_error 1 "--canaries is for --from text" data convert --from csv --train "$tmp/train.csv" --test "$tmp/test.csv" --label-column label --canaries "$tmp/can.json" --out "$tmp/x.h5"
cat >"$tmp/mlp.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=4
[train]
steps = 1
batch_size = 8
[privacy]
enabled = false
[run]
seed = 1
INI
run 1 train "$tmp/mlp.ini" --checkpoint.dir="$tmp/mlp"
expect_usage_error 2 "not a GPT checkpoint" audit exposure "$tmp/mlp" --canaries "$tmp/can.json"
run 1 audit canaries --pattern "pin ########" --repeats 1 --seed 1 --out "$tmp/d8.json"
expect_usage_error 2 "too many to rank exactly" audit exposure "$tmp/ck" --canaries "$tmp/d8.json"
run 1 audit canaries --pattern "$("$py" -c "print('x' * 30)") ###" --repeats 1 --seed 1 --out "$tmp/long.json"
expect_usage_error 1 "the model's context is 32 tokens, dpmpi audit exposure needs 34" audit exposure "$tmp/ck" --canaries "$tmp/long.json"
expect_usage_error 1 "--candidates 'sample:1'" audit exposure "$tmp/ck" --canaries "$tmp/can.json" --candidates sample:1
expect_usage_error 1 "--canaries FILE.json is required" audit exposure "$tmp/ck"
expect_usage_error 1 "drop --candidates sample:M" audit exposure "$tmp/ck" --canaries "$tmp/can.json" --brute-force --candidates sample:10

echo "cli_audit: $passed passed, $failed failed"
[ "$failed" = 0 ]
