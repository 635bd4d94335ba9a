#!/usr/bin/env bash
# Nothing overwritten, nothing silently reused (docs/RELIABILITY.md, "Between runs"). Each case
# ends with exit 2 and one error line naming what differs, before any work, with nothing on disk
# changed (every file's path, size, mtime and content digest compared before and after):
#  1. metatrain --out a zoo LoRA's directory (another command's output);
#  2. zoo into an existing zoo with other --epochs, and with other --data;
#  3. invert into an existing pool with other --per-class / --iterations, and from a second zoo;
#  4. a LoRA tuned on one VFM loaded onto another of the same shapes (embed, eval, invert);
#  5. metatrain on a pool inverted from another VFM (a patch-8 pool with a patch-4 model);
#  6. embed --out an existing directory; pretrain, zoo, invert --out a directory of other files;
#  7. a flipped byte in a zoo adapter (embed, and a zoo re-run), a checkpoint and a pool file:
#     refused, naming the file;
#  8. verify: passes on a good run, names a flipped byte in a zoo adapter, a checkpoint and a pool
#     file; a retrained zoo LoRA's old surrogates are refused by invert and named by verify;
# then --restart discards and rebuilds (zoo and invert), a same-settings re-run reuses everything,
# and the markers name their kind.
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN
"$LORAREC_PYTHON" "$REPO_DIR/data_tools/build_benchmark.py" --out data --preset quick >/dev/null
"$LORAREC_PYTHON" "$REF" make-model m
"$LORAREC_PYTHON" "$REF" make-model m2 --seed 7             # same shapes, other weights
"$LORAREC_PYTHON" "$REF" make-model m4 --seed 7 --patch 4   # other patch size
ZOO="--model m --data data/zoo.h5 --num-loras 2 --epochs 2 --batch-size 10 --log-level warn"
INV="--model m --per-class 2 --iterations 2 --no-flip --log-level warn"
mpirun2 $B zoo $ZOO --out zoo >zoo.txt 2>&1 || { cat zoo.txt; fail "zoo"; }
mpirun2 $B invert $INV --zoo zoo --out pool >inv.txt 2>&1 || { cat inv.txt; fail "invert"; }

# state: every file under the work directory (dot-files included): path, size, mtime, digest.
state() { find . -path ./out.txt -prune -o -path ./err.txt -prune -o -type f -printf '%p %s %T@\n' | sort |
  while read -r p rest; do echo "$p $rest $(sha1sum <"$p" | cut -c1-12)"; done; }
# refused CODE NEEDLE -- command...: exit CODE, stderr has NEEDLE on one error line, nothing changed.
refused() {
  local before; before=$(state)
  expect_status "$@"
  # one error line (the same from every rank under mpirun)
  [ "$(grep -E ': error( \[rank [0-9]+\])?:' err.txt | sed -E 's/ \[rank [0-9]+\]//' | sort -u | wc -l)" = 1 ] ||
    { cat err.txt; fail "not exactly one error message"; }
  [ "$(state)" = "$before" ] || { diff <(echo "$before") <(state) || true; fail "'${*:4}' changed files on disk"; }
}

# 1. another command's output
refused 2 "zoo/lora_000: not empty and not a metatrain directory of lorarecycle metatrain (it holds task.json)" -- \
  $B metatrain --model m --pool pool --steps 2 --way 2 --shot 1 --query 1 --out zoo/lora_000
refused 2 "zoo: holds the output of lorarecycle zoo (a zoo directory), not of invert" -- \
  $B invert $INV --zoo zoo --out zoo

# 2. a finished zoo with other settings (mpirun: every rank refuses alike)
refused 2 "setting --epochs: 2 in zoo/lora_000, 1 now; --restart discards" -- \
  mpirun2 $B zoo ${ZOO/--epochs 2/--epochs 1} --out zoo
Z1=${ZOO/--epochs 2/--epochs 1}
refused 2 "setting --data (content digest): " -- $B zoo ${Z1/data\/zoo.h5/data\/test.h5} --out zoo

# 3. a finished pool with other settings, or from another zoo
refused 2 "setting --iterations: 2 in pool/lora_000.h5, 3 now" -- \
  $B invert ${INV/--per-class 2 --iterations 2/--per-class 6 --iterations 3} --zoo zoo --out pool
mpirun2 $B zoo $ZOO --seed 5 --out zoo2 >zoo2.txt 2>&1 || { cat zoo2.txt; fail "second zoo"; }
refused 2 "setting --zoo (manifest digest): " -- $B invert $INV --zoo zoo2 --out pool

# 4. a LoRA on another VFM of the same shapes
refused 2 "zoo/lora_001: this LoRA was tuned on another VFM (m, digest " -- \
  $B embed --model m2 --lora zoo/lora_001 --images data/test.h5 --out e.h5
refused 2 "than --model m2 (digest" -- $B eval --model m2 --zoo zoo --methods lora-avg --data data/test.h5 --episodes 5
refused 2 "zoo/lora_000: this LoRA was tuned on another VFM" -- $B invert ${INV/--model m/--model m2} --zoo zoo --out pool_m2

# 5. a pool of another VFM
refused 2 "--pool pool was inverted from another VFM (m, digest" -- \
  $B metatrain --model m4 --pool pool --steps 2 --way 2 --shot 1 --query 1 --out meta_m4

# 6. output paths checked up front
mkdir -p somedir holiday && echo photo >holiday/a.jpg
refused 2 "embed: --out somedir: is a directory" -- $B embed --model m --images data/test.h5 --out somedir
refused 2 "holiday: not empty and not a pretrain directory of lorarecycle pretrain (it holds a.jpg)" -- \
  $B pretrain --data data/base.h5 --out holiday --steps 2 --warmup 0
refused 2 "holiday: not empty and not a zoo directory" -- $B zoo $ZOO --out holiday
refused 2 "holiday: not empty and not a pool directory" -- $B invert $INV --zoo zoo --out holiday
refused 2 "zoo: holds the output of lorarecycle zoo (a zoo directory), not of eval" -- \
  $B eval --model m --methods nn --data data/test.h5 --episodes 5 --out zoo

# A same-settings re-run reuses every unit and rewrites nothing of them.
before=$(cd zoo && find lora_* -type f -printf '%p %T@\n' | sort)
mpirun2 $B zoo ${ZOO/--log-level warn/--log-level info} --out zoo >re.txt 2>&1 || { cat re.txt; fail "re-run"; }
grep -q "0 to train, 2 finished earlier" re.txt || { cat re.txt; fail "finished LoRAs not reused"; }
[ "$(cd zoo && find lora_* -type f -printf '%p %T@\n' | sort)" = "$before" ] || fail "finished LoRAs rewritten"
# --restart discards and rebuilds with today's settings.
mpirun2 $B zoo ${ZOO/--epochs 2/--epochs 1} --out zoo --restart >rs.txt 2>&1 || { cat rs.txt; fail "zoo --restart"; }
"$LORAREC_PYTHON" - <<'PY'
import json
for k in (0, 1):
    t = json.load(open(f"zoo/lora_00{k}/task.json"))
    assert t["epochs"] == 1 and t["settings"]["--epochs"] == 1, t
m = json.load(open("zoo/.lorarecycle.json"))
assert m["kind"] == "zoo" and m["settings"]["--epochs"] == 1, m
assert json.load(open("zoo/manifest.json"))["settings"]["--epochs"] == 1
print("ok: zoo --restart rebuilt both LoRAs with --epochs 1; marker and manifest say so")
PY
# The pool of the rebuilt zoo: the old files are refused (the zoo changed), --restart rebuilds.
refused 2 "setting --zoo (manifest digest): " -- $B invert $INV --zoo zoo --out pool
mpirun2 $B invert $INV --zoo zoo --out pool --restart >ri.txt 2>&1 || { cat ri.txt; fail "invert --restart"; }
"$LORAREC_PYTHON" - <<'PY'
import json, h5py
idx = json.load(open("pool/index.json"))
z = json.load(open("zoo/.lorarecycle.json"))
for f in idx["files"]:
    with h5py.File("pool/" + f["file"], "r") as h:
        s = json.loads(h.attrs["settings"])
    assert s == idx["settings"], (s, idx["settings"])
assert idx["settings"]["--model (content digest)"] == z["settings"]["--model (content digest)"]
print("ok: invert --restart rebuilt the pool; every file records the pool's settings")
PY
# A same-settings re-run of invert reuses every file.
mpirun2 $B invert ${INV/--log-level warn/--log-level info} --zoo zoo --out pool >ri2.txt 2>&1 || { cat ri2.txt; fail "invert re-run"; }
grep -q "0 inverted in this run" ri2.txt || { cat ri2.txt; fail "finished pool files not reused"; }
# Every adapter records its VFM: loads on m, and the meta-LoRA's directory is marked as metatrain's.
$B metatrain --model m --pool pool --steps 2 --way 2 --shot 1 --query 1 --out meta --log-level warn ||
  fail "metatrain on its own VFM"
"$LORAREC_PYTHON" - <<'PY'
import json
assert json.load(open("meta/.lorarecycle.json"))["kind"] == "metatrain"
assert json.load(open("meta.work/.lorarecycle.json"))["kind"] == "metatrain-work"
print("ok: meta/ and meta.work/ marked")
PY
$B embed --model m --lora meta --images data/test.h5 --out e.h5 --log-level warn || fail "embed with the meta-LoRA"

# 7. Integrity: a flipped byte in a zoo adapter, a checkpoint or a pool file is a one-line error
# naming the file (exit 2), never a wrong result.
flip() {  # flip FILE OFFSET: inverts one byte
  "$LORAREC_PYTHON" - "$1" "$2" <<'PY'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x01]))
PY
}
cp -r zoo zoo_bad && flip zoo_bad/lora_001/adapter_model.safetensors $(( $(stat -c %s zoo_bad/lora_001/adapter_model.safetensors) - 3 ))
expect_status 2 "zoo_bad/lora_001/adapter_model.safetensors: corrupt file: its content digest is" -- \
  $B embed --model m --lora zoo_bad/lora_001 --images data/test.h5 --out e2.h5
# zoo does not reuse a corrupt finished LoRA: it names the file and what to do, before any work.
refused 2 "zoo_bad/lora_001/adapter_model.safetensors: corrupt file: its content digest is" -- \
  mpirun2 $B zoo ${ZOO/--epochs 2/--epochs 1} --out zoo_bad
grep -q "delete zoo_bad/lora_001 and re-run zoo" err.txt || { cat err.txt; fail "zoo: no remedy named"; }
$B metatrain --model m --pool pool --steps 4 --stop-after 2 --way 2 --shot 1 --query 1 --out ck --log-level warn >/dev/null 2>&1 || true
[ -f ck.work/checkpoint.safetensors ] || fail "no checkpoint to corrupt"
flip ck.work/checkpoint.safetensors $(( $(stat -c %s ck.work/checkpoint.safetensors) - 5 ))
expect_status 2 "ck.work/checkpoint.safetensors: corrupt file" -- \
  $B metatrain --model m --pool pool --steps 4 --way 2 --shot 1 --query 1 --out ck --resume
cp -r pool pool_bad
off=$("$LORAREC_PYTHON" -c "
import h5py
with h5py.File('pool_bad/lora_001.h5', 'r') as h:
    d = h['images']
    print(d.id.get_offset() if d.chunks is None else d.id.get_chunk_info(0).byte_offset)")
flip pool_bad/lora_001.h5 $((off + 100))
expect_status 2 "pool_bad/lora_001.h5: corrupt pool file (its data digest is" -- \
  $B metatrain --model m --pool pool_bad --steps 2 --way 2 --shot 1 --query 1 --out meta_bad

# 8. verify RUN_DIR: passes on a good run (zoo, pool, meta-LoRA and its work directory); a flipped
# byte in a zoo adapter, the checkpoint or a pool file is a problem naming the file (exit 1).
mkdir run && cp -rp zoo pool meta meta.work run/
$B verify run >v.txt 2>&1 || { cat v.txt; fail "verify on a good run"; }
grep -q "^verify run: 4 outputs, 0 problems" v.txt || { cat v.txt; fail "verify summary"; }
grep -q "^ok  *pool  *run/pool: 2 pool files.*zoo run/zoo; VFM m (outside the run)" v.txt || { cat v.txt; fail "pool chain"; }
grep -q "^ok  *metatrain  *run/meta: .*pool run/pool" v.txt || { cat v.txt; fail "meta-LoRA chain"; }
verify_finds() {  # verify_finds FILE OFFSET NEEDLE: flip a byte, verify exits 1 naming it, restore
  cp -p "$1" flipped.orig && flip "$1" "$2"
  set +e; $B verify run >v.txt 2>&1; local rc=$?; set -e
  mv flipped.orig "$1"
  [ "$rc" = 1 ] || { cat v.txt; fail "verify exited $rc after flipping a byte of $1"; }
  grep -q "^PROBLEM .* $1: .*$3" v.txt || { cat v.txt; fail "verify did not name $1 ($3)"; }
  echo "ok: verify names $1"
}
verify_finds run/zoo/lora_001/adapter_model.safetensors $(( $(stat -c %s run/zoo/lora_001/adapter_model.safetensors) - 3 )) "corrupt file"
verify_finds run/meta.work/checkpoint.safetensors $(( $(stat -c %s run/meta.work/checkpoint.safetensors) - 5 )) "corrupt file"
verify_finds run/pool/lora_001.h5 $((off + 100)) "corrupt pool file"
$B verify run >v.txt 2>&1 || { cat v.txt; fail "verify after restoring the files"; }
# A retrained zoo LoRA (other weights, same manifest): invert does not reuse the surrogates of the
# old weights (exit 2, nothing changed), and verify names the stale pool file.
cp run/zoo/lora_000/adapter_model.safetensors run/zoo/lora_001/adapter_model.safetensors
refused 2 "run/pool/lora_001.h5: inverted from another run/zoo/lora_001 (its weights changed since)" -- \
  mpirun2 $B invert $INV --zoo run/zoo --out run/pool
set +e; $B verify run >v.txt 2>&1; rc=$?; set -e
[ "$rc" = 1 ] && grep -q "^PROBLEM .* run/pool/lora_001.h5: inverted from LoRA weights digest .* (retrained since?)" v.txt ||
  { cat v.txt; fail "verify did not name the stale pool file"; }
echo "ok: a retrained LoRA's old surrogates are refused by invert and named by verify"
echo "provenance: all cases passed"
