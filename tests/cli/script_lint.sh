#!/usr/bin/env bash
# The project's shell scripts run under `set -o pipefail`: a reader that stops early (`grep -q`,
# `head`) makes the writer die of SIGPIPE now and then, and the pipeline fails at random. Read a
# command's output into a here-string (`grep -q X <<<"$(cmd)"`), or use `grep -m1` / `sed -n 1p`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
early='(grep +(-[a-zA-Z]*q|--quiet|--silent)|head)'
bad=$(grep -nE "\|[[:space:]]*$early([[:space:]]|$)" .ci/run $(find tests launch bench cluster data_tools \
  -name '*.sh' -o -name '*.sbatch') | grep -v '^tests/cli/script_lint.sh:' || true)
if [ -n "$bad" ]; then
  echo "$bad" >&2
  echo "FAIL: a pipe into an early-exiting reader (SIGPIPE under pipefail); see the comment at the top of $0" >&2
  exit 1
fi
echo "ok: no pipe into grep -q or head in $(find tests launch bench cluster data_tools -name '*.sh' -o -name '*.sbatch' | wc -l) scripts"
# launch/env.sh is sourced by scripts under `set -e`: it must end with status 0 whatever the
# environment holds (it once ended on a false `[ -n "$OPENBLAS_CORETYPE" ] && ...` where neither
# OPENBLAS_* variable was set, and every launch script stopped silently there under the tests).
for test_env in "LORAREC_TEST=1" "LORAREC_TEST=" "LORAREC_TEST=1 OPENBLAS_CORETYPE=Haswell"; do
  # shellcheck disable=SC2086  # test_env is words
  out=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_NUM_THREADS $test_env bash -c 'set -euo pipefail; source launch/env.sh; echo sourced') || true
  [ "$out" = sourced ] || { echo "FAIL: source launch/env.sh ended the script ($test_env)" >&2; exit 1; }
done
echo "ok: launch/env.sh sources under set -e with and without OPENBLAS_* and LORAREC_TEST"
