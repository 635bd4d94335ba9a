#!/usr/bin/python3
"""Reference for the ResNet prior: torchvision's own ResNet-50 (ImageNet stem, Bottleneck) and a
CIFAR-stem ResNet-18 (3x3/1 conv, no max-pool), random weights and BN statistics, saved as
safetensors with torchvision's names, with an input batch and torchvision's eval-mode logits and
per-BN-layer batch statistics (train-mode inputs).

  torchvision_resnet.py OUTDIR   -> OUTDIR/{r50,r18}.safetensors, OUTDIR/{r50,r18}_io.safetensors
"""
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_clip import st_write  # noqa: E402


def randomise_bn(m, g):
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)


def dump(name, model, size, out):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    with torch.no_grad():
        randomise_bn(model, g)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        logits = model(x)
    # batch statistics of every BN input in a forward pass (hooks, in call order)
    stats = []
    hooks = [m.register_forward_hook(lambda mod, inp, outp: stats.append(
        (inp[0].mean((0, 2, 3)), inp[0].var((0, 2, 3), unbiased=False)))) for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    st_write(os.path.join(out, name + ".safetensors"), sd)
    io = {"input": x.numpy(), "logits": logits.numpy()}
    for i, (m, v) in enumerate(stats):
        io[f"bn_mean.{i:03d}"] = m.numpy()
        io[f"bn_var.{i:03d}"] = v.numpy()
    st_write(os.path.join(out, name + "_io.safetensors"), io)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    dump("r50", torchvision.models.resnet50(num_classes=7), 64, out)
    r18 = torchvision.models.resnet18(num_classes=5)
    r18.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    r18.maxpool = torch.nn.Identity()
    dump("r18", r18, 16, out)


if __name__ == "__main__":
    main()
