"""Reads a PEFT adapter directory written by lorarecycle (own safetensors reader, float32)."""
import json
import struct

import numpy as np


def tensors(d):
    """name -> float32 array of DIR/adapter_model.safetensors."""
    b = open(f"{d}/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32).reshape(v["shape"])
    return out


def deltas(d):
    """module prefix -> weight delta (lora_alpha / r) * B @ A, in float64."""
    t = tensors(d)
    c = json.load(open(f"{d}/adapter_config.json"))
    scale = c["lora_alpha"] / c["r"]
    return {k[:-len("lora_A.weight")]: scale * t[k.replace("lora_A", "lora_B")].astype(np.float64) @ t[k].astype(np.float64)
            for k in t if k.endswith("lora_A.weight")}
