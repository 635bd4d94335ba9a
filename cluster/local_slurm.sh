#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests and for trying cluster/ without a cluster:
# munge, slurmctld and slurmd as background processes (no systemd), config and state under DIR.
#   bash cluster/local_slurm.sh start DIR   # prints: export SLURM_CONF=DIR/slurm.conf
#   bash cluster/local_slurm.sh stop DIR    # cancels jobs, stops the daemons, leaves none running
# Needs: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
set -euo pipefail
ACTION=${1:?start|stop}; S=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
export SLURM_CONF=$S/slurm.conf
stop_pid() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; }
case "$ACTION" in
start)
  for b in munged slurmctld slurmd sbatch; do command -v $b >/dev/null || { echo "local_slurm: $b missing (apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)" >&2; exit 2; }; done
  mkdir -p "$S"/{run,log,state,spool,tmp}; chmod 755 "$S/run"
  [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  CPUS=$(env -u OMP_NUM_THREADS nproc --all)
  MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  cat >"$SLURM_CONF" <<CONF
ClusterName=lorarec
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/run/munge.socket.2
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
TmpFS=$S/tmp
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
ReturnToService=2
NodeName=localhost CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  munged --force --socket="$S/run/munge.socket.2" --key-file=/etc/munge/munge.key --log-file="$S/log/munged.log" \
    --pid-file="$S/run/munged.pid" --seed-file="$S/run/munged.seed"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N localhost
  for _ in $(seq 1 60); do
    grep -q idle <<<"$(sinfo -h -o %t 2>/dev/null)" && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.5
  done
  echo "local_slurm: the node did not become idle; logs in $S/log" >&2; sinfo >&2 || true; exit 1 ;;
stop)
  scancel --full -u "$(id -un)" 2>/dev/null || true
  stop_pid "$S/run/slurmd.pid"; stop_pid "$S/run/slurmctld.pid"; sleep 1; stop_pid "$S/run/munged.pid"
  for _ in $(seq 1 20); do
    pgrep -f "$S/" >/dev/null || exit 0
    sleep 0.5
  done
  pkill -9 -f "$S/" || true ;;
*) echo "local_slurm: start or stop" >&2; exit 2 ;;
esac
