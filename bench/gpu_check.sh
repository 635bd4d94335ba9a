#!/usr/bin/env bash
# GPU checks on a CUDA machine with PyTorch's LibTorch, MPI, HDF5, Boost.PO and NCCL installed
# (DESIGN 5). Needs the quick preset's outputs (bash launch/demo.sh --preset quick --until invert)
# in runs/quick and data/quick. Writes its log and reports to ${OUT:-gpu_out}.
#   1. builds with the NCCL communicator against PyTorch's LibTorch;
#   2. meta-trains 20 steps on the quick pool on CUDA through the NCCL communicator (mpirun -np 1)
#      and on the CPU through MPI: the same weights to float tolerance;
#   3. two ranks on one GPU with NCCL are refused with a clear error;
#   4. meta-training throughput and peak GPU memory at mask ratio 0, 0.5, 0.75 with a ViT-B/16-shaped
#      VFM (random weights, 224 px, 196 patches) on a synthetic pool, fp32 and bf16 autocast.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_log.txt") 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi -L
TORCH_CMAKE=$(python3 -c "import torch; print(torch.utils.cmake_prefix_path)")
t0=$(date +%s)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DLORAREC_WITH_NCCL=ON \
  -DLORAREC_BUILD_TESTS=OFF -DLORAREC_BUILD_CLI=OFF -DLORAREC_BUILD_GPU_CHECK=ON -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/cmake.txt" 2>&1 || { tail -40 "$OUT/cmake.txt"; exit 1; }
cmake --build build-gpu -j 16 >"$OUT/build.txt" 2>&1 || { grep -m40 -E "error|Error" "$OUT/build.txt"; exit 1; }
echo "== build: $(( $(date +%s) - t0 )) s"
# The CLI needs Boost.Program_options, which such machines may lack: bench/gpu/gpu_metatrain.cpp
# drives the same run_metatrain with key=value arguments.
B=$PWD/build-gpu/gpu_metatrain
ARGS="model=runs/quick/vfm pool=runs/quick/pool val=data/quick/val.h5 query=5 steps=20 episodes=1 hash=5"
echo "== 2. quick meta-training: CUDA + NCCL vs CPU + MPI"
mpirun -np 1 $B $ARGS device=cuda comm=nccl out="$OUT/q_cuda" 2>&1 | grep -E "launcher|communicator|nccl|NCCL|wrote|error|validation"
mpirun -np 1 $B $ARGS device=cpu comm=mpi out="$OUT/q_cpu" 2>&1 | grep -E "launcher|wrote|error"
python3 - "$OUT" <<'PY'
import json, sys
from safetensors.numpy import load_file
o = sys.argv[1]
a, b = load_file(f"{o}/q_cuda/adapter_model.safetensors"), load_file(f"{o}/q_cpu/adapter_model.safetensors")
import numpy as np
err = max(np.abs(a[k] - b[k]).max() for k in a) / max(np.abs(b[k]).max() for k in b)
ra, rb = json.load(open(f"{o}/q_cuda/metatrain.json")), json.load(open(f"{o}/q_cpu/metatrain.json"))
print(f"CUDA+NCCL vs CPU+MPI after 20 steps: max relative weight difference {err:.3g}; "
      f"val {ra['val_final']['val_mean']:.2f} vs {rb['val_final']['val_mean']:.2f}; "
      f"device {ra['memory']['device']}, peak GPU {ra['memory']['cuda_peak_allocated_mb']:.1f} MB")
PY
echo "== 3. two ranks on one GPU with NCCL"
mpirun -np 2 $B model=runs/quick/vfm pool=runs/quick/pool query=5 steps=5 episodes=2 device=cuda comm=nccl out="$OUT/q_two" 2>&1 | grep -E "error" | sed -n 1,3p
echo "== 4. ViT-B/16 shapes: throughput and memory"
python3 tests/reference/tiny_clip.py make-model b16 --preset b16 --seed 3 >/dev/null
python3 - <<'PY'
import h5py, json, os, numpy as np
os.makedirs("b16pool", exist_ok=True)
rng = np.random.default_rng(0); idx = {"format": 2, "files": []}
for f in range(20):
    n = 5 * 16
    with h5py.File(f"b16pool/lora_{f:03d}.h5", "w") as h:
        h["images"] = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        h["labels"] = np.repeat(np.arange(5, dtype=np.int32), 16)
        h["global_class"] = h["labels"][:] + 5 * (f % 10)  # 50 real classes, each covered by 2 LoRAs
        h["teacher_logits"] = rng.normal(size=(n, 5)).astype(np.float32)
        h["patch_scores"] = rng.random((n, 196), dtype=np.float32)
        h["keep_mask"] = np.ones((n, 196), np.uint8)
        h.attrs["complete"] = 1
        h.attrs["pool_format"] = 2
    idx["files"].append({"file": f"lora_{f:03d}.h5", "lora_id": f, "images": n, "classes": 5})
json.dump(idx, open("b16pool/index.json", "w"))
PY
for bf in 0 1; do
  for m in 0 0.5 0.75; do
    mpirun -np 1 $B model=b16 pool=b16pool out="$OUT/b16_${m}_${bf}" query=15 steps=30 episodes=1 hash=0 mask=$m \
      device=cuda comm=nccl bf16=$bf >"$OUT/b16_${m}_${bf}.log" 2>&1 || { echo "FAILED mask $m bf16 $bf"; tail -5 "$OUT/b16_${m}_${bf}.log"; }
  done
done
python3 - "$OUT" <<'PY'
import json, sys, os
o = sys.argv[1]
print("| precision | mask ratio | tokens/image | episodes/s | vs dense | peak GPU MB |")
print("|---|---|---|---|---|---|")
for bf in ("0", "1"):
    base = None
    for m in ("0", "0.5", "0.75"):
        p = f"{o}/b16_{m}_{bf}/metatrain.json"
        if not os.path.exists(p): print(f"| {'bf16' if bf == '1' else 'fp32'} | {m} | failed |"); continue
        r = json.load(open(p)); e = r["timing"]["episodes_per_s"]; base = base or e
        print(f"| {'bf16' if bf == '1' else 'fp32'} | {m} | {r['tokens_per_image']} | {e:.2f} | {e / base:.2f}x | {r['memory']['cuda_peak_allocated_mb']:.0f} |")
PY
echo "== done in $(( $(date +%s) - t0 )) s"
