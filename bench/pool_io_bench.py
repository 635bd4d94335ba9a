#!/usr/bin/python3
"""Chunking and compression of the surrogate pool's /images for random access by image.

Rewrites the /images of a pool file (or synthetic surrogate-like noise) with several layouts and
measures, side by side and repeated (medians): write time, file size, and the time to read single
images at random positions (what an episode sampler does) and a whole file.

  /usr/bin/python3 bench/pool_io_bench.py [POOL_FILE.h5] [--images N] [--reps 5]
"""
import argparse
import os
import statistics
import tempfile
import time

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pool_file", nargs="?")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if a.pool_file:
        with h5py.File(a.pool_file) as f:
            base = np.array(f["images"])
        reps = int(np.ceil(a.images / len(base)))
        imgs = np.concatenate([base] * reps)[:a.images]
        src = a.pool_file
    else:
        imgs = np.random.default_rng(0).integers(0, 256, (a.images, 32, 32, 3), dtype=np.uint8)
        src = "random uint8 noise"
    layouts = [("contiguous", None, None), ("chunk 1", 1, None), ("chunk 16", 16, None), ("chunk 64", 64, None),
               ("chunk 16 + gzip 4", 16, 4), ("chunk 64 + gzip 4", 64, 4)]
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(imgs), 500)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        res = {name: {"write": [], "read1": [], "readall": []} for name, _, _ in layouts}
        for _ in range(a.reps):
            for name, chunk, gz in layouts:  # interleaved: A/B/A/B
                p = os.path.join(d, name.replace(" ", "_") + ".h5")
                t = time.perf_counter()
                with h5py.File(p, "w") as f:
                    kw = {}
                    if chunk:
                        kw["chunks"] = (chunk,) + imgs.shape[1:]
                    if gz:
                        kw["compression"], kw["compression_opts"] = "gzip", gz
                    f.create_dataset("images", data=imgs, **kw)
                res[name]["write"].append(time.perf_counter() - t)
                with h5py.File(p, "r") as f:
                    ds = f["images"]
                    t = time.perf_counter()
                    for i in picks:
                        ds[int(i)]
                    res[name]["read1"].append((time.perf_counter() - t) / len(picks))
                    t = time.perf_counter()
                    ds[...]
                    res[name]["readall"].append(time.perf_counter() - t)
                res[name]["size"] = os.path.getsize(p)
    print(f"source: {src}; {len(imgs)} images of {imgs.shape[1:]} ({imgs.nbytes / 1e6:.1f} MB); {a.reps} reps, medians")
    print("\n| layout | write ms | file MB | random single image us | whole file ms |\n|---|---|---|---|---|")
    for name, _, _ in layouts:
        r = res[name]
        print(f"| {name} | {1e3 * statistics.median(r['write']):.1f} | {r['size'] / 1e6:.2f} | "
              f"{1e6 * statistics.median(r['read1']):.0f} | {1e3 * statistics.median(r['readall']):.1f} |")


if __name__ == "__main__":
    main()
