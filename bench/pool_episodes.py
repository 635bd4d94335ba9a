#!/usr/bin/python3
"""How hard a pool's episodes over real classes are for a model, by where the queries come from.

  pool_episodes.py NAME=POOL_DIR=FEATURES.h5 ...
      FEATURES.h5: `lorarecycle embed` of `pool_hardness.py pack POOL_DIR` (the pool's images in
      file order). 2,000 seeded 5-way 1-shot 7-query episodes drawn as `metatrain` draws them
      (classes = dataset classes, images pooled over the LoRAs that cover them), classified by
      prototypes (squared distance): the accuracy over all queries, over the queries that come
      from the support image's LoRA, over the others; the cross-entropy at temperature 128 (the
      runs' T); the median squared distance between two images (the logits' scale).
Used by bench/science.sh teachers and iters (docs/science.md, "Which layers the surrogates teach, and
from which teacher").
"""
import glob
import os
import sys

import h5py
import numpy as np

WAY, SHOT, QUERY, T, EPISODES = 5, 1, 7, 128.0, 2000


def load(pool, features):
    classes, loras = [], []
    for path in sorted(glob.glob(os.path.join(pool, "lora_*.h5"))):
        with h5py.File(path, "r") as f:
            g = f["global_class"][:]
        classes.append(g)
        loras.append(np.full(len(g), int(os.path.basename(path)[len("lora_"):-len(".h5")])))
    with h5py.File(features, "r") as f:
        x = f["features"][:].astype(np.float64)
    g, l = np.concatenate(classes), np.concatenate(loras)
    if len(g) != len(x):
        sys.exit(f"pool_episodes: {features} has {len(x)} rows, {pool} {len(g)} images")
    return x, g, l


def measure(x, g, l, rng):
    by_class = {c: np.flatnonzero(g == c) for c in np.unique(g)}
    ok_all, ok_same, ok_other, losses = [], [], [], []
    for _ in range(EPISODES):
        support, query, label = [], [], []
        for i, c in enumerate(rng.choice(list(by_class), WAY, replace=False)):
            rows = rng.choice(by_class[c], SHOT + QUERY, replace=False)
            support.append(rows[:SHOT])
            query += list(rows[SHOT:])
            label += [i] * QUERY
        query, label = np.array(query), np.array(label)
        protos = np.stack([x[s].mean(0) for s in support])
        d = ((x[query][:, None, :] - protos[None]) ** 2).sum(-1)
        ok = d.argmin(1) == label
        same = np.array([l[query[j]] in l[support[label[j]]] for j in range(len(query))])
        ok_all += list(ok)
        ok_same += list(ok[same])
        ok_other += list(ok[~same])
        z = -d / T
        z -= z.max(1, keepdims=True)
        losses.append(-(z[np.arange(len(label)), label] - np.log(np.exp(z).sum(1))).mean())
    pick = rng.choice(len(x), min(len(x), 400), replace=False)
    dist = ((x[pick][:, None] - x[pick][None]) ** 2).sum(-1)[np.triu_indices(len(pick), 1)]
    return (100 * np.mean(ok_all), 100 * np.mean(ok_same) if ok_same else float("nan"), len(ok_same) / len(ok_all),
            100 * np.mean(ok_other), np.mean(losses), np.median(dist))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(f"{'pool':<32} {'all':>6} {'same LoRA':>10} {'(share)':>8} {'other LoRAs':>12} {'CE T128':>8} {'sq. dist':>9}")
    for arg in sys.argv[1:]:
        name, pool, features = arg.split("=")
        a, s, share, o, ce, dist = measure(*load(pool, features), np.random.default_rng(0))
        print(f"{name:<32} {a:6.1f} {s:10.1f} {100 * share:7.1f}% {o:12.1f} {ce:8.3f} {dist:9.1f}")


if __name__ == "__main__":
    main()
