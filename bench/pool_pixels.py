#!/usr/bin/python3
"""How the images of pools and of real image sets look as pixels: ink, paper and margin.

    /usr/bin/python3 bench/pool_pixels.py PATH [PATH ...]

PATH is a pool directory (its lora_*.h5 files) or an HDF5 image set (its /images). For each, over
the grey value (the channel mean) of every image, it prints the mean pixel (255 = white), the share
of paper pixels (>= 230), of ink pixels (<= 60), and the share of the outer 3 pixels of each side
that hold ink (< 128); the embedded benchmark's glyphs have none there. A set's first 4,096 images
are read. Used by bench/science.sh (part "strokes") beside bench/surrogate_check.sh, which says how
the same images look to the VFM.
"""
import sys
from pathlib import Path

import h5py
import numpy as np

MARGIN = 3
SET_ROWS = 4096


def grey(path):
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("lora_*.h5"))
        if not files:
            sys.exit(f"pool_pixels: {p} holds no lora_*.h5 (not a pool directory)")
        images = []
        for f in files:
            with h5py.File(f, "r") as h:
                images.append(h["images"][:])
        return np.concatenate(images).astype(np.float64).mean(-1)
    if not p.is_file():
        sys.exit(f"pool_pixels: {p} is neither a pool directory nor a file")
    with h5py.File(p, "r") as f:
        if "images" not in f:
            sys.exit(f"pool_pixels: {p} has no /images")
        return f["images"][:SET_ROWS].astype(np.float64).mean(-1)


def row(g):
    m = MARGIN
    edge = np.concatenate([g[:, :m].ravel(), g[:, -m:].ravel(), g[:, m:-m, :m].ravel(), g[:, m:-m, -m:].ravel()])
    return (f"{len(g):>7} {g.mean():>6.0f} {100 * np.mean(g >= 230):>6.1f} {100 * np.mean(g <= 60):>6.1f} "
            f"{100 * np.mean(edge < 128):>9.1f}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip())
    rows = [(a, row(grey(a))) for a in sys.argv[1:]]  # every path read before anything is printed
    width = max(len(a) for a, _ in rows)
    print(f"{'images':<{width}} {'count':>7} {'mean':>6} {'paper%':>6} {'ink%':>6} {'margin%':>9}")
    for a, r in rows:
        print(f"{a:<{width}} {r}")


if __name__ == "__main__":
    main()
