#!/usr/bin/python3
"""How hard a pool's episodes are for a model: leave-one-out prototype accuracy per LoRA.

  pool_hardness.py pack POOL_DIR OUT.h5
      all of a pool's surrogates in one HDF5 image set (/images, /labels = lora_id * N + label),
      for `lorarecycle embed`;
  pool_hardness.py score N FEATURES.h5 ...
      for each `embed` output of such a set: every surrogate classified among its LoRA's N classes by
      the mean features of the LoRA's other surrogates of each class (its own left out); the mean
      and the lowest accuracy over the LoRAs.
Used by bench/science.sh student (docs/science.md, "Surrogates that ask about the student's
mistakes").
"""
import glob
import os
import sys

import h5py
import numpy as np


def pack(src, dst):
    images, labels = [], []
    files = sorted(glob.glob(os.path.join(src, "lora_*.h5")))
    if not files:
        sys.exit(f"pool_hardness: no lora_*.h5 in {src}")
    for path in files:
        lora_id = int(os.path.basename(path)[len("lora_"):-len(".h5")])
        with h5py.File(path, "r") as f:
            n = f["teacher_logits"].shape[1]
            images.append(f["images"][:])
            labels.append(f["labels"][:].astype(np.int64) + n * lora_id)
    with h5py.File(dst, "w") as f:
        f["images"] = np.concatenate(images)
        f["labels"] = np.concatenate(labels).astype(np.int32)


def score(n, path):
    with h5py.File(path, "r") as f:
        feats, y = f["features"][:].astype(np.float64), f["labels"][:].astype(np.int64)
    accs = []
    for lora in np.unique(y // n):
        m = (y // n) == lora
        F, Y = feats[m], y[m] % n
        count = np.bincount(Y, minlength=n).astype(float)
        if count.min() < 2:
            sys.exit(f"pool_hardness: LoRA {lora} has a class with fewer than 2 surrogates")
        sums = np.zeros((n, F.shape[1]))
        np.add.at(sums, Y, F)
        d = ((F[:, None, :] - (sums / count[:, None])[None]) ** 2).sum(-1)
        own = (sums[Y] - F) / (count[Y] - 1)[:, None]
        d[np.arange(len(Y)), Y] = ((F - own) ** 2).sum(-1)
        accs.append((d.argmin(1) == Y).mean())
    print(f"{path}: leave-one-out prototype accuracy per LoRA: mean {100 * np.mean(accs):.1f} %, "
          f"min {100 * np.min(accs):.1f} % ({len(accs)} LoRAs)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "pack":
        pack(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "score":
        for p in sys.argv[3:]:
            score(int(sys.argv[2]), p)
    else:
        sys.exit(__doc__)
