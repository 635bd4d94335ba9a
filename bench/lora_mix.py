#!/usr/bin/python3
"""A weighted mix of two LoRA adapters of one VFM, written as one PEFT adapter.

  /usr/bin/python3 bench/lora_mix.py OUT_DIR W ADAPTER_A ADAPTER_B

OUT_DIR's delta on every adapted module is exactly W * delta_A + (1 - W) * delta_B, where
delta = (lora_alpha / r) * B @ A: the two LoRAs side by side (rank r_A + r_B, lora_alpha = rank so
that the scale is 1), each B multiplied by its adapter's own scale and weight; a module adapted in
one of the two only gets zero rows and columns for the other. Classifier heads are dropped (the
mix is an embedding adapter, as a meta-LoRA is). W = 1 is A, W = 0 is B. Used by
bench/science.sh "mix" to interpolate between a meta-LoRA and the zoo's average (lora-avg, written
by metatrain --init zoo-mean --rank R --alpha R --steps 1 --lr 1e-30), as weight-space ensembles
of a fine-tuned model with its start do (WiSE-FT). Needs numpy only; reads and writes safetensors
by hand (8-byte header length, JSON header, little-endian float32 data).
"""
import json
import os
import re
import struct
import sys

import numpy as np

KEY = re.compile(r"^(?P<mod>.*)\.lora_(?P<ab>[AB])\.weight$")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise SystemExit(f"lora_mix: {path}: {name} is {t['dtype']}, only F32 is read")
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(t["shape"])
    return out, meta


def write_safetensors(path, tensors, meta):
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load(adapter_dir):
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    tensors, meta = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    mods = {}
    for name, t in tensors.items():
        m = KEY.match(name)
        if m:
            mods.setdefault(m["mod"], {})[m["ab"]] = t
    for mod, ab in mods.items():
        if set(ab) != {"A", "B"}:
            raise SystemExit(f"lora_mix: {adapter_dir}: {mod} lacks lora_A or lora_B")
    return cfg, meta, scale, mods


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    out, w, a_dir, b_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    if not 0.0 <= w <= 1.0:
        raise SystemExit("lora_mix: W must be in [0, 1]")
    (ca, ma, sa, A), (cb, mb, sb, B) = load(a_dir), load(b_dir)
    if ma.get("base_model_digest") != mb.get("base_model_digest"):
        raise SystemExit("lora_mix: the two adapters are of different base models")
    ra, rb = int(ca["r"]), int(cb["r"])
    r = ra + rb
    tensors = {}
    for mod in sorted(set(A) | set(B)):
        ref = (A.get(mod) or B.get(mod))
        d_in, d_out = ref["A"].shape[1], ref["B"].shape[0]
        a_a = A[mod]["A"] if mod in A else np.zeros((ra, d_in), np.float32)
        b_a = A[mod]["B"] if mod in A else np.zeros((d_out, ra), np.float32)
        a_b = B[mod]["A"] if mod in B else np.zeros((rb, d_in), np.float32)
        b_b = B[mod]["B"] if mod in B else np.zeros((d_out, rb), np.float32)
        tensors[f"{mod}.lora_A.weight"] = np.concatenate([a_a, a_b], 0)
        tensors[f"{mod}.lora_B.weight"] = np.concatenate([w * sa * b_a, (1 - w) * sb * b_b], 1)
    cfg = dict(ca)
    cfg["r"], cfg["lora_alpha"] = r, float(r)
    cfg["target_modules"] = sorted(set(ca["target_modules"]) | set(cb["target_modules"]))
    layers = set(ca.get("layers_to_transform") or []) | set(cb.get("layers_to_transform") or [])
    cfg["layers_to_transform"] = sorted(layers) if layers else None
    cfg["modules_to_save"] = None
    os.makedirs(out, exist_ok=True)
    meta = {"format": "pt", "producer": "bench/lora_mix.py"}
    if "base_model_digest" in ma:
        meta["base_model_digest"] = ma["base_model_digest"]
    write_safetensors(os.path.join(out, "adapter_model.safetensors"), tensors, meta)
    json.dump(cfg, open(os.path.join(out, "adapter_config.json"), "w"), indent=2)
    # The check: the mixed delta of every module against the direct sum.
    for mod in tensors:
        if mod.endswith(".lora_A.weight"):
            m = mod[: -len(".lora_A.weight")]
            got = tensors[f"{m}.lora_B.weight"] @ tensors[mod]
            want = np.zeros_like(got)
            if m in A:
                want += w * sa * A[m]["B"] @ A[m]["A"]
            if m in B:
                want += (1 - w) * sb * B[m]["B"] @ B[m]["A"]
            assert np.allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max())), m
    print(f"lora_mix: {out}: {w} x {a_dir} (r {ra}) + {1 - w:g} x {b_dir} (r {rb}), rank {r}, {len(tensors) // 2} modules")


if __name__ == "__main__":
    main()
