#!/usr/bin/env bash
# The README's test command: install what is missing, build, run ctest.
# Usage: scripts/test.sh [BUILD_DIR]   (environment: DPM_SANITIZE=1 for an ASan+UBSan build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
export DPM_WITH_SLURM=${DPM_WITH_SLURM:-1} # slurm-wlm and munge for tests/cli/cli_slurm.sh (a local Slurm cluster)
export DPM_WITH_H5PY=${DPM_WITH_H5PY:-1}   # python3-h5py: tests read checkpoints and datasets with h5py
"$here/scripts/install-deps.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDPM_SANITIZE="${DPM_SANITIZE:-OFF}" -DDPM_WERROR=ON
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j 2
