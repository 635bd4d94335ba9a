#!/usr/bin/env bash
# The main job on the embedded default. Today it runs what exists: a CLIP-format ViT (random
# weights, written by the independent reference tool in the HF file layout) and a PEFT LoRA are
# loaded through the real loaders, and `lorarecycle embed` computes features of an HDF5 image
# set alone and under mpirun -np 2; both are checked against the Python reference.
# Later stages (benchmark data, pretrain, zoo, invert, metatrain, eval) join this script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
OUT=${LORAREC_RUN_DIR:-runs/demo}
mkdir -p "$OUT"
B=$PWD/build/lorarecycle
PY=/usr/bin/python3
REF=$PWD/tests/reference/tiny_clip.py
cd "$OUT"
[ -f model/model.safetensors ] || $PY "$REF" make-model model --act quick_gelu
[ -f lora/adapter_config.json ] || $PY "$REF" make-lora lora --model model --r 4 --alpha 8
[ -f images.h5 ] || $PY "$REF" make-images images.h5 --n 256
$PY "$REF" forward --model model --lora lora --images images.h5 --out reference.h5
$B embed --model model --lora lora --images images.h5 --out features_np1.h5
mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe -np 2 -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
  $B embed --model model --lora lora --images images.h5 --out features_np2.h5
$PY "$REF" compare features_np1.h5 reference.h5
$PY "$REF" compare features_np2.h5 reference.h5
h5ls features_np2.h5
echo "demo: outputs in $OUT"
