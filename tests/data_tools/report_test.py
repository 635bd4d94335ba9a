#!/usr/bin/python3
"""data_tools/report.py on fake run directories (ctest report): a complete main-job layout, the
same parts nested anywhere, a partial run (unfinished zoo, pool, meta-training and eval, a broken
metatrain.json, a truncated pool file) and an empty directory: one line per part found or
missing, a report either way, never a traceback.

  /usr/bin/python3 tests/data_tools/report_test.py
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "data_tools", "report.py")


def report(*args):
    p = subprocess.run([sys.executable, TOOL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if "Traceback" in p.stderr:
        raise AssertionError(f"report.py {' '.join(map(str, args))} raised:\n{p.stderr}")
    return p


def read(path):
    with open(path) as f:
        return f.read()


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def make_zoo(d, n=2):
    for k in range(n):
        dump(os.path.join(d, f"lora_{k:03d}", "adapter_config.json"), {"r": 4})
    dump(os.path.join(d, "manifest.json"), {"loras": [{"id": k, "dir": f"lora_{k:03d}", "classes": [k, k + 1],
                                                       "heldout_accuracy": 80.0 + k} for k in range(n)]})


def make_pool_file(path, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
        f["labels"] = np.arange(10, dtype=np.int32) % 2


def make_meta(d, mask, keep_best=False):
    rep = {"mask_ratio": mask, "steps": 20, "episodes_per_step": 2, "timing": {"episodes_per_s": 5.0},
           "val_initial": {"val_mean": 40.0, "val_ci95": 1.0}, "val_final": {"val_mean": 45.0, "val_ci95": 1.1}}
    if keep_best:  # metatrain --keep best: the adapter of step 10 was written
        rep.update({"keep": "best", "kept_step": 10, "val_kept": {"step": 10, "val_mean": 46.5, "val_ci95": 1.2}})
    dump(os.path.join(d, "metatrain.json"), rep)
    os.makedirs(d + ".work", exist_ok=True)
    with open(os.path.join(d + ".work", "metrics.jsonl"), "w") as f:
        for step, v in ((0, 40.0), (10, 43.0), (20, 45.0)):
            f.write(json.dumps({"step": step, "val_mean": v, "val_ci95": 1.0, "val_episodes": 50}) + "\n")
            f.write(json.dumps({"step": step + 1, "loss": 1.0, "episodes_per_s": 5.0}) + "\n")


def make_eval(d, paired=False):
    """An eval's results.csv; paired=True: with the ref, diff, diff_ci95 columns eval now writes."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        extra = ["ref", "diff", "diff_ci95"] if paired else []
        w.writerow(["dataset", "method", "way", "shot", "query", "episodes", "mean", "ci95", "tasks_per_s",
                    "timed_tasks"] + extra)
        for shot in (1, 5):
            w.writerow(["test", "nn", 5, shot, 15, 100, 50.0 + shot, 1.0, 4.0, 10] + (["", "", ""] if paired else []))
            w.writerow(["test", "meta", 5, shot, 15, 100, 55.0 + shot, 1.0, 4.0, 10] + (["nn", 5.0, 0.5] if paired else []))
            w.writerow(["test", "lora-ft", 5, shot, 15, 100, 52.0 + shot, 1.0, 0.5, 10] + (["nn", 2.0, 0.75] if paired else []))


def make_complete(run):
    make_zoo(os.path.join(run, "zoo"))
    for k in range(2):
        make_pool_file(os.path.join(run, "pool", f"lora_{k:03d}.h5"), k)
    dump(os.path.join(run, "pool", "index.json"), {"format": 2, "files": [{}, {}], "images": 20})
    make_meta(os.path.join(run, "meta"), 0.0)
    make_meta(os.path.join(run, "meta_mask75"), 0.75, keep_best=True)
    make_eval(os.path.join(run, "eval"))


class Report(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lorarec_report_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_complete_main_job_layout(self):
        run = os.path.join(self.tmp, "runs", "demo")
        make_complete(run)
        p = report("--runs", run, "--out", os.path.join(self.tmp, "rep"))
        self.assertEqual(p.returncode, 0, p.stderr)
        for line in ("zoo (zoo/): 2 LoRAs, held-out accuracy mean 80.50", "pool (pool/): 2 files, 20 images",
                     "meta-LoRA (meta/): mask 0.0, 20 steps, val 40.00 -> 45.00\n",
                     "meta-LoRA (meta_mask75/): mask 0.75, 20 steps, val 40.00 -> 45.00; kept the best validation's "
                     "meta-LoRA: step 10, 46.50",
                     "eval (eval/): 6 rows (lora-ft, meta, nn)", "| test | meta | 56.00 ± 1.00 | 60.00 ± 1.00 | 4.00 |",
                     "test meta 1-shot: 8.0x lora-ft"):
            self.assertIn(line, p.stdout)
        self.assertNotIn("missing", p.stdout)
        md = read(os.path.join(self.tmp, "rep", "report.md"))
        self.assertNotIn("Missing or unfinished", md)
        self.assertIn("## Results (this run)\n\n| dataset | method | 5-way 1-shot | 5-way 5-shot | tasks/s (1-shot) |", md)
        self.assertIn("- meta (mask 0.0): 20 steps x 2 episodes, 5.0 episodes/s; val 40.00 ± 1.00 (step 0) -> 45.00 ± 1.10\n", md)
        self.assertIn("-> 45.00 ± 1.10; kept the best validation's meta-LoRA: step 10, 46.50\n", md)
        self.assertTrue(md.endswith("![validation curves](val_curves.png)\n\n![surrogates](surrogates.png)\n"))
        for f in ("val_curves.png", "surrogates.png"):
            self.assertGreater(os.path.getsize(os.path.join(self.tmp, "rep", f)), 1000)
        # RUN_DIR as a positional argument, --out defaulting to RUN_DIR/report: the same report.
        p = report(run)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(read(os.path.join(run, "report", "report.md")).replace(run, "R"),
                         md.replace(run, "R"))
        # A second run does not mistake its own report directory for a part.
        self.assertEqual(report(run).stdout, p.stdout)

    def test_paired_differences(self):
        run = os.path.join(self.tmp, "runs", "demo")
        make_complete(run)
        md = os.path.join(self.tmp, "rep", "report.md")
        report("--runs", run, "--out", os.path.join(self.tmp, "rep"))
        self.assertNotIn("Paired differences", read(md))  # results.csv of an older eval: no columns, no table
        make_eval(os.path.join(run, "eval"), paired=True)
        p = report("--runs", run, "--out", os.path.join(self.tmp, "rep"))
        self.assertEqual(p.returncode, 0, p.stderr)
        text = read(md)
        self.assertIn("Paired differences on the same episodes", text)
        self.assertIn("| test | meta | +5.00 ± 0.50 vs nn | +5.00 ± 0.50 vs nn |", text)
        self.assertIn("| test | lora-ft | +2.00 ± 0.75 vs nn | +2.00 ± 0.75 vs nn |", text)
        self.assertNotIn("| test | nn | +", text)
        self.assertIn("| test | meta | 56.00 ± 1.00 | 60.00 ± 1.00 | 4.00 |", text)

    def test_parts_found_anywhere(self):
        run = os.path.join(self.tmp, "mine")
        make_zoo(os.path.join(run, "stage1", "my_zoo"), 3)
        make_pool_file(os.path.join(run, "stage2", "pools", "p1", "lora_000.h5"), 0)
        dump(os.path.join(run, "stage2", "pools", "p1", "index.json"), {"files": [{}], "images": 10})
        make_meta(os.path.join(run, "stage3", "meta_lora"), 0.5)
        make_eval(os.path.join(run, "results", "final"))
        p = report(run)
        self.assertEqual(p.returncode, 0, p.stderr)
        for line in ("zoo (stage1/my_zoo/): 3 LoRAs", "pool (stage2/pools/p1/): 1 files, 10 images",
                     "meta-LoRA (stage3/meta_lora/): mask 0.5", "eval (results/final/): 6 rows"):
            self.assertIn(line, p.stdout)
        md = read(os.path.join(run, "report", "report.md"))
        self.assertIn("- stage3/meta_lora (mask 0.5): 20 steps", md)
        self.assertIn("| test | nn | 51.00 ± 1.00 | 55.00 ± 1.00 | 4.00 |", md)

    def test_partial_run(self):
        run = os.path.join(self.tmp, "partial")
        for k in range(2):  # zoo interrupted: adapters, no manifest.json
            dump(os.path.join(run, "zoo", f"lora_{k:03d}", "adapter_config.json"), {"r": 4})
        make_pool_file(os.path.join(run, "pool", "lora_000.h5"), 0)  # pool interrupted, one file truncated
        with open(os.path.join(run, "pool", "lora_001.h5"), "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + bytes(40))
        os.makedirs(os.path.join(run, "meta.work"))  # meta-training under way
        with open(os.path.join(run, "meta.work", "metrics.jsonl"), "w") as f:
            f.write('{"step": 0, "val_mean": 40.0, "val_ci95": 1.0}\n{"step": 30, "loss": 1.0, "episodes_per_s": 3.0}\n{"step": 4')
        os.makedirs(os.path.join(run, "meta_bad"))
        with open(os.path.join(run, "meta_bad", "metatrain.json"), "w") as f:
            f.write('{"mask_ratio": 0.1')
        dump(os.path.join(run, "eval", "partial", "settings.json"), {})  # eval under way
        dump(os.path.join(run, "eval", "partial", "test__nn__1.json"), {"mean": 50})
        p = report(run, "--out", os.path.join(self.tmp, "rep"))
        self.assertEqual(p.returncode, 0, p.stderr)
        for line in ("zoo (zoo/): unfinished: 2 lora_* directories, no manifest.json",
                     "pool (pool/): unfinished: 2 lora_*.h5, no index.json",
                     "meta-LoRA (meta/): unfinished (no metatrain.json; meta.work at step 30)",
                     "meta-LoRA (meta_bad/): metatrain.json unreadable (JSONDecodeError",
                     "eval (eval/): unfinished: 1 finished rows in partial/, no results.csv",
                     "pool (pool/lora_001.h5): unreadable, left out of the grid"):
            self.assertIn(line, p.stdout)
        md = read(os.path.join(self.tmp, "rep", "report.md"))
        self.assertIn("## Missing or unfinished parts of this run", md)
        self.assertIn("No evaluation results", md)
        self.assertIn("![surrogates](surrogates.png)", md)  # from the readable file
        self.assertNotIn("val_curves.png", md)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "rep", "val_curves.png")))

    def test_empty_and_missing_run_dir(self):
        p = report(self.tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual([l.split(":")[0] for l in p.stdout.splitlines() if "missing" in l],
                         ["zoo", "pool", "meta-LoRA", "eval"])
        p = report(os.path.join(self.tmp, "nowhere"))
        self.assertEqual(p.returncode, 2)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1)
        self.assertIn("not a directory", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
