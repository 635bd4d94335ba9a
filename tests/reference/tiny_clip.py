#!/usr/bin/python3
"""Independent reference for lorarecycle's tests (Debian's python3-torch/numpy/h5py).

Written separately from the C++ code: its own safetensors reader/writer (struct + json), and
HF CLIPVisionTransformer's forward written from the HF modeling code's structure (conv patch
embedding, per-head attention) in float64.

  tiny_clip.py make-model DIR [--act quick_gelu|gelu] [--seed S] [--preset tiny|b16]
                 [--image-size S] [--patch P] [--width D] [--layers L] [--heads H]
  tiny_clip.py make-lora DIR --model MODEL [--r 4] [--alpha 8] [--seed S] [--layers 0,2] [--classes 5]
  tiny_clip.py make-images FILE [--n N] [--size S] [--channels C] [--seed S]
  tiny_clip.py forward --model DIR [--lora DIR] --images FILE --out FILE
  tiny_clip.py compare A B [--rtol 1e-4]
"""
import argparse
import json
import os
import struct
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
NP_TO_ST = {np.dtype(v): k for k, v in DTYPES.items()}


def st_write(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.require(arr, requirements="C")  # keeps 0-d arrays 0-d
        b = arr.tobytes()
        header[name] = {"dtype": NP_TO_ST[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def st_read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[base + b:base + e], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32,
            patch_size=8, layer_norm_eps=1e-5, num_channels=3)
# The shapes of openai/clip-vit-base-patch16's vision tower.
B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
           patch_size=16, layer_norm_eps=1e-5, num_channels=3)
PRESETS = {"tiny": (TINY, 24), "b16": (B16, 512)}


def make_model(args):
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.dir, exist_ok=True)
    base, PROJ = PRESETS[args.preset]
    v = dict(base, hidden_act=args.act)
    # Overrides of the preset's geometry, e.g. CLIP's real 224 px / patch 16 at a tiny width.
    for key, val in (("image_size", args.image_size), ("patch_size", args.patch),
                     ("num_hidden_layers", args.layers), ("num_attention_heads", args.heads)):
        if val is not None:
            v[key] = val
    if args.width is not None:
        v["hidden_size"], v["intermediate_size"] = args.width, 2 * args.width
    # The real openai/clip-vit-base-patch16 layout: CLIPConfig, vision_config nested, projection_dim on top.
    cfg = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": PROJ,
           "text_config": {"hidden_size": 32, "vocab_size": 100}, "vision_config": dict(v, projection_dim=PROJ,
                                                                                          dropout=0.0)}
    json.dump(cfg, open(os.path.join(args.dir, "config.json"), "w"), indent=2)
    crop = 32 if args.image_size is None else args.image_size
    json.dump({"image_mean": [0.5, 0.45, 0.4], "image_std": [0.25, 0.27, 0.3], "crop_size": crop},
              open(os.path.join(args.dir, "preprocessor_config.json"), "w"), indent=2)
    D, I, L, p, C = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"], 3
    P = (v["image_size"] // p) ** 2
    scale = (64.0 / D) ** 0.5  # keep activations O(1) at any width
    f = lambda *s, sd=0.1: (rng.standard_normal(s, dtype=np.float32) * (sd if len(s) < 2 else sd * scale)).astype(np.float32)
    t = {"vision_model.embeddings.patch_embedding.weight": f(D, C, p, p, sd=0.05),
         "vision_model.embeddings.class_embedding": f(D, sd=0.5),
         "vision_model.embeddings.position_embedding.weight": f(P + 1, D, sd=0.5),
         "vision_model.embeddings.position_ids": np.arange(P + 1, dtype=np.int64)[None],
         "vision_model.pre_layrnorm.weight": 1 + f(D), "vision_model.pre_layrnorm.bias": f(D),
         "vision_model.post_layernorm.weight": 1 + f(D), "vision_model.post_layernorm.bias": f(D),
         "visual_projection.weight": f(PROJ, D, sd=0.2),
         "text_model.embeddings.token_embedding.weight": f(100, 32), "text_projection.weight": f(PROJ, 32),
         "logit_scale": np.array(2.6592, dtype=np.float32)}
    for l in range(L):
        k = f"vision_model.encoder.layers.{l}."
        for ln in ("layer_norm1", "layer_norm2"):
            t[k + ln + ".weight"] = 1 + f(D)
            t[k + ln + ".bias"] = f(D)
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[k + f"self_attn.{m}.weight"] = f(D, D, sd=0.2)
            t[k + f"self_attn.{m}.bias"] = f(D)
        t[k + "mlp.fc1.weight"], t[k + "mlp.fc1.bias"] = f(I, D, sd=0.15), f(I)
        t[k + "mlp.fc2.weight"], t[k + "mlp.fc2.bias"] = f(D, I, sd=0.15), f(D)
    st_write(os.path.join(args.dir, "model.safetensors"), t, {"format": "pt"})


def make_lora(args):
    rng = np.random.default_rng(args.seed)
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    v = cfg.get("vision_config", cfg)
    D, L = v["hidden_size"], v["num_hidden_layers"]
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(L))
    os.makedirs(args.dir, exist_ok=True)
    t = {}
    for l in layers:
        for m in ("q_proj", "v_proj"):
            k = f"base_model.model.vision_model.encoder.layers.{l}.self_attn.{m}."
            t[k + "lora_A.weight"] = (rng.standard_normal((args.r, D)) * 0.2).astype(np.float32)
            t[k + "lora_B.weight"] = (rng.standard_normal((D, args.r)) * 0.2).astype(np.float32)
    proj = cfg.get("projection_dim", v.get("projection_dim"))
    t["base_model.model.classifier.weight"] = (rng.standard_normal((args.classes, proj)) * 0.2).astype(np.float32)
    t["base_model.model.classifier.bias"] = (rng.standard_normal(args.classes) * 0.2).astype(np.float32)
    st_write(os.path.join(args.dir, "adapter_model.safetensors"), t)
    json.dump({"peft_type": "LORA", "r": args.r, "lora_alpha": args.alpha, "target_modules": ["q_proj", "v_proj"],
               "layers_to_transform": layers, "lora_dropout": 0.1, "bias": "none", "some_future_key": {"x": 1},
               "modules_to_save": ["classifier"]}, open(os.path.join(args.dir, "adapter_config.json"), "w"), indent=2)


def make_images(args):
    rng = np.random.default_rng(args.seed)
    imgs = rng.integers(0, 256, size=(args.n, args.size, args.size, args.channels), dtype=np.uint8)
    with h5py.File(args.file, "w") as f:
        f["images"] = imgs
        f["labels"] = rng.integers(0, 5, size=args.n).astype(np.int32)


def forward(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    v = cfg.get("vision_config", cfg)
    pre = json.load(open(os.path.join(args.model, "preprocessor_config.json")))
    w = {k: torch.from_numpy(np.array(a, dtype=np.float64)) for k, a in st_read(os.path.join(args.model, "model.safetensors")).items()
         if a.dtype != np.int64}
    D, H, L, p, S = v["hidden_size"], v["num_attention_heads"], v["num_hidden_layers"], v["patch_size"], v["image_size"]
    eps = v.get("layer_norm_eps", 1e-5)
    act = v.get("hidden_act", "quick_gelu")
    lora, scale = {}, 1.0
    if args.lora:
        lc = json.load(open(os.path.join(args.lora, "adapter_config.json")))
        scale = lc["lora_alpha"] / lc["r"]
        lora = {k: torch.from_numpy(np.array(a, dtype=np.float64)) for k, a in
                st_read(os.path.join(args.lora, "adapter_model.safetensors")).items()}

    def lin(x, l, m):
        k = f"vision_model.encoder.layers.{l}.{m}"
        y = x @ w[k + ".weight"].T + w[k + ".bias"]
        la = f"base_model.model.vision_model.encoder.layers.{l}.{m}.lora_A.weight"
        if la in lora:
            lb = la.replace("lora_A", "lora_B")
            y = y + scale * ((x @ lora[la].T) @ lora[lb].T)
        return y

    with h5py.File(args.images, "r") as f:
        imgs = np.array(f["images"])
    x = torch.from_numpy(imgs).double().permute(0, 3, 1, 2) / 255.0
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    mean = torch.tensor(pre.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("image_std", [0.26862954, 0.26130258, 0.27577711]), dtype=torch.float64).view(1, 3, 1, 1)
    x = (x - mean) / std
    B = x.shape[0]
    e = F.conv2d(x, w["vision_model.embeddings.patch_embedding.weight"], stride=p).flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(B, 1, -1)
    h = torch.cat([cls, e], 1) + w["vision_model.embeddings.position_embedding.weight"][None]
    h = F.layer_norm(h, (D,), w["vision_model.pre_layrnorm.weight"], w["vision_model.pre_layrnorm.bias"], eps)
    dh = D // H
    for l in range(L):
        k = f"vision_model.encoder.layers.{l}."
        r = h
        h = F.layer_norm(h, (D,), w[k + "layer_norm1.weight"], w[k + "layer_norm1.bias"], eps)
        T = h.shape[1]
        q = lin(h, l, "self_attn.q_proj") * dh ** -0.5
        kk = lin(h, l, "self_attn.k_proj")
        vv = lin(h, l, "self_attn.v_proj")
        outs = []
        for head in range(H):
            sl = slice(head * dh, (head + 1) * dh)
            a = torch.softmax(q[:, :, sl] @ kk[:, :, sl].transpose(1, 2), -1)
            outs.append(a @ vv[:, :, sl])
        h = r + lin(torch.cat(outs, -1), l, "self_attn.out_proj")
        r = h
        h = F.layer_norm(h, (D,), w[k + "layer_norm2.weight"], w[k + "layer_norm2.bias"], eps)
        m = lin(h, l, "mlp.fc1")
        m = m * torch.sigmoid(1.702 * m) if act == "quick_gelu" else 0.5 * m * (1 + torch.erf(m / 2 ** 0.5))
        h = r + lin(m, l, "mlp.fc2")
    pooled = F.layer_norm(h[:, 0], (D,), w["vision_model.post_layernorm.weight"], w["vision_model.post_layernorm.bias"], eps)
    feat = pooled @ w["visual_projection.weight"].T
    with h5py.File(args.out, "w") as f:
        f["features"] = feat.float().numpy()


def compare(args):
    with h5py.File(args.a, "r") as fa, h5py.File(args.b, "r") as fb:
        a, b = np.array(fa["features"], dtype=np.float64), np.array(fb["features"], dtype=np.float64)
    if a.shape != b.shape:
        print(f"shape mismatch {a.shape} vs {b.shape}")
        sys.exit(1)
    rel = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    print(f"features {a.shape}: max relative error {rel:.3e} (tolerance {args.rtol:g})")
    sys.exit(0 if rel <= args.rtol else 1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make-model"); s.add_argument("dir"); s.add_argument("--act", default="quick_gelu"); s.add_argument("--seed", type=int, default=1)
    s.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for flag, what in (("--image-size", "image_size"), ("--patch", "patch_size"), ("--width", "hidden_size (MLP 2x)"),
                       ("--layers", "num_hidden_layers"), ("--heads", "num_attention_heads")):
        s.add_argument(flag, type=int, default=None, help=f"overrides the preset's {what}")
    s = sub.add_parser("make-lora"); s.add_argument("dir"); s.add_argument("--model", required=True); s.add_argument("--r", type=int, default=4)
    s.add_argument("--alpha", type=float, default=8); s.add_argument("--seed", type=int, default=2); s.add_argument("--layers", default="")
    s.add_argument("--classes", type=int, default=5)
    s = sub.add_parser("make-images"); s.add_argument("file"); s.add_argument("--n", type=int, default=10); s.add_argument("--size", type=int, default=32)
    s.add_argument("--channels", type=int, default=3); s.add_argument("--seed", type=int, default=3)
    s = sub.add_parser("forward"); s.add_argument("--model", required=True); s.add_argument("--lora", default=""); s.add_argument("--images", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("compare"); s.add_argument("a"); s.add_argument("b"); s.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()
    {"make-model": make_model, "make-lora": make_lora, "make-images": make_images, "forward": forward, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
