#!/usr/bin/python3
"""Copy a pool directory, keeping only DISTINCT images of each LoRA's class and copies of them.

    /usr/bin/python3 bench/pool_copies.py SRC_POOL DST_POOL DISTINCT

In DST_POOL every LoRA file holds as many rows as in SRC_POOL, but the rows of each (LoRA, class)
are copies of the first DISTINCT of them (with their teacher logits, patch scores and keep mask),
so a class holds DISTINCT distinct images per covering LoRA. Used by bench/science.sh on a pool of
real images to ask how much of the surrogates' failure is their lack of variety: an inverted
LoRA's surrogates of one class are near-copies (docs/science.md).
"""
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

ROW_SETS = ("images", "teacher_logits", "patch_scores", "keep_mask")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip())
    src, dst, distinct = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    if distinct < 1:
        sys.exit("pool_copies: DISTINCT must be >= 1")
    if not (src / "index.json").is_file():
        sys.exit(f"pool_copies: {src} is not a finished pool (no index.json)")
    if dst.exists():
        sys.exit(f"pool_copies: {dst} exists; remove it first")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    files = sorted(tmp.glob("lora_*.h5"))
    for path in files:
        with h5py.File(path, "r+") as f:
            labels = f["labels"][:]
            for name in ROW_SETS:
                if name not in f:
                    continue
                data = f[name][:]
                for c in np.unique(labels):
                    rows = np.flatnonzero(labels == c)
                    keep = rows[:distinct]
                    data[rows] = data[keep[np.arange(len(rows)) % len(keep)]]
                f[name][...] = data
            if "data_digest" in f.attrs:  # edited on purpose: the integrity digest no longer applies
                del f.attrs["data_digest"]
    tmp.rename(dst)
    print(f"pool_copies: {dst}: {len(files)} LoRA files, {distinct} distinct image(s) per LoRA and class")


if __name__ == "__main__":
    main()
