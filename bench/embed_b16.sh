#!/usr/bin/env bash
# Full-size check: a ViT with the exact shapes and file layout of openai/clip-vit-base-patch16
# (random weights, 224 px, 196 patches + CLS, 12 layers, width 768, projection 512) and a PEFT
# LoRA (r 4, q/v of every layer), embedded by `lorarecycle embed` alone and under mpirun -np 2,
# compared with the independent float64 reference, and timed (images/s, median of 3 runs each,
# alternating 1 rank / 2 ranks).
#   bash bench/embed_b16.sh [N_IMAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
N=${1:-32}
B=$PWD/build/lorarecycle; PY=/usr/bin/python3; REF=$PWD/tests/reference/tiny_clip.py
W=${LORAREC_BENCH_DIR:-runs/bench_b16}; mkdir -p "$W"; cd "$W"
[ -f b16/model.safetensors ] || $PY "$REF" make-model b16 --preset b16 --seed 3
[ -f lora/adapter_config.json ] || $PY "$REF" make-lora lora --model b16 --r 4 --alpha 4
$PY "$REF" make-images images.h5 --n "$N" --size 224
$PY "$REF" forward --model b16 --lora lora --images images.h5 --out reference.h5
XENV=("${MPIRUN_ENV_FLAGS[@]}")
t1=(); t2=()
for rep in 1 2 3; do
  s=$(date +%s.%N); $B embed --model b16 --lora lora --images images.h5 --out np1.h5 --batch-size 8 --log-level warn
  t1+=($(echo "$(date +%s.%N) - $s" | bc))
  s=$(date +%s.%N); mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe -np 2 "${XENV[@]}" $B embed --model b16 --lora lora --images images.h5 --out np2.h5 --batch-size 8 --log-level warn
  t2+=($(echo "$(date +%s.%N) - $s" | bc))
done
$PY "$REF" compare np1.h5 reference.h5 --rtol 1e-4
$PY "$REF" compare np2.h5 reference.h5 --rtol 1e-4
med() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
m1=$(med "${t1[@]}"); m2=$(med "${t2[@]}")
echo
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
printf '| ranks | wall s (median of 3, incl. load) | images/s |\n|---|---|---|\n'
printf '| 1 | %.2f | %.1f |\n' "$m1" "$(echo "$N / $m1" | bc -l)"
printf '| 2 | %.2f | %.1f |\n' "$m2" "$(echo "$N / $m2" | bc -l)"
