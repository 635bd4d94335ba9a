#!/usr/bin/python3
"""A weighted mix of two LoRA adapters of one VFM, written as one PEFT adapter.

  /usr/bin/python3 bench/lora_mix.py OUT_DIR W ADAPTER_A ADAPTER_B
  /usr/bin/python3 bench/lora_mix.py OUT_DIR W ADAPTER_A zero      (W x delta_A: A scaled)

OUT_DIR's delta on every adapted module is exactly W * delta_A + (1 - W) * delta_B, where
delta = (lora_alpha / r) * B @ A: the two LoRAs side by side (rank r_A + r_B, lora_alpha = rank so
that the scale is 1), each B multiplied by its adapter's own scale and weight; a module adapted in
one of the two only gets zero rows and columns for the other. Classifier heads are dropped (the
mix is an embedding adapter, as a meta-LoRA is). W = 1 is A, W = 0 is B; W > 1 (up to 8)
extrapolates past A along A - B (B + W (A - B), as task arithmetic scales a task vector). B given as
`zero` is the bare VFM (no delta): the output is A's delta times W. Used by
bench/science.sh "mix" to interpolate between a meta-LoRA and the zoo's average (lora-avg, written
by metatrain --init zoo-mean --rank R --alpha R --steps 1 --lr 1e-30), as weight-space ensembles
of a fine-tuned model with its start do (WiSE-FT). Reads with the tests' safetensors reader
(tests/cli/peft_adapter.py), writes with data_tools/convert_weights.py's writer, and checks the
written file's deltas against the direct sum.
"""
import json
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "cli"), str(ROOT / "data_tools")]
from convert_weights import ConvertError, _torch, write_safetensors  # noqa: E402
from peft_adapter import deltas, read_safetensors  # noqa: E402

A_KEY, B_KEY = "lora_A.weight", "lora_B.weight"


def load(adapter_dir):
    """(config, metadata, scale, {module prefix: (A, B)}) of a PEFT adapter directory."""
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    t, meta = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"), with_metadata=True)
    mods = {}
    for name in t:
        if name.endswith(A_KEY):
            mod = name[: -len(A_KEY)]
            if mod + B_KEY not in t:
                raise SystemExit(f"lora_mix: {adapter_dir}: {mod}{A_KEY} without {B_KEY}")
            mods[mod] = (t[name].astype(np.float32), t[mod + B_KEY].astype(np.float32))
    return cfg, meta, float(cfg["lora_alpha"]) / float(cfg["r"]), mods


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    out, w, a_dir, b_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    if not 0.0 <= w <= 8.0:
        raise SystemExit("lora_mix: W must be in [0, 8]")
    (ca, ma, sa, A) = load(a_dir)
    # "zero": no delta (rank 0, every module A's zero-width block).
    (cb, mb, sb, B) = (dict(ca, r=0, lora_alpha=0.0), ma, 1.0, {}) if b_dir == "zero" else load(b_dir)
    if ma.get("base_model_digest") != mb.get("base_model_digest"):
        raise SystemExit("lora_mix: the two adapters are of different base models")
    ra, rb = int(ca["r"]), int(cb["r"])
    torch = _torch()
    tensors = {}
    for mod in sorted(set(A) | set(B)):
        a_ref, b_ref = A.get(mod) or B[mod]
        zero = (np.zeros((ra, a_ref.shape[1]), np.float32), np.zeros((b_ref.shape[0], ra), np.float32))
        a_a, b_a = A.get(mod, zero)
        zero = (np.zeros((rb, a_ref.shape[1]), np.float32), np.zeros((b_ref.shape[0], rb), np.float32))
        a_b, b_b = B.get(mod, zero)
        tensors[mod + A_KEY] = torch.from_numpy(np.concatenate([a_a, a_b], 0))
        tensors[mod + B_KEY] = torch.from_numpy(np.concatenate([w * sa * b_a, (1 - w) * sb * b_b], 1))
    cfg = dict(ca)
    cfg["r"], cfg["lora_alpha"] = ra + rb, float(ra + rb)
    cfg["target_modules"] = sorted(set(ca["target_modules"]) | set(cb["target_modules"]))
    layers = set(ca.get("layers_to_transform") or []) | set(cb.get("layers_to_transform") or [])
    cfg["layers_to_transform"] = sorted(layers) if layers else None
    cfg["modules_to_save"] = None
    meta = {"format": "pt", "producer": "bench/lora_mix.py"}
    if "base_model_digest" in ma:
        meta["base_model_digest"] = ma["base_model_digest"]
    try:
        write_safetensors(os.path.join(out, "adapter_model.safetensors"), tensors, meta, force=True)
    except ConvertError as e:
        raise SystemExit(f"lora_mix: {e}")
    json.dump(cfg, open(os.path.join(out, "adapter_config.json"), "w"), indent=2)
    # The check, on the file as written: its delta of every module against the direct sum.
    got, want = deltas(out), {m: w * d for m, d in deltas(a_dir).items()}
    for m, d in ({} if b_dir == "zero" else deltas(b_dir)).items():
        want[m] = want.get(m, 0) + (1 - w) * d
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for m, d in want.items():
        assert np.allclose(got[m], d, atol=1e-5 * max(1.0, np.abs(d).max())), m
    print(f"lora_mix: {out}: {w} x {a_dir} (r {ra}) + {1 - w:g} x {b_dir} (r {rb}), rank {ra + rb}, {len(want)} modules")


if __name__ == "__main__":
    main()
