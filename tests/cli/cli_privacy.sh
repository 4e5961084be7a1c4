#!/bin/bash
# CLI test of `dpmpi privacy`: epsilon and calibration, text and JSON, and exit status 2 on bad input.
# ctest: timeout=300
set -u
BUILD=$1
BIN="$BUILD/dpmpi"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
run() { "$BIN" privacy "$@"; }

out=$(run --sampling-rate 0.01 --noise-multiplier 4 --steps 10000 --delta 1e-5 --json)
check "rdp json has the keys" '[[ $out == *"\"accountant\": \"rdp\""* && $out == *"\"epsilon\":"* && $out == *"\"order\":"* && $out == *"\"delta\":"* && $out == *"\"sampling_rate\":"* && $out == *"\"noise_multiplier\":"* && $out == *"\"steps\": 10000"* ]]'
eps=$(sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/' <<<"$out")
check "rdp epsilon 1.0355 (Balle et al. conversion)" 'awk -v e="$eps" "BEGIN{exit !(e > 1.0354 && e < 1.0356)}"'

out=$(run -q 0.01 -s 4 -T 10000 -d 1e-5 --accountant all --json)
check "all: two JSON lines" '[[ $(wc -l <<<"$out") -eq 2 ]]'
check "tight json has epsilon_upper" '[[ $out == *"\"accountant\": \"tight\""* && $out == *"\"epsilon_upper\":"* ]]'
eps=$(grep tight <<<"$out" | sed -E 's/.*"epsilon": ([0-9.e+-]+).*/\1/')
check "tight epsilon 0.9470 within 1%" 'awk -v e="$eps" "BEGIN{exit !(e > 0.9375 && e < 0.9565)}"'

# the tight headline is the certified upper bound, the Richardson estimate a secondary field
num() { sed -E "s/.*\"$1\": ([0-9.e+-]+).*/\1/" <<<"$2"; }
out=$(run -q 0.01 -s 4 -T 10000 -d 1e-5 --accountant tight --json)
check "tight json: epsilon is epsilon_upper" '[[ $(num epsilon "$out") == $(num epsilon_upper "$out") ]]'
check "tight json: estimate is a separate field, not above the bound" 'awk -v e="$(num epsilon "$out")" -v s="$(num epsilon_estimate "$out")" "BEGIN{exit !(s > 0 && s <= e)}"'
txt=$(run -q 0.01 -s 4 -T 10000 -d 1e-5 --accountant tight)
check "tight text headline = the bound ($txt)" '[[ $txt == "tight epsilon $(printf %.6g "$(num epsilon "$out")")  (delta 1e-05, certified upper bound;"* ]]'
# one step at q 0.3, sigma 10, delta 1e-5: the row of ../shared/refs/exact_single_step.csv where the
# estimate is below the exact epsilon (an independent closed-form computation); the headline must not be
ref=${DPM_SHARED_DIR:-$2/../shared}/refs/exact_single_step.csv
exact=$(awk -F, '$1 == 0.3 && $2 == 10 && $3 == 1e-05 { print $4 }' "$ref")
check "exact single-step epsilon found in $ref" '[[ -n $exact ]]'
out=$(run -q 0.3 -s 10 -T 1 -d 1e-5 --accountant tight --json)
check "single step: estimate below the exact $exact (so the check below means something)" 'awk -v s="$(num epsilon_estimate "$out")" -v x="$exact" "BEGIN{exit !(s < x)}"'
check "single step: headline epsilon $(num epsilon "$out") >= exact $exact" 'awk -v e="$(num epsilon "$out")" -v x="$exact" "BEGIN{exit !(e >= x)}"'
# calibration with tight: the reported epsilon is the bound at the calibrated sigma, and at most the target
out=$(run --target-epsilon 1 -q 0.004266666666666667 -T 3515 -d 1e-5 --accountant tight --json)
sig=$(num noise_multiplier "$out")
again=$(run -q 0.004266666666666667 -s "$sig" -T 3515 -d 1e-5 --accountant tight --json)
check "tight calibration: epsilon $(num epsilon "$out") = bound at sigma $sig, <= target 1" 'awk -v e="$(num epsilon "$out")" -v b="$(num epsilon_upper "$again")" "BEGIN{exit !(e == b && e <= 1)}"'

out=$(run --target-epsilon 1 -q 0.004266666666666667 -T 3515 -d 1e-5 --json)
sig=$(sed -E 's/.*"noise_multiplier": ([0-9.e+-]+).*/\1/' <<<"$out")
check "calibrated sigma within 1% of 1.2695 (sigma_rdp)" 'awk -v s="$sig" "BEGIN{exit !(s > 1.2568 && s <= 1.26953125)}"'
out=$(run --target-epsilon 1 -q 0.004266666666666667 -T 3515 -d 1e-5)
check "text output names the noise multiplier" '[[ $out == *"noise multiplier"* ]]'
out=$(run -q 0.01 -s 4 -T 10000 -d 1e-5)
check "text output names epsilon and the order" '[[ $out == *"epsilon 1.035"* && $out == *"order"* ]]'
check "--help" 'run --help | grep -q "sampling-rate"'

bad() { # expect exit status 2 and a one-line error
  err=$(run "$@" 2>&1 >/dev/null); rc=$?
  check "bad input ($*) -> status 2, one line" '[[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == dpmpi:\ error:* ]]'
}
bad -q 0 -s 1 -T 10 -d 1e-5
bad -q 1.5 -s 1 -T 10 -d 1e-5
bad -q 0.1 -s 0 -T 10 -d 1e-5
bad -q 0.1 -s -1 -T 10 -d 1e-5
bad -q 0.1 -s 1 -T 10 -d 0
bad -q 0.1 -s 1 -T 10 -d 1
bad -q 0.1 -s 1 -T 0 -d 1e-5
bad -q 0.1 -s 1 -T 2.5 -d 1e-5
bad -q abc -s 1 -T 10 -d 1e-5
bad -q 0.1 -T 10 -d 1e-5
bad -q 0.1 -s 1 -T 10 -d 1e-5 --accountant foo
bad --target-epsilon 0.0001 -q 0.1 -T 100 -d 1e-5
bad --target-epsilon -1 -q 0.1 -T 100 -d 1e-5
bad --bogus

if [[ -n "${DPM_MPIEXEC:-}" ]]; then
  out=$("$DPM_MPIEXEC" -n 2 --oversubscribe "$BIN" privacy -q 0.01 -s 4 -T 10000 -d 1e-5 --json 2>/dev/null)
  check "2 ranks print once" '[[ $(wc -l <<<"$out") -eq 1 ]]'
  "$DPM_MPIEXEC" -n 2 --oversubscribe "$BIN" privacy -q 0 -s 4 -T 10 -d 1e-5 >/dev/null 2>&1; rc=$?
  check "2 ranks: bad input exits non-zero" '[[ $rc -ne 0 ]]'
fi

# private hyper-parameter selection (Papernot and Steinke 2022; the bound is tested in tests/privacy/test_tuning.c)
out=$(run -q 0.01 -s 4 -T 10000 -d 1e-5 --tuning-runs 10 --json)
one=$(num epsilon_one_run "$out"); sel=$(num epsilon "$out")
check "tuning: one run's epsilon is the plain one (1.0355)" 'awk -v e="$one" "BEGIN{exit !(e > 1.0354 && e < 1.0356)}"'
check "tuning: the best of ~10 runs costs more ($sel)" 'awk -v e="$sel" -v o="$one" "BEGIN{exit !(e > o)}"'
check "tuning json names the law" '[[ $out == *"\"tuning_runs_mean\": 10"* && $out == *"\"tuning_eta\": 1"* ]]'
out=$(run --target-epsilon 3 -q 0.01 -T 10000 -d 1e-5 --tuning-runs 10 --json)
sig=$(num noise_multiplier "$out")
again=$(run -q 0.01 -s "$sig" -T 10000 -d 1e-5 --tuning-runs 10 --json)
check "tuning calibration: its sigma spends at most 3" 'awk -v e="$(num epsilon "$again")" "BEGIN{exit !(e <= 3 && e > 2.99)}"'
k=$(run --tuning-runs 5 --draw-runs)
check "draw-runs prints a positive integer ($k)" '[[ $k =~ ^[1-9][0-9]*$ ]]'
for bad in "--tuning-runs 1 -q 0.01 -s 4 -T 10 -d 1e-5" "--tuning-runs 10 --tuning-eta -1 -q 0.01 -s 4 -T 10 -d 1e-5" \
           "--tuning-runs 10 -a tight -q 0.01 -s 4 -T 10 -d 1e-5" "--draw-runs" "--tuning-runs 5 --draw-runs -q 0.1"; do
  msg=$(run $bad 2>&1 >/dev/null); rc=$?
  check "tuning: '$bad' is one error line, status 2" '[[ $rc -eq 2 && $msg == "dpmpi: error: "* && $(wc -l <<<"$msg") -eq 1 ]]'
done

exit $fail
