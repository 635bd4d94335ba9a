#!/usr/bin/env bash
# Builds with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/ and runs the test
# suite there. Leak checking is off: Open MPI and LibTorch keep process-lifetime allocations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh --build-dir build-asan --build-type RelWithDebInfo -- \
  -DLORAREC_SANITIZE_ADDRESS=ON -DLORAREC_SANITIZE_UNDEFINED=ON
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} ctest --test-dir build-asan --output-on-failure "$@"
