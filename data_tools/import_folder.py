#!/usr/bin/python3
"""Imports a user's labelled images (one folder per class, PNG/JPEG) into the benchmark's HDF5
format (/images uint8 [N,S,S,3], /labels int32, /class_names), so datasets such as CIFAR-FS,
mini-ImageNet or CUB can be used. Images are resized to SxS (shorter side to S, centre crop).
Classes are sorted by folder name; images by file name. Unreadable files stop the import with
their path (or are skipped with --skip-bad).

  /usr/bin/python3 data_tools/import_folder.py ROOT OUT.h5 [--size 32] [--split NAME] [--min-per-class 20]
"""
import argparse
import os
import sys

import h5py
import numpy as np
from PIL import Image

EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load(path, size):
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        l, t = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((l, t, l + size, t + size)), dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--split", default="custom", help="split name stored as an attribute")
    ap.add_argument("--min-per-class", type=int, default=1, help="refuse classes with fewer images")
    ap.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    a = ap.parse_args()
    classes = sorted(d for d in os.listdir(a.root) if os.path.isdir(os.path.join(a.root, d)))
    if not classes:
        sys.exit(f"import_folder: {a.root}: no class folders")
    images, labels = [], []
    for label, c in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(a.root, c)) if f.lower().endswith(EXTS))
        n = 0
        for f in files:
            p = os.path.join(a.root, c, f)
            try:
                images.append(load(p, a.size))
            except Exception as e:  # noqa: BLE001 - PIL raises many types
                if a.skip_bad:
                    print(f"import_folder: skipping {p}: {e}", file=sys.stderr)
                    continue
                sys.exit(f"import_folder: {p}: cannot read image ({e})")
            labels.append(label)
            n += 1
        if n < a.min_per_class:
            sys.exit(f"import_folder: class '{c}' has {n} images, fewer than --min-per-class {a.min_per_class}")
    tmp = a.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=np.stack(images), chunks=(min(256, len(images)), a.size, a.size, 3),
                         compression="gzip", compression_opts=4, track_times=False)
        f.create_dataset("labels", data=np.array(labels, dtype=np.int32), track_times=False)
        f.create_dataset("class_names", data=np.array(classes, dtype=h5py.string_dtype()), track_times=False)
        f.attrs["split"] = a.split
        f.attrs["source"] = os.path.abspath(a.root)
        f.attrs["image_size"] = a.size
    os.replace(tmp, a.out)
    print(f"import_folder: {len(classes)} classes, {len(labels)} images -> {a.out}")


if __name__ == "__main__":
    main()
