#!/usr/bin/env bash
# The bad-input corpus: each case is a file (or option) that is wrong in one way, given to the
# command that reads it. Each must end with exit status 2 and exactly one error line that names
# the file (or option) and the problem; no crash, no trace, no output file. The corpus is
# generated here from a valid tiny model, LoRA and image set (tests/reference/tiny_clip.py), and
# the fuzzers' crash inputs under tests/data/corpus/ are replayed too.
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN
CORPUS="$CLI_DIR/../data/corpus"
"$LORAREC_PYTHON" "$REF" make-model m >/dev/null
"$LORAREC_PYTHON" "$REF" make-lora l --model m --r 4 >/dev/null
"$LORAREC_PYTHON" "$REF" make-images im.h5 --n 6 >/dev/null
n_cases=0
# bad NEEDLE -- command...: exit 2, one error line (no other line mentioning an error, abort or
# signal) that contains NEEDLE; no output file o.h5.
bad() {
  local needle=$1; shift 2
  rm -f o.h5
  set +e; timeout 120 "$@" >out.txt 2>err.txt; local rc=$?; set -e
  [ $rc = 2 ] || { cat out.txt err.txt; fail "'$*' exited $rc, expected 2"; }
  [ "$(grep -ciE 'error|terminate|abort|segmentation|sanitizer|exception' err.txt)" = 1 ] || { cat err.txt; fail "'$*': expected exactly one error line"; }
  [ "$(wc -l <err.txt)" = 1 ] || { cat err.txt; fail "'$*': stderr has more than the one error line"; }
  grep -qF -- "$needle" err.txt || { cat err.txt; fail "'$*': the error does not say '$needle'"; }
  [ ! -e o.h5 ] || fail "'$*' wrote an output"
  n_cases=$((n_cases + 1))
  printf 'ok %2d: %s\n' $n_cases "$(cat err.txt)"
}
E=($B embed --log-level error)

# ---- the model's safetensors and config
"$LORAREC_PYTHON" - <<'PY'
import json, os, shutil, struct
import numpy as np
src = "m/model.safetensors"
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
def model_dir(name, data=None, config=None):
    os.makedirs(name, exist_ok=True)
    shutil.copy("m/config.json", f"{name}/config.json")
    if config is not None:
        json.dump(config, open(f"{name}/config.json", "w"))
    open(f"{name}/model.safetensors", "wb").write(raw if data is None else data)
def pack(h, body):
    hb = json.dumps(h).encode()
    return struct.pack("<Q", len(hb)) + hb + body
body = raw[8 + n:]
model_dir("m_truncated", raw[: 8 + n + len(body) // 2])
model_dir("m_tiny", raw[:5])
model_dir("m_garbled", raw[:8] + b"{" + b"\x00\xff" * ((n - 1) // 2) + b"}" * ((n - 1) % 2) + body)
model_dir("m_huge_header", struct.pack("<Q", 1 << 60) + raw[8:])
model_dir("m_offsets", pack({k: (dict(v, data_offsets=[v["data_offsets"][0], v["data_offsets"][1] + 4]) if k != "__metadata__" and v["data_offsets"][1] == len(body) else v) for k, v in header.items()}, body))
model_dir("m_dtype", pack({k: (dict(v, dtype="F13") if k != "__metadata__" and i == 1 else v) for i, (k, v) in enumerate(header.items())}, body))
# a missing key: drop one tensor (and its bytes) from the file
keys = [k for k in header if k != "__metadata__"]
drop = [k for k in keys if k.endswith("layer_norm1.weight")][0]
h2, parts, off = {}, [], 0
for k in sorted(keys, key=lambda k: header[k]["data_offsets"][0]):
    if k == drop: continue
    s, e = header[k]["data_offsets"]
    h2[k] = dict(header[k], data_offsets=[off, off + e - s]); parts.append(body[s:e]); off += e - s
model_dir("m_missing", pack(h2, b"".join(parts)))
open("missing_key.txt", "w").write(drop)
# NaN weights
k0 = [k for k in keys if k.endswith("q_proj.weight")][0]
s, e = header[k0]["data_offsets"]
nan_body = bytearray(body); nan_body[s:s + 4] = struct.pack("<f", float("nan"))
model_dir("m_nan", pack(header, bytes(nan_body)))
# shapes that do not match the config
cfg = json.load(open("m/config.json"))
vc = cfg.get("vision_config", cfg)
vc["intermediate_size"] = vc["intermediate_size"] * 2
model_dir("m_shape", config=cfg)
cfg = json.load(open("m/config.json")); vc = cfg.get("vision_config", cfg); vc["num_attention_heads"] = 7
model_dir("m_heads", config=cfg)
model_dir("m_badjson"); open("m_badjson/config.json", "w").write('{"vision_config": {"hidden_size": 32,')
PY
bad "m_truncated/model.safetensors" -- "${E[@]}" --model m_truncated --images im.h5 --out o.h5
bad "m_tiny/model.safetensors" -- "${E[@]}" --model m_tiny --images im.h5 --out o.h5
bad "m_garbled/model.safetensors" -- "${E[@]}" --model m_garbled --images im.h5 --out o.h5
bad "m_huge_header/model.safetensors" -- "${E[@]}" --model m_huge_header --images im.h5 --out o.h5
bad "m_offsets/model.safetensors" -- "${E[@]}" --model m_offsets --images im.h5 --out o.h5
bad "m_dtype/model.safetensors" -- "${E[@]}" --model m_dtype --images im.h5 --out o.h5
bad "$(cat missing_key.txt)" -- "${E[@]}" --model m_missing --images im.h5 --out o.h5
bad "NaN" -- "${E[@]}" --model m_nan --images im.h5 --out o.h5
bad "m_shape/model.safetensors" -- "${E[@]}" --model m_shape --images im.h5 --out o.h5
bad "m_heads/config.json" -- "${E[@]}" --model m_heads --images im.h5 --out o.h5
bad "m_badjson/config.json" -- "${E[@]}" --model m_badjson --images im.h5 --out o.h5
bad "nowhere" -- "${E[@]}" --model nowhere --images im.h5 --out o.h5

# ---- PEFT adapters
"$LORAREC_PYTHON" - <<'PY'
import json, os, shutil, struct
def lora_dir(name, config=None, data=None):
    shutil.copytree("l", name)
    if config is not None:
        c = json.load(open("l/adapter_config.json")); c.update(config)
        json.dump(c, open(f"{name}/adapter_config.json", "w"))
    if data is not None:
        open(f"{name}/adapter_model.safetensors", "wb").write(data)
lora_dir("l_rank", {"r": 8})
lora_dir("l_targets", {"target_modules": ["q_proj", "foo_proj"]})
lora_dir("l_type", {"peft_type": "PREFIX_TUNING"})
lora_dir("l_layers", {"layers_to_transform": "all"})
raw = open("l/adapter_model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
k = [k for k in h if k.endswith("lora_B.weight")][0]
s, e = h[k]["data_offsets"]
b = bytearray(raw); b[8 + n + s: 8 + n + s + 4] = struct.pack("<f", float("inf"))
lora_dir("l_inf", data=bytes(b))
lora_dir("l_trunc", data=raw[: len(raw) - 3])
os.makedirs("l_noconfig"); shutil.copy("l/adapter_model.safetensors", "l_noconfig/")
PY
bad "l_rank" -- "${E[@]}" --model m --lora l_rank --images im.h5 --out o.h5
bad "foo_proj" -- "${E[@]}" --model m --lora l_targets --images im.h5 --out o.h5
bad "l_type/adapter_config.json: peft_type" -- "${E[@]}" --model m --lora l_type --images im.h5 --out o.h5
bad "l_layers/adapter_config.json: layers_to_transform" -- "${E[@]}" --model m --lora l_layers --images im.h5 --out o.h5
bad "NaN or Inf" -- "${E[@]}" --model m --lora l_inf --images im.h5 --out o.h5
bad "l_trunc/adapter_model.safetensors" -- "${E[@]}" --model m --lora l_trunc --images im.h5 --out o.h5
bad "l_noconfig/adapter_config.json: missing" -- "${E[@]}" --model m --lora l_noconfig --images im.h5 --out o.h5

# ---- HDF5 image sets
"$LORAREC_PYTHON" - <<'PY'
import h5py, numpy as np
raw = open("im.h5", "rb").read()
open("im_truncated.h5", "wb").write(raw[: len(raw) // 2])
open("im_text.h5", "w").write("this is not HDF5\n")
rng = np.random.default_rng(0)
def labelled(name, images, labels, **extra):
    with h5py.File(name, "w") as f:
        if images is not None: f["images"] = images
        if labels is not None: f["labels"] = labels
        for k, v in extra.items(): f[k] = v
img = rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
lab = np.repeat(np.arange(6, dtype=np.int32), 10)
labelled("set_ok.h5", img, lab)
labelled("set_float.h5", img.astype(np.float64), lab)
labelled("set_labels_float.h5", img, lab.astype(np.float32))
labelled("set_nolabels.h5", img, None)
labelled("set_noimages.h5", None, lab)
labelled("set_count.h5", img, lab[:50])
labelled("set_channels.h5", rng.integers(0, 255, (60, 32, 32, 2), dtype=np.uint8), lab)
labelled("set_rank.h5", img.reshape(60, 32, 96), lab)
labelled("set_negative.h5", img, lab - 3)
labelled("set_small.h5", rng.integers(0, 255, (60, 4, 4, 3), dtype=np.uint8), lab)
PY
bad "im_truncated.h5" -- "${E[@]}" --model m --images im_truncated.h5 --out o.h5
bad "im_text.h5: not an HDF5 file" -- "${E[@]}" --model m --images im_text.h5 --out o.h5
bad "set_float.h5" -- "${E[@]}" --model m --images set_float.h5 --out o.h5
bad "set_labels_float.h5" -- "${E[@]}" --model m --images set_labels_float.h5 --out o.h5
bad "set_noimages.h5" -- "${E[@]}" --model m --images set_noimages.h5 --out o.h5
bad "set_count.h5" -- "${E[@]}" --model m --images set_count.h5 --out o.h5
bad "set_channels.h5" -- "${E[@]}" --model m --images set_channels.h5 --out o.h5
bad "set_rank.h5" -- "${E[@]}" --model m --images set_rank.h5 --out o.h5
bad "set_negative.h5" -- $B eval --log-level error --model m --data set_negative.h5 --methods nn --episodes 5
bad "set_small.h5" -- "${E[@]}" --model m --images set_small.h5 --out o.h5
# episodes the set cannot hold: 6 classes of 10 images
bad "set_ok.h5" -- $B eval --log-level error --model m --data set_ok.h5 --methods nn --way 7 --shots 1 --query 2 --episodes 5
bad "set_ok.h5" -- $B eval --log-level error --model m --data set_ok.h5 --methods nn --way 5 --shots 5 --query 6 --episodes 5
bad "set_nolabels.h5" -- $B eval --log-level error --model m --data set_nolabels.h5 --methods nn --episodes 5

# ---- options and config values
bad "--way" -- $B eval --log-level error --model m --data set_ok.h5 --way 1
bad "--mask-ratio" -- $B metatrain --log-level error --model m --pool p --val set_ok.h5 --out mo --mask-ratio 1.5
bad "--temperature must be > 0" -- $B metatrain --log-level error --model m --pool p --val set_ok.h5 --out mo --temperature 0
bad "--distill-weight must be >= 0" -- $B metatrain --log-level error --model m --pool p --val set_ok.h5 --out mo --distill-weight -1
bad "--steps" -- $B metatrain --log-level error --model m --pool p --out mo --steps -3
bad "--collective-timeout" -- $B embed --log-level error --model m --images im.h5 --out o.h5 --collective-timeout -1
bad "episodes" -- $B eval --log-level error --model m --data set_ok.h5 --episodes many
bad "unknown method 'magic'" -- $B eval --log-level error --model m --data set_ok.h5 --methods nn,magic
# a value holding Boost's own placeholder once made the error message loop forever (fuzz_config)
bad "'--seed' is invalid" -- $B eval --log-level error --model m --data set_ok.h5 --seed '%value%x'
printf '[eval]\nway = 0\n' >zero_way.ini
bad "--way" -- $B eval --log-level error --model m --data set_ok.h5 --config zero_way.ini
printf '[eval]\nepisodes = 1e99\n' >big.ini
bad "big.ini" -- $B eval --log-level error --model m --data set_ok.h5 --config big.ini
printf '[eval]\nwhat is this\n' >malformed.ini
bad "malformed.ini:2" -- $B eval --log-level error --model m --data set_ok.h5 --config malformed.ini
printf '[common]\nlog-level = loud\n' >level.ini
bad "loud" -- $B embed --model m --images im.h5 --out o.h5 --config level.ini

# ---- inputs the fuzzers once crashed or tripped on (tests/data/corpus), replayed through the CLI
if [ -d "$CORPUS" ]; then
  for f in "$CORPUS"/safetensors/*; do
    [ -f "$f" ] || continue
    mkdir -p fz && cp m/config.json fz/ && cp "$f" fz/model.safetensors
    bad "fz/model.safetensors" -- "${E[@]}" --model fz --images im.h5 --out o.h5
  done
  # Replayed through eval, the command the fuzz target's options mirror: a [common] key such as
  # seed applies only to the commands that have it (embed has no --seed and would skip it).
  for f in "$CORPUS"/config/*; do
    [ -f "$f" ] || continue
    cp "$f" fz.ini
    bad "fz.ini" -- $B eval --log-level error --model m --data set_ok.h5 --config fz.ini
  done
fi
echo "bad_inputs: all $n_cases cases rejected with exit 2 and one error line"
