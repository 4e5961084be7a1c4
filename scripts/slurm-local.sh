#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, in a private directory, for tests and for trying the jobs/
# scripts without a cluster: its own munge key and socket, its own slurm.conf (SLURM_CONF), state and
# spool directories, free ports, and munged, slurmctld and slurmd started in the foreground of background
# processes whose PIDs are kept, so that `stop` ends exactly those (and the optional watchdog). No systemd,
# nothing in /etc used or changed.
#
# Usage: scripts/slurm-local.sh start DIR    create DIR, start the daemons, wait until the node is idle
#        scripts/slurm-local.sh stop DIR     stop the daemons started in DIR (by PID, TERM then KILL)
#        scripts/slurm-local.sh env DIR      print "export SLURM_CONF=..." for the client commands
# After `start`: export SLURM_CONF=DIR/slurm.conf, then sbatch / srun / squeue / scontrol as usual.
#
# Needs root (slurmd starts job steps as the submitting user) and the Debian packages slurm-wlm and munge
# (`DPM_WITH_SLURM=1 scripts/install-deps.sh`). Settings chosen for one small machine and short tests:
# proctrack/linuxproc and task/none (no cgroups), select/cons_tres on cores, no accounting, KillWait 5 s,
# a requeued job may start again after cred_expire (5 s), finished jobs stay visible for an hour.
# Environment: SLURM_LOCAL_CPUS (default: the machine's CPUs, sockets, cores and threads, from slurmd -C),
# SLURM_LOCAL_WATCH (a PID: a watchdog stops the cluster when it exits, so a killed caller leaves nothing).
set -euo pipefail

die() { echo "slurm-local: $*" >&2; exit 1; }
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then die "usage: $0 start|stop|env DIR"; fi
[ -d "$dir" ] && dir=$(cd "$dir" && pwd)

# stop_pid NAME: TERM the daemon whose PID is in DIR/NAME.pid, KILL it after 10 s
stop_pid() {
  local f=$dir/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && [ "$pid" != $$ ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
  fi
  rm -f "$f"
}

case $cmd in
env)
  echo "export SLURM_CONF=$dir/slurm.conf"
  exit 0 ;;
stop)
  # job processes first: cancel what is left so that slurmd does not leave job steps behind
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    SLURM_CONF=$dir/slurm.conf timeout 10 scancel --full --signal=KILL --state=RUNNING -u "$(id -un)" 2>/dev/null || true
    SLURM_CONF=$dir/slurm.conf timeout 10 scancel -u "$(id -un)" 2>/dev/null || true
  fi
  stop_pid watch
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid munged
  # slurmstepd processes of this cluster (they inherit SLURM_CONF from slurmd)
  for p in $(pgrep -f "slurmstepd" 2>/dev/null || true); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$dir/slurm.conf"; then
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  exit 0 ;;
start) ;;
*) die "unknown command '$cmd' (start, stop or env)" ;;
esac

missing=()
for b in munged munge unmunge slurmctld slurmd sbatch srun scontrol sinfo; do command -v "$b" >/dev/null || missing+=("$b"); done
[ ${#missing[@]} = 0 ] || die "missing ${missing[*]}: install Slurm and munge with
  DPM_WITH_SLURM=1 scripts/install-deps.sh
or as root: apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge"
[ "$(id -u)" = 0 ] || die "needs root (slurmd runs job steps as the submitting user)"
[ -e "$dir/slurm.conf" ] && die "$dir already holds a cluster (stop it and remove the directory first)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
chmod 0755 "$dir"
mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/tmp" "$dir/log"
chmod 0755 "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 1777 "$dir/tmp"

# a free TCP port pair (slurmctld, slurmd), away from the defaults 6817/6818
port_used() { # port_used PORT: some TCP socket (any state) has it as its local port
  local hex
  hex=$(printf '%04X' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v h=":$hex" 'NR > 1 && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }'
}
base=$(( 21000 + ($$ * 37 + RANDOM) % 20000 ))
for _ in $(seq 200); do
  port_used $base || port_used $((base + 1)) || break
  base=$((base + 2))
done
ctld_port=$base slurmd_port=$((base + 1))

host=$(hostname -s)
# the machine as slurmd sees it (CPUs, boards, sockets, cores, threads), or SLURM_LOCAL_CPUS CPUs
if [ -n "${SLURM_LOCAL_CPUS:-}" ]; then
  hw="CPUs=$SLURM_LOCAL_CPUS "
else
  hw=$(slurmd -C 2>/dev/null | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
  [ -n "$hw" ] || hw="CPUs=$(nproc) "
fi
cpus=$(echo "$hw" | sed -E 's/.*CPUs=([0-9]+).*/\1/')
head -c 1024 /dev/urandom >"$dir/munge/munge.key"
chmod 0400 "$dir/munge/munge.key"
: >"$dir/plugstack.conf"
cat >"$dir/slurm.conf" <<EOF
# written by scripts/slurm-local.sh: a private one-node cluster
ClusterName=dpmlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
TmpFS=$dir/tmp
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=3600
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host ${hw}State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf

# start NAME COMMAND...: the daemon in the foreground of a background process; its PID in DIR/NAME.pid
start() {
  local name=$1; shift
  setsid "$@" >>"$dir/log/$name.out" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}
fail() { # fail MESSAGE: stop what started, show the logs, exit 1
  echo "slurm-local: $1" >&2
  for f in "$dir"/log/*; do echo "--- $f" >&2; tail -15 "$f" >&2; done
  bash "$self" stop "$dir"
  exit 1
}
# wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
wait_for() {
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$what not ready after $secs s"
}

start munged munged --foreground --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" \
  --pid-file="$dir/munge/munged.pidfile" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
wait_for 10 munged bash -c "echo | munge -S '$dir/munge/munge.socket.2' | unmunge -S '$dir/munge/munge.socket.2'"
start slurmctld slurmctld -D -c -f "$dir/slurm.conf"
wait_for 20 slurmctld scontrol ping
start slurmd slurmd -D -f "$dir/slurm.conf" -N "$host"
node_idle() { [ "$(sinfo -h -n "$host" -o %T)" = idle ]; }
wait_for 30 "node $host" node_idle
if [ -n "${SLURM_LOCAL_WATCH:-}" ]; then
  # the watchdog: when the caller is gone (even killed with SIGKILL), stop the cluster
  start watch bash -c "while kill -0 $SLURM_LOCAL_WATCH 2>/dev/null; do sleep 1; done; exec bash '$self' stop '$dir'"
fi
echo "slurm-local: cluster up in $dir (node $host, $cpus CPUs, ports $ctld_port/$slurmd_port); export SLURM_CONF=$dir/slurm.conf"
