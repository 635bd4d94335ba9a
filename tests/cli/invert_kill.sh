#!/usr/bin/env bash
# A rank killed (SIGKILL) in the middle of a quick-preset inversion under mpirun -np 2: the job
# ends non-zero without hanging, no partial file is in the pool, and the re-run completes every
# LoRA exactly once without redoing the finished ones.
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
quick_pipeline zoo
B=$LORAREC_BIN
ARGS="--model runs/quick/vfm --zoo runs/quick/zoo --prior runs/quick/prior --out pool --per-class 3 --iterations 150 --prune 1:0.5"
start=$(date +%s)
set +e
timeout 120 "$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 $B invert $ARGS >run1.txt 2>&1 &
job=$!
# wait for the first finished LoRA, then kill one rank
for _ in $(seq 1 600); do ls pool/lora_*.h5 >/dev/null 2>&1 && break; sleep 0.1; done
victim=$(pgrep -f "^$B invert" | tail -n 1)  # a rank, not mpirun
[ -n "$victim" ] || fail "no rank to kill"
kill -9 "$victim"
wait $job
rc=$?
set -e
took=$(( $(date +%s) - start ))
[ $rc -ne 0 ] || fail "the job with a killed rank exited 0"
[ $rc -ne 124 ] || fail "the job hung after a rank was killed"
echo "killed rank pid $victim: job exited $rc after ${took}s"
"$LORAREC_PYTHON" - <<'PY'
import glob, h5py
for p in glob.glob("pool/lora_*.h5"):
    with h5py.File(p) as f:
        assert f.attrs.get("complete") == 1, f"{p} is in the pool but incomplete"
print("after the kill, complete files:", sorted(glob.glob("pool/lora_*.h5")))
PY
before=$(cd pool && for f in lora_*.h5; do echo "$f $(stat -c %Y.%s "$f")"; done)
"$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 $B invert $ARGS >run2.txt 2>&1 || { cat run2.txt; fail "re-run failed"; }
after=$(cd pool && for f in $(echo "$before" | cut -d' ' -f1); do echo "$f $(stat -c %Y.%s "$f")"; done)
[ "$before" = "$after" ] || fail "finished LoRAs were redone: before '$before' after '$after'"
[ "$(ls pool | grep -c '^lora_.*\.h5$')" = 4 ] || fail "expected 4 pool files: $(ls -a pool)"
[ -z "$(ls -a pool | grep '\.tmp\.')" ] || fail "temporary files left in the pool"
"$LORAREC_PYTHON" - <<'PY'
import json
idx = json.load(open("pool/index.json"))
assert sorted(f["lora_id"] for f in idx["files"]) == [0, 1, 2, 3], idx
print("invert_kill: re-run complete,", idx["images"], "images")
PY
