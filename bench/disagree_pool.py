#!/usr/bin/python3
"""A copy of an anchor pool holding the public images on which the zoo's LoRAs disagree most.

    /usr/bin/python3 bench/disagree_pool.py SRC_POOL FEATURES PUBLIC_H5 DST_POOL N [random]

FEATURES holds `lorarecycle embed`'s features of every image of PUBLIC_H5 under each zoo LoRA
(zoo_*.h5, bench/science.sh's embed_val). An image's disagreement is the variance of its feature
across the LoRAs, each LoRA's features first centred over the images and scaled to a mean squared
norm of 1 (so that no LoRA's scale or offset counts): where it is large, the LoRAs place the image
differently, and their ensemble's geometry departs from their average's. The N images with the
largest disagreement (with `random`: N drawn at random, seed 0, the control) fill SRC_POOL's slots
in DST_POOL, in a seeded random order, each image in as many slots as the count allows (every file
of the pool, its labels and the rest of its rows kept: `metatrain --distill-pool` with the zoo's
targets reads the images only). Used by bench/science.sh "disagree" (docs/science.md).
"""
import sys
from pathlib import Path

import h5py
import numpy as np

from pool_copies import drop_digest, start_copy  # bench/, the script's own directory
from zoo_ensemble import load_zoo


def disagreement(zoo):
    """Per image, the variance across the LoRAs of its centred, scaled feature; zoo: [F_k, ...]."""
    z = []
    for f in zoo:
        c = f - f.mean(0)
        z.append(c / np.sqrt((c ** 2).sum(1).mean()))
    z = np.stack(z, 1)  # [n, L, D]
    return ((z - z.mean(1, keepdims=True)) ** 2).sum(-1).mean(1)


def main():
    if len(sys.argv) not in (6, 7) or (len(sys.argv) == 7 and sys.argv[6] != "random"):
        sys.exit(__doc__.strip())
    src, feats, public, dst, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
    at_random = len(sys.argv) == 7
    _, zoo = load_zoo(feats, "disagree_pool")
    with h5py.File(public, "r") as f:
        images = f["images"][:]
    if any(len(z) != len(images) for z in zoo):
        sys.exit(f"disagree_pool: {feats} holds features of {len(zoo[0])} images, {public} has {len(images)}")
    if not 0 < n <= len(images):
        sys.exit(f"disagree_pool: N must be in [1, {len(images)}]")
    score = disagreement(zoo)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(images), n, replace=False) if at_random else np.argsort(-score)[:n]
    order = chosen[rng.permutation(n)]
    tmp, files = start_copy(src, dst, "disagree_pool")
    slot = 0
    for path in files:
        with h5py.File(path, "r+") as f:
            if f["images"].shape[1:] != images.shape[1:]:
                sys.exit(f"disagree_pool: {path.name} images {f['images'].shape[1:]} vs {public} {images.shape[1:]}")
            m = f["images"].shape[0]
            f["images"][...] = images[order[(slot + np.arange(m)) % n]]
            slot += m
            drop_digest(f)
            f.attrs["public_images"] = f"{public}: {n} {'at random' if at_random else 'of most disagreement'}"
    tmp.rename(dst)
    print(f"disagree_pool: {dst}: {slot} slots of {n} images {'drawn at random' if at_random else 'of most disagreement'}"
          f" (disagreement {score[chosen].mean():.3f}; all images {score.mean():.3f}, top decile from "
          f"{np.quantile(score, 0.9):.3f})")


if __name__ == "__main__":
    main()
