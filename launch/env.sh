# Per-rank runtime settings for real runs (sourced by the launch scripts). Under the tests
# (LORAREC_TEST=1, set by ctest) OPENBLAS_* are left as they are.
# One compute thread per rank: ranks, not threads, use the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -z "${LORAREC_TEST:-}" ]; then
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
  # Debian's OpenBLAS 0.3.21 does not know recent Intel CPUs and falls back to its slowest
  # kernel; SkylakeX kernels are ~3x faster and correct where the CPU has AVX-512.
  if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo 2>/dev/null; then
    export OPENBLAS_CORETYPE=SkylakeX
  fi
fi
# mpirun as root needs an explicit opt-in.
MPIRUN_ROOT_FLAGS=()
if [ "$(id -u)" = 0 ]; then MPIRUN_ROOT_FLAGS=(--allow-run-as-root); fi
# What mpirun passes on to the ranks (-x): the thread count, and the OpenBLAS settings when set.
MPIRUN_ENV_FLAGS=(-x OMP_NUM_THREADS)
# (An if, not `[ ] && ...`: the file's last status must be 0 when neither is set, or a script
# under `set -e` that sources it ends there, silently.)
for v in OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE; do
  if [ -n "${!v:-}" ]; then MPIRUN_ENV_FLAGS+=(-x "$v"); fi
done
