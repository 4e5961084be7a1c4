#!/usr/bin/env bash
# The README's test command: install what is missing, build, run ctest.
# Usage: scripts/test.sh [BUILD_DIR]   (environment: DPM_SANITIZE=1 for an ASan+UBSan build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
"$here/scripts/install-deps.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDPM_SANITIZE="${DPM_SANITIZE:-OFF}" -DDPM_WERROR=ON
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j 2
