#!/usr/bin/env bash
# Elastic resume: a meta-training job checkpointed at one world size resumes at another (a requeued
# Slurm job that gets fewer or more nodes) and continues the same schedule. 20 steps of 2 episodes:
# stopped after 10 under mpirun -np 2 and resumed on 1 rank, and stopped after 10 on 1 rank and
# resumed under mpirun -np 2; each must equal the uninterrupted 2-rank run within the all-reduce's
# rounding (the sum of the two episodes' gradients in another order), in fp32 (in bf16 a world size
# changes the rounding by more: metatrain_mpi checks that).
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN
"$LORAREC_PYTHON" "$REPO_DIR/data_tools/build_benchmark.py" --out data --preset quick >/dev/null
"$LORAREC_PYTHON" "$REF" make-model m
mpirun2 $B zoo --model m --data data/zoo.h5 --num-loras 2 --epochs 2 --batch-size 10 --out zoo --log-level warn ||
  fail "zoo"
mpirun2 $B invert --model m --zoo zoo --per-class 4 --iterations 3 --no-flip --out pool --log-level warn || fail "invert"
ARGS="--precision fp32 --model m --pool pool --way 3 --shot 1 --query 2 --episodes-per-step 2 --steps 20 --log-every 5 --checkpoint-every 1000"
mpirun2 $B metatrain $ARGS --out ref >ref.txt 2>&1 || { cat ref.txt; fail "uninterrupted run"; }
# stop_resume NAME FIRST SECOND: --stop-after 10 with launcher FIRST, --resume with SECOND.
stop_resume() {
  set +e; $2 $B metatrain $ARGS --stop-after 10 --out "$1" >"$1.1.txt" 2>&1; local rc=$?; set -e
  [ $rc = 75 ] || { cat "$1.1.txt"; fail "$1: --stop-after exited $rc, expected 75"; }
  $3 $B metatrain $ARGS --resume --out "$1" >"$1.2.txt" 2>&1 || { cat "$1.2.txt"; fail "$1: resume"; }
  grep -q "resumed from .* at step 10" "$1.2.txt" || { cat "$1.2.txt"; fail "$1: did not resume at step 10"; }
  grep -q "checkpointed at world size" "$1.2.txt" || { cat "$1.2.txt"; fail "$1: the world size change not said"; }
  compare_adapters ref "$1" 1e-5
}
stop_resume two_to_one mpirun2 ""
stop_resume one_to_two "" mpirun2
"$LORAREC_PYTHON" - <<'PY'
import json
ref = [json.loads(l) for l in open("ref.work/metrics.jsonl") if '"loss"' in l]
for run in ("two_to_one", "one_to_two"):
    got = [json.loads(l) for l in open(f"{run}.work/metrics.jsonl") if '"loss"' in l]
    assert [r["step"] for r in got] == [r["step"] for r in ref], (run, got, ref)
    worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(got, ref))
    print(f"{run}: training losses at steps {[r['step'] for r in ref]} within {worst:.2g} of the uninterrupted run")
    assert worst < 1e-4, run
PY

# --keep best (early stopping on the validation classes): the written meta-LoRA is the one of the
# validation with the highest mean, earliest on a tie; the checkpoint carries it across a stop and
# a resume at another world size; it is the meta-LoRA a run cut at that step ends with; --keep
# never changes the training itself. lr 3e-2 makes later steps overfit the tiny pool.
KB="$ARGS --lr 3e-2 --val data/val.h5 --val-every 4 --val-episodes 30 --val-way 3 --val-query 2"
mpirun2 $B metatrain $KB --keep best --out best >best.txt 2>&1 || { cat best.txt; fail "--keep best"; }
grep -q "kept the best validation's meta-LoRA (step" best.txt || { cat best.txt; fail "--keep best not logged"; }
mpirun2 $B metatrain $KB --keep last --out last >last.txt 2>&1 || { cat last.txt; fail "--keep last"; }
set +e; mpirun2 $B metatrain $KB --keep best --stop-after 10 --out best_r >best_r.1.txt 2>&1; rc=$?; set -e
[ $rc = 75 ] || { cat best_r.1.txt; fail "--keep best --stop-after exited $rc, expected 75"; }
$B metatrain $KB --keep best --resume --out best_r >best_r.2.txt 2>&1 || { cat best_r.2.txt; fail "--keep best resume"; }
compare_adapters best best_r 1e-5
KEPT=$("$LORAREC_PYTHON" - <<'PY'
import json
m = json.load(open("best/metatrain.json"))
vals = [json.loads(l) for l in open("best.work/metrics.jsonl") if '"val_mean"' in l]
top = max(v["val_mean"] for v in vals)
first = next(v for v in vals if v["val_mean"] == top)
assert m["keep"] == "best" and m["kept_step"] == first["step"], (m["kept_step"], vals)
assert m["val_kept"]["val_mean"] == top and m["val_best"] == m["val_kept"], m
r = json.load(open("best_r/metatrain.json"))
assert r["kept_step"] == m["kept_step"] and abs(r["val_kept"]["val_mean"] - top) < 0.01, (r["val_kept"], top)
l = json.load(open("last/metatrain.json"))
assert l["keep"] == "last" and l["kept_step"] == 20 and l["val_kept"] == l["val_final"], l
assert l["replica_hash"] == m["replica_hash"], "--keep changed the training"
print(f"validations {[(v['step'], round(v['val_mean'], 2)) for v in vals]}: kept step {m['kept_step']}",
      file=__import__("sys").stderr)
print(m["kept_step"])
PY
)
if [ "$KEPT" = 20 ]; then
  compare_adapters best last 0
elif [ "$KEPT" = 0 ]; then
  "$LORAREC_PYTHON" - <<'PY'
import numpy as np
from peft_adapter import tensors
t = tensors("best")
assert all(not np.any(v) for k, v in t.items() if "lora_B" in k), "step 0 kept, but B is not zero"
print("kept step 0: the written meta-LoRA is the fresh one (B = 0)")
PY
else
  mpirun2 $B metatrain ${ARGS/--steps 20/--steps $KEPT} --lr 3e-2 --keep last --out cut >cut.txt 2>&1 || { cat cut.txt; fail "cut run"; }
  compare_adapters best cut 1e-5
fi
echo "elastic_resume: both directions continue the uninterrupted schedule; --keep best keeps step $KEPT across a resume"
