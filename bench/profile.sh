#!/usr/bin/env bash
# Where the meta-training step's CPU time goes, by library and kernel, dense and at mask 0.75, in
# fp32 and bf16: `perf record` of `metatrain` (one rank, one thread, 5-way 1-shot 15-query, one
# episode per step, --no-prefetch --distill-weight 0) for STEPS steps and for 4 steps; the 4-step
# run's samples are subtracted per bucket, so start-up (loading, the first touches) drops out.
# Buckets: the fp32 matmul (OpenBLAS), the bf16 matmul (oneDNN's JIT kernels and libdnnl), LibTorch
# itself (Debian's libtorch_cpu is stripped, so its element-wise ops, autograd and dispatch share
# one bucket), the kernel (page faults and the rest of the OS), libc's memory functions
# (memset/memcpy/malloc), vector maths (SLEEF: exp, erf ...), and the rest. perf samples CPU time
# at 999 Hz: a bucket under ~1 ms per step is noise. Needs perf (Debian's linux-perf) and the main job's
# VFM and zoo (launch/demo.sh --until zoo; WORKDIR= its --workdir).
#   [WORKDIR=DIR] bash bench/profile.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
STEPS=${1:-40}
command -v perf >/dev/null || { echo "profile.sh: perf missing (apt-get install linux-perf)" >&2; exit 2; }
NAME=profile source bench/demo_inputs.sh
speed_pool "$W/pool"
rec() {  # rec NAME PRECISION MASK STEPS
  OMP_NUM_THREADS=1 perf record -q -F 999 -o "$W/$1.$4.data" -- "$B" metatrain "${STEP[@]}" --pool "$W/pool" \
    --out "$W/m_$1" --restart --steps "$4" --precision "$2" --mask-ratio "$3" >/dev/null 2>&1
  perf report -i "$W/$1.$4.data" --no-children -n --sort dso,sym -g none --stdio 2>/dev/null >"$W/$1.$4.txt"
}
for v in "fp32_m0 fp32 0" "fp32_m75 fp32 0.75" "bf16_m0 bf16 0" "bf16_m75 bf16 0.75"; do
  set -- $v
  rec "$1" "$2" "$3" 4
  rec "$1" "$2" "$3" "$STEPS"
done
/usr/bin/python3 - "$W" "$STEPS" <<'PY'
import re, sys
w, steps = sys.argv[1], int(sys.argv[2])
BUCKETS = ("fp32 matmul (OpenBLAS)", "bf16 matmul (oneDNN JIT kernels, libdnnl)",
           "LibTorch (element-wise, autograd, dispatch)", "kernel", "libc memory", "vector maths (SLEEF)", "other")
def bucket(dso, sym):
    if "openblas" in dso: return BUCKETS[0]
    if dso.startswith("[JIT]") or "dnnl" in dso: return BUCKETS[1]
    if "libtorch" in dso or "libc10" in dso: return BUCKETS[2]
    if "kernel" in dso: return BUCKETS[3]
    if dso.startswith("libc") and re.search(r"mem|malloc|free|_int_|brk|mmap|chunk", sym): return BUCKETS[4]
    if "sleef" in dso: return BUCKETS[5]
    return BUCKETS[6]
def samples(path):
    out = dict.fromkeys(BUCKETS, 0)
    for line in open(path):
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(.+?)\s+\[[.k]\]\s+(.*)", line)
        if m: out[bucket(m.group(2), m.group(3))] += int(m.group(1))
    return out
rate = 999.0  # samples per second (perf record -F)
print(f"\nper step (= ({steps}-step run - 4-step run) / {steps - 4}), CPU ms by bucket and share of the step")
names = ("fp32_m0", "fp32_m75", "bf16_m0", "bf16_m75")
labels = {"fp32_m0": "fp32 dense", "fp32_m75": "fp32 mask 0.75", "bf16_m0": "bf16 dense", "bf16_m75": "bf16 mask 0.75"}
per = {}
for n in names:
    a, b = samples(f"{w}/{n}.4.txt"), samples(f"{w}/{n}.{steps}.txt")
    per[n] = {k: max(0.0, (b[k] - a[k]) / rate / (steps - 4) * 1000) for k in BUCKETS}
print(f"  {'bucket':<44}" + "".join(f"{labels[n]:>18}" for n in names))
for k in BUCKETS:
    print(f"  {k:<44}" + "".join(f"{per[n][k]:9.1f} {100 * per[n][k] / sum(per[n].values()):5.1f} % " for n in names))
print(f"  {'step':<44}" + "".join(f"{sum(per[n].values()):9.1f} ms       " for n in names))
for p in ("fp32", "bf16"):
    d, m = per[f"{p}_m0"], per[f"{p}_m75"]
    print(f"  {p}: mask 0.75 vs dense {sum(d.values()) / sum(m.values()):.2f}x in all; by bucket: " +
          ", ".join(f"{k.split(' (')[0]} {d[k] / m[k]:.1f}x" for k in BUCKETS if m[k] > 0.5))
PY
