#!/usr/bin/python3
"""What metatrain --distill-targets zoo-concat's targets keep of the zoo's ensemble on unseen images.

  /usr/bin/python3 bench/zoo_concat.py FIT_DIR VAL_DIR [RUN ...]

Both DIRs hold features written by `lorarecycle embed`: zoo_*.h5 (one per zoo LoRA, the same LoRAs
in both); VAL_DIR also avg.h5 (lora-avg) of the validation images. The targets are built on FIT_DIR's
images as train::zoo_concat_features builds them on --distill-pool's: the LoRAs' features
concatenated over sqrt L, centred, cut to their top k principal components, turned and scaled
(orthogonal Procrustes with one scale) onto the zoo's mean features (centred) and shifted to their
mean. The same centring, cut, turn and scale applied to the validation images' concatenation give the
features the targets stand for there. Each row: accuracy on 600 seeded 5-way 1-shot episodes
(bench/zoo_ensemble.py's), paired against lora-avg; the distance gap to the zoo's geometry on the
validation images at the best common scale (zoo_ensemble.scaled_gap: geometry only); the scale (the
targets' distances are those of the concatenation's cut times its square; prototypes do not see it);
and how far the targets lie from the zoo's mean features on the fit images (|targets - mean| /
|mean - its centre|): how far a run from lora-avg must move. Each RUN (VAL_DIR/RUN.h5, e.g. a
meta-LoRA's features) gets the first three columns: how close a run trained towards such targets
comes to the concatenation's geometry on images it never saw. Starred:
the same cut fitted on the validation images themselves (a check of capacity, not a method). Used by
bench/science.sh "concat".
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_ensemble import ci, episode_acc, episodes, load, load_zoo, scaled_gap, subsets  # noqa: E402


def fit(feats, k):
    """The map of zoo_concat_features fitted on feats (L arrays [n, D]): concat -> targets."""
    c = np.concatenate(feats, 1) / np.sqrt(len(feats))
    centre = c.mean(0)
    top = np.linalg.svd(c - centre, full_matrices=False)[2][:k]  # [k, LD]
    y = np.pad((c - centre) @ top.T, ((0, 0), (0, feats[0].shape[1] - k)))
    mean = np.mean(feats, 0)
    u, s, vh = np.linalg.svd(y.T @ (mean - mean.mean(0)))
    turn, scale = u @ vh, s.sum() / (y ** 2).sum()
    off = np.linalg.norm(y @ turn * scale - (mean - mean.mean(0))) / np.linalg.norm(mean - mean.mean(0))

    def apply(other):
        z = np.concatenate(other, 1) / np.sqrt(len(other))
        return np.pad((z - centre) @ top.T, ((0, 0), (0, feats[0].shape[1] - k))) @ turn * scale + mean.mean(0)

    return apply, scale, off


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    fit_dir, val_dir, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
    names, fit_zoo = load_zoo(fit_dir, "zoo_concat")
    val_names, val_zoo = load_zoo(val_dir, "zoo_concat")
    if names != val_names:
        raise SystemExit(f"zoo_concat: {fit_dir} and {val_dir} hold other zoos")
    avg, y = load(val_dir, "avg")
    eps = episodes(y)
    base = episode_acc(avg, *eps)
    stack, rows_40 = np.stack(val_zoo, 1), subsets(len(y))
    n_fit, width = len(fit_zoo[0]), fit_zoo[0].shape[1]
    print(f"{len(names)} zoo LoRAs; targets fitted on {n_fit} images ({fit_dir}), scored on {len(y)} validation "
          f"images, {len(eps[0])} episodes (5-way 1-shot 15-query):")
    print(f"  {'features':<50}{'accuracy (%)':<18}{'paired - lora-avg':<20}{'gap, scaled':<13}{'scale':<8}"
          "targets from the mean")

    def row(name, F, scale="", off=""):
        a = episode_acc(F, *eps)
        d = a - base
        print(f"  {name:<50}{a.mean():.2f} +- {ci(a):.2f}    {d.mean():+.2f} +- {ci(d):.2f}       "
              f"{scaled_gap(F, stack, rows_40):<13.4f}{scale:<8}{off}")

    row("lora-avg", avg)

    row("the zoo's mean features", np.mean(val_zoo, 0))
    row("the zoo's features concatenated", np.concatenate(val_zoo, 1) / np.sqrt(len(val_zoo)))
    for k in (width, 64, 32, 16):
        if k > min(width, n_fit):
            continue
        apply, scale, off = fit(fit_zoo, k)
        row(f"cut to {k}, turned onto the mean", apply(val_zoo), f"{scale:.3f}", f"{off:.3f}")
    apply, scale, off = fit(val_zoo, width)
    row(f"cut to {width}, fitted on the validation images*", apply(val_zoo), f"{scale:.3f}", f"{off:.3f}")
    print("  * fitted on the validation images themselves: a check of capacity, not a method")
    for r in runs:
        row(r, load(val_dir, r)[0])


if __name__ == "__main__":
    main()
