#!/usr/bin/python3
"""Compare the outputs of two runs of the main job's script (launch/demo.sh) value by value.

Usage: /usr/bin/python3 bench/compare_runs.py RUN_A RUN_B
RUN_A/B are the run directories (e.g. WORK/runs/quick). Compared: every tensor of every
*.safetensors file (VFM, prior, zoo adapters, meta-LoRAs), every dataset of every pool file
(*.h5 under pool/), and every result row of eval/results.csv except its timing columns. Times,
paths and other metadata are not compared. Exit status 1 when anything differs, naming it.
Used to show that a refactoring leaves the pipeline's behaviour unchanged.
"""
import csv
import pathlib
import sys

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "cli"))
from peft_adapter import read_safetensors  # noqa: E402  (the tests' own safetensors reader)


def main():
    a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    problems, counts = [], {"safetensors": 0, "tensors": 0, "h5": 0, "datasets": 0, "rows": 0}

    def files(root, pattern):
        return sorted(p.relative_to(root) for p in root.rglob(pattern) if ".work" not in p.parts[0])

    for kind in ("*.safetensors", "*.h5"):
        fa, fb = files(a, kind), files(b, kind)
        if fa != fb:
            problems.append(f"{kind}: different file lists: {sorted(set(fa) ^ set(fb))}")
        for rel in sorted(set(fa) & set(fb)):
            if kind == "*.safetensors":
                ta, tb = read_safetensors(a / rel), read_safetensors(b / rel)
                counts["safetensors"] += 1
            else:
                with h5py.File(a / rel, "r") as ha, h5py.File(b / rel, "r") as hb:
                    ta = {k: ha[k][()] for k in ha.keys() if isinstance(ha[k], h5py.Dataset)}
                    tb = {k: hb[k][()] for k in hb.keys() if isinstance(hb[k], h5py.Dataset)}
                counts["h5"] += 1
            if ta.keys() != tb.keys():
                problems.append(f"{rel}: different keys {sorted(set(ta) ^ set(tb))}")
            for k in sorted(set(ta) & set(tb)):
                counts["tensors" if kind == "*.safetensors" else "datasets"] += 1
                if ta[k].shape != tb[k].shape or not np.array_equal(ta[k], tb[k]):
                    problems.append(f"{rel}: {k} differs")
    ra, rb = a / "eval" / "results.csv", b / "eval" / "results.csv"
    if ra.exists() or rb.exists():
        # The columns both files have (results.csv of an older eval lacks ref, diff, diff_ci95).
        shared = set(next(csv.reader(open(ra)))) & set(next(csv.reader(open(rb)))) if ra.exists() and rb.exists() else set()

        def rows(p):
            return sorted(tuple((k, v) for k, v in r.items()
                                if k in shared and k not in ("tasks_per_s", "timed_tasks", "seconds"))
                          for r in csv.DictReader(open(p)))
        xa, xb = rows(ra), rows(rb)
        counts["rows"] = len(xa)
        if xa != xb:
            problems.append(f"eval/results.csv: rows differ: {sorted(set(xa) ^ set(xb))[:4]}")
    print(f"compared {counts['safetensors']} safetensors files ({counts['tensors']} tensors), "
          f"{counts['h5']} HDF5 files ({counts['datasets']} datasets), {counts['rows']} result rows")
    for p in problems:
        print("DIFFERS:", p)
    print("identical" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
