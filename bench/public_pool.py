#!/usr/bin/python3
"""Copy a pool directory with every class's images replaced by public images of another class.

    /usr/bin/python3 bench/public_pool.py SRC_POOL PUBLIC_H5 DST_POOL [SEED]

SRC_POOL is a finished pool (index.json + lora_<k>.h5), e.g. `invert --real-images`'s. Each of its
real classes is mapped to a distinct class of PUBLIC_H5 (an image set such as data/demo/base.h5, the
VFM's pre-training glyphs: other scripts, none of the zoo's classes), drawn at random with SEED
(default 0), and every image of that class, in every LoRA file, is replaced by an image of the
mapped public class: distinct images while the public class has them, then again in a new order.
Everything else is kept (labels, /global_class, teacher logits, patch scores, keep masks), so an
episode drawn from DST_POOL is the episode SRC_POOL would give, with the public class's glyphs in
place of the zoo class's. Used by bench/science.sh ("public") to ask whether what real images of
the zoo's classes teach the meta-LoRA is their domain or episodic training on real glyphs as such
(docs/science.md). The teacher logits of the source rows stay: under the paper's KL episodes they
act as soft labels of the episode's class slot.
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from pool_copies import drop_digest, start_copy  # bench/, the script's own directory


def public_rows(labels, classes, rng):
    """A shuffled row list per public class."""
    rows = {}
    for c in classes:
        r = np.flatnonzero(labels == c)
        rows[int(c)] = r[rng.permutation(len(r))]
    return rows


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.strip())
    src, public, dst = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) == 5 else 0
    tmp, files = start_copy(src, dst, "public_pool")
    with h5py.File(public, "r") as f:
        images = f["images"][:]
        labels = f["labels"][:]
    zoo_classes = sorted(c["class"] for c in json.loads((tmp / "index.json").read_text())["classes"])
    pub_classes = np.unique(labels)
    if len(pub_classes) < len(zoo_classes):
        sys.exit(f"public_pool: {public} has {len(pub_classes)} classes, the pool {len(zoo_classes)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pub_classes, size=len(zoo_classes), replace=False)
    mapping = {z: int(p) for z, p in zip(zoo_classes, chosen)}
    rows = public_rows(labels, chosen, rng)
    used = {p: 0 for p in mapping.values()}
    for path in files:
        with h5py.File(path, "r+") as f:
            if f["images"].shape[1:] != images.shape[1:]:
                sys.exit(f"public_pool: {path.name} images {f['images'].shape[1:]} vs {public} {images.shape[1:]}")
            out = f["images"][:]
            for i, z in enumerate(f["global_class"][:]):
                p = mapping[int(z)]
                r = rows[p]
                out[i] = images[r[used[p] % len(r)]]
                used[p] += 1
            f["images"][...] = out
            drop_digest(f)
            f.attrs["public_images"] = f"{public} (seed {seed})"
    (tmp / "public_classes.json").write_text(json.dumps({str(z): p for z, p in mapping.items()}, indent=1) + "\n")
    tmp.rename(dst)
    most = max(used.values())
    print(f"public_pool: {dst}: {len(files)} LoRA files, {len(mapping)} classes of {src} mapped to classes of "
          f"{public}; up to {most} images per class (the public classes hold {min(len(r) for r in rows.values())}+)")


if __name__ == "__main__":
    main()
