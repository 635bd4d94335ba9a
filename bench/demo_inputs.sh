# Sourced by the step benchmarks (bench/perf.sh, bench/profile.sh), from the repository root with
# launch/env.sh sourced: moves to ${WORKDIR:-.} (a launch/demo.sh --workdir) and checks that the
# main job's VFM and zoo are there; sets REPO, B (the CLI), R, MODEL and W (a scratch directory,
# removed at exit; NAME its prefix), prints the machine line, and defines
#   speed_pool DIR [launcher...]  a pool built for speed, not quality (2 iterations, 16 images per
#                                 class: K + Q = 16 for 5-way 1-shot 15-query);
#   STEP                          the one-episode, one-rank step both scripts measure (5-way 1-shot
#                                 15-query, no prefetch, no distillation, no flip).
# usage: NAME=perf source bench/demo_inputs.sh
REPO=$PWD; B=$REPO/build/lorarecycle
cd "${WORKDIR:-.}"
R=runs/demo; MODEL=$R/vfm
for f in "$MODEL/config.json" "$R/zoo/manifest.json"; do
  [ -f "$f" ] || { echo "$NAME: $PWD/$f missing: run bash launch/demo.sh --until zoo first (WORKDIR= its --workdir)" >&2; exit 2; }
done
W=$(mktemp -d "/tmp/${NAME}_XXXXXX"); trap 'rm -rf "$W"' EXIT
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
  "bf16 instructions: $(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | xargs || true);" \
  "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; $(date -u +%F)"
speed_pool() {
  local out=$1; shift
  "$@" "$B" invert --model "$MODEL" --zoo "$R/zoo" --out "$out" --per-class 16 --iterations 2 --precision fp32 --log-level warn
}
STEP=(--model "$MODEL" --way 5 --shot 1 --query 15 --episodes-per-step 1 --no-prefetch --distill-weight 0 --no-flip
      --log-level warn --hash-every 0)
