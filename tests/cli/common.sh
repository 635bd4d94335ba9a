# Shared by the CLI tests: paths from ctest's environment, a temp dir, helpers.
set -euo pipefail
: "${LORAREC_BIN:?}" "${LORAREC_PYTHON:?}" "${LORAREC_MPIEXEC:?}"
REF="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/reference/tiny_clip.py"
WORK=$(mktemp -d /tmp/lorarec_cli_XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
mpirun2() { "$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_status CODE NEEDLE -- command...: runs it, checks exit code and that stderr has NEEDLE.
expect_status() {
  local code=$1 needle=$2; shift 3
  set +e; "$@" >out.txt 2>err.txt; local got=$?; set -e
  [ "$got" = "$code" ] || { cat out.txt err.txt; fail "'$*' exited $got, expected $code"; }
  grep -qF -- "$needle" err.txt || { cat err.txt; fail "'$*' did not say '$needle'"; }
  [ "$(grep -c 'error' err.txt)" -ge 1 ] || fail "no error line"
  echo "ok: exit $code, '$needle'"
}
