#!/usr/bin/env bash
# Meta-training performance on this machine, measured side by side (A/B/A/B, medians), 5-way
# 1-shot 15-query episodes, EPS episodes per step (global; default 2):
#   (1) episodes/s at mask ratio 0, 0.5, 0.75 under mpirun -np 2, with peak memory per rank;
#   (2) world size 1 vs mpirun -np 2 at the same global episodes per step; the all-reduce's
#       share of the step time, and (with --sync-timing) how much of it is waiting for the slower rank;
#   (3) the data pipeline: share of the step spent waiting for data with the prefetch thread,
#       and the preparation's share (what the prefetch hides).
# The pool is built for speed, not quality: every zoo LoRA inverted for 2 iterations with 16
# images per class (enough for K + Q = 16).
#   [EPS=4] bash bench/metatrain_bench.sh [REPS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
REPS=${1:-2}; STEPS=${2:-40}; EPS=${EPS:-2}
MODEL=${MODEL:-runs/demo/vfm}; ZOO=${ZOO:-runs/demo/zoo}
B=$PWD/build/lorarecycle
W=$(mktemp -d /tmp/metatrain_bench_XXXXXX); trap 'rm -rf "$W"' EXIT
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe "${MPIRUN_ENV_FLAGS[@]}")
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
"${MPI[@]}" -np 2 "$B" invert --model "$MODEL" --zoo "$ZOO" --out "$W/pool" --per-class 16 --iterations 2 --log-level warn
run() {  # run NAME NP [args]: one short meta-training, report copied to $W/NAME.<rep>.json
  local name=$1 np=$2; shift 2
  local cmd=("$B" metatrain --model "$MODEL" --pool "$W/pool" --out "$W/out_$name" --steps "$STEPS" --way 5 --shot 1
             --query 15 --episodes-per-step "$EPS" --log-level warn --hash-every 0 --restart "$@")
  if [ "$np" = 1 ]; then "${cmd[@]}"; else "${MPI[@]}" -np "$np" "${cmd[@]}"; fi
  cp "$W/out_$name/metatrain.json" "$W/$name.$rep.json"
}
for rep in $(seq 1 "$REPS"); do
  run dense 2 --mask-ratio 0
  run dense_sync 2 --mask-ratio 0 --sync-timing
  run m50 2 --mask-ratio 0.5
  run m75 2 --mask-ratio 0.75
  run np1 1 --mask-ratio 0
  run noprefetch 2 --mask-ratio 0 --no-prefetch
done
/usr/bin/python3 - "$W" "$REPS" "$EPS" <<'PY'
import json, statistics, sys
w, reps, eps_per_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rep(name): return [json.load(open(f"{w}/{name}.{r}.json")) for r in range(1, reps + 1)]
def med(name, f): return statistics.median(f(x) for x in rep(name))
eps = lambda x: x["timing"]["episodes_per_s"]
dense = med("dense", eps)
print(f"\nmeta-training, 5-way 1-shot 15-query, {eps_per_step} episodes/step, medians of {reps}")
print(f"{'variant':<28}{'tokens/img':>11}{'episodes/s':>12}{'vs dense':>10}{'peak RSS/rank MB':>18}")
for name, label in (("dense", "mask 0 (np 2)"), ("m50", "mask 0.5 (np 2)"), ("m75", "mask 0.75 (np 2)")):
    r = rep(name)[0]
    rss = med(name, lambda x: max(x["memory"]["peak_rss_mb_per_rank"]))
    print(f"{label:<28}{r['tokens_per_image']:>11}{med(name, eps):>12.2f}{med(name, eps) / dense:>9.2f}x{rss:>18.0f}")
np1 = med("np1", eps)
print(f"\nworld size: 1 rank {np1:.2f} episodes/s, mpirun -np 2 {dense:.2f} episodes/s = {dense / np1:.2f}x")
print(f"all-reduce share of the step (np 2, dense): {100 * med('dense', lambda x: x['timing']['all_reduce_share']):.2f} %"
      f" as timed in the run (includes waiting for the slower rank); with a barrier first (--sync-timing): all-reduce"
      f" {100 * med('dense_sync', lambda x: x['timing']['all_reduce_share']):.2f} %, waiting for the slower rank"
      f" {100 * med('dense_sync', lambda x: x['timing']['imbalance_wait_share']):.2f} %"
      f" ({med('dense_sync', eps):.2f} episodes/s)")
print(f"data: with prefetch, waiting {100 * med('dense', lambda x: x['timing']['data_wait_share']):.2f} % of the step; "
      f"preparation (hidden by the prefetch thread) {100 * med('dense', lambda x: x['timing']['data_prep_share']):.2f} %; "
      f"without prefetch {med('noprefetch', eps):.2f} episodes/s ({med('noprefetch', eps) / dense:.2f}x)")
print(f"memory before training (model + pool, rank 0): {rep('dense')[0]['memory']['rss_before_training_mb']:.0f} MB; "
      f"pool images {rep('dense')[0]['memory']['pool_image_mb']:.1f} MB held in memory: {rep('dense')[0]['memory']['pool_cached']}")
PY
