"""Reads safetensors files and PEFT adapter directories written by lorarecycle (own reader, numpy)."""
import json
import struct

import numpy as np


DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
          "I32": np.int32, "U8": np.uint8}


def read_safetensors(path, with_metadata=False):
    """name -> array (in its stored dtype; BF16 as raw uint16) of a .safetensors file; with
    with_metadata, (that, the header's __metadata__ dict)."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
    return (out, meta) if with_metadata else out


def tensors(d):
    """name -> float32 array of DIR/adapter_model.safetensors."""
    return {k: v.astype(np.float32, copy=False) for k, v in read_safetensors(f"{d}/adapter_model.safetensors").items()}


def deltas(d):
    """module prefix -> weight delta (lora_alpha / r) * B @ A, in float64."""
    t = tensors(d)
    c = json.load(open(f"{d}/adapter_config.json"))
    scale = c["lora_alpha"] / c["r"]
    return {k[:-len("lora_A.weight")]: scale * t[k.replace("lora_A", "lora_B")].astype(np.float64) @ t[k].astype(np.float64)
            for k in t if k.endswith("lora_A.weight")}
