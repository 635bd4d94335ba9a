#!/usr/bin/python3
"""Public glyphs composed in pairs, the way Han characters are built from components.

  /usr/bin/python3 bench/composite_glyphs.py BASE.h5 OUT.h5 [--count N] [--seed S]

Each output image joins images of BASE (the VFM's pre-training glyphs: Latin, Greek, Cyrillic,
symbols), drawn at random, in one of three layouts, a third of the images each: two side by side,
two one above the other (the first taking a share of the side drawn in [0.4, 0.6]), or one beside
two stacked ones. Each part is its glyph's ink box scaled (PIL, bilinear; aspect kept, enlarged at
most 1.5 times) to fit its slot and centred there, inside a white margin of 2 px, a pixel taking
the darker of what covers it. Nothing of the benchmark's Han glyphs is used: it is a prior that a
researcher who knows how the script is written could use without data, as the stroke drawings are.
OUT holds /images (uint8 [N, 32, 32, 3], BASE's size) and /labels (0: one placeholder class, which
`invert --retrieve` and `embed` ignore). Used by bench/science.sh "composite".
"""
import argparse
import os

import h5py
import numpy as np
from PIL import Image


MARGIN = 2  # white pixels kept around the composed image, as the benchmark's glyphs keep
MAX_UP = 1.5  # the most a part is enlarged


def ink_box(img):
    """img (uint8 [S, S, C]) cut to the box of its ink (pixels darker than 200); whole if none."""
    ys, xs = np.nonzero(img.min(-1) < 200)
    if len(ys) == 0:
        return img
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def paste(out, img, y0, y1, x0, x1):
    """img's ink box scaled to fit out[y0:y1, x0:x1] (aspect kept, at most MAX_UP times its size, so
    that strokes stay thin), centred there, a pixel taking the darker of the two."""
    box = ink_box(img)
    h, w = box.shape[:2]
    f = min((y1 - y0) / h, (x1 - x0) / w, MAX_UP)
    nh, nw = max(1, min(y1 - y0, int(round(h * f)))), max(1, min(x1 - x0, int(round(w * f))))
    part = np.asarray(Image.fromarray(box).resize((nw, nh), Image.BILINEAR)).reshape(nh, nw, -1)
    ty, tx = y0 + (y1 - y0 - nh) // 2, x0 + (x1 - x0 - nw) // 2
    out[ty:ty + nh, tx:tx + nw] = np.minimum(out[ty:ty + nh, tx:tx + nw], part)


def compose(parts, layout, split, split2):
    """parts (three uint8 [S, S, C] images) composed by layout: 0 side by side, 1 one above the
    other (two parts, the first taking SPLIT of the side), 2 a left part beside two stacked ones
    (SPLIT of the width, SPLIT2 of the height on the right)."""
    s = parts[0].shape[0]
    lo, hi = MARGIN, s - MARGIN
    cut = lo + int(round((hi - lo) * split))
    out = np.full_like(parts[0], 255)
    if layout == 0:
        paste(out, parts[0], lo, hi, lo, cut)
        paste(out, parts[1], lo, hi, cut, hi)
    elif layout == 1:
        paste(out, parts[0], lo, cut, lo, hi)
        paste(out, parts[1], cut, hi, lo, hi)
    else:
        cut2 = lo + int(round((hi - lo) * split2))
        paste(out, parts[0], lo, hi, lo, cut)
        paste(out, parts[1], lo, cut2, cut, hi)
        paste(out, parts[2], cut2, hi, cut, hi)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=24048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with h5py.File(a.base, "r") as f:
        images = f["images"][:]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise SystemExit(f"composite_glyphs: {a.base}: /images must be uint8 [N, S, S, C]")
    rng = np.random.default_rng(a.seed)
    picks = rng.integers(0, len(images), size=(a.count, 3))
    layout = rng.integers(0, 3, a.count)
    split, split2 = rng.uniform(0.4, 0.6, a.count), rng.uniform(0.4, 0.6, a.count)
    out = np.stack([compose(images[p], k, s, t) for p, k, s, t in zip(picks, layout, split, split2)])
    with h5py.File(a.out + ".tmp", "w") as f:
        f["images"] = out
        f["labels"] = np.zeros(a.count, np.int64)
    os.replace(a.out + ".tmp", a.out)
    print(f"composite_glyphs: {a.count} images composed of {len(images)} glyphs "
          f"(layouts: {np.bincount(layout, minlength=3).tolist()}) -> {a.out}")


if __name__ == "__main__":
    main()
