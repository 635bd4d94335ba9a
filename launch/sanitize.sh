#!/usr/bin/env bash
# The sanitizer run: builds with AddressSanitizer + UndefinedBehaviorSanitizer (CMake options
# LORAREC_SANITIZE_ADDRESS / LORAREC_SANITIZE_UNDEFINED) into build-asan/ and runs there the unit
# tests (ctest label "unit", the MPI one under mpirun -np 2) and the CLI tests that feed the
# parsers bad and hostile input (bad_inputs, abort_on_error, cli_options). UBSan stops at the
# first finding. Leak checking is off: Open MPI and LibTorch keep process-lifetime allocations.
#   bash launch/sanitize.sh [ctest args]     (default: -L unit plus the three CLI tests)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash launch/setup.sh --build-dir build-asan --build-type RelWithDebInfo -- \
  -DLORAREC_SANITIZE_ADDRESS=ON -DLORAREC_SANITIZE_UNDEFINED=ON
built=$(date +%s)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ $# -gt 0 ]; then
  ctest --test-dir build-asan --output-on-failure "$@"
else
  ctest --test-dir build-asan --output-on-failure -L unit
  ctest --test-dir build-asan --output-on-failure -R '^(bad_inputs|abort_on_error|cli_options)$'
fi
echo "sanitize: build $(( built - start )) s, tests $(( $(date +%s) - built )) s (ASan + UBSan)"
