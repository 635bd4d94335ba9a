#!/usr/bin/python3
"""A zoo that knows nothing: N entries of ZOO with their LoRA deltas zeroed and random heads.

  /usr/bin/python3 bench/null_zoo.py ZOO OUT N [SEED]

Entry i of OUT is ZOO's lora_<i> with every lora_B set to 0 (so the adapter leaves the VFM as it
is) and a random classifier: rows drawn from a normal distribution and scaled to the norm of the
original head's rows, bias 0. Its task.json names the classes n i .. n i + n - 1 (n = the task's
way), so no two entries share a class, and a held-out accuracy of 0 (the head was never trained). `invert --zoo OUT` then makes surrogates of random directions of the
bare VFM's features: images made by the same inversion as the zoo's, whose classes mean nothing
about the zoo's data. Meta-training on them shows what the inversion alone teaches (bench/science.sh
"null"). Writes with data_tools/convert_weights.py's writer.
"""
import json
import os
import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "cli"), str(ROOT / "data_tools")]
from convert_weights import _torch, write_safetensors  # noqa: E402
from peft_adapter import read_safetensors  # noqa: E402


def main():
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    zoo, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(int(sys.argv[4]) if len(sys.argv) == 5 else 0)
    torch = _torch()
    manifest = json.load(open(os.path.join(zoo, "manifest.json")))
    entries = [e["dir"] for e in manifest["loras"]]
    if n < 1 or n > len(entries):
        raise SystemExit(f"null_zoo: N must be 1..{len(entries)} (the entries of {zoo}'s manifest)")
    os.makedirs(out, exist_ok=True)
    loras = []
    for i, name in enumerate(entries[:n]):
        src, dst = os.path.join(zoo, name), os.path.join(out, name)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(src, "adapter_config.json"), dst)
        t, meta = read_safetensors(os.path.join(src, "adapter_model.safetensors"), with_metadata=True)
        new, heads = {}, 0
        for k, v in t.items():
            if v.dtype != np.float32:
                raise SystemExit(f"null_zoo: {src}: {k} is {v.dtype}; this tool reads float32 adapters only")
            a = np.array(v)
            if k.endswith("lora_B.weight"):
                a[...] = 0
            elif k.endswith("classifier.weight"):
                heads += 1
                r = rng.standard_normal(a.shape).astype(np.float32)
                a = r / np.linalg.norm(r, axis=1, keepdims=True) * np.linalg.norm(a, axis=1, keepdims=True)
            elif k.endswith("classifier.bias"):
                a[...] = 0
            new[k] = torch.from_numpy(a)
        if heads != 1:
            raise SystemExit(f"null_zoo: {src}: {heads} tensors named *classifier.weight, expected one head")
        meta.pop("lorarecycle_digest", None)  # edited on purpose: the integrity digest no longer applies
        write_safetensors(os.path.join(dst, "adapter_model.safetensors"), new, meta, True)
        task = json.load(open(os.path.join(src, "task.json")))
        way = len(task["classes"])
        task["classes"] = list(range(way * i, way * (i + 1)))
        task["class_names"] = [f"null{c}" for c in task["classes"]]
        task["heldout_accuracy"] = 0.0
        task["null_zoo"] = {"from": os.path.abspath(src), "seed": int(sys.argv[4]) if len(sys.argv) == 5 else 0}
        json.dump(task, open(os.path.join(dst, "task.json"), "w"), indent=2, ensure_ascii=False)
        loras.append({"classes": task["classes"], "dir": name, "heldout_accuracy": 0.0, "id": i})
    classes = [c for e in loras for c in e["classes"]]
    manifest.update(loras=loras, num_loras=n, cover_classes=len(classes), mean_heldout_accuracy=0.0,
                    coverage={"classes": len(classes), "loras_per_class": {str(c): 1 for c in classes},
                              "max_loras_per_class": 1, "min_loras_per_class": 1},
                    null_zoo={"from": os.path.abspath(zoo)})
    json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=2, ensure_ascii=False)
    print(f"null_zoo: {n} entries of {zoo} with zero deltas and random heads in {out}")


if __name__ == "__main__":
    main()
