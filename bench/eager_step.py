#!/usr/bin/python3
"""The meta-training step in plain PyTorch eager mode: the yardstick for the C++ step's cost.

HF-CLIP-style vision modules (patch conv, class and position embeddings, pre-LN encoder layers
with q/k/v/out Linear layers, quick-GELU MLP, post-LN, projection), the meta-LoRA on q_proj and
v_proj as two extra Linear layers each (rank R, scale alpha / R), one forward of E episodes of
way x (shot + query) images (uint8 -> float, CLIP normalisation), prototypes of the support
features, cross-entropy on -squared distance / T, backward and Adam on the LoRA weights only.
The weights are random: the cost depends on the shapes, not on the values.

Run with Debian's python3-torch (the same LibTorch build as the C++ binary), one thread:
  OMP_NUM_THREADS=1 /usr/bin/time -f "%U %S" /usr/bin/python3 bench/eager_step.py --steps 24
CPU seconds per step = (24-step run - 4-step run) / 20, as bench/perf.sh measures both sides.
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.h, self.dh).transpose(1, 2)
        q = split(self.q_proj(x)) * self.dh ** -0.5
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(b, n, d))


class Layer(nn.Module):
    def __init__(self, d: int, mlp: int, heads: int):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        m = self.fc1(self.layer_norm2(x))
        return x + self.fc2(m * torch.sigmoid(1.702 * m))


class ViT(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, n = a.width, (a.image_size // a.patch) ** 2 + 1
        self.patch_embedding = nn.Conv2d(3, d, a.patch, a.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(n, d) * 0.02)
        self.pre_layrnorm, self.post_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.layers = nn.ModuleList(Layer(d, a.mlp, a.heads) for _ in range(a.layers))
        self.visual_projection = nn.Linear(d, a.proj_dim, bias=False)

    def forward(self, px):
        x = self.patch_embedding(px).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.position_embedding
        x = self.pre_layrnorm(x)
        for layer in self.layers:
            x = layer(x)
        return self.visual_projection(self.post_layernorm(x[:, 0]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--episodes", type=int, default=1, help="episodes per step (one forward)")
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--mlp", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--temperature", type=float, default=128.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vit = ViT(a)
    for prm in vit.parameters():
        prm.requires_grad_(False)
    for layer in vit.layers:
        layer.self_attn.q_proj = LoRALinear(layer.self_attn.q_proj, a.rank, a.alpha)
        layer.self_attn.v_proj = LoRALinear(layer.self_attn.v_proj, a.rank, a.alpha)
    params = [prm for prm in vit.parameters() if prm.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    per = a.way * (a.shot + a.query)
    labels = torch.arange(a.way).repeat_interleave(a.query)
    g = torch.Generator().manual_seed(1)
    last = None
    for _ in range(a.steps):
        u8 = torch.randint(0, 256, (a.episodes * per, 3, a.image_size, a.image_size), dtype=torch.uint8, generator=g)
        px = (u8.float() / 255 - mean) / std
        feat = vit(px)
        loss = 0
        for e in range(a.episodes):
            f = feat[e * per:(e + 1) * per]
            s, q = f[:a.way * a.shot], f[a.way * a.shot:]
            proto = s.view(a.way, a.shot, -1).mean(1)
            d2 = q.pow(2).sum(-1, keepdim=True) - 2 * q @ proto.t() + proto.pow(2).sum(-1).unsqueeze(0)
            logits = -d2 / a.temperature
            loss = loss + F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        (loss / a.episodes).backward()
        opt.step()
        last = float(loss)
    print(f"eager_step: {a.steps} steps, last loss {last:.4f}")


if __name__ == "__main__":
    main()
