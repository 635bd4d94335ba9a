#!/usr/bin/env bash
# Which surrogate recipe makes meta-training help on the embedded benchmark? (docs/metatrain.md)
#   bash bench/surrogate_recipes.sh [invert|metatrain|all]      (default all)
# Needs the main job's VFM, BN prior, zoo and pool (bash launch/demo.sh). Prints two tables:
#  invert:    5 inversion settings on the first 2 zoo LoRAs (one per rank): pixel statistics of
#             the surrogates next to the real validation images, teacher accuracy, seconds
#             (~3 min on 2 cores);
#  metatrain: meta-training variants on POOL (default runs/demo/pool, the main job's), 300 steps,
#             validation (5-way 1-shot, the same 300 val episodes) at 0/100/200/300 steps (~12 min
#             on 2 cores). docs/metatrain.md's table was measured on an earlier, painted main-job
#             pool; POOL=/tmp/lorarec_science/pool_bn0 (bench/science.sh's copy) is the latest of those.
# Scratch output under ${BENCH_DIR:-/tmp/lorarec_recipes}.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
source launch/env.sh
WHAT=${1:-all}
OUT=${BENCH_DIR:-/tmp/lorarec_recipes}
mkdir -p "$OUT"
B=build/lorarecycle
PY=/usr/bin/python3
MPI=(mpirun --allow-run-as-root -np 2 -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE)
[ "$(nproc --all)" -ge 2 ] || MPI+=(--oversubscribe)
POOL=${POOL:-runs/demo/pool}
for need in runs/demo/vfm runs/demo/prior runs/demo/zoo/manifest.json "$POOL/index.json" data/demo/val.h5; do
  [ -e "$need" ] || { echo "surrogate_recipes: $need missing; run bash launch/demo.sh first" >&2; exit 2; }
done

if [ "$WHAT" = all ] || [ "$WHAT" = invert ]; then
  Z="$OUT/zoo2"
  rm -rf "$Z" && mkdir -p "$Z"
  $PY - "$Z" <<'PY'
import json, os, sys
z = sys.argv[1]
m = json.load(open("runs/demo/zoo/manifest.json"))
m["loras"] = m["loras"][:2]; m["num_loras"] = 2
json.dump(m, open(f"{z}/manifest.json", "w"))
for e in m["loras"]:
    os.symlink(os.path.abspath(f"runs/demo/zoo/{e['dir']}"), f"{z}/{e['dir']}")
PY
  printf '%-22s %-38s %6s %5s %6s %6s %6s %6s\n' variant flags mean std chroma white tacc seconds
  $PY - <<'PY'
import h5py, numpy as np
im = h5py.File("data/demo/val.h5", "r")["images"][:].astype(float)
print(f"{'real val images':22s} {'':38s} {im.mean():6.1f} {im.std():5.1f} {np.abs(im[...,0]-im[...,1]).mean():6.1f} {(im.mean(-1) > 200).mean():6.2f} {'':>6s} {'':>6s}")
PY
  inv() {
    local name=$1; shift
    rm -rf "$OUT/pool_$name"
    local t0=$SECONDS
    "${MPI[@]}" $B invert --model runs/demo/vfm --zoo "$Z" --prior runs/demo/prior --out "$OUT/pool_$name" \
      --per-class 8 --preview "$@" >"$OUT/pool_$name.log" 2>&1 || { cat "$OUT/pool_$name.log"; exit 1; }
    $PY - "$OUT/pool_$name" "$name" "$*" $((SECONDS - t0)) <<'PY'
import glob, sys, h5py, numpy as np
d, name, flags, secs = sys.argv[1:]
fs = [h5py.File(f, "r") for f in sorted(glob.glob(f"{d}/lora_*.h5"))]
im = np.concatenate([f["images"][:] for f in fs]).astype(float)
acc = np.mean([f.attrs["teacher_accuracy"] for f in fs])
print(f"{name:22s} {flags:38s} {im.mean():6.1f} {im.std():5.1f} {np.abs(im[...,0]-im[...,1]).mean():6.1f} {(im.mean(-1) > 200).mean():6.2f} {acc:6.1f} {secs:>6s}")
PY
  }
  inv colour --iterations 100
  inv colour-bn1 --iterations 100 --w-bn 1
  inv gray --iterations 100 --gray
  inv gray-bn0.1 --iterations 100 --gray --w-bn 0.1
  inv gray-bn1 --iterations 100 --gray --w-bn 1
  echo "(mean/std: pixel values 0-255; chroma: mean |R-G|; white: share of pixels brighter than 200;"
  echo " tacc: the teacher's accuracy on its own stored surrogates, %; contact sheets: $OUT/pool_*/lora_000.png)"
fi

if [ "$WHAT" = all ] || [ "$WHAT" = metatrain ]; then
  printf '\n%-40s %-58s %s\n' variant flags "val 5w1s at 0 / 100 / 200 / 300 steps (+- 95% CI at 300)"
  n_mt=0
  # mt LABEL DISTILL_WEIGHT TEMPERATURE [more flags]: the main job's [metatrain] settings otherwise
  # (as they were when this was measured: bench/rank4_ini.sh).
  source bench/rank4_ini.sh
  rank4_ini "$OUT/demo_rank4.ini"
  mt() {
    local name=$1 d=$2 t=$3; shift 3
    local flags="--distill-weight $d --temperature $t $*"
    n_mt=$((n_mt + 1))
    local run="$OUT/m_$n_mt"
    "${MPI[@]}" $B metatrain --config "$OUT/demo_rank4.ini" --pool "$POOL" --out "$run" --restart --steps 300 --val-every 100 \
      $flags >"$run.log" 2>&1 || { cat "$run.log"; exit 1; }
    $PY - "$run.work/metrics.jsonl" "$name" "$flags" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"val_mean"' in l]
vals = " / ".join(f"{r['val_mean']:.2f}" for r in rows)
print(f"{sys.argv[2]:40s} {sys.argv[3]:58s} {vals} +- {rows[-1]['val_ci95']:.2f}")
PY
  }
  mt "paper objective (CE, T 1)" 0 1
  mt "CE, T 128" 0 128
  mt "CE + distillation, T 1" 1 1
  mt "CE + distillation, T 128 (main job)" 1 128
  mt "distillation only (T 1e9: flat CE)" 1 1e9
  mt "main job's recipe, mask 0.75" 1 128 --mask-ratio 0.75
  mt "distillation only, mask 0.75" 1 1e9 --mask-ratio 0.75
fi
