#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, convert Fashion-MNIST (Debian package
# dataset-fashion-mnist) to HDF5, and train with DP-SGD on 2 ranks.
# Usage: scripts/fmnist.sh [JOBFILE] [--section.key=value ...]   (default jobs/fmnist-cnn.ini)
# Environment: NP (ranks, default 2), BUILD (build directory, default build).
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-jobs/fmnist-cnn.ini}
[ $# -gt 0 ] && shift
np=${NP:-2}
build=${BUILD:-build}
scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
mkdir -p data
if [ ! -f data/fashion-mnist.h5 ]; then
  src=/usr/share/datasets/fashion-mnist
  "$build"/dpmpi data convert --from idx \
    --train-images $src/train-images-idx3-ubyte.gz --train-labels $src/train-labels-idx1-ubyte.gz \
    --test-images $src/t10k-images-idx3-ubyte.gz --test-labels $src/t10k-labels-idx1-ubyte.gz \
    --out data/fashion-mnist.h5
fi
root_flags=()
[ "$(id -u)" -eq 0 ] && root_flags=(--allow-run-as-root)
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
exec mpirun -np "$np" "${root_flags[@]}" "$build"/dpmpi train "$job" "$@"
