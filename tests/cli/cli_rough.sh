#!/usr/bin/env bash
# The rough edges a new user hits (issue 18): absurd `dpmpi privacy` arguments give an answer or one clear
# error, never a crash or an absurd allocation (both accountants, 1 and 2 ranks).
# Usage: bash tests/cli/cli_rough.sh BUILD_DIR SOURCE_DIR
# ctest: timeout=300
source "$(dirname "$0")/../lib_cli.sh"

# ---- (a) dpmpi privacy with absurd arguments ------------------------------------------------------------
# Under a 2 GB address-space limit: an attempt to allocate gigabytes fails the test instead of the machine.
lim() { (ulimit -v 2000000; run "$@"); }
# the issue's command: RDP answers (a huge epsilon), tight says its range is exceeded
lim 1 privacy --sampling-rate 0.01 --noise-multiplier 1e-9 --steps 1000000000 --delta 1e-5
check "issue command, rdp: exit 0 (got $(rc))" test "$(rc)" = 0
check "issue command, rdp: an enormous epsilon" has_re "$tmp/out" '^rdp   epsilon [0-9.]+e\+(1[5-9]|[2-9][0-9])  '
for np in 1 2; do
  lim $np privacy --sampling-rate 0.01 --noise-multiplier 1e-9 --steps 1000000000 --delta 1e-5 --accountant tight
  if [ "$(rc)" = 2 ] && [ "$(grep -c . "$tmp/err")" = 1 ] &&
     grep -q '^dpmpi: error: tight accountant: the privacy loss distribution needs more than 16777216 grid points' "$tmp/err"; then ok
  else bad "np=$np issue command, tight: status $(rc), expected 2 and one error line"; sed 's/^/    /' "$tmp/err" >&2; fi
done
# JSON stays JSON when epsilon is infinite (sigma 1e-300: every order overflows)
lim 1 privacy -q 0.01 -s 1e-300 -T 10 -d 1e-5 --json
check "sigma 1e-300: exit 0" test "$(rc)" = 0
h5py_check "sigma 1e-300 json: epsilon null, epsilon_finite false" '
import json, sys
d = json.loads(open(sys.argv[1]).read())
assert d["epsilon"] is None and d["epsilon_finite"] is False, d' "$tmp/out"
lim 1 privacy -q 0.01 -s 1e-300 -T 10 -d 1e-5
check "sigma 1e-300 text: a clear statement" has "$tmp/out" "rdp   epsilon inf  (delta 1e-05): no finite bound (the noise is too small)"
# a tiny delta: tight's truncations exceed it, said so
lim 1 privacy -q 0.01 -s 1 -T 1000 -d 1e-300 --accountant tight
check "delta 1e-300, tight: inf with the reason" has "$tmp/out" "tight epsilon inf  (delta 1e-300): no finite bound (this accountant's pessimistic truncations"
# huge sigma: epsilon ~ 0 from both (RDP: the conversion's own term; no NaN)
lim 1 privacy -q 0.01 -s 1e300 -T 1000 -d 1e-5
check "sigma 1e300, rdp: the conversion's minimum" has_re "$tmp/out" '^rdp   epsilon 0\.0035[0-9]*  '
lim 1 privacy -q 0.01 -s 1e6 -T 1000 -d 1e-5 --accountant tight
check "sigma 1e6, tight: epsilon ~ 0" has_re "$tmp/out" '^tight epsilon [0-9.e-]+  \(delta'
# q = 1, steps up to 2^63 - 1, steps beyond
lim 1 privacy -q 1 -s 1e-9 -T 9223372036854775807 -d 1e-5
check "q 1, 2^63-1 steps: exit 0" test "$(rc)" = 0
expect_usage_error 1 "--steps: '9223372036854775808' is out of range (at most 9223372036854775807)" privacy -q 0.5 -s 1 -T 9223372036854775808 -d 1e-5
expect_usage_error 2 "--steps: '1e30' is out of range" privacy -q 0.5 -s 1 -T 1e30 -d 1e-5
expect_usage_error 1 "--steps: '2.5' is not an integer" privacy -q 0.5 -s 1 -T 2.5 -d 1e-5
expect_usage_error 1 "noise multiplier inf must be positive and finite" privacy -q 0.5 -s inf -T 10 -d 1e-5
expect_usage_error 1 "sampling rate 1.5 is outside (0, 1]" privacy -q 1.5 -s 1 -T 10 -d 1e-5
# calibration at absurd lengths: an answer or one error
lim 1 privacy -q 0.01 -e 1 -T 1000000000 -d 1e-5
check "calibrate 1e9 steps, rdp: a noise multiplier" has_re "$tmp/out" '^rdp   noise multiplier [0-9.]+  '
expect_usage_error 1 "is met already at noise multiplier 0.01" privacy -q 0.01 -e 1e300 -T 10 -d 1e-5

finish cli_rough
