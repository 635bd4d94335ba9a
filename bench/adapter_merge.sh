#!/usr/bin/env bash
# The main job's meta-training step with its trained rank-80 adapters merged into the frozen
# weights where that costs less (the default: attention_block's q/k/v, and out_proj, fc1 and fc2
# through merged_lora_linear) against out_proj, fc1 and fc2 as the frozen product plus the
# adapter's separate products (LORAREC_UNMERGED_LORA=1; q/k/v stay merged in both), interleaved
# per repetition, medians. Both of the main job's runs: the dense one (configs/demo.ini, 160 anchor
# glyphs per episode) and the masked one (mask 0.75, 40 glyphs), `metatrain --config
# configs/demo.ini --steps 60 --val-every 0` under mpirun -np 2; the figure is metatrain.json's
# timing.step_seconds (the start-up and the first steps left out). Needs the main job up to its
# anchor (bash launch/demo.sh --until invert; WORKDIR= its --workdir).
#   [WORKDIR=DIR] bash bench/adapter_merge.sh [REPS]    (default 2; ~1.5 min per run)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
source launch/env.sh
REPS=${1:-2}
cd "${WORKDIR:-.}"
for f in runs/demo/vfm/config.json runs/demo/pool/index.json runs/demo/anchor_glyphs/index.json; do
  [ -f "$f" ] || { echo "adapter_merge: $PWD/$f missing: run bash launch/demo.sh --until invert first" >&2; exit 2; }
done
W=$(mktemp -d /tmp/adapter_merge_XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
  "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; $(date -u +%F)"
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe -np 2 "${MPIRUN_ENV_FLAGS[@]}" -x LORAREC_UNMERGED_LORA)
RUNS=("dense, 160 glyphs|--mask-ratio 0" "mask 0.75, 40 glyphs|--mask-ratio 0.75 --distill-images 40")
for rep in $(seq "$REPS"); do
  for mode in merged unmerged; do
    for i in "${!RUNS[@]}"; do
      out=$W/$mode.$i.$rep
      read -ra flags <<<"${RUNS[$i]#*|}"
      LORAREC_UNMERGED_LORA=$([ "$mode" = unmerged ] && echo 1 || echo 0) "${MPI[@]}" "$REPO/build/lorarecycle" \
        metatrain --config "$REPO/configs/demo.ini" --steps 60 --val-every 0 --val-episodes 20 \
        "${flags[@]}" --out "$out" >"$out.log" 2>&1 || { tail "$out.log"; exit 1; }
      echo "rep $rep, $mode, ${RUNS[$i]%%|*}: $(/usr/bin/python3 -c "import json, sys
print(f\"{json.load(open(sys.argv[1]))['timing']['step_seconds'] * 1000:.1f} ms per step\")" "$out/metatrain.json")"
    done
  done
done
/usr/bin/python3 - "$W" "$REPS" "${#RUNS[@]}" "${RUNS[@]%%|*}" <<'PY'
import json, statistics, sys
w, reps, n, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print(f"\n{'run':<24} {'merged (ms)':>12} {'unmerged (ms)':>14} {'unmerged / merged':>18}   (medians of {reps})")
for i in range(n):
    t = {m: statistics.median(json.load(open(f"{w}/{m}.{i}.{r}/metatrain.json"))["timing"]["step_seconds"] * 1000
                              for r in range(1, reps + 1)) for m in ("merged", "unmerged")}
    print(f"{names[i]:<24} {t['merged']:>12.1f} {t['unmerged']:>14.1f} {t['unmerged'] / t['merged']:>17.2f}x")
PY
