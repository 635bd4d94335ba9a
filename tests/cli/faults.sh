#!/usr/bin/env bash
# Faults under mpirun -np 2 (tests/cli/slurm_pipeline.sh does the same under srun). In each of
# zoo, invert, metatrain and eval, rank 1 fails at a fault point (LORAREC_FAULT, see
# include/lorarecycle/util/env.h) with an error, or SIGKILLs itself there. Each time: the job ends
# non-zero within 60 s with a line naming rank 1; what was finished before the fault is intact;
# the re-run (metatrain: --resume) completes the work without redoing the finished parts, and the
# result equals the uninterrupted run's. Then a stuck rank: the collective watchdog of the other
# rank ends the job (and without the watchdog the job hangs, which is what the MPI path does).
source "$(dirname "$0")/common.sh"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" --until eval >demo.txt 2>&1 || { cat demo.txt; fail "quick pipeline"; }
cd w
B=$LORAREC_BIN
CFG=$REPO/configs/quick.ini
MPI2=("$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2)
ERR='error \[rank 1\]: fault injected'
KILLED='process rank 1 .*exited on signal 9'
source "$REPO/tests/cli/fault_cases.sh"
LAUNCH=("${MPI2[@]}")
all_fault_cases

# ---- a stuck rank: rank 1 hangs before the all-reduce of step 5.
expect_crash 'error \[rank 0\]: MPI all_reduce_sum did not complete within 5 s' -- \
  env LORAREC_FAULT=1:metatrain@5:hang "${MPI2[@]}" $B metatrain --config "$CFG" --out meta_hang --collective-timeout 5
[ -z "$(pgrep -f "$B metatrain --config $CFG --out meta_hang")" ] || fail "a stuck rank outlived the job"
set +e
env LORAREC_FAULT=1:metatrain@5:hang timeout 15 "${MPI2[@]}" $B metatrain --config "$CFG" --out meta_hang0 --collective-timeout 0 >hang0.txt 2>&1
rc=$?
set -e
pkill -9 -f "$B metatrain --config $CFG --out meta_hang0" || true
[ $rc = 124 ] || { cat hang0.txt; fail "without the watchdog the stuck job ended by itself (rc $rc)"; }
echo "stuck rank: --collective-timeout 5 ends the job; with 0 it still hangs after 15 s (timeout killed it)"
echo "faults: all passed"
