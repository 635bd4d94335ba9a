#!/usr/bin/env bash
# pretrain under mpirun -np 2: an interrupted run (--stop-after, then the same command) ends with
# the same weights, bit for bit, as an uninterrupted one; the report and metrics are written.
source "$(dirname "$0")/common.sh"
TOOL="$REPO_DIR/data_tools/build_benchmark.py"
"$LORAREC_PYTHON" "$TOOL" --out data --preset quick >/dev/null
B=$LORAREC_BIN
ARGS="--data data/base.h5 --steps 12 --warmup 2 --batch-size 16 --checkpoint-every 4 --log-every 4 --width 32 --mlp 64 --heads 2 --layers 2 --proj-dim 16 --eval-episodes 20 --log-level warn"
mpirun2 $B pretrain $ARGS --out full
mpirun2 $B pretrain $ARGS --out resumed --stop-after 6
[ ! -e resumed/model.safetensors ] || fail "a stopped run wrote the final model"
[ -f resumed.work/checkpoint.safetensors ] || fail "no checkpoint after --stop-after"
mpirun2 $B pretrain $ARGS --out resumed
"$LORAREC_PYTHON" - <<PY
import sys, json
sys.path.insert(0, "$(dirname "$REF")")
from tiny_clip import st_read
import numpy as np
a, b = st_read("full/model.safetensors"), st_read("resumed/model.safetensors")
assert a.keys() == b.keys()
bad = [k for k in a if not np.array_equal(a[k], b[k])]
assert not bad, f"resumed weights differ: {bad[:3]}"
r = json.load(open("full/pretrain_report.json"))
assert "heldout_head_acc" in r and "heldout_proto_5w1s" in r, r
lines = [json.loads(l) for l in open("full.work/metrics.jsonl")]
assert [l["step"] for l in lines] == [4, 8, 12], lines
print("pretrain_resume: identical after resume;", r)
PY
# The exported model loads through the HF path (embed).
$B embed --model full --images data/test.h5 --out f.h5 --log-level warn
