#!/usr/bin/env bash
# Sets everything up (launch/setup.sh) and runs the default test suite (ctest, including the
# multi-rank tests under mpirun -np 2 and the Slurm test), then the sanitizer run
# (launch/sanitize.sh: ASan + UBSan build in build-asan/, unit tests + hostile-input CLI tests).
# Extra arguments go to ctest (e.g. -L mpi, -R embed) and skip the sanitizer run, as does
# LORAREC_SKIP_SANITIZE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
start=$(date +%s)
ctest --test-dir build --output-on-failure "$@"
echo "test: suite took $(( $(date +%s) - start )) s"
if [ $# -eq 0 ] && [ "${LORAREC_SKIP_SANITIZE:-0}" != 1 ]; then
  bash launch/sanitize.sh
fi
