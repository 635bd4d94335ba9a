#!/usr/bin/python3
"""Where a zoo's LoRAs disagree: on which images the zoo's ensemble geometry differs from its average's.

  /usr/bin/python3 bench/zoo_agreement.py NAME=DIR ...

Each DIR holds features written by `lorarecycle embed` of one image set: avg.h5 (lora-avg) and
zoo_*.h5 (one per zoo LoRA). For each set, averaged over seeded subsets of 40 images, the
distance gap (bench/zoo_ensemble.py, train::distance_gap) to the zoo's geometry (the mean over the
LoRAs of the pairwise squared distances) of: lora-avg's features, the mean of the zoo's features,
and one zoo LoRA's (the mean over the LoRAs). Small values: the zoo's LoRAs agree on those images,
and their ensemble differs little from their average there. Used by bench/science.sh "zoodist".
"""
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_ensemble import distance_gap, load, subsets  # noqa: E402


def main():
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        raise SystemExit(__doc__)
    print(f"  {'images':<34}{'lora-avg':<12}{'zoo mean':<12}one zoo LoRA   (distance gap to the zoo's geometry)")
    for arg in sys.argv[1:]:
        name, d = arg.split("=", 1)
        avg = load(d, "avg")[0]
        names = sorted(os.path.basename(p)[: -len(".h5")] for p in glob.glob(f"{d}/zoo_*.h5"))
        if not names:
            raise SystemExit(f"zoo_agreement: no zoo_*.h5 in {d}")
        zoo = np.stack([load(d, n)[0] for n in names], 1)
        rows_40 = subsets(len(avg))
        single = np.mean([distance_gap(zoo[:, i], zoo, rows_40[:50]) for i in range(zoo.shape[1])])
        print(f"  {name:<34}{distance_gap(avg, zoo, rows_40):<12.4f}{distance_gap(zoo.mean(1), zoo, rows_40):<12.4f}"
              f"{single:.4f}")


if __name__ == "__main__":
    main()
