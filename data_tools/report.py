"""The report of a run directory: results table beside the paper's, validation curves and a grid
of surrogate images, from the outputs of launch/demo.sh, cluster/pipeline.sh or your own commands.

  /usr/bin/python3 data_tools/report.py RUN_DIR [--out DIR]      (or --runs RUN_DIR, as before)

The parts are found by their marker files anywhere under RUN_DIR (symbolic links followed):
  zoo          a directory with manifest.json and lora_*/ adapter directories (zoo)
  pool         a directory with index.json and lora_*.h5 (invert)
  meta-LoRA    a directory with metatrain.json (metatrain); its curve from <dir>.work/metrics.jsonl
  eval         a directory with results.csv (eval); partial/ alone = an unfinished eval
  model        a directory with pretrain_report.json (pretrain: the VFM or the BN prior)
One line per part found, missing or unfinished is printed first; a partial run gives a partial
report, never a traceback. With several evals the one named eval (else the first) makes the main
table, the others follow it; the pool named pool (else the first) makes the surrogate grid.
Writes report.md, val_curves.png and surrogates.png into --out (default RUN_DIR/report).
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

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
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut short by a crash
                    continue
    return out


def why(e):
    """An exception as a short phrase for a one-line message."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


# ---- finding the parts -------------------------------------------------------------------------

def kept_text(rep):
    """', kept step S (V)' when metatrain --keep best wrote another step's meta-LoRA than the last."""
    if rep.get("keep") != "best" or rep.get("val_kept") is None:
        return ""
    return f"; kept the best validation's meta-LoRA: step {rep['kept_step']}, {rep['val_kept']['val_mean']:.2f}"


def find_parts(root, skip):
    """Walks root (links followed, each real directory once, hidden ones and `skip` left out) and
    returns {kind: [directory, ...]} of the marker files' directories, sorted by path."""
    parts = {k: [] for k in ("zoo", "zoo_partial", "pool", "pool_partial", "meta", "meta_partial", "eval",
                             "eval_partial", "model", "model_partial")}
    seen = set()
    skip_real = os.path.realpath(skip) if skip else None
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen or real == skip_real:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        fs = set(files)
        lora_dirs = [x for x in dirs if x.startswith("lora_")]
        lora_h5 = [x for x in files if x.startswith("lora_") and x.endswith(".h5")]
        if lora_dirs and any(os.path.exists(os.path.join(d, x, "adapter_config.json")) for x in lora_dirs):
            parts["zoo" if "manifest.json" in fs else "zoo_partial"].append(d)
        if lora_h5:
            parts["pool" if "index.json" in fs else "pool_partial"].append(d)
        if "metatrain.json" in fs:
            parts["meta"].append(d)
        if "results.csv" in fs:
            parts["eval"].append(d)
        elif "partial" in dirs and os.path.exists(os.path.join(d, "partial", "settings.json")):
            parts["eval_partial"].append(d)
        if "pretrain_report.json" in fs:
            parts["model"].append(d)
        if d.endswith(".work") and "metrics.jsonl" in fs:
            out = d[:-len(".work")]
            if os.path.exists(os.path.join(out, "metatrain.json")) or os.path.exists(os.path.join(out, "pretrain_report.json")):
                continue
            kind = "model_partial"
            for r in read_jsonl(os.path.join(d, "metrics.jsonl"))[:3]:
                if "episodes_per_s" in r or "val_mean" in r:
                    kind = "meta_partial"
            parts[kind].append(d)
    return {k: sorted(v, key=lambda p: os.path.join(p, "")) for k, v in parts.items()}


def prefer(dirs, root, name):
    """The directory <root>/<name> when among dirs, else the first."""
    for d in dirs:
        if os.path.relpath(d, root) == name:
            return d
    return dirs[0] if dirs else None


def last_step(work):
    steps = [r["step"] for r in read_jsonl(os.path.join(work, "metrics.jsonl")) if isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def inventory(parts, root):
    """One line per part: (ok, text); ok False for missing, unfinished or unreadable parts."""
    rel = lambda d: os.path.relpath(d, root)  # noqa: E731
    lines = []

    def finished(kind, label, marker, describe, load=lambda f: json.load(open(f)), before_error=lambda d: ""):
        """A line per finished part of this kind: describe(d, content of its marker file), or why the
        marker could not be read."""
        for d in parts[kind]:
            try:
                lines.append((True, f"{label} ({rel(d)}/): {describe(d, load(os.path.join(d, marker)))}"))
            except Exception as e:  # noqa: BLE001
                lines.append((False, f"{label} ({rel(d)}/): {before_error(d)}{marker} unreadable ({why(e)})"))

    def zoo_text(d, m):
        accs = [e["heldout_accuracy"] for e in m["loras"]]
        acc = f", held-out accuracy mean {sum(accs) / len(accs):.2f}" if accs else ""
        return f"{len(m['loras'])} LoRAs{acc}"

    def meta_text(d, r):
        val = ("no validation (--val not given)" if r.get("val_initial") is None or r.get("val_final") is None
               else f"val {r['val_initial']['val_mean']:.2f} -> {r['val_final']['val_mean']:.2f}" + kept_text(r))
        return f"mask {r['mask_ratio']}, {r['steps']} steps, {val}"

    def eval_text(d, rows):
        return f"{len(rows)} rows ({', '.join(sorted({r['method'] for r in rows}))})"

    def model_text(d, r):
        acc = r.get("heldout_head_acc")
        return (f"pretrained {r.get('arch', '?')}"
                f"{f', held-out head accuracy {acc:.2f}' if isinstance(acc, (int, float)) else ''}")

    def missing(kind, text):
        if not parts[kind] and not parts[kind + "_partial"]:
            lines.append((False, text))

    pool_files = lambda d: len(glob.glob(os.path.join(d, "lora_*.h5")))  # noqa: E731
    finished("zoo", "zoo", "manifest.json", zoo_text)
    for d in parts["zoo_partial"]:
        n = len([x for x in os.listdir(d) if x.startswith("lora_")])
        lines.append((False, f"zoo ({rel(d)}/): unfinished: {n} lora_* directories, no manifest.json"))
    missing("zoo", "zoo: missing (no directory with manifest.json and lora_*/ adapters)")
    finished("pool", "pool", "index.json", lambda d, idx: f"{len(idx['files'])} files, {idx['images']} images",
             before_error=lambda d: f"{pool_files(d)} lora_*.h5, ")
    for d in parts["pool_partial"]:
        lines.append((False, f"pool ({rel(d)}/): unfinished: {pool_files(d)} lora_*.h5, no index.json"))
    missing("pool", "pool: missing (no directory with index.json and lora_*.h5)")
    finished("meta", "meta-LoRA", "metatrain.json", meta_text)
    for d in parts["meta_partial"]:
        s = last_step(d)
        lines.append((False, f"meta-LoRA ({rel(d)[:-len('.work')]}/): unfinished (no metatrain.json; {rel(d)} "
                             f"{'at step ' + str(s) if s is not None else 'has no step yet'})"))
    missing("meta", "meta-LoRA: missing (no directory with metatrain.json)")
    finished("eval", "eval", "results.csv", eval_text, load=lambda f: list(csv.DictReader(open(f))))
    for d in parts["eval_partial"]:
        n = len(glob.glob(os.path.join(d, "partial", "*__*.json")))
        lines.append((False, f"eval ({rel(d)}/): unfinished: {n} finished rows in partial/, no results.csv"))
    missing("eval", "eval: missing (no directory with results.csv)")
    finished("model", "model", "pretrain_report.json", model_text)
    for d in parts["model_partial"]:
        s = last_step(d)
        lines.append((False, f"model ({rel(d)[:-len('.work')]}/): unfinished pretraining "
                             f"({'at step ' + str(s) if s is not None else 'no step yet'})"))
    return lines


# ---- the report ---------------------------------------------------------------------------------

def results_table(path):
    rows = list(csv.DictReader(open(path)))
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
    # Paired differences (eval's ref, diff, diff_ci95 columns; absent in results of older versions).
    paired = [(d, m, by_shot) for (d, m), by_shot in table.items() if any(r.get("ref") for r in by_shot.values())]
    if paired:
        lines += ["", "Paired differences on the same episodes (eval: each method against lora-avg, else nn; lora-avg against nn; "
                  "the mean ± 95% CI of the per-episode accuracy differences). The episodes' difficulty, shared by "
                  "both methods, drops out, so two rows whose own CIs overlap can still differ here.", "",
                  "| dataset | method | " + " | ".join(f"5-way {s}-shot" for s in shots) + " |",
                  "|---|---|" + "---|" * len(shots)]
        for d, m, by_shot in paired:
            cells = [f"{float(by_shot[s]['diff']):+.2f} ± {float(by_shot[s]['diff_ci95']):.2f} vs {by_shot[s]['ref']}"
                     if s in by_shot and by_shot[s].get("ref") else "-" for s in shots]
            lines.append(f"| {d} | {m} | " + " | ".join(cells) + " |")
    # Speed-up of tuning-free inference over fine-tuning.
    speed = []
    for (d, m), by_shot in table.items():
        if m == "lora-ft":
            continue
        ft = table.get((d, "lora-ft"), {})
        for s in shots:
            if s in by_shot and s in ft and float(ft[s]["tasks_per_s"]) > 0:
                speed.append(f"{d} {m} {s}-shot: {float(by_shot[s]['tasks_per_s']) / float(ft[s]['tasks_per_s']):.1f}x lora-ft")
    return lines, speed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="run directory (e.g. runs/demo)")
    ap.add_argument("--runs", help="the same as RUN_DIR (the older spelling)")
    ap.add_argument("--out", help="report directory (default RUN_DIR/report)")
    a = ap.parse_args()
    if bool(a.run_dir) == bool(a.runs):
        ap.error("give the run directory once: RUN_DIR or --runs RUN_DIR")
    runs = a.run_dir or a.runs
    if not os.path.isdir(runs):
        print(f"report.py: error: {runs}: not a directory", file=sys.stderr)
        return 2
    out_dir = a.out or os.path.join(runs, "report")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        print(f"report.py: error: {out_dir}: cannot create ({e.strerror or e})", file=sys.stderr)
        return 1

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = find_parts(runs, out_dir)
    inv = inventory(parts, runs)
    for _, line in inv:
        print(line)
    problems = [line for ok, line in inv if not ok]

    # Results table (the main eval), then any further evals.
    lines, speed, more = [], [], []
    evals = parts["eval"]
    main_eval = prefer(evals, runs, "eval")
    if main_eval is not None:
        try:
            lines, speed = results_table(os.path.join(main_eval, "results.csv"))
        except Exception as e:  # noqa: BLE001
            problems.append(f"eval ({os.path.relpath(main_eval, runs)}/): results.csv unreadable ({why(e)})")
            main_eval = None
    for d in evals:
        if d == main_eval:
            continue
        try:
            t, s = results_table(os.path.join(d, "results.csv"))
        except Exception:  # noqa: BLE001 - already reported by the inventory
            continue
        more += ["", f"## Results ({os.path.relpath(d, runs)})", ""] + t
        if s:
            more += ["", "Throughput of tuning-free inference vs fine-tuning: " + "; ".join(s)]
    paper = ["| paper setting | method | 5-way 1-shot | 5-way 5-shot |", "|---|---|---|---|"]
    for setting, methods in PAPER.items():
        for m, (s1, s5) in methods.items():
            paper.append(f"| {setting} | {m} | {s1:.2f} | {s5:.2f} |")

    # Validation curves.
    curves = []
    plt.figure(figsize=(6, 4))
    for d in parts["meta"]:
        try:
            rep = json.load(open(os.path.join(d, "metatrain.json")))
            pts = [(r["step"], r["val_mean"], r["val_ci95"]) for r in read_jsonl(d + ".work/metrics.jsonl") if "val_mean" in r]
            if not pts:
                continue
            s, m, c = map(np.array, zip(*pts))
            label = f"{os.path.relpath(d, runs)} (mask {rep['mask_ratio']})"
            plt.errorbar(s * rep["episodes_per_step"], m, yerr=c, marker="o", capsize=3, label=label)
            curves.append((label, rep))
        except Exception:  # noqa: BLE001 - reported by the inventory when metatrain.json is bad
            continue
    if curves:
        plt.xlabel("meta-training episodes")
        plt.ylabel("val 5-way 1-shot accuracy (%)")
        plt.title("Validation (real images of the val classes, 95% CI)")
        plt.grid(alpha=0.3)
        plt.legend()
        plt.tight_layout()
        plt.savefig(os.path.join(out_dir, "val_curves.png"), dpi=120)
    plt.close()

    # Surrogate grid: the first 8 images of the first 8 pool files, one row per LoRA.
    pool = prefer(parts["pool"] + parts["pool_partial"], runs, "pool")
    files = sorted(glob.glob(os.path.join(pool, "lora_*.h5")))[:8] if pool else []
    grid = []
    for p in files:
        try:
            import h5py
            with h5py.File(p, "r") as f:
                imgs = f["images"][:]
                labels = f["labels"][:]
            order = np.argsort(labels, kind="stable")
            pick = imgs[order][np.linspace(0, len(imgs) - 1, 8).astype(int)]
            grid.append(np.concatenate(list(pick), axis=1))
        except Exception as e:  # noqa: BLE001
            print(f"pool ({os.path.relpath(p, runs)}): unreadable, left out of the grid ({why(e)})")
    if grid and len({g.shape for g in grid}) > 1:
        print("pool: the files' images differ in size; the grid shows the first file's only")
        grid = [g for g in grid if g.shape == grid[0].shape]
    if grid:
        g = np.concatenate(grid, axis=0)
        plt.figure(figsize=(8, 8 * g.shape[0] / g.shape[1] + 0.5))
        plt.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, interpolation="nearest",
                   cmap="gray" if g.shape[-1] == 1 else None)
        plt.axis("off")
        plt.title("Surrogate images (rows: LoRAs; columns spread over their classes)")
        plt.tight_layout()
        plt.savefig(os.path.join(out_dir, "surrogates.png"), dpi=120)
        plt.close()

    md = ["# LoRA Recycle on the embedded benchmark", "",
          f"Generated by `data_tools/report.py --runs {runs}` from the outputs of `launch/demo.sh`.", ""]
    if problems:
        md += ["## Missing or unfinished parts of this run", ""] + [f"- {p}" for p in problems] + [""]
    md += ["## Results (this run)", ""]
    if lines:
        md += lines + ["", "Throughput of tuning-free inference vs fine-tuning: " + ("; ".join(speed) if speed else "n/a")]
    else:
        md += ["No evaluation results (no results.csv under the run directory)."]
    md += more
    md += ["", "## The paper (CLIP ViT-B/16, for comparison of the ordering; different data and backbone)", ""] + paper
    md += ["", "## Meta-training", ""]
    for label, rep in curves:
        try:
            vi, vf = rep["val_initial"], rep["val_final"]
            md.append(f"- {label}: {rep['steps']} steps x {rep['episodes_per_step']} episodes, "
                      f"{rep['timing']['episodes_per_s']:.1f} episodes/s; val {vi['val_mean']:.2f} ± {vi['val_ci95']:.2f} (step 0) "
                      f"-> {vf['val_mean']:.2f} ± {vf['val_ci95']:.2f}" + kept_text(rep))
        except Exception as e:  # noqa: BLE001
            md.append(f"- {label}: metatrain.json incomplete ({why(e)})")
    if not curves:
        md.append("No validation curves (no meta-LoRA with validation points).")
    md += [""]
    if curves:
        md += ["![validation curves](val_curves.png)", ""]
    if grid:
        md += ["![surrogates](surrogates.png)", ""]
    open(os.path.join(out_dir, "report.md"), "w").write("\n".join(md))
    if lines:
        print("\n".join(lines))
        print("\n".join(speed))
    print(f"report: {os.path.join(out_dir, 'report.md')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - never a traceback; the message names what failed
        print(f"report.py: error: {why(e)}", file=sys.stderr)
        sys.exit(1)
