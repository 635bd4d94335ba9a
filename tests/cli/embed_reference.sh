#!/usr/bin/env bash
# lorarecycle embed on random-weights CLIP-format models vs the independent Python reference
# (tests/reference/tiny_clip.py), world size 1 and mpirun -np 2: max relative error <= 1e-4 in
# fp32; in bf16 (autocast) <= 3e-2.
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN; P=$LORAREC_PYTHON
$P "$REF" make-images im.h5 --n 13
$P "$REF" make-images gray.h5 --n 4 --channels 1 --seed 5
for act in quick_gelu gelu; do
  $P "$REF" make-model m_$act --act $act --seed 7
  $P "$REF" forward --model m_$act --images im.h5 --out ref_$act.h5
  $B embed --precision fp32 --model m_$act --images im.h5 --out np1_$act.h5 --log-level warn
  $P "$REF" compare np1_$act.h5 ref_$act.h5 --rtol 1e-4
  mpirun2 $B embed --precision fp32 --model m_$act --images im.h5 --out np2_$act.h5 --log-level warn
  $P "$REF" compare np2_$act.h5 ref_$act.h5 --rtol 1e-4
done
# PEFT LoRA on a subset of layers, alpha/r = 2.
$P "$REF" make-lora lora --model m_gelu --layers 0,2 --r 4 --alpha 8
$P "$REF" forward --model m_gelu --lora lora --images im.h5 --out ref_lora.h5
$B embed --precision fp32 --model m_gelu --lora lora --images im.h5 --out np1_lora.h5 --batch-size 4 --log-level warn
$P "$REF" compare np1_lora.h5 ref_lora.h5 --rtol 1e-4
mpirun2 $B embed --precision fp32 --model m_gelu --lora lora --images im.h5 --out np2_lora.h5 --log-level warn
$P "$REF" compare np2_lora.h5 ref_lora.h5 --rtol 1e-4
$B embed --precision bf16 --model m_gelu --lora lora --images im.h5 --out bf16_lora.h5 --log-level warn
$P "$REF" compare bf16_lora.h5 ref_lora.h5 --rtol 3e-2
if $P "$REF" compare bf16_lora.h5 ref_lora.h5 --rtol 1e-4 >/dev/null; then fail "--precision bf16 ran in fp32"; fi
if $P "$REF" compare np1_lora.h5 ref_gelu.h5 --rtol 1e-4 >/dev/null; then fail "the LoRA changed nothing"; fi
# Gray images: one channel repeated.
$P "$REF" forward --model m_gelu --images gray.h5 --out ref_gray.h5
$B embed --precision fp32 --model m_gelu --images gray.h5 --out gray_out.h5 --log-level warn
$P "$REF" compare gray_out.h5 ref_gray.h5 --rtol 1e-4
# Labels are carried over.
$P - <<PY
import h5py, numpy as np
a, b = h5py.File("np2_gelu.h5"), h5py.File("im.h5")
assert (np.array(a["labels"]) == np.array(b["labels"])).all()
PY
echo "embed_reference: all passed"
