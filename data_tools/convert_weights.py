#!/usr/bin/python3
"""Converts PyTorch pickle checkpoints into the safetensors files lorarecycle reads (no
`safetensors` package needed: the format is written by hand, as the C++ reader demands it:
tensors tiling the data section in order, header padded to 8 bytes, written to a temporary name
and renamed).

  /usr/bin/python3 data_tools/convert_weights.py hf-bin DIR [--out DIR2] [--vision-only] [--force]
      An HF CLIP model directory holding pytorch_model.bin (or a sharded
      pytorch_model.bin.index.json), e.g. openai/clip-vit-base-patch16 (the full CLIPModel: text
      and vision towers) -> DIR/model.safetensors (or DIR2/model.safetensors, with config.json and
      preprocessor_config.json copied beside it), the file `--model DIR` of every command reads.
      Names and dtypes are kept (F32, F16, BF16 and F64 are all accepted; the loader converts to
      float32). The text tower (text_model.*, text_projection.weight, logit_scale) is kept, so the
      directory stays a complete HF CLIPModel; lorarecycle ignores it. --vision-only drops it
      (half the file for ViT-B/16).

  /usr/bin/python3 data_tools/convert_weights.py torchvision-resnet50 FILE.pth OUT_DIR [--force]
      A torchvision ResNet state dict (e.g. resnet50-0676ba61.pth = ResNet50_Weights.IMAGENET1K_V1;
      ResNet-18/34/101/152 work too) -> OUT_DIR/model.safetensors with torchvision's names, the
      BN prior of `invert --prior OUT_DIR` (also `prior = OUT_DIR` in a config's [invert]). No
      config file: the loader reads the architecture off the tensor names and shapes.

Checkpoints wrapped as {"state_dict": ...} or {"model": ...} and DataParallel's "module." prefix
are unwrapped. Pickles are loaded with torch.load(weights_only=True); --trust-pickle loads a
checkpoint that needs full unpickling (only for files you trust: a pickle can run code).
Errors are one line on stderr with exit status 1 (2 for usage errors).
"""
import argparse
import json
import os
import re
import shutil
import struct
import sys
from collections import OrderedDict

ST_DTYPES = {}  # torch dtype -> (safetensors name, dtype to view it as for numpy)


class ConvertError(Exception):
    pass


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - Debian's python3-torch is a project dependency
        raise ConvertError(f"cannot import torch ({e}); run with /usr/bin/python3 (Debian's python3-torch)")
    if not ST_DTYPES:
        ST_DTYPES.update({torch.float64: ("F64", None), torch.float32: ("F32", None), torch.float16: ("F16", None),
                          torch.bfloat16: ("BF16", torch.int16), torch.int64: ("I64", None),
                          torch.int32: ("I32", None), torch.int16: ("I16", None), torch.int8: ("I8", None),
                          torch.uint8: ("U8", None), torch.bool: ("BOOL", None)})
    return torch


def load_pickle(path, trust):
    """torch.load of a checkpoint -> a flat {name: tensor} state dict."""
    torch = _torch()
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: not a regular file")
    kwargs = {"map_location": "cpu"}
    if not trust:
        kwargs["weights_only"] = True
    try:
        try:
            obj = torch.load(path, **kwargs)
        except TypeError as e:  # a torch without weights_only
            if "weights_only" not in str(e):
                raise
            kwargs.pop("weights_only")
            obj = torch.load(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a one-line error
        msg = " ".join(str(e).split())[:300]
        hint = "" if trust else "; if you trust the file, --trust-pickle loads it with full unpickling"
        raise ConvertError(f"{path}: cannot load as a PyTorch checkpoint ({type(e).__name__}: {msg}){hint}")
    return as_state_dict(obj, path)


def as_state_dict(obj, origin):
    torch = _torch()
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"{origin}: not a state dict (a {type(obj).__name__}"
                           f"{' that is empty' if isinstance(obj, dict) else ''}; expected a dict of name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{origin}: not a state dict: {len(bad)} entries are not name -> tensor, e.g. "
                           f"{bad[0]!r} ({type(obj[bad[0]]).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return OrderedDict(obj)


def few(names, n=3):
    names = sorted(names)
    s = ", ".join(repr(x) for x in names[:n])
    return s + (f" (+{len(names) - n} more)" if len(names) > n else "")


def write_safetensors(path, tensors, metadata, force):
    """Writes {name: tensor} as safetensors: sorted names, contiguous little-endian data, header
    padded to 8 bytes; to a temporary name, renamed when complete."""
    _torch()  # fills ST_DTYPES
    if sys.byteorder != "little":
        raise ConvertError("this converter writes raw little-endian bytes and needs a little-endian machine")
    if os.path.exists(path) and not force:
        raise ConvertError(f"{path}: exists; --force overwrites it")
    header, order, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ConvertError("tensor name '__metadata__' is reserved in safetensors")
        t = tensors[name]
        if t.dtype not in ST_DTYPES:
            raise ConvertError(f"tensor '{name}' has dtype {t.dtype}, which safetensors (and lorarecycle) cannot store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[t.dtype][0], "shape": list(t.shape), "data_offsets": [off, off + n]}
        order.append(name)
        off += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name in order:
                t = tensors[name].detach().cpu().contiguous()
                view = ST_DTYPES[t.dtype][1]
                if view is not None:
                    t = t.view(view)
                if t.numel():
                    f.write(t.numpy().reshape(-1).data)  # no copy
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise ConvertError(f"{path}: cannot write ({e.strerror or e})")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return off


def dtype_summary(tensors):
    count = {}
    for t in tensors.values():
        k = ST_DTYPES[t.dtype][0]
        count[k] = count.get(k, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(count.items()))


# ---- hf-bin ---------------------------------------------------------------------------------

VISION = re.compile(r"^(vision_model\.|visual_projection\.weight$)")
TEXT = re.compile(r"^(text_model\.|text_projection\.weight$|logit_scale$)")


def hf_bin(a):
    src = a.dir
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: not a directory (hf-bin takes the HF model directory holding pytorch_model.bin)")
    out = a.out or src
    cfg = os.path.join(src, "config.json")
    if not os.path.isfile(cfg):
        raise ConvertError(f"{cfg}: missing (hf-bin takes an HF model directory: config.json beside pytorch_model.bin)")
    target = os.path.join(out, "model.safetensors")
    if os.path.exists(target) and not a.force:  # before the (slow) load
        raise ConvertError(f"{target}: exists; --force overwrites it")
    single, index = os.path.join(src, "pytorch_model.bin"), os.path.join(src, "pytorch_model.bin.index.json")
    if os.path.isfile(single):
        sd, origin = load_pickle(single, a.trust_pickle), single
    elif os.path.isfile(index):
        try:
            shards = sorted(set(json.load(open(index))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConvertError(f"{index}: not an HF shard index ({type(e).__name__}: {e})")
        sd, origin = OrderedDict(), index
        for s in shards:
            sd.update(load_pickle(os.path.join(src, s), a.trust_pickle))
    else:
        raise ConvertError(f"{single}: missing (nor a sharded pytorch_model.bin.index.json) in {src}")
    # HF's full CLIPModel (text + vision), CLIPVisionModel(WithProjection): vision_model.* names.
    if all(k.startswith("clip.") for k in sd):
        sd = OrderedDict((k[len("clip."):], v) for k, v in sd.items())
    unexpected = [k for k in sd if not VISION.match(k) and not TEXT.match(k)]
    if unexpected:
        raise ConvertError(f"{origin}: {len(unexpected)} unexpected keys for an HF CLIP checkpoint (vision_model.*, "
                           f"visual_projection.weight, text_model.*, text_projection.weight, logit_scale): "
                           f"{few(unexpected)}")
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise ConvertError(f"{origin}: no vision tower (vision_model.embeddings.patch_embedding.weight missing)")
    dropped = 0
    if a.vision_only:
        dropped = sum(1 for k in sd if TEXT.match(k))
        sd = OrderedDict((k, v) for k, v in sd.items() if VISION.match(k))
    nbytes = write_safetensors(target, sd, {"format": "pt", "producer": "lorarecycle data_tools/convert_weights.py hf-bin",
                                            "source": os.path.basename(origin)}, a.force)
    copied = []
    if os.path.abspath(out) != os.path.abspath(src):
        for name in ("config.json", "preprocessor_config.json"):
            s, d = os.path.join(src, name), os.path.join(out, name)
            if os.path.isfile(s) and (a.force or not os.path.exists(d)):
                shutil.copyfile(s, d)
                copied.append(name)
    n_text = sum(1 for k in sd if TEXT.match(k))
    print(f"hf-bin: wrote {target}: {len(sd)} tensors ({len(sd) - n_text} vision, {n_text} text"
          f"{f', {dropped} text dropped' if dropped else ''}; {dtype_summary(sd)}), {nbytes / 2**20:.1f} MiB"
          f"{'; copied ' + ', '.join(copied) if copied else ''}")


# ---- torchvision-resnet50 ---------------------------------------------------------------------

def resnet_expected(sd, origin):
    """The names and shapes src/model/resnet.cpp expects, with the architecture read off the names
    as it does (stem width and kernel, Bottleneck or BasicBlock, blocks per stage, classes)."""
    def get(n):
        if n not in sd:
            raise ConvertError(f"{origin}: missing tensor '{n}' (not a torchvision ResNet state dict?)")
        return sd[n]
    conv1 = get("conv1.weight")
    if conv1.dim() != 4:
        raise ConvertError(f"{origin}: conv1.weight must be 4-D, has shape {list(conv1.shape)}")
    width, k = conv1.shape[0], conv1.shape[2]
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = []
    for i in range(4):
        n = 0
        while f"layer{i + 1}.{n}.conv1.weight" in sd:
            n += 1
        if n == 0:
            raise ConvertError(f"{origin}: stage layer{i + 1} is empty (not a torchvision ResNet state dict?)")
        layers.append(n)
    classes = get("fc.weight").shape[0]
    s = {}

    def bn(n, ch):
        for f in ("weight", "bias", "running_mean", "running_var"):
            s[f"{n}.{f}"] = [ch]
        s[f"{n}.num_batches_tracked"] = []

    s["conv1.weight"] = [width, 3, k, k]
    bn("bn1", width)
    exp = 4 if bottleneck else 1
    inp = width
    for i in range(4):
        planes = width << i
        for j in range(layers[i]):
            b = f"layer{i + 1}.{j}."
            stride = 2 if (i > 0 and j == 0) else 1
            if bottleneck:
                s[b + "conv1.weight"] = [planes, inp, 1, 1]
                s[b + "conv2.weight"] = [planes, planes, 3, 3]
                s[b + "conv3.weight"] = [planes * 4, planes, 1, 1]
                bn(b + "bn1", planes), bn(b + "bn2", planes), bn(b + "bn3", planes * 4)
            else:
                s[b + "conv1.weight"] = [planes, inp, 3, 3]
                s[b + "conv2.weight"] = [planes, planes, 3, 3]
                bn(b + "bn1", planes), bn(b + "bn2", planes)
            if j == 0 and (stride != 1 or inp != planes * exp):
                s[b + "downsample.0.weight"] = [planes * exp, inp, 1, 1]
                bn(b + "downsample.1", planes * exp)
            inp = planes * exp
    s["fc.weight"] = [classes, inp]
    s["fc.bias"] = [classes]
    arch = f"{'Bottleneck' if bottleneck else 'BasicBlock'} {layers}, width {width}, {k}x{k} stem, {classes} classes"
    return s, arch


def torchvision_resnet(a):
    target = os.path.join(a.out_dir, "model.safetensors")
    if os.path.exists(target) and not a.force:
        raise ConvertError(f"{target}: exists; --force overwrites it")
    if os.path.exists(a.out_dir) and not os.path.isdir(a.out_dir):
        raise ConvertError(f"{a.out_dir}: exists and is not a directory")
    sd = load_pickle(a.file, a.trust_pickle)
    expected, arch = resnet_expected(sd, a.file)
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise ConvertError(f"{a.file}: {len(unexpected)} unexpected keys for a torchvision ResNet ({arch}): "
                           f"{few(unexpected)}")
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConvertError(f"{a.file}: {len(missing)} tensors missing for a torchvision ResNet ({arch}): {few(missing)}")
    wrong = [f"'{k}' {list(sd[k].shape)} (expected {v})" for k, v in expected.items() if k in sd and list(sd[k].shape) != v]
    if wrong:
        raise ConvertError(f"{a.file}: {len(wrong)} tensors of the wrong shape for a torchvision ResNet ({arch}): "
                           f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    for k, v in sd.items():
        if not k.endswith("num_batches_tracked") and not v.is_floating_point():
            raise ConvertError(f"{a.file}: tensor '{k}' has non-float dtype {v.dtype}")
    nbytes = write_safetensors(target, sd, {"format": "pt", "producer": "lorarecycle data_tools/convert_weights.py "
                                            "torchvision-resnet50", "architecture": "torchvision ResNet",
                                            "source": os.path.basename(a.file)}, a.force)
    print(f"torchvision-resnet50: wrote {target}: {len(sd)} tensors ({arch}; {dtype_summary(sd)}), "
          f"{nbytes / 2**20:.1f} MiB; use it as: lorarecycle invert --prior {a.out_dir} ...")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="convert_weights.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="{hf-bin,torchvision-resnet50}")
    sub.required = True
    h = sub.add_parser("hf-bin", help="HF CLIP directory with pytorch_model.bin -> model.safetensors",
                       description="HF CLIP model directory with pytorch_model.bin (or a sharded index) -> "
                                   "model.safetensors read by lorarecycle --model DIR.")
    h.add_argument("dir", help="HF model directory (config.json, preprocessor_config.json, pytorch_model.bin)")
    h.add_argument("--out", help="write DIR2/model.safetensors (config.json and preprocessor_config.json copied) "
                                 "instead of DIR/model.safetensors")
    h.add_argument("--vision-only", action="store_true",
                   help="drop the text tower (text_model.*, text_projection.weight, logit_scale); lorarecycle ignores it anyway")
    h.add_argument("--force", action="store_true", help="overwrite an existing model.safetensors")
    h.add_argument("--trust-pickle", action="store_true", help="full unpickling (code in the file runs): trusted files only")
    r = sub.add_parser("torchvision-resnet50", help="torchvision ResNet .pth -> OUT_DIR/model.safetensors (BN prior)",
                       description="torchvision ResNet state dict (.pth) -> OUT_DIR/model.safetensors, the BN prior "
                                   "of lorarecycle invert --prior OUT_DIR. Any torchvision ResNet depth works.")
    r.add_argument("file", help="torchvision state dict, e.g. resnet50-0676ba61.pth")
    r.add_argument("out_dir", help="output directory (created)")
    r.add_argument("--force", action="store_true", help="overwrite an existing model.safetensors")
    r.add_argument("--trust-pickle", action="store_true", help="full unpickling (code in the file runs): trusted files only")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "hf-bin":
            hf_bin(a)
        else:
            torchvision_resnet(a)
    except ConvertError as e:
        print(f"convert_weights.py {a.cmd}: error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:  # permissions, a full disk, ...: one line as well
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"convert_weights.py {a.cmd}: error: {where}{getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
