#!/usr/bin/env bash
# The quick benchmark builds, has the DESIGN 3 format and splits, and rebuilds byte-identically.
source "$(dirname "$0")/common.sh"
TOOL="$(cd "$(dirname "$0")/../.." && pwd)/data_tools/build_benchmark.py"
"$LORAREC_PYTHON" "$TOOL" --out a --preset quick
"$LORAREC_PYTHON" "$TOOL" --out b --preset quick
"$LORAREC_PYTHON" "$TOOL" --out a --preset quick | grep -q "is complete" || fail "a complete build was not reused"
"$LORAREC_PYTHON" - <<'PY'
import hashlib, json, h5py, numpy as np
a, b = json.load(open("a/manifest.json")), json.load(open("b/manifest.json"))
assert set(a["splits"]) == {"base", "zoo", "val", "test", "cross_hangul", "cross_fashion"}, a["splits"].keys()
names = {}
for split, s in a["splits"].items():
    assert s["sha256"] == b["splits"][split]["sha256"], f"{split} is not deterministic"
    assert hashlib.sha256(open("a/" + s["file"], "rb").read()).hexdigest() == s["sha256"]
    with h5py.File("a/" + s["file"]) as f:
        x, y, cn = f["images"], np.array(f["labels"]), [c.decode() if isinstance(c, bytes) else c for c in f["class_names"]]
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3), x.shape
        assert y.dtype == np.int32 and len(y) == x.shape[0]
        assert y.min() == 0 and y.max() == len(cn) - 1
        assert np.bincount(y).min() >= 20, f"{split}: a class with fewer than 20 images"
        assert f.attrs["split"] == split
        names[split] = set(cn)
for s1 in ("zoo", "val", "test"):
    for s2 in ("zoo", "val", "test", "base"):
        assert s1 == s2 or not (names[s1] & names[s2]), f"{s1} and {s2} share classes"
print("benchmark_data: splits disjoint, format ok, deterministic")
PY
