#!/usr/bin/env bash
# Install the Debian packages dpmpi needs, only those missing. Idempotent. As a non-root user without
# sudo rights it prints the apt-get command to run instead and exits 1.
# Never installs libhdf5-dev (serial HDF5): dpmpi needs the parallel (Open MPI) flavour.
set -euo pipefail
pkgs=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libopenblas-dev libscalapack-openmpi-dev
      libhdf5-openmpi-dev hdf5-tools libinih-dev libfftw3-dev libcjson-dev dataset-fashion-mnist)
[ "${DPM_WITH_SLURM:-0}" = 1 ] && pkgs+=(slurm-wlm munge)
[ "${DPM_WITH_BENCH:-0}" = 1 ] && pkgs+=(gnuplot-nox)   # bench/run.sh: PNG plots
[ "${DPM_WITH_H5PY:-0}" = 1 ] && pkgs+=(python3-h5py openssl)   # tests: h5py reads the files; OpenSSL checks the AES streams
[ "${DPM_WITH_CORPORA:-0}" = 1 ] && pkgs+=(wordnet-base)   # jobs/gpt-pretrain.sh: WordNet's glosses (the script installs it too)
[ "${DPM_WITH_FUZZ:-0}" = 1 ] && pkgs+=(clang)   # tests/fuzz: libFuzzer harnesses (CC=clang -DDPM_FUZZ=ON)
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
    nostart=""
    if [ "${DPM_WITH_SLURM:-0}" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then # see below: no daemon starts
      printf '#!/bin/sh\nexit 101\n' | sudo tee /usr/sbin/policy-rc.d >/dev/null && sudo chmod 0755 /usr/sbin/policy-rc.d
      nostart=1
    fi
    status=0
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $cmd || status=$?
    [ -n "$nostart" ] && sudo rm -f /usr/sbin/policy-rc.d
    exit $status
  fi
  echo "install-deps: missing packages: ${missing[*]}"
  echo "install-deps: run as root:  apt-get update && $cmd"
  exit 1
fi
# slurm-wlm and munge start their daemons from their postinst scripts (invoke-rc.d, deb-systemd-invoke);
# the tests start their own private cluster (scripts/slurm-local.sh), so a policy-rc.d that denies every
# start is in place during the install unless the machine already has one
policy=/usr/sbin/policy-rc.d
if [ "${DPM_WITH_SLURM:-0}" = 1 ] && [ ! -e $policy ]; then
  printf '#!/bin/sh\n# install-deps.sh: no service starts while packages are installed\nexit 101\n' >$policy
  chmod 0755 $policy
  trap 'rm -f $policy' EXIT
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive $cmd
