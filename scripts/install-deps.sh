#!/usr/bin/env bash
# Install the Debian packages dpmpi needs, only those missing. Idempotent. As a non-root user without
# sudo rights it prints the apt-get command to run instead and exits 1.
# Never installs libhdf5-dev (serial HDF5): dpmpi needs the parallel (Open MPI) flavour.
set -euo pipefail
pkgs=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libopenblas-dev libscalapack-openmpi-dev
      libhdf5-openmpi-dev hdf5-tools libinih-dev libfftw3-dev dataset-fashion-mnist)
[ "${DPM_WITH_SLURM:-0}" = 1 ] && pkgs+=(slurm-wlm munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} Debian packages present"
  exit 0
fi
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $cmd
    exit 0
  fi
  echo "install-deps: missing packages: ${missing[*]}"
  echo "install-deps: run as root:  apt-get update && $cmd"
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive $cmd
