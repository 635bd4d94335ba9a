#!/usr/bin/env bash
# Sets everything up (launch/setup.sh) and runs the default test suite (ctest, including the
# multi-rank tests under mpirun -np 2). Extra arguments go to ctest (e.g. -L mpi, -R embed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
start=$(date +%s)
ctest --test-dir build --output-on-failure "$@"
echo "test: suite took $(( $(date +%s) - start )) s"
