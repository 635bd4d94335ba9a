#!/usr/bin/env bash
# Meta-training on the quick pool:
#  1. the same global episode schedule at world size 1 and under mpirun -np 2 gives the same
#     weights after 20 steps (replicas checked every step): in fp32 within the all-reduce's
#     rounding (1e-4), in bf16 within bf16's (5e-3). The other sections run in fp32.
#  2. a run stopped after 10 steps and resumed equals the uninterrupted run (bit for bit);
#  3. a SIGUSR1 to one rank mid-run: every rank stops on the same step with a checkpoint (exit 75),
#     and --resume finishes with the weights of an uninterrupted run;
#  4. a replica that diverges is caught; non-finite losses are skipped and counted, and too many
#     in a row abort with a clear message;
#  5. feature distillation from each surrogate's own LoRA (--distill-weight, with a temperature and
#     a mask ratio, the attention-top patches and --mask-select random): world size 1 equals mpirun
#     -np 2, the distillation term falls, and a pool whose LoRA is missing is refused (exit 2); the
#     same with the term on a second pool's images (--distill-pool), which is refused without
#     --distill-weight (or --align-weight) and when it is not a pool; the alignment term alone
#     (--align-weight, --distill-weight 0): world size 1 equals mpirun -np 2; both distillation terms
#     at once (--distill-pool-weight) add up to each alone; the pool's term towards the start
#     (--distill-targets start) equals it on a pool copy that names the start as its LoRA, and resumes;
#  6. --init zoo-mean: at full rank the meta-LoRA starts as the zoo's mean weight delta (checked on
#     the saved adapter of a run with a vanishing learning rate, world size 2), above it too, with
#     the components beyond the mean's rank at a fresh non-zero A and B = 0, a lower rank keeps
#     less of it, a meta-LoRA on other modules than the zoo's is refused (exit 2), --layers keeps
#     the zoo's mean on the chosen layers only, and a resumed run takes its weights from the
#     checkpoint without reading the zoo (moved away here); --disjoint-teachers runs where every
#     class can be drawn so and is refused (exit 2) where the other LoRAs hold too few queries;
#     --hard-classes runs inside its range and is refused outside it; --compose: world size 1 equals
#     mpirun -np 2, it changes the weights, and is refused with --mask-select top; so does
#     --compose-partner same, which trains otherwise than the default (other); other values and the
#     option without --compose are refused;
#  7. --host-sync log (the GPU default; forced here on the CPU): the finite check, clipping and a
#     skipped update on the device, read every --log-every steps: the same weights as --host-sync
#     step within rounding (1e-5), at most one host read per log interval (metatrain.json
#     host_reads) against three per step, the same non-finite steps skipped, and --max-bad-steps
#     acted on at the read;
#  8. --scales-only: refused without --init zoo-mean; from the full-rank zoo mean, the written
#     adapter keeps the start's A and each column of its B up to one trained scale, the scales move,
#     and a run stopped and resumed equals the uninterrupted one (A and B rebuilt from the zoo, the
#     scales from the checkpoint).
source "$(dirname "$0")/common.sh"
quick_pipeline invert
B=$LORAREC_BIN
COMMON="--precision fp32 --model runs/quick/vfm --way 5 --shot 1 --query 5 --episodes-per-step 2 --log-every 1 --checkpoint-every 1000"
ARGS="$COMMON --pool runs/quick/pool --single-lora-prob 0.3"
VAL="--val data/quick/val.h5 --val-episodes 40 --val-every 0"

# 1. world size 1 (accumulating both episodes of a step) vs 2 ranks (one each)
$B metatrain $ARGS $VAL --steps 20 --out w1 >w1.txt 2>&1 || { cat w1.txt; fail "world size 1"; }
mpirun2 $B metatrain $ARGS $VAL --steps 20 --hash-every 1 --out w2 >w2.txt 2>&1 || { cat w2.txt; fail "mpirun -np 2"; }
compare_adapters w1 w2 1e-4
"$LORAREC_PYTHON" - <<'PY'
import json
a, b = json.load(open("w1/metatrain.json")), json.load(open("w2/metatrain.json"))
assert b["world_size"] == 2 and a["world_size"] == 1 and b["replica_hash"], b
print("val after 20 steps: world 1", a["val_final"]["val_mean"], "world 2", b["val_final"]["val_mean"],
      "(initial", a["val_initial"]["val_mean"], ")")
assert abs(a["val_final"]["val_mean"] - b["val_final"]["val_mean"]) < 0.5
# the per-phase profile of the step (CPU): every phase there, none negative, together the step
t = b["timing"]
ph = t["phase_ms_per_step"]
want = {"data", "input", "patches", "embed", "attention", "mlp", "head", "loss", "backward", "reduce", "optimizer", "other"}
assert set(ph) == want, sorted(ph)
assert all(v >= 0 for v in ph.values()), ph
total = sum(ph.values())
assert abs(total - 1e3 * t["step_seconds"]) < 0.05 * 1e3 * t["step_seconds"] + 0.5, (total, t["step_seconds"])
assert ph["attention"] > 0 and ph["mlp"] > 0 and ph["backward"] > 0, ph
print("phases (ms per step):", {k: round(v, 2) for k, v in ph.items()})
PY
# ... and in bf16: one episode per forward on 2 ranks, two in one forward alone: the same weights
# up to bf16 rounding.
$B metatrain ${ARGS/fp32/bf16} --steps 20 --out b1 >b1.txt 2>&1 || { cat b1.txt; fail "bf16, world size 1"; }
mpirun2 $B metatrain ${ARGS/fp32/bf16} --steps 20 --hash-every 1 --out b2 >b2.txt 2>&1 || { cat b2.txt; fail "bf16, mpirun -np 2"; }
# Where LibTorch's bf16 emulation sums a product's terms in bf16 (its warning says so: CPUs without
# AVX-512) the two batchings round apart by more.
TOL_B=5e-3
if grep -q "sums their products in bf16" b1.txt; then TOL_B=2e-2; fi
compare_adapters b1 b2 $TOL_B

# 2. stop after 10 steps, resume: the same weights as the uninterrupted run
set +e; mpirun2 $B metatrain $ARGS --steps 20 --stop-after 10 --out r1 >r1.txt 2>&1; rc=$?; set -e
[ $rc = 75 ] || { cat r1.txt; fail "--stop-after exited $rc, expected 75"; }
[ ! -e r1/adapter_model.safetensors ] || fail "a stopped run exported an adapter"
expect_status 2 "a checkpoint exists; pass --resume" -- mpirun2 $B metatrain $ARGS --steps 20 --out r1
mpirun2 $B metatrain $ARGS --steps 20 --out r1 --resume >r2.txt 2>&1 || { cat r2.txt; fail "resume"; }
grep -q "resumed from .* at step 10" r2.txt || fail "did not resume at step 10"
compare_adapters w2 r1 0

# 3. SIGUSR1 to one rank in the middle of a longer run
N=1500
mpirun2 $B metatrain $ARGS --steps $N --out ref >ref.txt 2>&1 || { cat ref.txt; fail "reference run"; }
set +e
mpirun2 $B metatrain $ARGS --steps $N --out s1 >s1.txt 2>&1 &
job=$!
for _ in $(seq 1 600); do
  [ -f s1.work/metrics.jsonl ] && [ "$(wc -l <s1.work/metrics.jsonl)" -ge 5 ] && break; sleep 0.05
done
victim=$(pgrep -f "^$B metatrain .*--out s1" | tail -n 1)
[ -n "$victim" ] || fail "no rank to signal"
kill -USR1 "$victim"
wait $job; rc=$?
set -e
[ $rc = 75 ] || { cat s1.txt; fail "after SIGUSR1 the job exited $rc, expected 75"; }
grep -q "stop signal received: checkpoint at step" s1.txt || { cat s1.txt; fail "no checkpoint message"; }
at=$(grep -m1 -o "checkpoint at step [0-9]*" s1.txt); at=${at##* }
echo "SIGUSR1 to rank pid $victim: stopped at step $at of $N"
[ "$at" -lt $N ] || fail "stopped at $at"
mpirun2 $B metatrain $ARGS --steps $N --out s1 --resume >s2.txt 2>&1 || { cat s2.txt; fail "resume after signal"; }
compare_adapters ref s1 0

# 4. faults: a diverged replica; NaN teacher logits
expect_status 1 "replicas diverged at step" -- env LORAREC_FAULT=1:replica@2:corrupt "$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 \
  -x LORAREC_FAULT $B metatrain $ARGS --steps 10 --hash-every 1 --out d1
cp -r runs/quick/pool nanpool
"$LORAREC_PYTHON" - <<'PY'
import glob, h5py, numpy as np
for p in glob.glob("nanpool/lora_*.h5"):
    with h5py.File(p, "r+") as f:
        f["teacher_logits"][...] = np.nan
        del f.attrs["data_digest"]  # edited on purpose (a teacher that gave NaN), not corrupted
PY
expect_status 1 "3 steps in a row with a non-finite loss" -- mpirun2 $B metatrain $COMMON --pool nanpool --steps 10 \
  --single-lora-prob 1 --max-bad-steps 3 --out n1
mpirun2 $B metatrain $COMMON --pool nanpool --steps 20 --single-lora-prob 0.3 --out n2 >n2.txt 2>&1 || { cat n2.txt; fail "occasional NaN"; }
"$LORAREC_PYTHON" - <<'PY'
import json
r = json.load(open("n2/metatrain.json"))
assert r["skipped_steps"] > 0, r["skipped_steps"]
print("NaN teacher logits on single-LoRA episodes:", r["skipped_steps"], "of 20 steps skipped, run finished")
PY

# 5. distillation: same weights at world size 1 and 2; with the CE made flat (huge temperature) the
# logged loss is log(5) + the distillation term, which must fall. distill_runs NAME STEPS FLAGS...
# runs NAME1 (world size 1) and NAME2 (mpirun -np 2).
DIS="--distill-weight 1 --temperature 1e9 --mask-ratio 0.5 --lr 3e-3 --cycle 0 --warmup 2"
distill_runs() {
  local n=$1 steps=$2
  shift 2
  $B metatrain $COMMON --pool runs/quick/pool --single-lora-prob 0 $DIS "$@" --steps "$steps" --out ${n}1 >${n}1.txt 2>&1 ||
    { cat ${n}1.txt; fail "distillation $*, world size 1"; }
  mpirun2 $B metatrain $COMMON --pool runs/quick/pool --single-lora-prob 0 $DIS "$@" --steps "$steps" --hash-every 1 \
    --out ${n}2 >${n}2.txt 2>&1 || { cat ${n}2.txt; fail "distillation $*, mpirun -np 2"; }
  grep -q "distillation targets: .* images under their own LoRAs" ${n}2.txt || { cat ${n}2.txt; fail "no distillation targets line"; }
  compare_adapters ${n}1 ${n}2 1e-4
  "$LORAREC_PYTHON" - ${n}2 <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1] + ".work/metrics.jsonl") if '"loss"' in l]
first, last = rows[0]["loss"] - math.log(5), sum(r["loss"] for r in rows[-5:]) / 5 - math.log(5)
print(f"{sys.argv[1]}: distillation term: step {rows[0]['step']} {first:.4f} -> mean of the last 5 steps {last:.4f}")
assert first > 0 and last < 0.8 * first, (first, last)
PY
}
distill_runs k 40 --mask-select top
# The same with random patch subsets (--mask-select random): the targets are the teacher's features
# of each variant's subset (more of them to fit: 80 steps).
distill_runs rm 80 --mask-select random --mask-variants 3
"$LORAREC_PYTHON" - <<'PY'
import json
import numpy as np
from peft_adapter import deltas
fp = json.load(open("rm2/metatrain.json"))["fingerprint"]
assert fp["mask_select"] == "random" and fp["mask_variants"] == 3, fp
top, rnd = deltas("k2"), deltas("rm2")
diff = max(float(np.abs(top[k] - rnd[k]).max()) for k in top)
assert diff > 1e-4, "random subsets trained the same weights as the top patches"
PY
# --distill-pool: the distillation term on a second pool's images instead of the episodes' (the
# quick pool again, whose LoRAs exist), whole images: the same checks, the log line, the
# fingerprint, and the refusals.
distill_runs dp 40 --mask-select top --distill-pool runs/quick/pool --distill-images 6
grep -q -- "--distill-pool runs/quick/pool: the distillation term on 6 of its" dp2.txt || { cat dp2.txt; fail "no --distill-pool line"; }
"$LORAREC_PYTHON" -c '
import json
fp = json.load(open("dp2/metatrain.json"))["fingerprint"]
assert fp["distill_pool"] == "runs/quick/pool" and fp["distill_images"] == 6, fp' || fail "the fingerprint lacks --distill-pool"
expect_status 2 "--distill-pool carries the distillation or the alignment term: it needs --distill-weight > 0 or --align-weight > 0" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-pool runs/quick/pool --steps 2 --out dpx
expect_status 2 "--distill-pool runs/quick/zoo: no index.json" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool runs/quick/zoo --steps 2 --out dpx
# --distill-mask-ratio: the pool's images with half their patches (random, per image and step) in
# the student's forward, whole-image targets (the fall of the term is not checked: part of a glyph
# cannot give the whole glyph's features): the same weights at world size 1 and 2, its log line and
# fingerprint, the first step's term unlike the whole glyphs' on the same glyphs, weights unlike
# theirs after the same 40 steps, and refusals.
DM="$COMMON --pool runs/quick/pool --single-lora-prob 0 $DIS --mask-select top --distill-pool runs/quick/pool --distill-images 6 --distill-mask-ratio 0.5 --steps 40"
$B metatrain $DM --out dm1 >dm1.txt 2>&1 || { cat dm1.txt; fail "--distill-mask-ratio, world size 1"; }
mpirun2 $B metatrain $DM --out dm2 >dm2.txt 2>&1 || { cat dm2.txt; fail "--distill-mask-ratio, mpirun -np 2"; }
compare_adapters dm1 dm2 1e-4
grep -q -- "on 6 of its .* images per episode (a random 0.50 of their patches each step; whole-image targets)" dm2.txt ||
  { cat dm2.txt; fail "no --distill-mask-ratio line"; }
"$LORAREC_PYTHON" - <<'PY' || fail "--distill-mask-ratio: fingerprint, first term or weights"
import json
import numpy as np
from peft_adapter import deltas
fp = json.load(open("dm2/metatrain.json"))["fingerprint"]
assert fp["distill_mask_ratio"] == 0.5 and "distill_mask_ratio" not in json.load(open("dp2/metatrain.json"))["fingerprint"], fp
first = [next(json.loads(l)["loss"] for l in open(f"{d}.work/metrics.jsonl") if '"loss"' in l) for d in ("dp2", "dm2")]
print("first logged loss, whole glyphs and half masked:", first)
assert abs(first[0] - first[1]) > 1e-5, first
whole, masked = deltas("dp2"), deltas("dm2")
assert max(float(np.abs(whole[k] - masked[k]).max()) for k in whole) > 1e-4, "masking changed nothing"
PY
expect_status 2 "--distill-mask-ratio must be in [0, 1)" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool runs/quick/pool --distill-mask-ratio 1 --steps 2 --out dmx
expect_status 2 "--distill-mask-ratio masks --distill-pool's images: give --distill-pool" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-mask-ratio 0.5 --steps 2 --out dmx
# --align-weight alone (--distill-weight 0): the alignment of each episode's features with its share
# of the second pool's images, the same weights at world size 1 (both episodes of a step on one
# rank) and 2 (one each), its log line and fingerprint, and its refusal without --distill-pool.
AL="$COMMON --pool runs/quick/pool --single-lora-prob 0 --distill-weight 0 --distill-pool runs/quick/pool --distill-images 6 --align-weight 1 --steps 20"
$B metatrain $AL --out al1 >al1.txt 2>&1 || { cat al1.txt; fail "alignment, world size 1"; }
mpirun2 $B metatrain $AL --out al2 >al2.txt 2>&1 || { cat al2.txt; fail "alignment, mpirun -np 2"; }
grep -q -- "--distill-pool runs/quick/pool: the alignment term on 6 of its" al2.txt || { cat al2.txt; fail "no alignment line"; }
compare_adapters al1 al2 1e-4
"$LORAREC_PYTHON" -c '
import json
fp = json.load(open("al2/metatrain.json"))["fingerprint"]
assert fp["align_weight"] == 1 and fp["distill_weight"] == 0, fp' || fail "the fingerprint lacks --align-weight"
expect_status 2 "--align-weight aligns the episodes' features with --distill-pool's images: give one" -- \
  $B metatrain $COMMON --pool runs/quick/pool --align-weight 1 --steps 2 --out alx
# --distill-pool-weight: the pool's term and the episodes' own-LoRA distillation in one step. With a
# flat CE (T 1e9) the first logged loss is log(5) + the terms that are on, from the same start on the
# same episodes and pool images: both terms at once (the pool's at weight 2) = the episodes' alone +
# 2 x the pool's alone.
# The pool's term at --distill-pool-weight 1 and --distill-weight 0 is the unset default's at
# --distill-weight 1, bit for bit. Refused without --distill-pool.
PW="$COMMON --pool runs/quick/pool --single-lora-prob 0 ${DIS/--distill-weight 1/} --mask-select top --distill-images 6 --steps 2"
PWP="--distill-pool runs/quick/pool"
for run in "pw_ep|--distill-weight 1" "pw_pub|$PWP --distill-weight 1" "pw_both|$PWP --distill-pool-weight 2 --distill-weight 1" \
  "pw_pub0|$PWP --distill-pool-weight 1 --distill-weight 0"; do
  IFS='|' read -r n flags <<<"$run"
  $B metatrain $PW $flags --out $n >$n.txt 2>&1 || { cat $n.txt; fail "metatrain $flags"; }
done
# targets for the episodes' pool and for --distill-pool's: two lines with both terms, one without
[ "$(grep -c "distillation targets: .* images under their own LoRAs" pw_both.txt)" = 2 ] &&
  [ "$(grep -c "distillation targets: .* images under their own LoRAs" pw_pub.txt)" = 1 ] ||
  { cat pw_both.txt; fail "--distill-pool-weight: not both sets of distillation targets"; }
grep -q -- "--distill-pool runs/quick/pool: the distillation term on 6 of its" pw_both.txt || { cat pw_both.txt; fail "--distill-pool-weight: no pool term"; }
compare_adapters pw_pub pw_pub0 0
"$LORAREC_PYTHON" - <<'PY' || fail "--distill-pool-weight: the two terms do not add up"
import json, math
first = {n: [json.loads(l) for l in open(n + ".work/metrics.jsonl") if '"loss"' in l][0]["loss"] - math.log(5)
         for n in ("pw_ep", "pw_pub", "pw_both")}
fp = json.load(open("pw_both/metatrain.json"))["fingerprint"]
print(f"--distill-pool-weight: first-step terms {first}")
# the terms are ~5e-4 on the quick zoo; the logged loss is float32 around log(5): ulp 1.2e-7
assert first["pw_ep"] > 1e-4 and first["pw_pub"] > 1e-4, first
assert abs(first["pw_both"] - first["pw_ep"] - 2 * first["pw_pub"]) < 2e-6, first
assert fp["distill_pool_weight"] == 2 and fp["distill_weight"] == 1, fp
PY
expect_status 2 "--distill-pool-weight weights --distill-pool's term: give --distill-pool" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool-weight 1 --steps 2 --out pwx
# --distill-targets start: the pool's term towards the meta-LoRA's start (here --init k2, an adapter
# of rank 4 like the meta-LoRA: the start is k2 up to the SVD's rounding) equals the same term on a
# copy of the pool whose files name k2 as their LoRA (how bench/science.sh built its anchors), world
# size 1 against 2; the anchor changes the weights; a stopped and resumed run (targets rebuilt from
# the start, weights from the checkpoint) equals the uninterrupted one bit for bit; refusals.
cp -r runs/quick/pool anchorpool
"$LORAREC_PYTHON" - "$PWD/k2" <<'PY'
import glob, sys, h5py
for p in glob.glob("anchorpool/*.h5"):
    with h5py.File(p, "r+") as f:
        f.attrs["lora_path"] = sys.argv[1]
PY
ST="$COMMON --pool runs/quick/pool --single-lora-prob 0 --init k2 --temperature 128 --lr 3e-3 --cycle 0 --warmup 2 --distill-images 6 --steps 20"
$B metatrain $ST --distill-weight 1 --distill-pool anchorpool --out st_copy >st_copy.txt 2>&1 || { cat st_copy.txt; fail "anchor copy"; }
mpirun2 $B metatrain $ST --distill-weight 1 --distill-pool runs/quick/pool --distill-targets start --out st2 >st2.txt 2>&1 ||
  { cat st2.txt; fail "--distill-targets start, mpirun -np 2"; }
grep -q "images of --distill-pool under the meta-LoRA's start (k2)" st2.txt || { cat st2.txt; fail "no start-targets line"; }
compare_adapters st_copy st2 1e-4
$B metatrain $ST --distill-weight 0 --out st_none >st_none.txt 2>&1 || { cat st_none.txt; fail "no anchor"; }
"$LORAREC_PYTHON" - <<'PY' || fail "--distill-targets start: the anchor changed nothing"
import numpy as np
from peft_adapter import tensors
a, b = tensors("st2"), tensors("st_none")
diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) / max(float(np.abs(a[k]).max()) for k in a)
print(f"anchored against unanchored: max relative difference {diff:.3g}")
assert diff > 1e-3, diff
PY
set +e; mpirun2 $B metatrain $ST --distill-weight 1 --distill-pool runs/quick/pool --distill-targets start --stop-after 10 \
  --out st_r >st_r.txt 2>&1; rc=$?; set -e
[ $rc = 75 ] || { cat st_r.txt; fail "--distill-targets start --stop-after exited $rc, expected 75"; }
mpirun2 $B metatrain $ST --distill-weight 1 --distill-pool runs/quick/pool --distill-targets start --resume --out st_r \
  >st_r2.txt 2>&1 || { cat st_r2.txt; fail "--distill-targets start --resume"; }
compare_adapters st2 st_r 0
expect_status 2 "--distill-targets start concerns --distill-pool's term: give --distill-pool" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-targets start --steps 2 --out stx
# --distill-targets zoo-mean and zoo: the zoo is the LoRAs that --distill-pool's files name. On the
# copy whose files all name k2 (a zoo of one), zoo-mean's targets are k2's features, as own's are:
# the same run. zoo matches distances: started at k2 (up to the SVD's rounding) the term is ~0 at the
# first step (first logged loss = the undistilled run's, flat CE), on the quick pool's zoo it is not;
# there, world size 1 and 2 (the LoRAs shared out over the ranks) train alike. Refusals.
$B metatrain $ST --distill-weight 1 --distill-pool anchorpool --distill-targets zoo-mean --out zm_copy >zm_copy.txt 2>&1 ||
  { cat zm_copy.txt; fail "--distill-targets zoo-mean"; }
grep -q "distinct) of --distill-pool under each of the 1 LoRAs its files name" zm_copy.txt || { cat zm_copy.txt; fail "no zoo targets line"; }
compare_adapters st_copy zm_copy 1e-4
# zoo-concat: for a zoo of one the concatenation is k2's features, cut to their own width and turned
# onto themselves, so the same run again; on the quick pool's zoo of two, world size 1 and 2 alike.
$B metatrain $ST --distill-weight 1 --distill-pool anchorpool --distill-targets zoo-concat --out zc_copy >zc_copy.txt 2>&1 ||
  { cat zc_copy.txt; fail "--distill-targets zoo-concat"; }
grep -q "the zoo's features concatenated, cut to" zc_copy.txt || { cat zc_copy.txt; fail "no zoo-concat line"; }
compare_adapters st_copy zc_copy 1e-4
ZC="$ST --distill-weight 1 --distill-pool runs/quick/pool --distill-targets zoo-concat"
$B metatrain $ZC --out zc1 >zc1.txt 2>&1 || { cat zc1.txt; fail "--distill-targets zoo-concat, world size 1"; }
mpirun2 $B metatrain $ZC --out zc2 >zc2.txt 2>&1 || { cat zc2.txt; fail "--distill-targets zoo-concat, mpirun -np 2"; }
compare_adapters zc1 zc2 1e-4
ZF="${ST/--temperature 128/--temperature 1e9}"
ZF="${ZF/--steps 20/--steps 2}"
for run in "zg_none|--distill-weight 0" "zg_k2|--distill-weight 1 --distill-pool anchorpool --distill-targets zoo" \
  "zg_zoo|--distill-weight 1 --distill-pool runs/quick/pool --distill-targets zoo"; do
  IFS='|' read -r n flags <<<"$run"
  $B metatrain $ZF $flags --out $n >$n.txt 2>&1 || { cat $n.txt; fail "metatrain $flags"; }
done
grep -q -- "--distill-pool runs/quick/pool: the term towards the zoo's pairwise distances on 6 of its" zg_zoo.txt ||
  { cat zg_zoo.txt; fail "no zoo-distance line"; }
"$LORAREC_PYTHON" - <<'PY' || fail "--distill-targets zoo: the first step's term"
import json
first = {n: [json.loads(l) for l in open(n + ".work/metrics.jsonl") if '"loss"' in l][0]["loss"] for n in ("zg_none", "zg_k2", "zg_zoo")}
print(f"--distill-targets zoo: first-step losses {first}")
assert abs(first["zg_k2"] - first["zg_none"]) < 1e-5, first
assert first["zg_zoo"] - first["zg_none"] > 1e-4, first
PY
ZD="$ST --distill-weight 1 --distill-pool runs/quick/pool --distill-targets zoo"
$B metatrain $ZD --out zd1 >zd1.txt 2>&1 || { cat zd1.txt; fail "--distill-targets zoo, world size 1"; }
mpirun2 $B metatrain $ZD --out zd2 >zd2.txt 2>&1 || { cat zd2.txt; fail "--distill-targets zoo, mpirun -np 2"; }
compare_adapters zd1 zd2 1e-4
# --distill-zoo-softmax: the neighbours' form of the same term, also alike at world size 1 and 2 and
# recorded in the fingerprint; it moves the weights elsewhere than the distances' form.
$B metatrain $ZD --distill-zoo-softmax 0.2 --out zs1 >zs1.txt 2>&1 || { cat zs1.txt; fail "--distill-zoo-softmax, world size 1"; }
mpirun2 $B metatrain $ZD --distill-zoo-softmax 0.2 --out zs2 >zs2.txt 2>&1 || { cat zs2.txt; fail "--distill-zoo-softmax, mpirun -np 2"; }
compare_adapters zs1 zs2 1e-4
"$LORAREC_PYTHON" - <<'PY' || fail "--distill-zoo-softmax: not recorded, or the same run as the distances' form"
import json
import numpy as np
from peft_adapter import tensors
fp = json.load(open("zs2/metatrain.json"))["fingerprint"]
assert fp["distill_zoo_softmax"] == 0.2 and fp["distill_targets"] == "zoo", fp
a, b = tensors("zs2"), tensors("zd2")
diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) / max(float(np.abs(a[k]).max()) for k in a)
print(f"softmax against distances: max relative difference {diff:.3g}")
assert diff > 1e-4, diff
PY
expect_status 2 "--distill-zoo-softmax concerns --distill-targets zoo's term: give --distill-targets zoo" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool runs/quick/pool --distill-zoo-softmax 0.2 \
  --steps 2 --out zx
expect_status 2 "--distill-targets zoo compares pairwise distances: it needs --distill-images >= 2" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool runs/quick/pool --distill-targets zoo \
  --distill-images 1 --steps 2 --out zx
expect_status 2 "--distill-targets zoo-mean concerns --distill-pool's term: give --distill-pool" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-targets zoo-mean --steps 2 --out zx
expect_status 2 "--distill-targets must be own, start, zoo-mean, zoo-concat or zoo" -- \
  $B metatrain $COMMON --pool runs/quick/pool --distill-weight 1 --distill-pool runs/quick/pool --distill-targets mine --steps 2 --out stx
cp -r runs/quick/pool lostpool
"$LORAREC_PYTHON" - <<'PY'
import h5py
with h5py.File("lostpool/lora_000.h5", "r+") as f:
    f.attrs["lora_path"] = "runs/quick/zoo/no_such_lora"
PY
expect_status 2 "lora_000.h5: its LoRA 'runs/quick/zoo/no_such_lora' (attribute lora_path) is not a directory" -- \
  $B metatrain $COMMON --pool lostpool --distill-weight 1 --steps 2 --out lost

# 6. --init zoo-mean
NZ=$(ls -d runs/quick/zoo/lora_* | wc -l)
ZR=$("$LORAREC_PYTHON" -c 'import json; print(json.load(open("runs/quick/zoo/lora_000/adapter_config.json"))["r"])')
FULL=$((NZ * ZR))
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --rank $FULL --alpha $FULL --lr 1e-30 --lr-min 0 \
  --steps 2 --out z1 >z1.txt 2>&1 || { cat z1.txt; fail "--init zoo-mean"; }
grep -q "init zoo-mean: the mean of $NZ zoo LoRAs (rank $FULL), cut to rank $FULL, keeps 100.0 %" z1.txt || { cat z1.txt; fail "no full-rank init line"; }
"$LORAREC_PYTHON" - z1 runs/quick/zoo/lora_* <<'PY'
import sys
import numpy as np
from peft_adapter import deltas
meta, zoo = deltas(sys.argv[1]), [deltas(d) for d in sys.argv[2:]]
assert meta and meta.keys() == zoo[0].keys(), (meta.keys(), zoo[0].keys())
err = max(np.abs(meta[k] - sum(z[k] for z in zoo) / len(zoo)).max() for k in meta) / max(np.abs(meta[k]).max() for k in meta)
print(f"--init zoo-mean at full rank: {len(meta)} deltas, max relative difference to the zoo's mean delta {err:.3g}")
assert err < 1e-4, err
PY
grep -q "keeps 100.0 % of its squared norm; 0 components beyond its rank" z1.txt || { cat z1.txt; fail "full rank left a component fresh"; }
# Above the mean's rank (FULL + 3): the start is still the mean, and the 3 components beyond it per
# module keep the fresh A (non-zero, so they train) with B = 0.
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --rank $((FULL + 3)) --alpha $((FULL + 3)) --lr 1e-30 \
  --lr-min 0 --steps 2 --out z1x >z1x.txt 2>&1 || { cat z1x.txt; fail "--init zoo-mean above the mean's rank"; }
"$LORAREC_PYTHON" - z1x z1 "$FULL" "$(grep -oE '[0-9]+ components beyond its rank' z1x.txt)" <<'PY'
import sys
import numpy as np
from peft_adapter import deltas, tensors
over, full, rank = deltas(sys.argv[1]), deltas(sys.argv[2]), int(sys.argv[3])
assert over.keys() == full.keys(), (over.keys(), full.keys())
err = max(np.abs(over[k] - full[k]).max() for k in over) / max(np.abs(full[k]).max() for k in over)
assert err < 1e-4, err
t = tensors(sys.argv[1])
a = [v for k, v in t.items() if k.endswith("lora_A.weight")]
b = [v for k, v in t.items() if k.endswith("lora_B.weight")]
assert all(x.shape[0] == rank + 3 for x in a), [x.shape for x in a]
assert all((np.abs(x[rank:]).max(axis=1) > 1e-3).all() for x in a), "a fresh component's A is 0"
assert all(np.abs(x[:, rank:]).max() < 1e-20 for x in b), "a fresh component's B is not 0"
assert sys.argv[4] == f"{3 * len(a)} components beyond its rank", sys.argv[4]
print(f"--init zoo-mean at rank {rank} + 3: the mean's delta (max relative difference {err:.3g}), "
      f"{3 * len(a)} fresh components with non-zero A and B = 0")
PY
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --rank 1 --steps 2 --out z2 >z2.txt 2>&1 || { cat z2.txt; fail "--init zoo-mean at rank 1"; }
grep -Eq "cut to rank 1, keeps [0-9]+\.[0-9] %" z2.txt || { cat z2.txt; fail "no rank-1 init line"; }
! grep -q "cut to rank 1, keeps 100.0 %" z2.txt || fail "rank 1 keeps the whole mean delta"
expect_status 2 "--init zoo-mean: the zoo's mean does not adapt k_proj of layer 0" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --targets q_proj,k_proj --steps 2 --out z3
# --init-partial: the same meta-LoRA starts with the zoo's mean on q_proj (full rank, as z1) and B = 0
# on k_proj, the module the zoo lacks; refused with fresh and with --scales-only.
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --init-partial --targets q_proj,k_proj --rank $FULL \
  --alpha $FULL --lr 1e-30 --lr-min 0 --steps 2 --out z3p >z3p.txt 2>&1 || { cat z3p.txt; fail "--init-partial"; }
grep -Eq "init zoo-mean --init-partial: ([0-9]+) of the meta-LoRA's [0-9]+ adapted modules are not in the zoo's mean" z3p.txt ||
  { cat z3p.txt; fail "no --init-partial line"; }
"$LORAREC_PYTHON" - z3p z1 <<'PY'
import json, sys
import numpy as np
from peft_adapter import deltas
part, full = deltas(sys.argv[1]), deltas(sys.argv[2])
q = [k for k in part if "q_proj" in k]
k_ = [k for k in part if "k_proj" in k]
assert q and k_ and len(q) + len(k_) == len(part), part.keys()
err = max(np.abs(part[k] - full[k]).max() for k in q) / max(np.abs(full[k]).max() for k in q)
assert err < 1e-4, err
top = max(np.abs(full[k]).max() for k in q)  # B = 0 at the start; 2 steps at lr 1e-30 move it by ~1e-30
assert all(np.abs(part[k]).max() < 1e-12 * top for k in k_), "a module the zoo lacks did not start at B = 0"
assert json.load(open(f"{sys.argv[1]}/metatrain.json"))["fingerprint"]["init_partial"] is True
print(f"--init-partial: q_proj as the zoo's mean (max relative difference {err:.3g}), k_proj's {len(k_)} deltas ~0")
PY
expect_status 2 "--init-partial concerns --init zoo-mean or an adapter directory, not fresh" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init-partial --steps 2 --out z3x
expect_status 2 "--init-partial and --scales-only exclude each other" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --init-partial --scales-only --steps 2 --out z3x
# --init DIR: the adapter written by the full-rank zoo-mean run (z1) as the start gives its deltas
# back; one zoo LoRA cut to rank 1 (its first singular pair); its files in the fingerprint, so a
# resume takes the checkpoint's weights and refuses a changed start; a directory without an adapter
# and an adapter that misses a module refused.
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init z1 --rank $FULL --alpha $FULL --lr 1e-30 --lr-min 0 \
  --steps 2 --out z7 >z7.txt 2>&1 || { cat z7.txt; fail "--init DIR"; }
grep -q "init z1: rank $FULL, cut to rank $FULL, keeps 100.0 %" z7.txt || { cat z7.txt; fail "no --init DIR line"; }
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init runs/quick/zoo/lora_000 --rank 1 --lr 1e-30 --lr-min 0 --steps 2 --out z8 \
  >z8.txt 2>&1 || { cat z8.txt; fail "--init DIR at rank 1"; }
"$LORAREC_PYTHON" - z1 z7 runs/quick/zoo/lora_000 z8 <<'PY'
import json, sys
import numpy as np
from peft_adapter import deltas
a, b = deltas(sys.argv[1]), deltas(sys.argv[2])
err = max(np.abs(a[k] - b[k]).max() for k in a) / max(np.abs(a[k]).max() for k in a)
print(f"--init DIR at full rank: max relative difference to the start's deltas {err:.3g}")
assert a.keys() == b.keys() and err < 1e-4, err
fp = json.load(open(f"{sys.argv[2]}/metatrain.json"))["fingerprint"]
assert fp["init"] == "z1" and len(fp["init_digest"]) == 33, fp  # weights + config
lora, one = deltas(sys.argv[3]), deltas(sys.argv[4])
for k in one:  # the best rank-1 approximation: the first singular pair of the LoRA's delta
    u, s, vt = np.linalg.svd(lora[k])
    assert np.allclose(one[k], s[0] * np.outer(u[:, 0], vt[0]), atol=1e-4 * s[0]), k
print(f"--init DIR at rank 1: {len(one)} deltas, each the first singular pair of the LoRA's")
PY
cp -r runs/quick/zoo/lora_001 start1
set +e; mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init start1 --steps 4 --stop-after 2 --out z10 >z10.txt 2>&1
rc=$?; set -e
[ $rc = 75 ] || { cat z10.txt; fail "--init DIR --stop-after exited $rc, expected 75"; }
cp runs/quick/zoo/lora_002/adapter_model.safetensors start1/
expect_status 2 "checkpoint of another configuration" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init start1 --steps 4 --resume --out z10
cp runs/quick/zoo/lora_001/adapter_model.safetensors start1/
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init start1 --steps 4 --resume --out z10 >z10r.txt 2>&1 \
  || { cat z10r.txt; fail "resuming a --init DIR run"; }
! grep -q "init start1: rank" z10r.txt || fail "the resumed run took the start again"
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init start1 --steps 4 --out z11 >z11.txt 2>&1 || { cat z11.txt; fail "--init DIR, 4 steps"; }
compare_adapters z10 z11 1e-6
expect_status 2 "--init must be fresh, zoo-mean or a PEFT adapter directory (with adapter_config.json), not 'runs/quick'" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init runs/quick --steps 2 --out z9
expect_status 2 "--init z1: the adapter does not adapt k_proj of layer 0" -- \
  $B metatrain $COMMON --pool runs/quick/pool --init z1 --targets q_proj,k_proj --steps 2 --out z9
# --layers: the meta-LoRA on layer 1 alone, from the zoo's mean: only layer 1's deltas, equal to the
# zoo's mean delta there (PEFT's layers_to_transform written); bad lists refused.
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --layers 1 --rank $FULL --alpha $FULL --lr 1e-30 \
  --lr-min 0 --steps 2 --out z5 >z5.txt 2>&1 || { cat z5.txt; fail "--init zoo-mean --layers 1"; }
"$LORAREC_PYTHON" - z5 runs/quick/zoo/lora_* <<'PY'
import json, sys
import numpy as np
from peft_adapter import deltas
meta, zoo = deltas(sys.argv[1]), [deltas(d) for d in sys.argv[2:]]
assert json.load(open(f"{sys.argv[1]}/adapter_config.json"))["layers_to_transform"] == [1]
assert meta and all(".layers.1." in k for k in meta), meta.keys()
assert {k for k in zoo[0] if ".layers.1." in k} == meta.keys(), (meta.keys(), zoo[0].keys())
err = max(np.abs(meta[k] - sum(z[k] for z in zoo) / len(zoo)).max() for k in meta) / max(np.abs(meta[k]).max() for k in meta)
print(f"--layers 1 from the zoo's mean: {len(meta)} deltas, max relative difference {err:.3g}")
assert err < 1e-4, err
PY
expect_status 2 "LoRA layer 2 outside [0, 2)" -- $B metatrain $COMMON --pool runs/quick/pool --layers 0,2 --steps 2 --out z6
expect_status 2 "metatrain --layers: 'x' is not a layer index" -- $B metatrain $COMMON --pool runs/quick/pool --layers 1,x --steps 2 --out z6
# --disjoint-teachers: the quick zoo covers each class with 2 LoRAs of 6 surrogates each, so Q = 5
# queries from the other LoRA can be drawn and Q = 7 cannot (refused before training).
mpirun2 $B metatrain $ARGS --disjoint-teachers --steps 3 --out d1 >d1.txt 2>&1 || { cat d1.txt; fail "--disjoint-teachers"; }
"$LORAREC_PYTHON" -c 'import json, sys; assert json.load(open("d1/metatrain.json"))["fingerprint"]["disjoint_teachers"] is True' \
  || fail "metatrain.json does not record disjoint_teachers"
expect_status 2 "--disjoint-teachers needs K = 1 images from one LoRA and Q = 7 from the others" -- \
  $B metatrain ${ARGS/--query 5/--query 7} --disjoint-teachers --steps 3 --out d2
# --hard-classes M: runs with M in [N - 1, classes - 1] (the quick pool has 10 classes), refused outside.
mpirun2 $B metatrain $ARGS --hard-classes 4 --steps 3 --out h1 >h1.txt 2>&1 || { cat h1.txt; fail "--hard-classes 4"; }
grep -q "hard-classes 4: each episode's other classes among the 4 nearest" h1.txt || { cat h1.txt; fail "no --hard-classes line"; }
expect_status 2 "--hard-classes 3 must lie in [N - 1 = 4, 9]" -- $B metatrain $ARGS --hard-classes 3 --steps 3 --out h2
# --compose 1 (every multi-LoRA episode's classes composed of two): world size 1 equals mpirun -np 2
# (the partners and cuts are drawn per episode, not per rank), and the weights differ from the
# same run without it; refused with --mask-select top.
$B metatrain $ARGS --compose 1 --steps 4 --out c1 >c1.txt 2>&1 || { cat c1.txt; fail "--compose 1"; }
mpirun2 $B metatrain $ARGS --compose 1 --steps 4 --out c2 >c2.txt 2>&1 || { cat c2.txt; fail "--compose 1, 2 ranks"; }
compare_adapters c1 c2 1e-4
$B metatrain $ARGS --steps 4 --out c0 >c0.txt 2>&1 || { cat c0.txt; fail "the run without --compose"; }
if compare_adapters c0 c1 1e-3 >/dev/null 2>&1; then fail "--compose 1 left the weights as without it"; fi
expect_status 2 "use --mask-select random with it" -- $B metatrain $ARGS --compose 0.5 --mask-ratio 0.5 --steps 1 --out c3
# --compose-partner same (the part past the cut from another image of the same class): the same
# world-size independence; it differs from the run without --compose and from --compose-partner other.
$B metatrain $ARGS --compose 1 --compose-partner same --steps 4 --out cs1 >cs1.txt 2>&1 || { cat cs1.txt; fail "--compose-partner same"; }
mpirun2 $B metatrain $ARGS --compose 1 --compose-partner same --steps 4 --out cs2 >cs2.txt 2>&1 ||
  { cat cs2.txt; fail "--compose-partner same, 2 ranks"; }
compare_adapters cs1 cs2 1e-4
if compare_adapters c0 cs1 1e-3 >/dev/null 2>&1; then fail "--compose-partner same left the weights as without --compose"; fi
if compare_adapters c1 cs1 1e-3 >/dev/null 2>&1; then fail "--compose-partner same trained as --compose-partner other"; fi
expect_status 2 "--compose-partner must be other or same" -- $B metatrain $ARGS --compose 1 --compose-partner mine --steps 1 --out c4
expect_status 2 "acts on composed episodes only" -- $B metatrain $ARGS --compose-partner same --steps 1 --out c5
expect_status 2 "--hard-classes 10 must lie in [N - 1 = 4, 9]" -- $B metatrain $ARGS --hard-classes 10 --steps 3 --out h2
set +e; mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --steps 4 --stop-after 2 --out z4 >z4.txt 2>&1; rc=$?; set -e
[ $rc = 75 ] || { cat z4.txt; fail "--init zoo-mean --stop-after exited $rc, expected 75"; }
mv runs/quick/zoo zoo_away
mpirun2 $B metatrain $COMMON --pool runs/quick/pool --init zoo-mean --steps 4 --resume --out z4 >z4r.txt 2>&1 \
  || { cat z4r.txt; fail "resuming a --init zoo-mean run without the zoo"; }
mv zoo_away runs/quick/zoo
! grep -q "init zoo-mean: the mean" z4r.txt || fail "the resumed run read the zoo again"

# 7. --host-sync log against step: 20 steps with clipping, the metrics read every 5 steps
HS="${ARGS/--log-every 1/--log-every 5} --steps 20 --clip-norm 0.05"
mpirun2 $B metatrain $HS --host-sync step --out hs_step >hs1.txt 2>&1 || { cat hs1.txt; fail "host-sync step"; }
mpirun2 $B metatrain $HS --host-sync log --out hs_log >hs2.txt 2>&1 || { cat hs2.txt; fail "host-sync log"; }
compare_adapters hs_step hs_log 1e-5
mpirun2 $B metatrain $COMMON --pool nanpool --steps 20 --single-lora-prob 0.3 --host-sync log --out n3 >n3.txt 2>&1 ||
  { cat n3.txt; fail "occasional NaN, host-sync log"; }
"$LORAREC_PYTHON" - <<'PY'
import json
s, l = json.load(open("hs_step/metatrain.json")), json.load(open("hs_log/metatrain.json"))
ts, tl = s["timing"], l["timing"]
assert ts["host_sync"] == "step" and tl["host_sync"] == "log", (ts, tl)
assert ts["host_reads"] == 3 * 20, ts  # the reduced tail, the finite check, the clip norm
assert tl["host_reads"] <= 20 // 5 + 1, tl  # one per log interval (and the last checkpoint)
n2, n3 = json.load(open("n2/metatrain.json")), json.load(open("n3/metatrain.json"))
assert n3["skipped_steps"] == n2["skipped_steps"], (n2["skipped_steps"], n3["skipped_steps"])
print("host reads in 20 steps: step", ts["host_reads"], "log", tl["host_reads"], "; NaN steps skipped alike:",
      n3["skipped_steps"])
PY
# --max-bad-steps 3 is acted on at the first read, after step 5: the 5 in a row are named
expect_status 1 "5 steps in a row with a non-finite loss" -- mpirun2 $B metatrain ${COMMON/--log-every 1/--log-every 5} \
  --pool nanpool --steps 10 --single-lora-prob 1 --max-bad-steps 3 --host-sync log --out n4

# 8. --scales-only (z1 above: the full-rank zoo mean, untrained)
expect_status 2 "--scales-only needs --init zoo-mean" -- \
  $B metatrain $COMMON --pool runs/quick/pool --scales-only --steps 2 --out s0
SO="$COMMON --pool runs/quick/pool --init zoo-mean --rank $FULL --alpha $FULL --scales-only --lr 1e-2 --steps 6"
mpirun2 $B metatrain $SO --out sc1 >sc1.txt 2>&1 || { cat sc1.txt; fail "--scales-only"; }
set +e; mpirun2 $B metatrain $SO --stop-after 3 --out sc2 >sc2.txt 2>&1; rc=$?; set -e
[ $rc = 75 ] || { cat sc2.txt; fail "--scales-only --stop-after exited $rc, expected 75"; }
mpirun2 $B metatrain $SO --resume --out sc2 >sc2r.txt 2>&1 || { cat sc2r.txt; fail "resuming --scales-only"; }
compare_adapters sc1 sc2 0
"$LORAREC_PYTHON" - z1 sc1 <<'PY'
import sys
import numpy as np
from peft_adapter import tensors
z, s = tensors(sys.argv[1]), tensors(sys.argv[2])
assert z.keys() == s.keys(), (z.keys(), s.keys())
moved = 0.0
for k in z:
    if k.endswith("lora_A.weight"):
        assert np.array_equal(z[k], s[k]), f"{k}: A changed"
        continue
    b0, b = z[k].astype(np.float64), s[k].astype(np.float64)
    scale = (b * b0).sum(0) / np.maximum((b0 * b0).sum(0), 1e-30)  # one per column (rank-1 component)
    err = np.abs(b - b0 * scale).max() / np.abs(b).max()
    assert err < 1e-5, (k, err)
    moved = max(moved, np.abs(scale - 1)[(b0 * b0).sum(0) > 1e-12].max())
print(f"--scales-only: A kept, B = B0 diag(s); largest |s - 1| after 6 steps: {moved:.3g}")
assert moved > 1e-3, moved
PY
echo "metatrain_mpi: all checks passed"
