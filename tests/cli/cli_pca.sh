#!/usr/bin/env bash
# DP-PCA preprocessing end to end (src/parallel/pca.c, docs/pca.md): a seeded run with PCA gives the same accuracy
# line on 1, 2 and 3 ranks and on a 2x2 replica x stage grid; the header shows the projection and the PCA
# noise; the final epsilon covers the PCA release and training (calibrated to the target, within 0.01
# below it); the checkpoint's ledger holds exactly one Gaussian release with the header's sigma; a resumed
# run reuses the stored projection (no new draw) and ends bitwise identical to the uninterrupted one, on
# the same grid and on another; the released model carries the projection and the whole ledger, from
# which `dpmpi privacy --ledger` recomputes its epsilon (rdp and tight); non-private and secure runs
# work; user errors (components > d, bad keys, a PCA that spends the whole budget, a resume that changes
# the PCA) exit 2 on every rank with one message.
# Usage: bash tests/cli/cli_pca.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=400
source "$(dirname "$0")/../lib_cli.sh"

make_blobs 2000 500
cat >"$tmp/job.ini" <<INI
[data]
train = $tmp/blobs.h5
[model]
layers = dense out=16; tanh; dense out=4
[train]
epochs = 3
batch_size = 100
physical_batch_size = 32
lr = 0.5
[privacy]
epsilon = 4
delta = 1e-4
clip = 1
[pca]
components = 4
epsilon = 1
clip = 5
[run]
seed = 11
INI
last_eval() { grep '^eval' "$tmp/out" | tail -1 | sed -E 's/.*(test accuracy [0-9.]+%  test loss [0-9.]+).*/\1/'; }
final_eps() { grep '^done:' "$tmp/out" | sed -E 's/.*epsilon ([0-9.]+).*/\1/'; }

# seeded: 1 rank is the reference
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/c1" --checkpoint.every=20 --checkpoint.keep=10
[ "$(rc)" = 0 ] && ok || { bad "1-rank PCA run (rc $(rc))"; cat "$tmp/err" >&2; }
ref=$(last_eval)
eps_ref=$(final_eps)
check "header: the projection" has_re "$tmp/out" "^pca: 6 -> 4 features \(clip C = 5, Analyze-Gauss noise multiplier [0-9.]+ \(calibrated\): epsilon (0\.99[0-9]+|1\.0000) alone\).*BLACS grid"
sigma_pca=$(grep '^pca:' "$tmp/out" | sed -E 's/.*noise multiplier ([0-9.]+).*/\1/')
check "header: 1x1 BLACS grid" has "$tmp/out" "on a 1x1 BLACS grid"
acc=$(echo "$ref" | sed -E 's/test accuracy ([0-9.]+)%.*/\1/')
awk -v a="$acc" 'BEGIN { exit !(a >= 85) }' && ok || bad "PCA run accuracy $acc% < 85%"
awk -v e="$eps_ref" 'BEGIN { exit !(e <= 4 && e >= 3.99) }' && ok || bad "final epsilon $eps_ref not within 0.01 below 4"

# the ledger: exactly one Gaussian release (q = 1, the header's sigma, once), then the training segment
"$dpmpi" ckpt info "$tmp/c1" >"$tmp/info" 2>&1
n_gauss=$(grep -c '^  gaussian ' "$tmp/info")
check "one Gaussian release in the ledger ($n_gauss)" test "$n_gauss" = 1
check "its row: q 1, sigma $sigma_pca, once" has_re "$tmp/info" "^  gaussian q 1 sigma $sigma_pca x 1$"
check "then the training steps" has_re "$tmp/info" "^  subsampled-gaussian q 0.05 sigma [0-9.]+ x 60$"
check "ckpt info epsilon = the run's" has "$tmp/info" "epsilon $eps_ref"

# the same accuracy line on other grids (PCA on a 1x2, 1x3 and 2x2 BLACS grid; on the 2x2 replica x
# stage grid only stage 0 of each replica contributes rows)
for args in "2" "3" "4 --grid.replicas=2 --grid.stages=2"; do
  set -- $args
  np=$1; shift
  run "$np" train "$tmp/job.ini" "$@"
  [ "$(rc)" = 0 ] || { bad "np=$np $* PCA run (rc $(rc))"; cat "$tmp/err" >&2; }
  got=$(last_eval)
  [ -n "$ref" ] && [ "$got" = "$ref" ] && ok || bad "np=$np $*: '$got', 1 rank: '$ref'"
  check "np=$np: same epsilon" test "$(final_eps)" = "$eps_ref"
done
check "2x2 BLACS grid on 4 ranks" has "$tmp/out" "on a 2x2 BLACS grid"

# resume from step 20: the stored projection, bitwise the uninterrupted result, the PCA counted once
mkdir -p "$tmp/r1" && cp "$tmp/c1/ckpt-00000020.h5" "$tmp/r1/"
run 1 train "$tmp/job.ini" --checkpoint.dir="$tmp/r1" --resume "$tmp/r1"
[ "$(rc)" = 0 ] && ok || { bad "resume with PCA (rc $(rc))"; cat "$tmp/err" >&2; }
check "resume: projection from the checkpoint" has "$tmp/out" "pca: 6 -> 4 features, projection from the checkpoint"
check "resume: same accuracy line" test "$(last_eval)" = "$ref"
check "resume: same epsilon" test "$(final_eps)" = "$eps_ref"
for g in /model /optimizer /privacy /pca; do
  check "resumed $g bitwise identical" h5diff -q "$tmp/c1/ckpt-00000060.h5" "$tmp/r1/ckpt-00000060.h5" $g $g
done
# on another grid (1 rank -> 2 replicas): the same projection, the model within 1e-5
mkdir -p "$tmp/r2" && cp "$tmp/c1/ckpt-00000020.h5" "$tmp/r2/"
run 2 train "$tmp/job.ini" --checkpoint.dir="$tmp/r2" --resume "$tmp/r2"
[ "$(rc)" = 0 ] && ok || { bad "resume with PCA on 2 ranks (rc $(rc))"; cat "$tmp/err" >&2; }
check "resume on 2 ranks: /pca bitwise" h5diff -q "$tmp/c1/ckpt-00000060.h5" "$tmp/r2/ckpt-00000060.h5" /pca /pca
check "resume on 2 ranks: model within 1e-5" h5diff -q -p 1e-5 "$tmp/c1/ckpt-00000060.h5" "$tmp/r2/ckpt-00000060.h5" /model /model

# the released model carries the projection (6 x 4) next to the parameters
"$dpmpi" export "$tmp/c1" "$tmp/model.h5" >/dev/null 2>&1 && ok || bad "export"
check "export: /pca/projection 6 x 4" has_re <(h5ls -r "$tmp/model.h5") "^/pca/projection +Dataset \{6, 4\}"

# ... and the whole ledger (the DP-PCA release, then the training segment): `dpmpi privacy --ledger`
# recomputes the export's epsilon from the file alone, on 1 and 2 ranks, and the checkpoint's
check "export: /privacy equals the checkpoint's ledger" h5diff -q "$tmp/c1/ckpt-00000060.h5" "$tmp/model.h5" /privacy /privacy
h5py_check "export ledger: the Gaussian release, then 60 training steps" '
import sys, h5py
L = h5py.File(sys.argv[1], "r")["privacy/privacy_ledger"][:]
assert len(L) == 2, L
assert L["kind"][0] == 1 and L["q"][0] == 1 and L["count"][0] == 1 and abs(L["sigma"][0] - float(sys.argv[2])) < 1e-5, L
assert L["kind"][1] == 0 and abs(L["q"][1] - 0.05) < 1e-15 and L["count"][1] == 60, L
' "$tmp/model.h5" "$sigma_pca"
same_eps='
import sys, json, h5py
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
j, a = json.loads(lines[0]), h5py.File(sys.argv[2], "r").attrs
assert j["epsilon"] == float(a["epsilon"]) and j["delta"] == float(a["delta"]), (j, dict(a))
assert j["accountant"] == a["accountant"] and j["ledger_rows"] == 2 and j["recorded_epsilon"] == j["epsilon"], j
'
for np in 1 2; do
  run $np privacy --ledger "$tmp/model.h5" --json
  check "np=$np privacy --ledger EXPORT exits 0" test "$(rc)" = 0
  h5py_check "np=$np privacy --ledger EXPORT: epsilon = the export's epsilon attribute, bitwise" "$same_eps" "$tmp/out" "$tmp/model.h5"
done
run 1 privacy --ledger "$tmp/c1" --json
ledger_eps=$(sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/' "$tmp/out")
check "privacy --ledger CKPT_DIR: the run's final epsilon ($eps_ref)" test "$(printf %.4f "$ledger_eps")" = "$eps_ref"
h5py_check "privacy --ledger CKPT_DIR = --ledger EXPORT" 'import sys, json, h5py
assert json.loads(open(sys.argv[1]).read())["epsilon"] == float(h5py.File(sys.argv[2], "r").attrs["epsilon"])' "$tmp/out" "$tmp/model.h5"
run 1 privacy --ledger "$tmp/model.h5"
check "text: the ledger's Gaussian row" has_re "$tmp/out" "^  gaussian q 1 sigma $sigma_pca x 1$"
check "text: the training row" has_re "$tmp/out" "^  subsampled-gaussian q 0.05 sigma [0-9.]+ x 60$"
check "text: the epsilon the file records" has "$tmp/out" "the file records epsilon $(printf %.6f "$ledger_eps") at delta 0.0001 (rdp accountant)"
sigma_tr=$(sed -nE 's/^  subsampled-gaussian q 0.05 sigma ([0-9.]+) x 60$/\1/p' "$tmp/out")
training_only=$("$dpmpi" privacy -q 0.05 -s "$sigma_tr" -T 60 -d 1e-4 --json | sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/')
check "the ledger's epsilon ($ledger_eps) counts the PCA release: above training alone ($training_only)" \
  awk -v a="$ledger_eps" -v b="$training_only" 'BEGIN { exit !(a > b + 0.1) }'
# the same with the tight accountant (its certified bound)
run 1 train "$tmp/job.ini" --privacy.accountant=tight --checkpoint.dir="$tmp/ct"
[ "$(rc)" = 0 ] && ok || { bad "tight PCA run (rc $(rc))"; cat "$tmp/err" >&2; }
eps_tight=$(final_eps)
"$dpmpi" export "$tmp/ct" "$tmp/model_tight.h5" >/dev/null 2>&1 && ok || bad "export (tight)"
run 2 privacy --ledger "$tmp/model_tight.h5" --json
h5py_check "tight: privacy --ledger EXPORT = the export's epsilon, bitwise" "$same_eps" "$tmp/out" "$tmp/model_tight.h5"
check "tight: the run's final epsilon ($eps_tight)" test "$(printf %.4f "$(sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/' "$tmp/out")")" = "$eps_tight"
check "tight: --ledger JSON has the estimate as a secondary field" has "$tmp/out" '"epsilon_estimate": '
# --delta and --accountant override the file's: a smaller delta costs more, tight is below rdp
run 1 privacy --ledger "$tmp/model.h5" --delta 1e-6 --accountant all --json
e6_rdp=$(grep '"rdp"' "$tmp/out" | sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/')
e6_tight=$(grep '"tight"' "$tmp/out" | sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/')
check "--delta 1e-6: rdp $e6_rdp above the file's $ledger_eps at 1e-4, tight $e6_tight below rdp" \
  awk -v a="$e6_rdp" -v b="$ledger_eps" -v t="$e6_tight" 'BEGIN { exit !(a > b && t > 0 && t < a) }'
check "--delta 1e-6: two lines, the given delta" test "$(grep -c '"delta": 1e-06,' "$tmp/out")" = 2
# user errors: not a dpmpi model, an export without a ledger (older dpmpi), events given twice
expect_usage_error 2 "not a dpmpi checkpoint or released model (attribute format is dpmpi-dataset)" privacy --ledger "$tmp/blobs.h5"
cp "$tmp/model.h5" "$tmp/old_export.h5"
h5py_check "an export without /privacy (as older dpmpi wrote)" 'import sys, h5py
del h5py.File(sys.argv[1], "r+")["privacy"]' "$tmp/old_export.h5"
expect_usage_error 2 "no privacy ledger /privacy/privacy_ledger" privacy --ledger "$tmp/old_export.h5"
expect_usage_error 2 "no-such.h5" privacy --ledger "$tmp/no-such.h5"
expect_usage_error 1 "--ledger takes the events from the file: drop --steps" privacy --ledger "$tmp/model.h5" --steps 10

# secure mode (keys from the CSPRNG) and the non-private baseline with an exact PCA
sed -i '/^\[run\]$/,$d' "$tmp/job.ini"
run 2 train "$tmp/job.ini"
[ "$(rc)" = 0 ] && ok || { bad "secure PCA run (rc $(rc))"; cat "$tmp/err" >&2; }
check "secure mode announced" has "$tmp/out" "randomness: secure"
acc=$(last_eval | sed -E 's/test accuracy ([0-9.]+)%.*/\1/')
awk -v a="$acc" 'BEGIN { exit !(a >= 85) }' && ok || bad "secure PCA run accuracy $acc% < 85%"
sed -e '/^epsilon = 4$/d' -e '/^epsilon = 1$/d' "$tmp/job.ini" >"$tmp/np.ini"
run 2 train "$tmp/np.ini" --privacy.enabled=false --checkpoint.dir="$tmp/cnp"
[ "$(rc)" = 0 ] && ok || { bad "non-private PCA run (rc $(rc))"; cat "$tmp/err" >&2; }
check "non-private PCA announced" has "$tmp/out" "pca: 6 -> 4 features (non-private: no noise, rows clipped)"
acc=$(last_eval | sed -E 's/test accuracy ([0-9.]+)%.*/\1/')
awk -v a="$acc" 'BEGIN { exit !(a >= 90) }' && ok || bad "non-private PCA accuracy $acc% < 90%"
"$dpmpi" export "$tmp/cnp" "$tmp/model_np.h5" >/dev/null 2>&1 && ok || bad "export (non-private)"
for f in "$tmp/cnp" "$tmp/model_np.h5"; do # no guarantee: an error, never "epsilon 0"
  expect_usage_error 2 "written by a non-private run (private = 0): there is no privacy guarantee to compute" privacy --ledger "$f"
done

# user errors: status 2 and one line on every rank, never a hang
expect_usage_error 2 "[pca] components = 7 exceeds the 6 features" train "$tmp/job.ini" --pca.components=7
expect_usage_error 2 "[pca] components = -2: expected an integer >= 0" train "$tmp/job.ini" --pca.components=-2
expect_usage_error 2 "[pca] epsilon = 5 must be below [privacy] epsilon = 4" train "$tmp/job.ini" --pca.epsilon=5
expect_usage_error 2 "[pca] clip = '0': expected a positive number" train "$tmp/job.ini" --pca.clip=0
expect_usage_error 1 "unknown key 'solver' in section [pca]" train "$tmp/job.ini" --pca.solver=syevd
expect_usage_error 2 "the PCA release alone spends epsilon" train "$tmp/job.ini" --pca.noise_multiplier=0.2
run 2 train "$tmp/np.ini" --privacy.enabled=false --pca.epsilon=1
check "non-private PCA with pca.epsilon: ignored with one warning (rc $(rc))" test "$(rc)" = 0 -a "$(grep -c . "$tmp/err")" = 1
check "the warning names pca.epsilon" has "$tmp/err" "privacy.enabled = false: ignoring pca.epsilon (the non-private"
expect_usage_error 2 "written with pca.components = 4, the job says 3" train "$tmp/job.ini" --run.seed=11 \
  --pca.components=3 --resume "$tmp/c1/ckpt-00000020.h5"
expect_usage_error 2 "written with pca.components = 4, the job says 0" train "$tmp/job.ini" --run.seed=11 \
  --pca.components=0 --resume "$tmp/c1/ckpt-00000020.h5"
expect_usage_error 2 "PCA with clip 5" train "$tmp/job.ini" --run.seed=11 --pca.clip=4 --resume "$tmp/c1/ckpt-00000020.h5"

finish cli_pca
