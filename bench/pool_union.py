#!/usr/bin/python3
"""One pool holding the images of several pools of the same zoo, file by file.

    /usr/bin/python3 bench/pool_union.py DST_POOL SRC_POOL SRC_POOL [SRC_POOL ...]

Every SRC_POOL must be a finished pool of the same zoo (the same lora_<k>.h5 files, each with the
same classes). DST_POOL's lora_<k>.h5 holds the rows of every source's lora_<k>.h5 one after the
other (images, labels, /global_class, teacher logits, patch scores, keep masks), and its index.json
counts them, so a class holds the surrogates of every source. Used by bench/science.sh ("public") to
ask whether more surrogates per class, from inversions of another kind, are worth more real images
(docs/science.md).
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from pool_copies import drop_digest, start_copy  # bench/, the script's own directory

ROW_SETS = ("images", "labels", "global_class", "teacher_logits", "patch_scores", "keep_mask")


def append_rows(path, others):
    with h5py.File(path, "r+") as f:
        names = [n for n in ROW_SETS if n in f]
        data = {n: [f[n][:]] for n in names}
        for other in others:
            with h5py.File(other, "r") as g:
                if sorted(set(g["global_class"][:])) != sorted(set(data["global_class"][0])):
                    sys.exit(f"pool_union: {other} holds other classes than {path.name}")
                for n in names:
                    data[n].append(g[n][:])
        for n in names:
            joined = np.concatenate(data[n])
            del f[n]
            f.create_dataset(n, data=joined)
        rows = len(f["images"])
        drop_digest(f)
    return rows


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip())
    dst, srcs = Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]
    for s in srcs[1:]:
        if not (s / "index.json").is_file():
            sys.exit(f"pool_union: {s} is not a finished pool (no index.json)")
    tmp, files = start_copy(srcs[0], dst, "pool_union")
    index = json.loads((tmp / "index.json").read_text())
    rows = {}
    for path in files:
        others = [s / path.name for s in srcs[1:]]
        for o in others:
            if not o.is_file():
                sys.exit(f"pool_union: {o} missing: the pools are not of the same zoo")
        rows[path.name] = append_rows(path, others)
    factor = {e["file"]: rows[e["file"]] / e["images"] for e in index["files"]}
    if len(set(factor.values())) != 1:
        sys.exit("pool_union: the sources hold different numbers of images per file")
    k = next(iter(factor.values()))
    for e in index["files"]:
        e["images"] = rows[e["file"]]
    for c in index["classes"]:
        c["images"] = int(round(c["images"] * k))
    index["images"] = sum(rows.values())
    index["union_of"] = [str(s) for s in srcs]
    (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(dst)
    print(f"pool_union: {dst}: {len(files)} LoRA files, {index['images']} images from {len(srcs)} pools")


if __name__ == "__main__":
    main()
