#!/usr/bin/env bash
# A screen of inversion settings that needs no meta-training (docs/science.md, "Screening the
# inversion"): a sub-zoo of the main job's zoo that covers each of its 20 classes once (LoRAs with
# disjoint classes, picked in zoo order: 4 of them), inverted once per variant with the main job's
# painted [invert] settings plus the variant's flags (fp32, 2 ranks, ~2 min each here), then
# bench/surrogate_check.sh on every pool: does one surrogate teach its class to real queries
# (sur->real), and how alike are the surrogates of a class (within; real glyphs ~0.93)?
#   bash bench/inversion_variants.sh [VARIANT ...]     (default: every variant below)
#   WORKDIR=DIR (default: the repository) holds the main job's outputs (launch/demo.sh --workdir).
# Scratch: ${BENCH_DIR:-/tmp/lorarec_inversion_variants}; a pool already there is reused.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
source "$REPO/launch/env.sh"
W=$(cd "${WORKDIR:-$REPO}" && pwd)
B=$REPO/build/lorarecycle
PY=/usr/bin/python3
OUT=${BENCH_DIR:-/tmp/lorarec_inversion_variants}
mkdir -p "$OUT"
for need in "$W/runs/demo/vfm" "$W/runs/demo/zoo/manifest.json" "$W/data/demo/zoo.h5"; do
  [ -e "$need" ] || { echo "inversion_variants: $need missing; run bash launch/demo.sh --until zoo first (WORKDIR=its --workdir)" >&2; exit 2; }
done
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" -np 2 "${MPIRUN_ENV_FLAGS[@]}")
[ "$(nproc --all)" -ge 2 ] || MPI+=(--oversubscribe)
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"

# The screen was measured on painted surrogates: the main job's [invert] without the two keys that
# make it draw them since the round "Surrogates drawn as strokes" (strokes, co-teachers).
sed -e '/^strokes *=/d' -e '/^co-teachers *=/d' "$REPO/configs/demo.ini" >"$OUT/demo_painted.ini"
# NAME|invert flags on top of that [invert] (200 iterations, grey, no flip, no BN prior).
VARIANTS=(
  "base|"
  "iters100|--iterations 100"
  "tm0.1|--target-mix 0.1"
  "tm0.2|--target-mix 0.2"
  "zoom0.5|--zoom 0.5"
  "stop0.9|--stop-confidence 0.9"
  "stop0.5|--stop-confidence 0.5"
  "start_white|--stop-confidence 1e-6"
  "start_lr2|--init-lowres 2 --stop-confidence 1e-6"
  "lr2|--init-lowres 2"
  "lr4|--init-lowres 4"
  "lr2_zoom0.5|--init-lowres 2 --zoom 0.5"
  "lr2_iters100|--init-lowres 2 --iterations 100"
  "img_start|--init-images data/demo/base.h5 --stop-confidence 1e-6"
  "img|--init-images data/demo/base.h5"
  "img_stop0.9|--init-images data/demo/base.h5 --stop-confidence 0.9"
  "img_iters50|--init-images data/demo/base.h5 --iterations 50"
  "co2|--co-teachers 2 --co-teacher-zoo runs/demo/zoo"
  "co4|--co-teachers 4 --co-teacher-zoo runs/demo/zoo"
  "feat0.01|--feature-prior data/demo/base.h5 --w-feat 0.01"
  "feat0.1|--feature-prior data/demo/base.h5 --w-feat 0.1"
  "lr2_feat0.1|--init-lowres 2 --feature-prior data/demo/base.h5 --w-feat 0.1"
  "feat1|--feature-prior data/demo/base.h5 --w-feat 1"
  "feat10|--feature-prior data/demo/base.h5 --w-feat 10"
)
want=("$@")

# The sub-zoo: LoRAs in zoo order whose classes are all new (bench/sub_zoo.py cover), absolute
# paths in its manifest (the pools and the check then work from any directory).
SUB=$OUT/subzoo
[ -f "$SUB/manifest.json" ] || (cd "$W" && $PY "$REPO/bench/sub_zoo.py" runs/demo/zoo "$SUB" cover)
$PY -c "import json, sys; m = json.load(open(sys.argv[1])); print('sub-zoo:', m['num_loras'], 'LoRAs', [e['dir'] for e in m['loras']], 'covering', len({c for e in m['loras'] for c in e['classes']}), 'classes once')" "$SUB/manifest.json"

POOLS=()
for row in "${VARIANTS[@]}"; do
  name=${row%%|*}; flags=${row#*|}
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  pool=$OUT/pool_$name
  if [ ! -f "$pool/index.json" ]; then
    t0=$(date +%s)
    # shellcheck disable=SC2086  # flags are words
    (cd "$W" && "${MPI[@]}" "$B" invert --config "$OUT/demo_painted.ini" --precision fp32 --model "$W/runs/demo/vfm" \
       --zoo "$SUB" --out "$pool" $flags) >"$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
    echo "$name: inverted in $(( $(date +%s) - t0 )) s ($flags)"
  fi
  # The teacher's accuracy on its own (stored) surrogates, per LoRA, from the pool's summary.
  $PY - "$pool/summary.json" "$name" "$flags" <<'PY'
import json, sys
path, name, flags = sys.argv[1:]
acc = [l["teacher_accuracy"] for l in json.load(open(path))["loras"]]
print(f"  {name:10s} teacher accuracy on its surrogates: mean {sum(acc) / len(acc):.1f} %, min {min(acc):.1f} %  [{flags or 'the main job settings'}]")
PY
  POOLS+=("$pool")
done
echo "surrogate check (bench/surrogate_check.sh; real images: sur->real is one real image per class as the support):"
BENCH_DIR=$OUT/check bash "$REPO/bench/surrogate_check.sh" "${POOLS[@]}"
