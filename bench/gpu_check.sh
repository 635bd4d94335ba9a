#!/usr/bin/env bash
# GPU checks on a CUDA machine with PyTorch's LibTorch, MPI, HDF5 and NCCL installed (DESIGN 5),
# as one script for a short lease. Needs the quick preset's outputs (bash launch/demo.sh --preset
# quick --until invert) in runs/quick and data/quick. Writes its log and reports to ${OUT:-gpu_out}.
#   0. the machine's bf16 and tf32 matmul peak (8192^3 products through PyTorch, median of 10);
#   1. builds with the NCCL communicator against PyTorch's LibTorch (make -k: every error at once);
#   2. meta-trains 20 steps on the quick pool on CUDA through the NCCL communicator (mpirun -np 1;
#      fp32, tf32 off) with --host-sync auto (log on a GPU) and step, and on the CPU through MPI:
#      the same weights to float tolerance, and the host reads per step of each;
#   3. two ranks on one GPU with NCCL are refused with a clear error;
#   4. meta-training throughput and peak GPU memory with a ViT-B/16-shaped VFM (random weights,
#      224 px, 196 patches) on a synthetic pool: fp32 (tf32) and bf16, mask ratio 0 / 0.5 / 0.75,
#      1 and 4 episodes (80 images each) per step in one forward, host sync per step against per
#      log interval, data threads and mpirun's binding; the step's TFLOP/s against the peak of (0).
#      FLOP count: 2 x the forward's matmul FLOPs (bench/vit_flops.py, as bench/perf.sh). REPS=N
#      interleaved rounds, RUNS="..." a list of variants of one's own (the format is below),
#      CHECKS=0 skips 2 and 3.
# A dry run of this script on a CPU before a lease: SMOKE=1 BUILD_DIR=build bash bench/gpu_check.sh
# (build configured with -DLORAREC_BUILD_GPU_CHECK=ON; the tiny preset, CPU + MPI, sections 2 and 4).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_log.txt") 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SMOKE=${SMOKE:-0}
SCRATCH=${SCRATCH:-/tmp/lorarec_gpu}; rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
t0=$(date +%s)
if [ "$SMOKE" = 1 ]; then DEV=cpu COMM=mpi PRESET=tiny PY=/usr/bin/python3; else DEV=cuda COMM=nccl PRESET=b16 PY=python3; fi
if [ "$SMOKE" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  echo "CPUs: $(nproc)"
  echo "== 0. matmul peak"
  python3 - "$OUT" <<'PY'
import json, sys, torch
torch.backends.cuda.matmul.allow_tf32 = True
peak = {}
for name, dt in (("bf16", torch.bfloat16), ("tf32", torch.float32)):
    n = 8192; a = torch.randn(n, n, device="cuda", dtype=dt); b = torch.randn(n, n, device="cuda", dtype=dt)
    for _ in range(3): a @ b
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); a @ b; e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
    peak[name] = 2 * n ** 3 / sorted(ts)[5] / 1e12
    print(f"{name}: {peak[name]:.0f} TFLOP/s")
json.dump(peak, open(f"{sys.argv[1]}/peak.json", "w"))
PY
fi
if [ -n "${BUILD_DIR:-}" ]; then
  B=$PWD/$BUILD_DIR/gpu_metatrain
else
  echo "== 1. build"
  TORCH_CMAKE=$(python3 -c "import torch; print(torch.utils.cmake_prefix_path)")
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DLORAREC_WITH_NCCL=ON \
    -DLORAREC_BUILD_TESTS=OFF -DLORAREC_BUILD_CLI=OFF -DLORAREC_BUILD_GPU_CHECK=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    >"$OUT/cmake.txt" 2>&1 || { tail -40 "$OUT/cmake.txt"; exit 1; }
  if ! cmake --build build-gpu -j 16 -- -k >"$OUT/build.txt" 2>&1; then
    grep -E -A4 "error:" "$OUT/build.txt" | sed -n 1,150p; exit 1
  fi
  echo "build: $(( $(date +%s) - t0 )) s"
  B=$PWD/build-gpu/gpu_metatrain
fi
# One run of the driver; its log in $OUT, its outputs in $SCRATCH.
# BIND: mpirun's binding (none by default here: a rank bound to one core would share it with
# the prefetch and data threads; "default" leaves Open MPI's own).
run() {
  local name=$1; shift
  local bind=(--bind-to "${BIND:-none}"); [ "${BIND:-none}" = default ] && bind=()
  timeout 240 mpirun "${bind[@]}" -np 1 "$B" "$@" out="$SCRATCH/$name" >"$OUT/$name.log" 2>&1 || { echo "FAILED $name"; tail -6 "$OUT/$name.log"; }
}
if [ "${CHECKS:-1}" = 1 ]; then
echo "== 2. quick meta-training: $DEV + $COMM (host sync auto and step) vs CPU + MPI"
ARGS=(model=runs/quick/vfm pool=runs/quick/pool val=data/quick/val.h5 query=5 steps=20 episodes=1 hash=5 precision=fp32 tf32=0 log=10)
run q_dev "${ARGS[@]}" device=$DEV comm=$COMM
run q_dev_step "${ARGS[@]}" device=$DEV comm=$COMM sync=step
run q_cpu "${ARGS[@]}" device=cpu comm=mpi sync=step
$PY - "$SCRATCH" <<'PY'
import json, sys
import numpy as np
sys.path.insert(0, "tests/reference")
from tiny_clip import st_read
s = sys.argv[1]
def w(n): return st_read(f"{s}/{n}/adapter_model.safetensors")
def rel(a, b): return max(np.abs(a[k] - b[k]).max() for k in a) / max(np.abs(b[k]).max() for k in b)
r = {n: json.load(open(f"{s}/{n}/metatrain.json")) for n in ("q_dev", "q_dev_step", "q_cpu")}
print(f"after 20 steps, max relative weight difference: device (host sync {r['q_dev']['timing']['host_sync']}) vs "
      f"CPU {rel(w('q_dev'), w('q_cpu')):.3g}; device log vs step {rel(w('q_dev'), w('q_dev_step')):.3g}")
for n, x in r.items():
    t = x["timing"]
    print(f"  {n}: device {x['memory']['device']}, host sync {t['host_sync']}, host reads per step "
          f"{t['host_reads_per_step']:.2f}, val {x['val_final']['val_mean']:.2f}, peak GPU {x['memory']['cuda_peak_allocated_mb']:.1f} MB")
PY
if [ "$SMOKE" != 1 ]; then
  echo "== 3. two ranks on one GPU with NCCL"
  timeout 120 mpirun -np 2 "$B" model=runs/quick/vfm pool=runs/quick/pool query=5 steps=5 episodes=2 device=cuda comm=nccl \
    out="$SCRATCH/q_two" 2>&1 | grep -E "error" | sed -n 1,3p
fi
fi  # CHECKS
echo "== 4. $PRESET shapes: throughput and memory"
$PY tests/reference/tiny_clip.py make-model "$SCRATCH/vfm" --preset "$PRESET" --seed 3 >/dev/null
$PY - "$SCRATCH" <<'PY'
import h5py, json, os, sys
import numpy as np
s = sys.argv[1]
sys.path.insert(0, "bench")
from vit_flops import vision_config
c = vision_config(f"{s}/vfm")
S, P = c["image_size"], (c["image_size"] // c["patch_size"]) ** 2
os.makedirs(f"{s}/pool", exist_ok=True)
rng = np.random.default_rng(0); idx = {"format": 2, "files": []}
for f in range(20):
    n = 5 * 16
    with h5py.File(f"{s}/pool/lora_{f:03d}.h5", "w") as h:
        h["images"] = rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)
        h["labels"] = np.repeat(np.arange(5, dtype=np.int32), 16)
        h["global_class"] = h["labels"][:] + 5 * (f % 10)  # 50 real classes, each covered by 2 LoRAs
        h["teacher_logits"] = rng.normal(size=(n, 5)).astype(np.float32)
        h["patch_scores"] = rng.random((n, P), dtype=np.float32)
        h["keep_mask"] = np.ones((n, P), np.uint8)
        h.attrs["complete"] = 1
        h.attrs["pool_format"] = 2
    idx["files"].append({"file": f"lora_{f:03d}.h5", "lora_id": f, "images": n, "classes": 5})
json.dump(idx, open(f"{s}/pool/index.json", "w"))
PY
# precision:mask:episodes per step:host sync:tf32:data threads (0 = auto):binding. REPS rounds of
# the whole list (interleaved: every variant once per round); the table gives each variant's median
# and its ratio to the dense run of the same round (median over rounds).
RUNS=${RUNS:-"fp32:0:1:auto:1:0:none fp32:0.5:1:auto:1:0:none fp32:0.75:1:auto:1:0:none bf16:0:1:auto:1:0:none
      bf16:0.5:1:auto:1:0:none bf16:0.75:1:auto:1:0:none bf16:0.75:1:step:1:0:none bf16:0:4:auto:1:0:none
      bf16:0.5:4:auto:1:0:none bf16:0.75:4:auto:1:0:none bf16:0.75:4:auto:1:1:none bf16:0.75:4:auto:1:0:default
      bf16:0:8:auto:1:0:none bf16:0.75:8:auto:1:0:none"}
REPS=${REPS:-1}
[ "$SMOKE" = 1 ] && RUNS="fp32:0:1:auto:1:0:none fp32:0.75:1:auto:1:0:none bf16:0:4:auto:1:3:none bf16:0.75:4:auto:1:3:none"
for rep in $(seq 1 "$REPS"); do
  for r in $RUNS; do
    IFS=: read -r prec m e sync tf dt bind <<<"$r"
    steps=$(( e == 1 ? 60 : 240 / e )); [ "$SMOKE" = 1 ] && steps=6
    BIND=$bind run "b_${r//:/_}_r$rep" model="$SCRATCH/vfm" pool="$SCRATCH/pool" query=15 steps=$steps episodes="$e" \
      hash=0 log=20 mask="$m" device=$DEV comm=$COMM precision="$prec" sync="$sync" tf32="$tf" data_threads="$dt"
  done
done
$PY - "$SCRATCH" "$OUT" "$REPS" "$RUNS" <<'PY'
import json, os, statistics, sys
s, o, reps, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
peak = json.load(open(f"{o}/peak.json")) if os.path.exists(f"{o}/peak.json") else {}
sys.path.insert(0, "bench")
from vit_flops import forward_flops, vision_config
c = vision_config(f"{s}/vfm")
def load(r, rep):
    path = f"{s}/b_{r.replace(':', '_')}_r{rep}/metatrain.json"
    return json.load(open(path)) if os.path.exists(path) else None
def dense_of(r):
    f = r.split(":"); f[1] = "0"; g = ":".join(f)
    if g in runs: return g
    f[3], f[5], f[6] = "auto", "0", "none"; g = ":".join(f)
    return g if g in runs else None
print(f"| precision | mask | tokens | episodes/step | host sync | data threads | binding | episodes/s (median of {reps}) "
      "| each round | images/s | vs dense | host reads/step | data wait | data prep | TFLOP/s | of peak | peak GPU MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    prec, m, e, sync, tf, dt, bind = r.split(":")
    label = prec + ("" if prec == "bf16" else " (tf32)" if tf == "1" else " (no tf32)")
    js = [load(r, k) for k in range(1, reps + 1)]
    ok = [j for j in js if j]
    if not ok:
        print(f"| {label} | {m} | | {e} | {sync} | {dt} | {bind} | failed |"); continue
    eps_each = [j["timing"]["episodes_per_s"] if j else float("nan") for j in js]
    eps = statistics.median([x for x in eps_each if x == x])
    d = dense_of(r); ratios = []
    for k in range(reps):
        dj = load(d, k + 1) if d else None
        if js[k] and dj: ratios.append(js[k]["timing"]["episodes_per_s"] / dj["timing"]["episodes_per_s"])
    j = ok[0]; t = j["timing"]; n = j["tokens_per_image"]
    tfl = eps * 2 * forward_flops(c, n) * 80 / 1e12
    pk = peak.get("bf16" if prec == "bf16" else "tf32")
    print(f"| {label} | {m} | {n} | {e} | {t['host_sync']} | {t.get('data_threads', dt)} | {bind} | {eps:.2f} | "
          f"{' / '.join(f'{x:.2f}' for x in eps_each)} | {eps * 80:.0f} | "
          f"{(f'{statistics.median(ratios):.2f}x' if ratios else '')} | {t['host_reads_per_step']:.2f} | "
          f"{100 * statistics.median(x['timing']['data_wait_share'] for x in ok):.1f} % | "
          f"{100 * statistics.median(x['timing']['data_prep_share'] for x in ok):.1f} % | {tfl:.1f} | "
          f"{(f'{100 * tfl / pk:.1f} %' if pk else 'n/a')} | {statistics.median(x['memory']['cuda_peak_allocated_mb'] for x in ok):.0f} |")
PY
echo "== done in $(( $(date +%s) - t0 )) s"
