#!/usr/bin/python3
"""Where meta-training moves a LoRA from its start, compared between runs.

  /usr/bin/python3 bench/lora_delta.py START NAME=ADAPTER [NAME=ADAPTER ...]

START and every ADAPTER are PEFT adapter directories of one VFM (a meta-LoRA as metatrain writes
it; START is the same run's step 0, e.g. --init zoo-mean --steps 1 --lr 1e-30). A run's
displacement is delta(ADAPTER) - delta(START) on every adapted module, delta = (lora_alpha / r) *
B @ A in weight space, so adapters of any rank compare. Prints the norm of delta(START), then for
each run the displacement's Frobenius norm and its cosine with delta(START) (negative: the run
shrinks the start, e.g. undoes the zoo's average), then the cosine between every two runs'
displacements over all modules together, the same with the component along delta(START) taken out
of both (what the runs share beyond shrinking or growing the start), and layer by layer. Two runs
on the same images with other seeds give the ceiling of that cosine; a run on surrogates against
one on real images says whether the surrogates push the meta-LoRA where real images do. Used by
bench/science.sh "align".
"""
import pathlib
import re
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "cli")]
from peft_adapter import deltas  # noqa: E402


def layer_of(module):
    m = re.search(r"layers\.(\d+)\.", module)
    return int(m.group(1)) if m else -1


def flat(d, mods):
    return np.concatenate([d[m].ravel() for m in mods])


def cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def off(v, s):
    """v without its component along s."""
    return v - (v @ s) / (s @ s) * s if s @ s > 0 else v


def main():
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        raise SystemExit(__doc__)
    start = deltas(sys.argv[1])
    runs = []
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        d = deltas(path)
        if set(d) != set(start):
            raise SystemExit(f"lora_delta: {path} adapts other modules than {sys.argv[1]}")
        runs.append((name, {m: d[m] - start[m] for m in start}))
    mods = sorted(start)
    layers = {}
    for m in mods:
        layers.setdefault(layer_of(m), []).append(m)
    layers = dict(sorted(layers.items()))
    s = flat(start, mods)
    runs = [(name, flat(d, mods), {layer: flat(d, lm) for layer, lm in layers.items()}) for name, d in runs]
    print(f"|delta(START)| = {np.linalg.norm(s):.4f}")
    print(f"{'run':<24} {'|displacement|':>15} {'cos with start':>15}")
    for name, v, _ in runs:
        print(f"{name:<24} {np.linalg.norm(v):>15.4f} {cos(v, s):>15.3f}")
    print()
    head = " ".join(f"{'layer ' + str(i):>8}" for i in layers)
    print(f"{'cosine of displacements':<40} {'all':>7} {'off start':>9} {head}")
    for i, (na, va, la) in enumerate(runs):
        for nb, vb, lb in runs[i + 1:]:
            cells = " ".join(f"{cos(la[layer], lb[layer]):>8.3f}" for layer in layers)
            print(f"{na + ' / ' + nb:<40} {cos(va, vb):>7.3f} {cos(off(va, s), off(vb, s)):>9.3f} {cells}")


if __name__ == "__main__":
    main()
