#!/usr/bin/env bash
# zoo under mpirun -np 2: every LoRA written exactly once, a re-run skips finished ones, crash
# leftovers are removed, a deleted entry is rebuilt alone.
source "$(dirname "$0")/common.sh"
TOOL="$REPO_DIR/data_tools/build_benchmark.py"
"$LORAREC_PYTHON" "$TOOL" --out data --preset quick >/dev/null
"$LORAREC_PYTHON" "$REF" make-model m
B=$LORAREC_BIN
ARGS="--model m --data data/zoo.h5 --out zoo --num-loras 4 --epochs 2 --batch-size 10"
mpirun2 $B zoo $ARGS 2>&1 | tee run1.txt
for k in 000 001 002 003; do
  for f in adapter_model.safetensors adapter_config.json task.json; do [ -f zoo/lora_$k/$f ] || fail "zoo/lora_$k/$f missing"; done
done
[ "$(ls zoo | grep -c '^lora_')" = 4 ] || fail "expected exactly 4 entries: $(ls -a zoo)"
[ -z "$(ls -a zoo | grep '\.tmp\.')" ] || fail "temporary files left"
sha1=$(cat zoo/lora_*/adapter_model.safetensors | sha256sum)
mkdir -p zoo/.lora_003.tmp.99999  # what a crash would leave
mpirun2 $B zoo $ARGS 2>&1 | tee run2.txt
grep -q "rank 0 trains 0, skips 2 finished" run2.txt || fail "the re-run did not skip finished LoRAs"
[ "$(cat zoo/lora_*/adapter_model.safetensors | sha256sum)" = "$sha1" ] || fail "finished LoRAs were rewritten"
[ ! -e zoo/.lora_003.tmp.99999 ] || fail "crash leftover not removed"
rm -rf zoo/lora_002
mpirun2 $B zoo $ARGS 2>&1 | tee run3.txt
grep -q "rank 0 trains 1, skips 1 finished" run3.txt || fail "a deleted LoRA was not rebuilt (rank 0 owns 0 and 2)"
"$LORAREC_PYTHON" - <<'PY'
import json
m = json.load(open("zoo/manifest.json"))
assert [e["id"] for e in m["loras"]] == [0, 1, 2, 3], m
for e in m["loras"]:
    t = json.load(open(f"zoo/{e['dir']}/task.json"))
    assert len(t["classes"]) == 5 and 0 <= t["heldout_accuracy"] <= 100 and t["heldout_images"] > 0
print("zoo_mpi: manifest ok, mean held-out accuracy", m["mean_heldout_accuracy"])
PY
# Every entry loads as a PEFT adapter.
$B embed --model m --lora zoo/lora_001 --images data/test.h5 --out e.h5 --log-level warn
