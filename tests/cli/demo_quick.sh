#!/usr/bin/env bash
# The main job's script on the quick preset under mpirun -np 2, twice: every stage's outputs
# exist after the first run, and the second run reuses them all.
source "$(dirname "$0")/common.sh"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" 2>&1 | tee run1.txt
for f in data/quick/manifest.json runs/quick/vfm/model.safetensors runs/quick/vfm/config.json \
         runs/quick/vfm/pretrain_report.json runs/quick/prior/model.safetensors runs/quick/zoo/manifest.json \
         runs/quick/pool/index.json runs/quick/pool/summary.json runs/quick/pool/lora_003.h5 runs/quick/pool/lora_000.png; do
  [ -f "w/$f" ] || fail "missing w/$f"
done
[ "$(ls w/runs/quick/zoo | grep -c '^lora_')" = 4 ] || fail "expected 4 LoRAs"
grep -q "zoo: 4 LoRAs" run1.txt || fail "no zoo summary"
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" 2>&1 | tee run2.txt
grep -q "reusing runs/quick/vfm" run2.txt || fail "VFM not reused"
grep -q "reusing runs/quick/prior" run2.txt || fail "prior not reused"
grep -q "is complete" run2.txt || fail "data not reused"
grep -q "skips 2 finished" run2.txt || fail "zoo not reused"
grep -q "rank 0 inverts 0" run2.txt || fail "pool not reused"
echo "demo_quick: all stages ran and were reused"
