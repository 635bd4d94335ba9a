#!/usr/bin/env bash
# Starts lorarecycle under mpirun with the per-rank settings of launch/env.sh.
#   bash launch/mpirun.sh [-n RANKS] [--hostfile FILE] [--cpus-per-rank C] [--no-bind] [--dry-run] -- COMMAND [ARGS...]
# COMMAND is a lorarecycle subcommand (pretrain, zoo, invert, metatrain, eval, ...) or a program.
#   -n RANKS         ranks in all (default: the cores of this machine, or the hostfile's slots)
#   --hostfile FILE  Open MPI hostfile ("node01 slots=32" per line) for runs over several nodes
#   --cpus-per-rank C  bind each rank to C cores of its own (default: its share of this machine's
#                    physical cores, one with a hostfile; more than one where fewer ranks than cores
#                    run, e.g. one per GPU, whose batches are made on its spare cores)
#   --no-bind        do not bind ranks to cores
#   --dry-run        print the mpirun command instead of running it
# One rank per core (or per GPU), one compute thread per rank; --allow-run-as-root only as root;
# --oversubscribe only when there are more ranks than cores on one machine.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/launch/env.sh"
N=""; HOSTFILE=""; BIND=1; DRY=0; PE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--np) N=$2; shift 2 ;;
    --hostfile) HOSTFILE=$2; shift 2 ;;
    --cpus-per-rank) PE=$2; shift 2 ;;
    --no-bind) BIND=0; shift ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n "2,13p" "$0"; exit 0 ;;
    *) echo "mpirun.sh: unknown argument $1 (the command goes after --)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "mpirun.sh: no command (usage: launch/mpirun.sh [-n N] -- COMMAND ...)" >&2; exit 2; }
CMD=("$@")
case "${CMD[0]}" in
  pretrain|zoo|invert|metatrain|eval|predict|embed) CMD=("${LORAREC_BIN:-$REPO/build/lorarecycle}" "${CMD[@]}") ;;
esac
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
ARGS=("${MPIRUN_ROOT_FLAGS[@]}")
if [ -n "$HOSTFILE" ]; then
  [ -f "$HOSTFILE" ] || { echo "mpirun.sh: no hostfile $HOSTFILE" >&2; exit 2; }
  ARGS+=(--hostfile "$HOSTFILE")
  [ -n "$N" ] && ARGS+=(-np "$N")
else
  N=${N:-$CORES}
  ARGS+=(-np "$N")
  if [ "$N" -gt "$CORES" ]; then ARGS+=(--oversubscribe); BIND=0; fi
fi
# Physical cores among this process's CPUs: Open MPI's PE= counts cores where nproc counts hardware
# threads. nproc where the topology cannot be read.
phys_cores() {
  local list r c t n=""
  list=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status 2>/dev/null || true)
  if [ -n "$list" ] && [ -r /sys/devices/system/cpu/cpu0/topology/core_id ]; then
    n=$(for r in ${list//,/ }; do for c in $(seq "${r%-*}" "${r#*-}"); do
          t=/sys/devices/system/cpu/cpu$c/topology; echo "$(cat "$t/physical_package_id"):$(cat "$t/core_id")"
        done; done | sort -u | wc -l)
  fi
  echo "${n:-$CORES}"
}
if [ -n "$PE" ]; then
  [[ "$PE" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: --cpus-per-rank needs a positive integer, got '$PE'" >&2; exit 2; }
  [ $BIND = 1 ] || { echo "mpirun.sh: --cpus-per-rank needs binding (not --no-bind, nor more ranks than cores)" >&2; exit 2; }
elif [ -z "$HOSTFILE" ] && [ "$N" -lt "$CORES" ]; then
  PE=$(( $(phys_cores) / N ))
  [ "$PE" -ge 2 ] || PE=""  # one core each: --map-by core, as at one rank per core
fi
if [ $BIND = 1 ]; then
  if [ -n "$PE" ]; then ARGS+=(--bind-to core --map-by "slot:PE=$PE"); else ARGS+=(--bind-to core --map-by core); fi
fi
for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE NCCL_SOCKET_IFNAME NCCL_DEBUG LORAREC_FAULT; do
  [ -n "${!v:-}" ] && ARGS+=(-x "$v")
done
if [ $DRY = 1 ]; then echo mpirun "${ARGS[@]}" "${CMD[@]}"; exit 0; fi
exec mpirun "${ARGS[@]}" "${CMD[@]}"
