"""The main job's report: results table beside the paper's, validation curves and a grid of
surrogate images, from the outputs of launch/demo.sh.

  /usr/bin/python3 data_tools/report.py --runs runs/demo --out runs/demo/report

Writes report.md, val_curves.png and surrogates.png into --out.
"""
import argparse
import csv
import glob
import json
import os
import sys

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The paper's CLIP ViT-B/16 results (DESIGN 2.7): 5-way 1-shot / 5-shot.
PAPER = {
    "in-domain (mean of CIFAR-FS, MiniImageNet, VGG-Flower, CUB)": {
        "nn": (np.mean([78.06, 81.08, 89.75, 85.11]), np.mean([94.09, 93.85, 97.78, 96.09])),
        "lorahub": (np.mean([81.23, 83.68, 90.89, 87.22]), np.mean([96.24, 95.72, 97.75, 97.51])),
        "meta": (np.mean([89.69, 88.60, 94.53, 91.12]), np.mean([97.05, 96.12, 98.59, 97.67])),
    },
    "cross-domain (mean of EuroSAT, CropDiseases)": {
        "nn": (np.mean([61.73, 75.48]), np.mean([80.05, 91.89])),
        "lorahub": (np.mean([69.45, 79.32]), np.mean([89.76, 94.44])),
        "meta": (np.mean([66.95, 83.07]), np.mean([85.17, 95.33])),
    },
}


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="run directory of a preset (e.g. runs/demo)")
    ap.add_argument("--out", required=True, help="report directory")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    runs = a.runs

    # Results table.
    rows = list(csv.DictReader(open(os.path.join(runs, "eval", "results.csv"))))
    shots = sorted({int(r["shot"]) for r in rows})
    table = {}
    for r in rows:
        table.setdefault((r["dataset"], r["method"]), {})[int(r["shot"])] = r
    lines = ["| dataset | method | " + " | ".join(f"5-way {s}-shot" for s in shots) + " | tasks/s (1-shot) |",
             "|---|---|" + "---|" * len(shots) + "---|"]
    for (d, m), by_shot in table.items():
        cells = [f"{float(by_shot[s]['mean']):.2f} ± {float(by_shot[s]['ci95']):.2f}" if s in by_shot else "-" for s in shots]
        tps = float(by_shot[shots[0]]["tasks_per_s"]) if shots[0] in by_shot else 0
        lines.append(f"| {d} | {m} | " + " | ".join(cells) + f" | {tps:.2f} |")
    paper = ["| paper setting | method | 5-way 1-shot | 5-way 5-shot |", "|---|---|---|---|"]
    for setting, methods in PAPER.items():
        for m, (s1, s5) in methods.items():
            paper.append(f"| {setting} | {m} | {s1:.2f} | {s5:.2f} |")

    # Speed-up of tuning-free inference over fine-tuning.
    speed = []
    for (d, m), by_shot in table.items():
        if m == "lora-ft":
            continue
        ft = table.get((d, "lora-ft"), {})
        for s in shots:
            if s in by_shot and s in ft and float(ft[s]["tasks_per_s"]) > 0:
                speed.append(f"{d} {m} {s}-shot: {float(by_shot[s]['tasks_per_s']) / float(ft[s]['tasks_per_s']):.1f}x lora-ft")

    # Validation curves.
    plt.figure(figsize=(6, 4))
    curves = []
    for meta in sorted(glob.glob(os.path.join(runs, "meta*", "metatrain.json"))):
        d = os.path.dirname(meta)
        rep = json.load(open(meta))
        pts = [(r["step"], r["val_mean"], r["val_ci95"]) for r in read_jsonl(d + ".work/metrics.jsonl") if "val_mean" in r]
        if not pts:
            continue
        s, m, c = map(np.array, zip(*pts))
        label = f"{os.path.basename(d)} (mask {rep['mask_ratio']})"
        plt.errorbar(s * rep["episodes_per_step"], m, yerr=c, marker="o", capsize=3, label=label)
        curves.append((label, rep))
    plt.xlabel("meta-training episodes")
    plt.ylabel("val 5-way 1-shot accuracy (%)")
    plt.title("Validation (real images of the val classes, 95% CI)")
    plt.grid(alpha=0.3)
    plt.legend()
    plt.tight_layout()
    plt.savefig(os.path.join(a.out, "val_curves.png"), dpi=120)
    plt.close()

    # Surrogate grid: the first 8 images of the first 8 pool files, one row per LoRA.
    files = sorted(glob.glob(os.path.join(runs, "pool", "lora_*.h5")))[:8]
    grid = []
    for p in files:
        with h5py.File(p, "r") as f:
            imgs = f["images"][:]
            labels = f["labels"][:]
        order = np.argsort(labels, kind="stable")
        pick = imgs[order][np.linspace(0, len(imgs) - 1, 8).astype(int)]
        grid.append(np.concatenate(list(pick), axis=1))
    if grid:
        g = np.concatenate(grid, axis=0)
        plt.figure(figsize=(8, 8 * g.shape[0] / g.shape[1] + 0.5))
        plt.imshow(g, interpolation="nearest")
        plt.axis("off")
        plt.title("Surrogate images (rows: LoRAs; columns spread over their classes)")
        plt.tight_layout()
        plt.savefig(os.path.join(a.out, "surrogates.png"), dpi=120)
        plt.close()

    md = ["# LoRA Recycle on the embedded benchmark", "",
          f"Generated by `data_tools/report.py --runs {runs}` from the outputs of `launch/demo.sh`.", "",
          "## Results (this run)", ""] + lines + ["", "Throughput of tuning-free inference vs fine-tuning: " +
                                                   ("; ".join(speed) if speed else "n/a"), "",
          "## The paper (CLIP ViT-B/16, for comparison of the ordering; different data and backbone)", ""] + paper
    md += ["", "## Meta-training", ""]
    for label, rep in curves:
        vi, vf = rep["val_initial"], rep["val_final"]
        md.append(f"- {label}: {rep['steps']} steps x {rep['episodes_per_step']} episodes, "
                  f"{rep['timing']['episodes_per_s']:.1f} episodes/s; val {vi['val_mean']:.2f} ± {vi['val_ci95']:.2f} (bare VFM) "
                  f"-> {vf['val_mean']:.2f} ± {vf['val_ci95']:.2f}")
    md += ["", "![validation curves](val_curves.png)", "", "![surrogates](surrogates.png)", ""]
    open(os.path.join(a.out, "report.md"), "w").write("\n".join(md))
    print("\n".join(lines))
    print("\n".join(speed))
    print(f"report: {os.path.join(a.out, 'report.md')}")


if __name__ == "__main__":
    sys.exit(main())
