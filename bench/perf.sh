#!/usr/bin/env bash
# Speed of the main job's stages on this machine, side by side in one run (A/B/... interleaved per
# repetition, medians). Needs the main job's VFM and zoo (launch/demo.sh --until zoo; WORKDIR= its
# --workdir, default the repo).
#   (0) the machine's one-thread matmul peak, fp32 and bf16 (at::mm on the step's shapes through the
#       same LibTorch build: Debian's python3-torch), ATen's element-wise kernels, and the dense
#       step's weight products timed one by one (their sum per step in each precision);
#   (1) the meta-training step, one rank, one thread: CPU seconds per step (24-step run minus 4-step
#       run, /usr/bin/time, user + system) of `metatrain --no-prefetch --distill-weight 0` in fp32
#       and bf16 against the same step in PyTorch eager mode (bench/eager_step.py); the kernel's
#       share; GFLOP per CPU-second against the peak of (0);
#   (2) episodes/s at mask ratio 0 / 0.5 / 0.75, fp32 and bf16, mpirun -np 2, and world size 1, at
#       2 and 4 episodes per step (one and two per rank; EPS="2 4" by default);
#   (3) inversion of one LoRA: image-iterations/s of the loop (60-iteration run minus 10-iteration
#       run, wall; the start-up is the same in both precisions), fp32 and bf16;
#   (4) the step's per-phase profile at mask ratio 0 / 0.5 / 0.75, fp32 and bf16 (one rank, one
#       thread, the step of (1), 40 steps): metatrain.json timing.phase_ms_per_step (wall-clock
#       scopes around the phases; CPU ops are synchronous), medians, and what each phase shrinks
#       by from mask 0 to 0.75 (tokens 65 -> 17; the forward's FLOPs 4.1x fewer).
# The step's FLOP count (bench/vit_flops.py): 2 x the forward's matmul FLOPs (the frozen ViT's
# backward computes input gradients only, one matmul per forward matmul; the LoRA's weight
# gradients are rank 4 and left out), forward = patch embedding + per layer q/k/v/out, attention
# scores and values, MLP, all tokens in every layer (the last layer's CLS-only shortcut is not subtracted: an upper bound of
# the work, so a lower bound of nothing).
#   (5) the step's fixed cost: the step of (4) at 40 and 80 images per episode (5-way 1-shot, 7 and 15
#       queries), mask 0 and 0.75; a line through the two gives the cost per image and the cost that
#       does not depend on the images (per-op overhead, optimizer, loss), and the 0 / 0.75 ratio
#       with and without that fixed cost, against the ratio of the FLOPs.
# PARTS="1 2" runs only those parts (default "1 2 3 4 5"; the peak (0) always runs; PARTS=none: only (0)).
# bf16 is timed only on a CPU with bf16 instructions (avx512_bf16 or amx_bf16): elsewhere LibTorch
# emulates its matmuls, tens of times slower than fp32, and --precision auto picks fp32; (0) then
# gives the emulated matmul rate alone. BF16=1 times bf16 everywhere anyway.
#   [WORKDIR=DIR] [PARTS=...] bash bench/perf.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
REPS=${1:-2}; PARTS=${PARTS:-1 2 3 4 5}; EPS=${EPS:-2 4}
if grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo || [ "${BF16:-0}" = 1 ]; then BF16=1; else BF16=0; fi
export BF16
part() { [[ " $PARTS " == *" $1 "* ]]; }
NAME=perf source bench/demo_inputs.sh
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe "${MPIRUN_ENV_FLAGS[@]}")
speed_pool "$W/pool" "${MPI[@]}" -np 2

echo; echo "(0) one-thread matmul peak (GFLOP/s; rows = 80 images x 65 tokens)"
# glibc's malloc tuned as lorarecycle tunes it (src/cli/main.cpp), so that large outputs are not
# page-faulted anew on every call (docs/metatrain.md, "The step's fixed cost").
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824 \
  OMP_NUM_THREADS=1 /usr/bin/python3 - "$W/peak.json" <<'PY'
import json, os, sys, time, torch
torch.set_num_threads(1)
native_bf16 = os.environ["BF16"] == "1"


def median_s(f, calls=10, reps=7):
    """Seconds per call of f: 3 calls to warm up, then the median of REPS means over CALLS calls."""
    for _ in range(3): f()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); [f() for _ in range(calls)]; times.append((time.perf_counter() - t) / calls)
    return sorted(times)[reps // 2]


out = {}
for dt in (torch.float32, torch.bfloat16):
    best = 0.0
    for m, k, n in ((5200, 128, 128), (5200, 128, 512), (5200, 512, 128)):
        a, b = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
        calls, reps = (1, 3) if dt == torch.bfloat16 and not native_bf16 else (10, 7)  # emulated: ~0.1-0.4 s a call
        g = 2 * m * k * n / median_s(lambda: torch.mm(a, b), calls, reps) / 1e9
        print(f"  {str(dt).split('.')[1]:<9} {m} x {k} x {n}: {g:7.1f}")
        best = max(best, g)
    out[str(dt).split('.')[1]] = best
json.dump(out, open(sys.argv[1], "w"))
# The element-wise side: ATen's own kernels (what the step's products leave to LibTorch: the
# QuickGELU backward's multiplication, the residual adds) on the MLP's hidden activation of one
# 80-image episode, in each precision: bf16 halves the bytes but not the time when the kernel is
# bound by converting to float and back rather than by memory.
print("  element-wise (ATen, 5200 x 512; ms per call, GB/s moved):")
for dt in (torch.float32, torch.bfloat16):
    a, b = torch.randn(5200, 512).to(dt), torch.randn(5200, 512).to(dt)
    o = torch.empty_like(a)
    row = []
    for name, f, arrays in (("mul", lambda: torch.mul(a, b, out=o), 3), ("add_", lambda: a.add_(b), 3),
                            ("mul scalar", lambda: torch.mul(a, 0.5, out=o), 2)):
        ms = median_s(f) * 1e3
        row.append(f"{name} {ms:.3f} ({arrays * a.numel() * a.element_size() / ms / 1e6:.0f})")
    print(f"    {str(dt).split('.')[1]:<9} " + ", ".join(row))
# The dense step's weight products one by one (80 images x 65 tokens; forward, and the input
# gradient in the backward; per layer, 4 layers: the FLOP count's products less the attention's
# per-head ones), each timed alone with its operands hot: what the step's matmuls would cost in
# each precision if they ran as fast inside the step as alone (bench/profile.sh gives what they do).
print("  the step's weight products alone (ms per call; per step = 4 layers, all tokens):")
rows = 80 * 65
prods = (("qkv", rows, 128, 384), ("out_proj", rows, 128, 128), ("fc1", rows, 128, 512), ("fc2", rows, 512, 128),
         ("qkv input grad", rows, 384, 128), ("out_proj input grad", rows, 128, 128),
         ("fc1 input grad", rows, 512, 128), ("fc2 input grad", rows, 128, 512))
per_step = {}
for dt in (torch.float32, torch.bfloat16) if native_bf16 else (torch.float32,):
    row, total = [], 0.0
    for name, m, k, n in prods:
        a, b = torch.randn(m, k).to(dt), torch.randn(n, k).to(dt)
        ms = median_s(lambda: torch.mm(a, b.t())) * 1e3
        total += 4 * ms
        row.append(f"{name} {ms:.2f}")
    per_step[dt] = total
    print(f"    {str(dt).split('.')[1]:<9} " + ", ".join(row) + f"; per step {total:.1f} ms")
if native_bf16:
    print(f"    bf16 vs fp32, these products alone: {per_step[torch.float32] / per_step[torch.bfloat16]:.2f}x")
else:
    print(f"    bf16: not timed further, this CPU has no avx512_bf16 or amx_bf16 (emulated matmuls at "
          f"{out['float32'] / out['bfloat16']:.0f}x the fp32 time; BF16=1 times them anyway)")
PY

part 1 && echo "(1) meta-training step, 1 rank, 1 thread, 5-way 1-shot 15-query: CPU seconds per step (24 - 4 steps) / 20: running"
cpp_step() {  # cpp_step PRECISION STEPS -> "user sys"
  OMP_NUM_THREADS=1 /usr/bin/time -f "%U %S" "$B" metatrain "${STEP[@]}" --pool "$W/pool" --out "$W/m_$1" --restart \
    --steps "$2" --precision "$1" 2>&1 >/dev/null | tail -1
}
eager_step() {
  OMP_NUM_THREADS=1 /usr/bin/time -f "%U %S" /usr/bin/python3 "$REPO/bench/eager_step.py" --steps "$1" 2>&1 >/dev/null | tail -1
}
STEP_VARIANTS="eager fp32"; INV_PRECS=fp32
[ "$BF16" = 1 ] && STEP_VARIANTS+=" bf16" && INV_PRECS+=" bf16"
part 1 && for rep in $(seq 1 "$REPS"); do
  for v in $STEP_VARIANTS; do
    if [ $v = eager ]; then read -r u4 s4 <<<"$(eager_step 4)"; read -r u24 s24 <<<"$(eager_step 24)"
    else read -r u4 s4 <<<"$(cpp_step $v 4)"; read -r u24 s24 <<<"$(cpp_step $v 24)"; fi
    echo "$v $rep $u4 $s4 $u24 $s24" >> "$W/step.txt"
  done
done

part 2 && echo "(2) episodes/s ($EPS episodes per step, 160 episodes per run, mpirun -np 2 unless said): running"
# LORA_AB=1 adds "bf16-opsattn" and "bf16-unfused" to parts 2 and 4: the attention as separate ops
# (below), and the same with each LoRA delta as separate ops too (LORAREC_UNFUSED_LORA=1) instead of
# model::lora_add's one node. The attention node holds the q/k/v deltas itself, so the LoRA's two
# forms differ only where the attention runs as ops.
# BASE=<another build's lorarecycle> adds "bf16-base": bf16 with that binary (e.g. the commit before
# a change, built into another directory), side by side in parts 2 and 4.
# KERNEL_AB=1 adds "bf16-aten" (ATen's ops for QuickGELU, the attention's softmax and the LayerNorms
# instead of the CPU kernels, LORAREC_ATEN_KERNELS=1), "bf16-atensoftmax" (ATen's softmax only),
# "bf16-atenln" and "fp32-atenln" (ATen's LayerNorm only, LORAREC_ATEN_KERNELS=layer_norm) and
# "bf16-avx512" (the kernels capped at AVX-512 without its bf16 conversion instruction,
# LORAREC_KERNEL_ISA=avx512; the same as bf16 on CPUs without avx512_bf16) and "fp32-atenbmm" (the
# attention's float products through at::bmm instead of one cblas_sgemm per matrix,
# LORAREC_ATEN_KERNELS=bmm).
# ATTN_AB=1 adds "bf16-opsattn" and "fp32-opsattn": the attention as separate ATen ops, one autograd
# node each (LORAREC_UNFUSED_ATTENTION=1), instead of model::attention_block's one node per layer.
AB=""; [ "${LORA_AB:-0}" = 1 ] && AB=" bf16-opsattn bf16-unfused"
[ "${KERNEL_AB:-0}" = 1 ] && AB="$AB bf16-aten bf16-atensoftmax bf16-atenln fp32-atenln bf16-avx512 fp32-atenbmm"
[ "${ATTN_AB:-0}" = 1 ] && AB="${AB/ bf16-opsattn/} bf16-opsattn fp32-opsattn"
[ -n "${BASE:-}" ] && { [ -x "$BASE" ] || { echo "perf.sh: BASE=$BASE is not an executable" >&2; exit 2; }; AB="$AB bf16-base"; }
DEFAULT_PRECS="fp32 bf16$AB"; [ "$BF16" = 1 ] || DEFAULT_PRECS=fp32
PRECS=${PRECS:-$DEFAULT_PRECS}  # PRECS="bf16 bf16-unfused": only those
[[ " $PRECS " == *" bf16-base "* && -z "${BASE:-}" ]] && { echo "perf.sh: bf16-base needs BASE=<binary>" >&2; exit 2; }
# with_precision P CMD...: runs CMD with --precision P's value (bf16-unfused: bf16 and the env knob).
with_precision() {
  local p=$1; shift
  if [ "$p" = bf16-unfused ]; then LORAREC_UNFUSED_LORA=1 LORAREC_UNFUSED_ATTENTION=1 "$@" --precision bf16
  elif [ "$p" = bf16-aten ]; then LORAREC_ATEN_KERNELS=1 "$@" --precision bf16
  elif [ "$p" = bf16-atensoftmax ]; then LORAREC_ATEN_KERNELS=softmax "$@" --precision bf16
  elif [[ "$p" = *-atenln ]]; then LORAREC_ATEN_KERNELS=layer_norm "$@" --precision "${p%-atenln}"
  elif [[ "$p" = *-atenbmm ]]; then LORAREC_ATEN_KERNELS=bmm "$@" --precision "${p%-atenbmm}"
  elif [ "$p" = bf16-avx512 ]; then LORAREC_KERNEL_ISA=avx512 "$@" --precision bf16
  elif [ "$p" = bf16-base ]; then "$@" --precision bf16
  elif [[ "$p" = *-opsattn ]]; then LORAREC_UNFUSED_ATTENTION=1 "$@" --precision "${p%-opsattn}"
  else "$@" --precision "$p"; fi
}
bin_for() { if [ "$1" = bf16-base ]; then echo "$BASE"; else echo "$B"; fi; }  # bin_for PRECISION
eps_run() {  # eps_run NAME NP PRECISION MASK EPISODES_PER_STEP
  local cmd=("$(bin_for "$3")" metatrain --model "$MODEL" --pool "$W/pool" --out "$W/e_$1" --steps $((160 / $5)) --way 5 --shot 1
             --query 15 --episodes-per-step "$5" --distill-weight 0 --no-flip --mask-ratio "$4"
             --log-level warn --hash-every 0 --restart)
  local knob=()
  [ "$3" = bf16-unfused ] && knob=(-x LORAREC_UNFUSED_LORA -x LORAREC_UNFUSED_ATTENTION)
  [[ "$3" = *-aten* ]] && knob=(-x LORAREC_ATEN_KERNELS)
  [ "$3" = bf16-avx512 ] && knob=(-x LORAREC_KERNEL_ISA)
  [[ "$3" = *-opsattn ]] && knob=(-x LORAREC_UNFUSED_ATTENTION)
  if [ "$2" = 1 ]; then OMP_NUM_THREADS=1 with_precision "$3" "${cmd[@]}"
  else with_precision "$3" "${MPI[@]}" "${knob[@]}" -np "$2" "${cmd[@]}"; fi
  cp "$W/e_$1/metatrain.json" "$W/eps_$1.$rep.json"
}
part 2 && for rep in $(seq 1 "$REPS"); do
  for e in $EPS; do
    for p in $PRECS; do
      eps_run "${p}_e${e}_m0" 2 $p 0 "$e"; eps_run "${p}_e${e}_m50" 2 $p 0.5 "$e"; eps_run "${p}_e${e}_m75" 2 $p 0.75 "$e"
      eps_run "${p}_e${e}_np1" 1 $p 0 "$e"
    done
  done
done

if part 3; then
  echo "(3) inversion of one LoRA, 10 and 60 iterations, 1 rank: running"
  /usr/bin/python3 "$REPO/bench/sub_zoo.py" "$R/zoo" "$W/zoo1" 1
  # 40 images of that LoRA, as with the 5-way zoo (8 per class) since the first run: per class 40 /
  # its way (4 for the main job's 10-way zoo since 2026-12-07).
  INV_WAY=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["n_way"])' "$W/zoo1/manifest.json")
  [ $((40 % INV_WAY)) = 0 ] || { echo "perf: (3) inverts 40 images; the zoo's way $INV_WAY does not divide 40" >&2; exit 2; }
  INV_PER=$((40 / INV_WAY))
fi
part 3 && for rep in $(seq 1 "$REPS"); do
  for p in $INV_PRECS; do
    for it in 10 60; do
      rm -rf "$W/p_$p"
      read -r e u <<<"$(OMP_NUM_THREADS=1 /usr/bin/time -f "%e %U" "$B" invert --model "$MODEL" --zoo "$W/zoo1" \
        --out "$W/p_$p" --per-class "$INV_PER" --iterations $it --no-flip --gray --w-bn 0 --precision $p --log-level warn 2>&1 | tail -1)"
      echo "$p:$it $rep $e $u" >> "$W/inv.txt"
    done
  done
done

# step_run JSON PRECISION MASK STEPS ARGS...: the one-rank, one-thread step (ARGS: STEP or a variant
# of it) on the speed pool; its metatrain.json copied to JSON.
step_run() {
  local json=$1 p=$2 m=$3 n=$4
  shift 4
  OMP_NUM_THREADS=1 with_precision "$p" "$(bin_for "$p")" metatrain "$@" --pool "$W/pool" --out "$W/ph" --restart \
    --steps "$n" --mask-ratio "$m" --val-every 0 >/dev/null
  cp "$W/ph/metatrain.json" "$json"
}
part 4 && echo "(4) per-phase profile of the step, 1 rank, 1 thread, 40 steps: running"
part 4 && for rep in $(seq 1 "$REPS"); do
  for p in $PRECS; do
    for m in 0 0.5 0.75; do step_run "$W/phase_${p}_$m.$rep.json" "$p" $m 40 "${STEP[@]}"; done
  done
done

part 5 && echo "(5) fixed cost of the step: 1 rank, 1 thread, 40 and 80 images per episode, 60 steps: running"
part 5 && for rep in $(seq 1 "$REPS"); do
  for p in $PRECS; do
    for m in 0 0.75; do
      for q in 7 15; do
        s5=("${STEP[@]}")
        for i in "${!s5[@]}"; do [ "${s5[$i]}" = --query ] && s5[$((i + 1))]=$q; done
        step_run "$W/fixed_${p}_${m}_q$q.$rep.json" "$p" $m 60 "${s5[@]}"
      done
    done
  done
done

/usr/bin/python3 - "$W" "$PWD/$MODEL" "$REPS" <<'PY'
import json, os, statistics as st, sys
w, model, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
med = st.median
peak = json.load(open(f"{w}/peak.json"))
sys.path.insert(0, "bench")
from vit_flops import forward_flops, vision_config
c = vision_config(model)
P = (c["image_size"] // c["patch_size"]) ** 2; N = P + 1
fwd = forward_flops(c, N)
PRECISIONS = ("fp32", "fp32-opsattn", "bf16", "bf16-opsattn", "bf16-unfused", "bf16-aten", "bf16-atensoftmax", "bf16-atenln", "fp32-atenln", "bf16-avx512", "fp32-atenbmm", "bf16-base")  # every variant
ep_flop = 2 * fwd * 80  # 5-way 1-shot 15-query

def lines(name):
    path = f"{w}/{name}"
    return [l.split() for l in open(path)] if os.path.exists(path) else []

rows = {}
for v, r, u4, s4, u24, s24 in lines("step.txt"):
    rows.setdefault(v, []).append(((float(u24) - float(u4)) / 20, (float(s24) - float(s4)) / 20))
if rows:
    print(f"\n(1) step FLOP count: {ep_flop / 1e9:.1f} GFLOP per 80-image episode (2 x forward {fwd / 1e6:.0f} MFLOP per image)")
    print(f"  {'variant':<32}{'user s':>8}{'sys s':>8}{'CPU s':>8}{'kernel':>8}{'vs eager':>10}{'GFLOP/CPU-s':>13}{'of peak':>9}")
    cpu = {v: med(a + b for a, b in x) for v, x in rows.items()}
    for v, label, pk in (("eager", "PyTorch eager (eager_step.py)", "float32"), ("fp32", "lorarecycle fp32", "float32"),
                         ("bf16", "lorarecycle bf16", "bfloat16")):
        if v not in rows: continue
        u, s, t = med(x[0] for x in rows[v]), med(x[1] for x in rows[v]), cpu[v]
        print(f"  {label:<32}{u:8.3f}{s:8.3f}{t:8.3f}{100 * s / t:7.1f}%{cpu['eager'] / t:9.2f}x{ep_flop / t / 1e9:13.1f}"
              f"{100 * ep_flop / t / 1e9 / peak[pk]:8.1f}%")
    print((f"  bf16 step vs fp32 step: {cpu['fp32'] / cpu['bf16']:.2f}x; " if "bf16" in cpu else "  bf16 not timed; ")
          + f"matmul peak fp32 {peak['float32']:.0f}, bf16 {peak['bfloat16']:.0f} GFLOP/s")

eps_sets = sorted({int(f.split("_e")[1].split("_")[0]) for f in os.listdir(w) if f.startswith("eps_")})
if eps_sets:
    def one(name, r): return json.load(open(f"{w}/eps_{name}.{r}.json"))["timing"]["episodes_per_s"]
    def eps(name): return med(one(name, r) for r in range(1, reps + 1))
    # ratios per repetition (the variants of one repetition ran side by side), then their median
    def ratio(a, b): return med(one(a, r) / one(b, r) for r in range(1, reps + 1))
    print(f"\n(2) {'precision':<17}{'E':>3}{'mask 0':>9}{'mask 0.5':>10}{'mask 0.75':>11}{'0.5 vs 0':>10}{'0.75 vs 0':>11}"
          f"{'1 rank':>8}{'2 vs 1':>8}  (episodes/s; E = episodes per step; ratios: medians of per-repetition ratios)")
    for e in eps_sets:
        for pr in PRECISIONS:
            k = f"{pr}_e{e}"
            if not os.path.exists(f"{w}/eps_{k}_m0.1.json"): continue
            m0, m5, m7, n1 = eps(f"{k}_m0"), eps(f"{k}_m50"), eps(f"{k}_m75"), eps(f"{k}_np1")
            print(f"    {pr:<17}{e:3d}{m0:9.2f}{m5:10.2f}{m7:11.2f}{ratio(k + '_m50', k + '_m0'):9.2f}x"
                  f"{ratio(k + '_m75', k + '_m0'):10.2f}x{n1:8.2f}{ratio(k + '_m0', k + '_np1'):7.2f}x")
        if os.path.exists(f"{w}/eps_fp32_e{e}_m0.1.json") and os.path.exists(f"{w}/eps_bf16_e{e}_m0.1.json"):
            print(f"    bf16 vs fp32 (mask 0, np 2, E {e}): {ratio(f'bf16_e{e}_m0', f'fp32_e{e}_m0'):.2f}x")

inv = {}
for v, r, e, u in lines("inv.txt"):
    inv.setdefault(v, []).append(float(e))
if inv:
    # As part 1: the 60-iteration run minus the 10-iteration run times 50 iterations of the loop,
    # without the start-up (libraries, model, zoo, HDF5), per repetition; medians.
    n_img = 40 * 50
    precs = [p for p in ("fp32", "bf16") if f"{p}:60" in inv]
    loop = {p: med(b - a for a, b in zip(inv[f"{p}:10"], inv[f"{p}:60"])) for p in precs}
    whole = {p: med(inv[f"{p}:60"]) for p in precs}
    print(f"\n(3) inversion, 1 LoRA (40 images), 1 rank, 50 iterations (60-iteration run - 10-iteration run): "
          + ", ".join(f"{p} {loop[p]:.2f} s ({n_img / loop[p]:.0f} image-iterations/s)" for p in precs)
          + (f"; bf16 vs fp32 {loop['fp32'] / loop['bf16']:.2f}x" if len(precs) == 2 else "")
          + "\n    whole 60-iteration command (wall, start-up included): "
          + ", ".join(f"{p} {whole[p]:.2f} s" for p in precs)
          + (f", {whole['fp32'] / whole['bf16']:.2f}x" if len(precs) == 2 else ""))

if any(f.startswith("phase_") for f in os.listdir(w)):
    order = ["data", "input", "patches", "embed", "attention", "mlp", "head", "loss", "backward", "reduce", "optimizer", "other"]
    print("\n(4) the step by phase, ms per step (1 rank, 1 episode of 80 images; medians)")
    for pr in PRECISIONS:
        if not os.path.exists(f"{w}/phase_{pr}_0.1.json"): continue
        ph = {m: [json.load(open(f"{w}/phase_{pr}_{m}.{r}.json"))["timing"] for r in range(1, reps + 1)]
              for m in ("0", "0.5", "0.75")}
        print(f"  {pr:<16}{'mask 0':>9}{'mask 0.5':>10}{'mask 0.75':>11}{'0 / 0.75':>10}")
        for k in order + ["step"]:
            v = {m: med(t["step_seconds"] * 1e3 if k == "step" else t["phase_ms_per_step"][k] for t in ts)
                 for m, ts in ph.items()}
            ratio = f"{v['0'] / v['0.75']:9.2f}x" if v["0.75"] > 0.005 else f"{'-':>10}"
            print(f"  {k:<16}{v['0']:9.2f}{v['0.5']:10.2f}{v['0.75']:11.2f}{ratio}")

if any(f.startswith("fixed_") for f in os.listdir(w)):
    kept = P - int(0.75 * P)
    print(f"\n(5) the step's fixed cost, ms (1 rank, 1 episode; step = fixed + images x per image, through the "
          f"medians at 40 and 80 images); forward FLOPs per image dense / mask 0.75: {fwd / forward_flops(c, kept + 1):.2f}x")
    print(f"  {'precision':<18}{'mask':>6}{'40 images':>11}{'80 images':>11}{'per image':>11}{'fixed':>8}")
    for pr in PRECISIONS:
        if not os.path.exists(f"{w}/fixed_{pr}_0_q7.1.json"): continue
        fit = {}  # mask -> (per image, step at 80 images)
        for m in ("0", "0.75"):
            t = {q: med(json.load(open(f"{w}/fixed_{pr}_{m}_q{q}.{r}.json"))["timing"]["step_seconds"] * 1e3
                        for r in range(1, reps + 1)) for q in (7, 15)}
            per = (t[15] - t[7]) / 40
            fit[m] = (per, t[15])
            print(f"  {pr:<18}{m:>6}{t[7]:11.2f}{t[15]:11.2f}{per:11.4f}{t[7] - 40 * per:8.2f}")
        (c0, s0), (c7, s7) = fit["0"], fit["0.75"]
        print(f"  {pr:<18} 0 / 0.75 at 80 images: step {s0 / s7:.2f}x, per image {c0 / c7:.2f}x (the step without its fixed cost)")
PY
