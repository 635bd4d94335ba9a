#!/usr/bin/python3
"""A copy of a pool whose every image is its own under a random affine map.

    /usr/bin/python3 bench/affine_pool.py SRC_POOL DST_POOL [STRENGTH] [SEED]

Each row of every lora_<k>.h5 of SRC_POOL (e.g. the anchor's retrieved glyphs, where a glyph that
several LoRAs chose sits in several rows) is mapped by its own random affine map, drawn with SEED
(default 0) in the ranges of `metatrain --affine` at STRENGTH (default 1): rotation within +-10
degrees, scale 0.9-1.1, shear +-0.1 and shift up to 1/16 of the side, all times STRENGTH, about the
centre, with white brought in from outside (PIL, bilinear). Everything else of the pool is kept.
Under `metatrain --distill-pool` the zoo's targets are computed per distinct image, so every view
gets its own: the zoo's features distilled on views of the glyphs no run has seen. Used by
bench/science.sh "augview" (docs/science.md).
"""
import math
import sys
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pool_copies import drop_digest, start_copy  # bench/, the script's own directory


def random_map(rng, strength, side):
    """PIL's inverse affine coefficients (output -> input) of a random map about the centre."""
    rot = math.radians(rng.uniform(-10, 10) * strength)
    scale = 1 + rng.uniform(-0.1, 0.1) * strength
    shear = rng.uniform(-0.1, 0.1) * strength
    tx, ty = rng.uniform(-1, 1, 2) * side / 16 * strength
    c, s = math.cos(rot), math.sin(rot)
    fwd = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) * scale  # input -> output
    inv = np.linalg.inv(fwd)
    centre = np.array([side / 2, side / 2])
    off = centre - inv @ (centre + np.array([tx, ty]))
    return (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__.strip())
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    strength = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if not 0 < strength <= 4:
        sys.exit("affine_pool: STRENGTH must be in (0, 4]")
    rng = np.random.default_rng(seed)
    tmp, files = start_copy(src, dst, "affine_pool")
    rows = 0
    for path in files:
        with h5py.File(path, "r+") as f:
            images = f["images"][:]
            side = images.shape[1]
            for i, img in enumerate(images):
                pil = Image.fromarray(img)
                images[i] = np.asarray(pil.transform(pil.size, Image.AFFINE, random_map(rng, strength, side),
                                                     Image.BILINEAR, fillcolor=(255,) * img.shape[-1]))
            f["images"][...] = images
            drop_digest(f)
            f.attrs["affine_views"] = f"strength {strength}, seed {seed}"
            rows += len(images)
    tmp.rename(dst)
    print(f"affine_pool: {dst}: {rows} images of {src}, each under its own random affine map (strength {strength})")


if __name__ == "__main__":
    main()
