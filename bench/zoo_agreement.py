#!/usr/bin/python3
"""Where a zoo's LoRAs disagree: on which images the zoo's ensemble geometry differs from its average's.

  /usr/bin/python3 bench/zoo_agreement.py NAME=DIR ... [--runs RUN,RUN,...]

Each DIR holds features written by `lorarecycle embed` of one image set: avg.h5 (lora-avg) and
zoo_*.h5 (one per zoo LoRA). For each set, averaged over seeded subsets of 40 images, the
distance gap (bench/zoo_ensemble.py, train::distance_gap) to the zoo's geometry (the mean over the
LoRAs of the pairwise squared distances) of: lora-avg's features, the mean of the zoo's features,
and one zoo LoRA's (the mean over the LoRAs). Small values: the zoo's LoRAs agree on those images,
and their ensemble differs little from their average there. With --runs, also each RUN's features
(DIR/RUN.h5, e.g. a meta-LoRA's; "-" where a set has none): how far a run that distilled the zoo's
geometry on some of these images lies from it on them and on the others. Used by bench/science.sh
"zoodist" and "glyphs".
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_ensemble import distance_gap, load, load_zoo, subsets  # noqa: E402


def main():
    args, runs = sys.argv[1:], []
    if "--runs" in args:
        i = args.index("--runs")
        if i + 1 >= len(args):
            raise SystemExit("zoo_agreement: --runs needs a comma-separated list of names")
        runs = args[i + 1].split(",")
        args = args[:i] + args[i + 2:]
    if not args or any("=" not in a for a in args):
        raise SystemExit(__doc__)
    print(f"  {'images':<34}{'lora-avg':<12}{'zoo mean':<12}{'one zoo LoRA':<15}"
          + "".join(f"{r:<12}" for r in runs) + "(distance gap to the zoo's geometry)")
    for arg in args:
        name, d = arg.split("=", 1)
        avg = load(d, "avg")[0]
        zoo = np.stack(load_zoo(d, "zoo_agreement")[1], 1)
        rows_40 = subsets(len(avg))
        single = np.mean([distance_gap(zoo[:, i], zoo, rows_40[:50]) for i in range(zoo.shape[1])])
        own = [f"{distance_gap(load(d, r)[0], zoo, rows_40):.4f}" if os.path.exists(f"{d}/{r}.h5") else "-"
               for r in runs]
        print(f"  {name:<34}{distance_gap(avg, zoo, rows_40):<12.4f}{distance_gap(zoo.mean(1), zoo, rows_40):<12.4f}"
              f"{single:<15.4f}" + "".join(f"{g:<12}" for g in own))


if __name__ == "__main__":
    main()
