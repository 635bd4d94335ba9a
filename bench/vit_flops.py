"""The step FLOP count of the benchmark scripts (bench/perf.sh, bench/gpu_check.sh).

forward_flops(c, n): the forward's matmul FLOPs per image with n tokens (n - 1 patches and CLS)
of a CLIP vision tower with config c: the patch embedding, and per layer q/k/v/out, the attention
scores and values and the MLP, every token in every layer. A meta-training step costs 2 x that
(the frozen ViT's backward computes input gradients only, one matmul per forward matmul; the
LoRA's rank-r weight gradients are left out).
"""
import json


def vision_config(model_dir):
    """The vision tower's config of a VFM directory (config.json, or its vision_config)."""
    c = json.load(open(f"{model_dir}/config.json"))
    return c.get("vision_config", c)


def forward_flops(c, n):
    D, M, L, p = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["patch_size"]
    return 2 * (n - 1) * 3 * p * p * D + L * (2 * n * D * D * 4 + 2 * 2 * n * n * D + 2 * n * D * M * 2)
