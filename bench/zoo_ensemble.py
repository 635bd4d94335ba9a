#!/usr/bin/python3
"""What a zoo holds beyond its average: its feature ensembles against lora-avg, on the same episodes.

  /usr/bin/python3 bench/zoo_ensemble.py DIR [NAME ...] [--curve] [--set NAME]

DIR holds features written by `lorarecycle embed` of the validation images: bare.h5 (the bare VFM),
avg.h5 (lora-avg: the zoo's mean delta at full rank), zoo_*.h5 (one per zoo LoRA) and NAME.h5 for
each NAME given (e.g. meta-LoRAs). 600 seeded 5-way 1-shot 15-query episodes (numpy, the same for
every row; not eval's episodes), nearest prototype by squared distance. Each row: mean +- 95% CI,
and its paired difference from lora-avg on the same episodes (mean +- 95% CI of the per-episode
differences, population SD as eval's fewshot::summarize). The zoo's ensembles: the mean of its
LoRAs' features, the same of L2-normalised features, and the features concatenated (squared
distances summed over the LoRAs); two capacity checks fitted on these images (the concatenation's
top 32 principal components, and lora-avg's features mapped linearly onto it). Last column: how far
each row's pairwise squared distances lie from the zoo's (their mean over the LoRAs), as
metatrain --distill-targets zoo measures it (train::distance_gap: the mean over pairs of
((d - d_zoo) / mean d_zoo)^2), averaged over 200 seeded subsets of 40 images, for the rows on the
model's own scale; then the same for every row after scaling its features by the one factor that
fits their distances best (scaled_gap: geometry only, which prototypes see). --curve adds the
zoo's partial ensembles (the features of k LoRAs drawn at random concatenated, three seeded draws
per k): how the accuracy over lora-avg grows as the distance gap shrinks, i.e. how close to the
zoo's geometry a student must come to keep a given share of the ensemble's gain. --set names the
images in the printout when they are not the validation images (e.g. test). Used by
bench/science.sh "ensemble", "ceiling", "zoodist", "glyphs" and "testceiling".
"""
import glob
import os
import sys

import h5py
import numpy as np


def load(d, name):
    with h5py.File(f"{d}/{name}.h5", "r") as f:
        return f["features"][:].astype(np.float64), f["labels"][:]


def load_zoo(d, tool):
    """The zoo LoRAs' features in d (zoo_*.h5, by name): (names, [features, ...]); tool names the
    script in the error when there are none."""
    names = sorted(os.path.basename(p)[: -len(".h5")] for p in glob.glob(f"{d}/zoo_*.h5"))
    if not names:
        raise SystemExit(f"{tool}: no zoo_*.h5 in {d}")
    return names, [load(d, n)[0] for n in names]


def episodes(y, n=600, way=5, shot=1, query=15):
    rng = np.random.default_rng(0)
    by = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    eps = []
    for _ in range(n):
        idx = [rng.choice(by[c], shot + query, replace=False) for c in rng.choice(list(by), way, replace=False)]
        eps.append((np.concatenate([i[:shot] for i in idx]), np.concatenate([i[shot:] for i in idx])))
    return eps, way, shot, query


def episode_acc(F, eps, way, shot, query):
    truth = np.repeat(np.arange(way), query)
    out = []
    for s, q in eps:
        protos = F[s].reshape(way, shot, -1).mean(1)
        d = ((F[q][:, None] - protos[None]) ** 2).sum(-1)
        out.append(100 * (d.argmin(1) == truth).mean())
    return np.array(out)


def sq_dist(x):
    n2 = (x ** 2).sum(-1)
    return np.maximum(n2[..., :, None] + n2[..., None, :] - 2 * x @ np.swapaxes(x, -1, -2), 0)


def distance_gap(F, zoo, subsets):
    """Mean over the subsets of distance_gap(F[idx], zoo[idx]); zoo is [n, L, D]."""
    out = []
    for idx in subsets:
        n, off = len(idx), 1 - np.eye(len(idx))
        dt = sq_dist(np.swapaxes(zoo[idx], 0, 1)).mean(0)
        m = (dt * off).sum() / (n * (n - 1))
        out.append((((sq_dist(F[idx]) - dt) * off) ** 2).sum() / (n * (n - 1)) / m ** 2)
    return float(np.mean(out))


def scaled_gap(F, zoo, subsets):
    """distance_gap of F scaled by the one factor (over all the subsets) that brings its squared
    distances closest to the zoo's in least squares: the gap in geometry alone, which prototypes see,
    not in scale, which they do not."""
    num = den = 0.0
    for idx in subsets:
        off = 1 - np.eye(len(idx))
        d, dt = sq_dist(F[idx]) * off, sq_dist(np.swapaxes(zoo[idx], 0, 1)).mean(0) * off
        num, den = num + (d * dt).sum(), den + (d * d).sum()
    return distance_gap(F * np.sqrt(num / den), zoo, subsets)


def subsets(n, count=200, size=40):
    """The seeded row subsets over which the distance gap is averaged."""
    rng = np.random.default_rng(1)
    return [rng.choice(n, size, replace=False) for _ in range(count)]


def ci(a):
    return 1.96 * a.std() / np.sqrt(len(a))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    args = sys.argv[1:]
    curve = "--curve" in args
    images = "validation"
    if "--set" in args:
        i = args.index("--set")
        if i + 1 >= len(args):
            raise SystemExit("zoo_ensemble: --set needs a name")
        images = args[i + 1]
        args = args[:i] + args[i + 2:]
    d, extra = args[0], [a for a in args[1:] if a != "--curve"]
    bare, y = load(d, "bare")
    avg, y_avg = load(d, "avg")
    zoo = load_zoo(d, "zoo_ensemble")[1]
    if not np.array_equal(y, y_avg):
        raise SystemExit("zoo_ensemble: bare.h5 and avg.h5 hold other images")
    eps = episodes(y)
    acc = lambda F: episode_acc(F, *eps)  # noqa: E731
    base = acc(avg)
    unit = lambda F: F / np.linalg.norm(F, axis=1, keepdims=True)  # noqa: E731
    rows = [("bare VFM", bare)] + [(n, load(d, n)[0]) for n in extra]
    concat = np.concatenate(zoo, 1)
    centred = concat - concat.mean(0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:32]
    to_concat = np.linalg.lstsq(avg - avg.mean(0), centred, rcond=None)[0]
    rows += [("lora-avg", avg), ("mean of the zoo's features", np.mean(zoo, 0)),
             ("mean of L2-normalised features", np.mean([unit(z) for z in zoo], 0)),
             ("zoo's features concatenated", concat),
             # capacity checks, fitted on these very images (not a method): does a 32-d feature hold
             # the concatenation's gain, and does a linear map of lora-avg's features reach it?
             ("concatenated, top 32 components*", centred @ top.T),
             ("lora-avg mapped onto it linearly*", (avg - avg.mean(0)) @ to_concat)]
    print(f"{len(zoo)} zoo LoRAs, {len(y)} {images} images, {len(eps[0])} episodes (5-way 1-shot 15-query):")
    stack = np.stack(zoo, 1)
    rows_40 = subsets(len(y))
    print(f"  {'features':<34}{'accuracy (%)':<18}{'paired - lora-avg':<20}{'distance gap to the zoo':<25}"
          "the same, scale fitted")
    for name, F in rows:
        a = base if name == "lora-avg" else acc(F)
        diff = "" if name == "lora-avg" else f"{(a - base).mean():+.2f} +- {ci(a - base):.2f}"
        # the gap compares scales: only for features on the model's own scale
        own_scale = name in ("bare VFM", "lora-avg", "mean of the zoo's features") or name in extra
        gap = f"{distance_gap(F, stack, rows_40):<25.4f}" if own_scale else " " * 25
        gap += f"{scaled_gap(F, stack, rows_40):.4f}"
        print(f"  {name:<34}{a.mean():.2f} +- {ci(a):.2f}    {diff:<20}{gap}".rstrip())
    print("  one zoo LoRA each:", " ".join(f"{acc(z).mean():.2f}" for z in zoo))
    print(f"  * fitted on these {images} images: checks of capacity, not methods")
    if curve:
        partial_ensembles(zoo, stack, acc, base, rows_40)


def partial_ensembles(zoo, stack, acc, base, rows_40):
    """The concatenated features of k zoo LoRAs drawn at random (3 seeded draws per k): paired
    accuracy over lora-avg and distance gap to the whole zoo's geometry, one pair per draw."""
    rng = np.random.default_rng(2)
    print("  the zoo's partial ensembles (k LoRAs' features concatenated): paired - lora-avg / distance gap")
    for k in (1, 2, 3, 5, 10, 15):
        cells = []
        for _ in range(3):
            pick = rng.choice(len(zoo), k, replace=False)
            F = np.concatenate([zoo[i] for i in pick], 1) / np.sqrt(k)
            cells.append(f"{(acc(F) - base).mean():+.2f} / {distance_gap(F, stack, rows_40):.4f}")
        print(f"    k = {k:<4}" + "    ".join(cells))


if __name__ == "__main__":
    main()
