#!/usr/bin/python3
"""Copy a pool directory, keeping only DISTINCT images of each LoRA's class (or of each real class)
and copies of them.

    /usr/bin/python3 bench/pool_copies.py SRC_POOL DST_POOL DISTINCT [lora|class]

In DST_POOL every LoRA file holds as many rows as in SRC_POOL. With `lora` (the default) the rows of
each (LoRA, class) are copies of the first DISTINCT of them (with their teacher logits, patch scores
and keep mask), so a class holds DISTINCT distinct images per covering LoRA. With `class` every row
of a real class (/global_class), in every LoRA file, is a copy of one of the class's first DISTINCT
images in file order (images, patch scores and keep masks; each file keeps its own teacher logits),
so the class holds DISTINCT distinct images in all. Used by bench/science.sh on a pool of real images
to ask how much of the surrogates' failure is their lack of variety (an inverted LoRA's surrogates
of one class are near-copies) and what a surrogate pool is worth in real images (docs/science.md).
"""
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

ROW_SETS = ("images", "teacher_logits", "patch_scores", "keep_mask")
IMAGE_SETS = ("images", "patch_scores", "keep_mask")  # what belongs to the image, not to its LoRA


def per_lora(files, distinct):
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
            drop_digest(f)


def per_class(files, distinct):
    kept = {}  # real class -> {set name: [rows]}
    for path in files:  # the first DISTINCT images of each class, in file order
        with h5py.File(path, "r") as f:
            for i, c in enumerate(f["global_class"][:]):
                k = kept.setdefault(int(c), {name: [] for name in IMAGE_SETS if name in f})
                for name, rows in k.items():
                    if len(rows) < distinct:
                        rows.append(f[name][i])
    used = {c: 0 for c in kept}
    for path in files:
        with h5py.File(path, "r+") as f:
            data = {name: f[name][:] for name in IMAGE_SETS if name in f}
            for i, c in enumerate(f["global_class"][:]):
                k = kept[int(c)]
                for name, rows in k.items():
                    data[name][i] = rows[used[int(c)] % len(rows)]
                used[int(c)] += 1
            for name, d in data.items():
                f[name][...] = d
            drop_digest(f)
    return len(kept)


def drop_digest(f):
    """An edited pool file's integrity digest no longer applies (the pool reader checks it when present)."""
    if "data_digest" in f.attrs:
        del f.attrs["data_digest"]


def start_copy(src, dst, tool):
    """Copies the finished pool SRC to DST's temporary name (DST must not exist) without the source
    images' previews; returns that directory and its LoRA files. The caller edits the files and
    renames the directory to DST, so an interrupted edit is never taken for a finished pool."""
    if not (src / "index.json").is_file():
        sys.exit(f"{tool}: {src} is not a finished pool (no index.json)")
    if dst.exists():
        sys.exit(f"{tool}: {dst} exists; remove it first")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for png in tmp.glob("lora_*.png"):  # previews of the source images
        png.unlink()
    files = sorted(tmp.glob("lora_*.h5"))
    if not files:
        sys.exit(f"{tool}: {src} has no lora_<k>.h5 files")
    return tmp, files


def main():
    if len(sys.argv) not in (4, 5) or (len(sys.argv) == 5 and sys.argv[4] not in ("lora", "class")):
        sys.exit(__doc__.strip())
    src, dst, distinct = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) == 5 else "lora"
    if distinct < 1:
        sys.exit("pool_copies: DISTINCT must be >= 1")
    tmp, files = start_copy(src, dst, "pool_copies")
    if mode == "lora":
        per_lora(files, distinct)
        what = "per LoRA and class"
    else:
        what = f"per real class ({per_class(files, distinct)} classes)"
    tmp.rename(dst)
    print(f"pool_copies: {dst}: {len(files)} LoRA files, {distinct} distinct image(s) {what}")


if __name__ == "__main__":
    main()
