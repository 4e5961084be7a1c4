#!/usr/bin/env bash
# `dpmpi generate` end to end: a tiny byte-level GPT trained non-privately on 'abcabc...' (dpmpi data convert
# --from text, dpmpi train) predicts it; greedy generation continues the pattern exactly, from a short prompt
# and from one longer than the context (cut, with a note); on 2 ranks the text is the 1-rank text; sampling
# with a seed is reproducible and different seeds (or the secure key) give different text at a high
# temperature; invalid UTF-8 bytes are printed as \xNN (valid multi-byte characters as they are); errors:
# a non-GPT checkpoint, a GPT of another vocabulary, a missing checkpoint, missing or bad options.
# Usage: bash tests/cli/cli_generate.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"
py=/usr/bin/python3

"$py" -c "import sys; sys.stdout.write('abc' * 400)" >"$tmp/abc.txt"
"$py" -c "import sys; sys.stdout.write('abc' * 100)" >"$tmp/abc_test.txt"
run 1 data convert --from text --context 16 --test "$tmp/abc_test.txt" --out "$tmp/abc.h5" "$tmp/abc.txt"
check "text convert exits 0 (status $(rc))" test "$(rc)" = 0
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/abc.h5
[model]
layers = embed vocab=257 context=16 width=16; block heads=2; lm_head tied=1
[train]
optimizer = adamw
steps = 400
batch_size = 16
physical_batch_size = 16
lr = 0.003
[privacy]
enabled = false
[run]
seed = 3
INI
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/ck"
check "train exits 0 (status $(rc))" test "$(rc)" = 0
check "the model predicts the pattern (test accuracy >= 99%)" has_re "$tmp/out" "test accuracy (99\.[0-9]+|100\.00)%"

# greedy: the prompt and 20 bytes of the pattern
want=$("$py" -c "print(('abc' * 20)[:25])")
run 1 generate "$tmp/ck" --prompt abcab --tokens 20
check "greedy exits 0 (status $(rc))" test "$(rc)" = 0
check "greedy continues the pattern: '$(cat "$tmp/out")', expected '$want'" test "$(cat "$tmp/out")" = "$want"
check "greedy says so" has "$tmp/err" "generated 20 token(s)"
cp "$tmp/out" "$tmp/greedy1"
run 2 generate "$tmp/ck" --prompt abcab --tokens 20
check "2 ranks exit 0 (status $(rc))" test "$(rc)" = 0
check "2 ranks print the 1-rank text once" cmp -s "$tmp/out" "$tmp/greedy1"
run 1 generate "$tmp/ck/ckpt-00000400.h5" --prompt abcab --tokens 20 --temperature 0
check "a checkpoint file and --temperature 0: the same greedy text" cmp -s "$tmp/out" "$tmp/greedy1"

# a prompt longer than the context (30 > 16 bytes): cut to its last 16, said on stderr, pattern continued
long=$("$py" -c "print('bca' * 10)")
want=$("$py" -c "print(('bca' * 20)[:42])")
run 1 generate "$tmp/ck" --prompt "$long" --tokens 12
check "long prompt exits 0 (status $(rc))" test "$(rc)" = 0
check "long prompt: the whole prompt and the pattern: '$(cat "$tmp/out")'" test "$(cat "$tmp/out")" = "$want"
check "long prompt: the note names the context" has "$tmp/err" "more than the model's context 16: the model sees its last 16"

# sampling: a seed reproduces; two seeds, and two secure keys, differ at temperature 5 (40 draws from a
# nearly flat distribution over 257 ids)
run 1 generate "$tmp/ck" --prompt abc --tokens 40 --temperature 5 --seed 11
check "seeded sampling exits 0 (status $(rc))" test "$(rc)" = 0
cp "$tmp/out" "$tmp/s11a"
run 1 generate "$tmp/ck" --prompt abc --tokens 40 --temperature 5 --seed 11
check "the same seed gives the same text" cmp -s "$tmp/out" "$tmp/s11a"
run 1 generate "$tmp/ck" --prompt abc --tokens 40 --temperature 5 --seed 12
check "another seed gives another text" bash -c "! cmp -s '$tmp/out' '$tmp/s11a'"
run 1 generate "$tmp/ck" --prompt abc --tokens 40 --temperature 5
cp "$tmp/out" "$tmp/sec1"
check "secure key: said on stderr" has "$tmp/err" "sampled, secure key"
run 1 generate "$tmp/ck" --prompt abc --tokens 40 --temperature 5
check "two secure keys give different texts" bash -c "! cmp -s '$tmp/out' '$tmp/sec1'"
# at a low temperature the confident model still follows the pattern
want=$("$py" -c "print(('abc' * 20)[:23])")
run 1 generate "$tmp/ck" --prompt abc --tokens 20 --temperature 0.2 --seed 1
check "temperature 0.2 follows the pattern: '$(cat "$tmp/out")'" test "$(cat "$tmp/out")" = "$want"

# printing: a valid two-byte character as it is, an invalid byte as \xNN with a note
run 1 generate "$tmp/ck" --prompt "$(printf 'a\xc3\xa9b\xffc')" --tokens 0
check "tokens 0 exits 0 (status $(rc))" test "$(rc)" = 0
check "invalid UTF-8 escaped, valid kept: '$(cat "$tmp/out")'" test "$(cat "$tmp/out")" = "$(printf 'a\xc3\xa9b\\xFFc')"
check "invalid UTF-8: the note" has "$tmp/err" "1 byte(s) were not valid UTF-8, printed as \\xNN"

# errors
make_blobs 64 16
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
check "mlp train exits 0 (status $(rc))" test "$(rc)" = 0
expect_usage_error 1 "not a GPT checkpoint" generate "$tmp/mlp" --prompt a --tokens 3
expect_usage_error 2 "not a GPT checkpoint" generate "$tmp/mlp" --prompt a --tokens 3
"$py" -c "
import numpy as np
rng = np.random.default_rng(0)
np.save('$tmp/tr.npy', rng.integers(0, 20, size=(32, 9)).astype(np.int32))
np.save('$tmp/te.npy', rng.integers(0, 20, size=(8, 9)).astype(np.int32))
"
run 1 data convert --from tokens --train "$tmp/tr.npy" --test "$tmp/te.npy" --vocab 20 --out "$tmp/tok20.h5"
check "tokens convert exits 0 (status $(rc))" test "$(rc)" = 0
sed -e "s|$tmp/abc.h5|$tmp/tok20.h5|" -e "s|vocab=257 context=16|vocab=20 context=8|" "$tmp/job.ini" >"$tmp/v20.ini"
run 1 train "$tmp/v20.ini" --train.steps=1 --checkpoint.dir="$tmp/v20"
check "vocab-20 train exits 0 (status $(rc))" test "$(rc)" = 0
expect_usage_error 1 "a GPT with vocab=20, expected vocab=257" generate "$tmp/v20" --prompt a --tokens 3
expect_usage_error 1 "no-such" generate "$tmp/no-such" --prompt a --tokens 3
expect_usage_error 1 "--tokens N is required" generate "$tmp/ck" --prompt a
expect_usage_error 1 "--prompt TEXT is required" generate "$tmp/ck" --tokens 3
expect_usage_error 1 "--temperature -1: expected a number >= 0" generate "$tmp/ck" --prompt a --tokens 3 --temperature -1
expect_usage_error 1 "--tokens 'x'" generate "$tmp/ck" --prompt a --tokens x
expect_usage_error 2 "expected one checkpoint CKPT" generate --prompt a --tokens 3

echo "cli_generate: $passed passed, $failed failed"
[ "$failed" = 0 ]
