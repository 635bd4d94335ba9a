# Shared by the CLI tests: paths from ctest's environment, a temp dir, helpers.
set -euo pipefail
: "${LORAREC_BIN:?}" "${LORAREC_PYTHON:?}" "${LORAREC_MPIEXEC:?}"
# Paths of the tests' own files, resolved before the cd below (a relative $0 works too).
CLI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CLI_DIR/../.." && pwd)"
REF="$CLI_DIR/../reference/tiny_clip.py"
WORK=$(mktemp -d /tmp/lorarec_cli_XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# quick_pipeline STAGE: the quick preset's data and runs up to STAGE under $WORK/w
# (launch/demo.sh --until STAGE, under mpirun -np 2); then cd there.
quick_pipeline() {
  bash "$REPO_DIR/launch/demo.sh" --preset quick --workdir "$WORK/w" \
    --until "$1" >demo.txt 2>&1 || { cat demo.txt; fail "quick pipeline up to $1"; }
  cd "$WORK/w"
}
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
# compare_adapters DIR_A DIR_B TOL: max |a-b| / max |a| over the tensors of two PEFT adapter
# directories (own safetensors reader), fails above TOL.
export PYTHONPATH="$CLI_DIR${PYTHONPATH:+:$PYTHONPATH}"  # peft_adapter.py
compare_adapters() {
  "$LORAREC_PYTHON" - "$@" <<'PY'
import sys
import numpy as np
from peft_adapter import tensors as load
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert a.keys() == b.keys() and a, (a.keys(), b.keys())
err = max(np.abs(a[k] - b[k]).max() for k in a) / max(np.abs(a[k]).max() for k in a)
print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(a)} tensors, max relative difference {err:.3g} (tolerance {tol:g})")
assert err <= tol, "weights differ"
PY
}
# expect_crash NEEDLE -- command...: a job with an injected fault must end non-zero (not by the
# 120 s timeout) within 60 s, with a line matching NEEDLE (extended regex) that names the rank.
expect_crash() {
  local needle=$1; shift 2
  local t0; t0=$(date +%s%N)
  set +e; timeout 120 "$@" >crash.txt 2>&1; local rc=$?; set -e
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ $rc -ne 0 ] || { cat crash.txt; fail "'$*' exited 0 despite the fault"; }
  [ $rc -ne 124 ] || { cat crash.txt; fail "'$*' hung (killed by timeout after 120 s)"; }
  [ $ms -lt 60000 ] || { cat crash.txt; fail "'$*' took $ms ms to end (limit 60 s)"; }
  grep -qE -- "$needle" crash.txt || { cat crash.txt; fail "'$*': no line matching '$needle'"; }
  echo "ok: exit $rc after $((ms / 1000)).$(( (ms % 1000) / 100 )) s: $(grep -E -m1 -- "$needle" crash.txt)"
}
# tree_state DIR: "path mtime" of every file under DIR (finished outputs must not change).
tree_state() { (cd "$1" && find . -type f ! -name '.*' -printf '%p %T@\n' | sort); }
