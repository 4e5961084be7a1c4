#!/usr/bin/env bash
# dpmpi model import / export / info with Hugging Face GPT-2 safetensors: the reference checkpoint
# (../shared/refs/gpt) imports with and without the 'transformer.' prefix, with the attention buffers, with a
# tied (equal) or untied lm_head.weight, from BF16; a renamed, missing, extra or reshaped tensor, a differing
# tied head, a wrong config and truncated files each give status 2 and one error line naming the file and
# tensor or key; export -> safetensors gives back exactly the input's F32 data bytes and a config.json.
# Usage: bash tests/cli/cli_model.sh BUILD_DIR SOURCE_DIR
source "$(dirname "$0")/../lib_cli.sh"

ref=${DPM_SHARED_DIR:-$2/../shared}/refs/gpt
st=$ref/model.safetensors
cfg=$ref/config.json

# st.py: safetensors variants of the reference (Python standard library only: struct, json)
cat >"$tmp/st.py" <<'PY'
import json, struct, sys

def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    items = sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
    data = b[8 + n:]
    return [[k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]] for k, v in items], meta

def save(path, tensors, meta={"format": "pt"}):
    h, at = {}, 0
    if meta is not None:
        h["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        at += len(raw)
    text = json.dumps(h).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))

def find(ts, name):
    return next(t for t in ts if t[0] == name)

op, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
ts, meta = load(src)
if op == "datacmp":  # exit 0 iff the two files' data sections are byte-identical
    a, b = (open(p, "rb").read() for p in (src, out))
    na, nb = (struct.unpack("<Q", x[:8])[0] for x in (a, b))
    sys.exit(0 if a[8 + na:] == b[8 + nb:] else 1)
if op == "names":  # print the tensor names of src, one a line, in data order
    print("\n".join(t[0] for t in ts)); sys.exit(0)
if op == "prefix":
    for t in ts: t[0] = "transformer." + t[0]
elif op == "buffers":  # the causal-mask buffers that older transformers versions saved
    T = find(ts, "wpe.weight")[2][0]
    for l in range(2):
        ts.append(["transformer.h.%d.attn.bias" % l, "F32", [1, 1, T, T], struct.pack("<%df" % (T * T), *([1.0] * T * T))])
        ts.append(["h.%d.attn.masked_bias" % l, "F32", [], struct.pack("<f", -1e4)])
elif op == "rename":
    find(ts, "h.1.mlp.c_fc.weight")[0] = "h.1.mlp.fc.weight"
elif op == "missing":
    ts = [t for t in ts if t[0] != "ln_f.bias"]
elif op == "extra":
    ts.append(["h.2.ln_1.weight", "F32", [32], struct.pack("<32f", *([1.0] * 32))])
elif op == "reshape":
    find(ts, "h.0.attn.c_attn.weight")[2] = [96, 32]
elif op == "duplicate":  # the same tensor under both spellings
    t = find(ts, "ln_f.weight"); ts.append(["transformer.ln_f.weight", t[1], t[2], t[3]])
elif op in ("lm_tied", "lm_untied"):  # lm_head.weight equal to wte, or differing in one value
    w = bytearray(find(ts, "wte.weight")[3])
    if op == "lm_untied": w[4:8] = struct.pack("<f", 0.125)
    ts.append(["lm_head.weight", "F32", [64, 32], bytes(w)])
elif op == "bf16":  # BF16 (top half of each float) and, as out + ".f32", the F32 values it stands for
    exact = []
    for t in ts:
        n = len(t[3]) // 4
        hi = [(u >> 16) for u in struct.unpack("<%dI" % n, t[3])]
        exact.append([t[0], "F32", t[2], struct.pack("<%dI" % n, *[h << 16 for h in hi])])
        t[1], t[3] = "BF16", struct.pack("<%dH" % n, *hi)
    save(out + ".f32", exact, meta)
elif op == "f64":
    for t in ts:
        n = len(t[3]) // 4
        t[1], t[3] = "F64", struct.pack("<%dd" % n, *struct.unpack("<%df" % n, t[3]))
else:
    sys.exit("unknown op " + op)
save(out, ts, meta)
PY
mk() { /usr/bin/python3 "$tmp/st.py" "$@" || bad "st.py $*"; }
datacmp() { /usr/bin/python3 "$tmp/st.py" datacmp "$1" "$2"; }
# jcfg KEY VALUE...: $tmp/cfg.json = the reference config with KEY set to the JSON VALUE ("DEL" removes it)
jcfg() {
  /usr/bin/python3 - "$cfg" "$tmp/cfg.json" "$@" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
for k, v in zip(sys.argv[3::2], sys.argv[4::2]):
    if v == "DEL": c.pop(k, None)
    else: c[k] = json.loads(v)
json.dump(c, open(sys.argv[2], "w"))
PY
}
# expect_ok NP WHAT ARGS...: status 0
expect_ok() {
  local np=$1 what=$2; shift 2
  run "$np" "$@"
  if [ "$(rc)" = 0 ]; then ok; else bad "$what: status $(rc)"; sed 's/^/    /' "$tmp/err" >&2; fi
}

# --- the reference, as it is: import, info, export gives the same data bytes -------------------------
expect_ok 1 "import reference" model import --from safetensors --config "$cfg" "$st" --out "$tmp/init.h5"
check "import line" has "$tmp/out" "28 tensors, 28032 parameters"
expect_ok 1 "info" model info "$tmp/init.h5"
check "info config" has "$tmp/out" "vocab_size 64, n_positions 16, n_embd 32, n_head 4, n_layer 2, layer_norm_epsilon 1e-05, tie_word_embeddings true"
check "info tensor" has_re "$tmp/out" "h\.1\.mlp\.c_proj\.weight +\[128, 32\]"
check "info count" test "$(grep -c '^  [a-z]' "$tmp/out")" = 28
check "INIT.h5 dataset" h5dump -H -d /weights/h.0.attn.c_attn.weight "$tmp/init.h5" >/dev/null
check "INIT.h5 equals the reference weights" h5diff -q "$tmp/init.h5" "$ref/reference.h5" /weights /weights
mkdir -p "$tmp/out1"
expect_ok 1 "export" model export "$tmp/init.h5" --to safetensors "$tmp/out1/model.safetensors"
check "export: data bytes identical to the input" datacmp "$st" "$tmp/out1/model.safetensors"
check "export: same names in the same order" test "$(mk names "$st" -)" = "$(mk names "$tmp/out1/model.safetensors" -)"
check "export: config.json next to it" has "$tmp/out1/config.json" '"tie_word_embeddings":	true'
# the exported pair imports again to the same weights
expect_ok 1 "re-import" model import --from safetensors --config "$tmp/out1/config.json" "$tmp/out1/model.safetensors" --out "$tmp/init2.h5"
check "re-import equal" h5diff -q "$tmp/init.h5" "$tmp/init2.h5" /weights /weights
# on two ranks: the same file
expect_ok 2 "import on 2 ranks" model import --from safetensors --config "$cfg" "$st" --out "$tmp/init_np2.h5"
check "2 ranks: same weights" h5diff -q "$tmp/init.h5" "$tmp/init_np2.h5" /weights /weights

# --- accepted variants: prefix, buffers, tied lm_head, untied, BF16, F64 ------------------------------
for v in prefix buffers lm_tied f64; do
  mk "$v" "$st" "$tmp/$v.safetensors"
  expect_ok 1 "import $v" model import --from safetensors --config "$cfg" "$tmp/$v.safetensors" --out "$tmp/$v.h5"
  check "$v: same weights" h5diff -q "$tmp/init.h5" "$tmp/$v.h5" /weights /weights
  mkdir -p "$tmp/x$v"
  expect_ok 1 "export $v" model export "$tmp/$v.h5" --to safetensors "$tmp/x$v/m.safetensors"
  check "$v: exported data equal to the reference's" datacmp "$st" "$tmp/x$v/m.safetensors"
done
mk lm_untied "$st" "$tmp/untied.safetensors"
jcfg tie_word_embeddings false
expect_ok 1 "import untied" model import --from safetensors --config "$tmp/cfg.json" "$tmp/untied.safetensors" --out "$tmp/untied.h5"
check "untied: 29 tensors" has "$tmp/out" "29 tensors"
mkdir -p "$tmp/xu"
expect_ok 1 "export untied" model export "$tmp/untied.h5" --to safetensors "$tmp/xu/m.safetensors"
check "untied: data bytes identical" datacmp "$tmp/untied.safetensors" "$tmp/xu/m.safetensors"
check "untied: lm_head.weight last" test "$(mk names "$tmp/xu/m.safetensors" - | tail -1)" = lm_head.weight
check "untied: config says so" has "$tmp/xu/config.json" '"tie_word_embeddings":	false'
mk bf16 "$st" "$tmp/bf16.safetensors"
expect_ok 1 "import bf16" model import --from safetensors --config "$cfg" "$tmp/bf16.safetensors" --out "$tmp/bf16.h5"
check "bf16: from BF16" has "$tmp/out" "(from BF16)"
mkdir -p "$tmp/xb"
expect_ok 1 "export bf16" model export "$tmp/bf16.h5" --to safetensors "$tmp/xb/m.safetensors"
check "bf16: exported F32 = the BF16 values exactly" datacmp "$tmp/bf16.safetensors.f32" "$tmp/xb/m.safetensors"

# --- rejected tensors: status 2, one line naming the file and the tensor ------------------------------
imp() { expect_usage_error "$1" "$2" model import --from safetensors --config "${4:-$cfg}" "$3" --out "$tmp/bad.h5"; }
for v in rename missing extra reshape duplicate lm_untied; do mk "$v" "$st" "$tmp/$v.safetensors"; done
imp 1 "$tmp/rename.safetensors: tensor 'h.1.mlp.fc.weight': not a tensor of the GPT-2" "$tmp/rename.safetensors"
imp 1 "$tmp/missing.safetensors: missing tensor 'ln_f.bias' [32]" "$tmp/missing.safetensors"
imp 2 "tensor 'h.2.ln_1.weight': not a tensor of the GPT-2 that $cfg describes (2 blocks" "$tmp/extra.safetensors"
imp 1 "tensor 'h.0.attn.c_attn.weight': shape [96, 32], expected [32, 96]" "$tmp/reshape.safetensors"
imp 1 "tensor 'ln_f.weight': given twice" "$tmp/duplicate.safetensors"
imp 1 "tensor 'lm_head.weight' differs from wte.weight, but $cfg says tie_word_embeddings true" "$tmp/lm_untied.safetensors"
jcfg tie_word_embeddings false
imp 1 "missing tensor 'lm_head.weight' [64, 32]" "$st" "$tmp/cfg.json"
check "no output after a rejected import" test ! -e "$tmp/bad.h5"

# --- wrong configs: status 2, one line naming the config file and the key -----------------------------
badcfg() { jcfg "${@:3}"; imp "$1" "$tmp/cfg.json: $2" "$st" "$tmp/cfg.json"; }
badcfg 1 "layer_norm_epsilon = 1e-06, expected 1e-05" layer_norm_epsilon 1e-6
badcfg 1 "activation_function is relu, expected \"gelu_new\"" activation_function '"relu"'
badcfg 1 "n_embd = 32 is not a multiple of n_head = 5" n_head 5
badcfg 1 "missing key \"vocab_size\"" vocab_size DEL
badcfg 1 "\"n_layer\" must be a positive integer" n_layer 2.5
badcfg 1 "n_positions = 16 and n_ctx = 32 differ" n_ctx 32
badcfg 1 "model_type is gpt_neo, expected \"gpt2\"" model_type '"gpt_neo"'
badcfg 1 "n_inner must be null or 4 n_embd = 128" n_inner 64
badcfg 1 "\"tie_word_embeddings\" must be true or false" tie_word_embeddings 1
jcfg n_ctx DEL
expect_ok 1 "n_positions alone" model import --from safetensors --config "$tmp/cfg.json" "$st" --out "$tmp/c1.h5"
jcfg n_positions DEL
expect_ok 1 "n_ctx alone" model import --from safetensors --config "$tmp/cfg.json" "$st" --out "$tmp/c2.h5"
jcfg n_embd 48
imp 1 "$st: tensor 'wte.weight': shape [64, 32], expected [64, 48] from $tmp/cfg.json" "$st" "$tmp/cfg.json"
jcfg n_layer 3
imp 1 "$st: missing tensor 'h.2.ln_1.weight' [32]" "$st" "$tmp/cfg.json"
jcfg vocab_size 65
imp 1 "tensor 'wte.weight': shape [64, 32], expected [65, 32]" "$st" "$tmp/cfg.json"
printf '{"n_embd": 32,' >"$tmp/cfg.json"
imp 1 "$tmp/cfg.json: invalid JSON" "$st" "$tmp/cfg.json"
imp 1 "$tmp/none.json: cannot open" "$st" "$tmp/none.json"

# --- truncated and damaged files -------------------------------------------------------------------
size=$(stat -c %s "$st")
for cut in 0 5 8 100 2264 5000 $((size - 1)); do
  head -c "$cut" "$st" >"$tmp/cut.safetensors"
  case $cut in
    0 | 5) want="truncated" ;;
    8 | 100) want="beyond the file" ;;
    *) want="reach beyond the data section" ;;
  esac
  imp 1 "$tmp/cut.safetensors: " "$tmp/cut.safetensors"
  check "cut at $cut: '$want'" has "$tmp/err" "$want"
done
cp "$st" "$tmp/tail.safetensors" && printf 'xxxx' >>"$tmp/tail.safetensors"
imp 1 "4 bytes after the last tensor" "$tmp/tail.safetensors"
cp "$st" "$tmp/json.safetensors" && printf '[' | dd of="$tmp/json.safetensors" bs=1 seek=8 conv=notrunc 2>/dev/null
imp 1 "$tmp/json.safetensors: invalid JSON header" "$tmp/json.safetensors"
/usr/bin/python3 - "$st" "$tmp/dtype.safetensors" <<'PY'
import sys
b = open(sys.argv[1], "rb").read().replace(b'"wpe.weight":{"dtype":"F32"', b'"wpe.weight":{"dtype":"I32"', 1)
open(sys.argv[2], "wb").write(b)
PY
imp 1 "tensor 'wpe.weight': dtype I32 is not supported" "$tmp/dtype.safetensors"
head -c 3000 "$tmp/init.h5" >"$tmp/cut.h5"
expect_usage_error 1 "$tmp/cut.h5: not a dpmpi initial-weights file" model export "$tmp/cut.h5" --to safetensors "$tmp/o.safetensors"
expect_usage_error 1 "not a readable HDF5 file" model info "$tmp/cut.h5"

# --- usage ------------------------------------------------------------------------------------------
expect_usage_error 1 "--from onnx, expected --from safetensors" model import --from onnx --config "$cfg" "$st" --out "$tmp/x.h5"
expect_usage_error 1 "--config CONFIG.json is required" model import --from safetensors "$st" --out "$tmp/x.h5"
expect_usage_error 1 "--to onnx, expected --to safetensors" model export "$tmp/init.h5" --to onnx "$tmp/o.onnx"
expect_usage_error 2 "$ref/reference.h5: not a dpmpi initial-weights file" model export "$ref/reference.h5" --to safetensors "$tmp/o.safetensors"
expect_usage_error 1 "unknown option '--bogus'" model info --bogus "$tmp/init.h5"
expect_usage_error 1 "expected 'model import|export|info" model frobnicate
run 1 model --help
check "help" has "$tmp/out" "dpmpi model import --from safetensors"

finish cli_model
