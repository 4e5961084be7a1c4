# Shared by tests/cli/cli_*.sh (sourced, not run): counters, checks, and running dpmpi on N ranks with a
# time limit (a hang is a failure). The sourcing script sets nothing; it gets $build, $dpmpi, $tmp.
set -u
build=${1:?usage: $0 BUILD_DIR SOURCE_DIR}
dpmpi=$build/dpmpi
mpiexec=${DPM_MPIEXEC:-mpirun}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dpm_cli_XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
check() { # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1; shift
  if "$@"; then ok; else bad "$what"; fi
}
# has FILE STRING (fixed string); has_re FILE REGEX (extended regex)
has() { grep -qF -- "$2" "$1" || { echo "  missing '$2' in:" >&2; sed 's/^/    /' "$1" | tail -20 >&2; return 1; }; }
has_re() { grep -qE -- "$2" "$1" || { echo "  missing /$2/ in:" >&2; sed 's/^/    /' "$1" | tail -20 >&2; return 1; }; }

# run NP ARGS...: dpmpi on NP ranks (1 = no mpirun), at most 120 s; stdout, stderr, status in
# $tmp/out, $tmp/err, $tmp/rc. mpirun -q keeps its own banner off stderr on a non-zero exit.
run() {
  local np=$1; shift
  if [ "$np" = 1 ]; then
    timeout 120 "$dpmpi" "$@" >"$tmp/out" 2>"$tmp/err"
  else
    # --bind-to none: ctest runs two tests at once, and two jobs binding their ranks to the same cores
    # would spin against each other
    timeout 120 "$mpiexec" -q --allow-run-as-root --oversubscribe --bind-to none -np "$np" "$dpmpi" "$@" >"$tmp/out" 2>"$tmp/err"
  fi
  echo $? >"$tmp/rc"
}
rc() { cat "$tmp/rc"; }

# expect_usage_error NP WANT ARGS...: status 2 and exactly one stderr line, "dpmpi: error: ..." containing WANT.
expect_usage_error() {
  local np=$1 want=$2; shift 2
  run "$np" "$@"
  local lines
  lines=$(grep -c . "$tmp/err")
  if [ "$(rc)" = 2 ] && [ "$lines" = 1 ] && grep -q '^dpmpi: error: ' "$tmp/err" && grep -qF -- "$want" "$tmp/err"; then
    ok
  else
    bad "np=$np dpmpi $*: status $(rc), $lines stderr lines, expected 2 and one error line with '$want':"
    sed 's/^/    /' "$tmp/err" >&2
  fi
}

# make_blobs NTRAIN NTEST: $tmp/train.csv, $tmp/test.csv and $tmp/blobs.h5 — 4 Gaussian blobs in 6
# dimensions (label i % 4), a small dataset that trains in a second
make_blobs() {
  local gen='BEGIN { srand(seed); print "f1,f2,f3,f4,f5,f6,label";
    for (i = 0; i < n; i++) { c = i % 4; line = "";
      for (j = 0; j < 6; j++) { z = sqrt(-2 * log(1 - rand())) * cos(6.283185307 * rand());
        line = line sprintf("%.5f,", z + (j % 4 == c ? 2.5 : 0)) }
      print line c } }'
  awk -v n="$1" -v seed=1 "$gen" >"$tmp/train.csv"
  awk -v n="$2" -v seed=2 "$gen" >"$tmp/test.csv"
  "$dpmpi" data convert --from csv --train "$tmp/train.csv" --test "$tmp/test.csv" --label-column label \
    --out "$tmp/blobs.h5" >/dev/null || bad "csv convert"
}

# h5py_check DESCRIPTION PYTHON_CODE ARGS...: the code (run by Debian's python3 with h5py, argv = ARGS)
# must exit 0; h5py missing is a failure (scripts/install-deps.sh installs python3-h5py for the tests)
h5py_check() {
  local what=$1 code=$2; shift 2
  if ! /usr/bin/python3 -c 'import h5py' 2>/dev/null; then bad "$what: h5py missing (apt-get install python3-h5py)"; return; fi
  if /usr/bin/python3 -c "$code" "$@" >"$tmp/py" 2>&1; then ok; else bad "$what"; sed 's/^/    /' "$tmp/py" | tail -5 >&2; fi
}

# h5_close DESCRIPTION FILE1 FILE2 GROUP TOL: every dataset under GROUP has the same shape in both files and
# max |a - b| <= TOL max |a| (per tensor, max norm). Runs on other grids sum in another order, so an element
# near 0 can differ by a float rounding of its tensor's scale: elementwise relative error is the wrong measure.
h5_close() {
  h5py_check "$1" '
import sys, h5py, numpy as np
a, b, grp, tol = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r"), sys.argv[3], float(sys.argv[4])
names = []
a[grp].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
assert names, "no datasets under " + grp
for n in names:
    x, y = a[grp][n][()].astype(np.float64), b[grp][n][()].astype(np.float64)
    assert x.shape == y.shape, (n, x.shape, y.shape)
    err, scale = float(np.max(np.abs(x - y))), float(np.max(np.abs(x)))
    assert err <= tol * scale, (n, err, scale)
' "$2" "$3" "$4" "$5"
}

# finish NAME: the closing line and the exit status
finish() {
  echo "$1: $passed passed, $failed failed"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

if [ ! -x "$dpmpi" ]; then
  echo "FAIL: $dpmpi not built" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
