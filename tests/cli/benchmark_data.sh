#!/usr/bin/env bash
# The quick benchmark builds, has the DESIGN 3 format and splits, and rebuilds byte-identically.
source "$(dirname "$0")/common.sh"
TOOL="$REPO_DIR/data_tools/build_benchmark.py"
"$LORAREC_PYTHON" "$TOOL" --out a --preset quick
"$LORAREC_PYTHON" "$TOOL" --out b --preset quick
grep -q "is complete" <<<"$("$LORAREC_PYTHON" "$TOOL" --out a --preset quick)" || fail "a complete build was not reused"
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
# A user's folder-per-class images import into the same format; a bad image names its file.
TOOL2="$REPO_DIR/data_tools/import_folder.py"
"$LORAREC_PYTHON" - <<'PY'
import os, numpy as np
from PIL import Image
for c in ("heron", "wren"):
    os.makedirs(f"imgs/{c}", exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((40 + i, 50, 3), 60 * i, dtype=np.uint8)).save(f"imgs/{c}/{i}.png")
PY
"$LORAREC_PYTHON" "$TOOL2" imgs custom.h5 --size 32 --min-per-class 3
"$LORAREC_PYTHON" - <<'PY'
import h5py, numpy as np
f = h5py.File("custom.h5")
assert f["images"].shape == (6, 32, 32, 3) and list(np.array(f["labels"])) == [0, 0, 0, 1, 1, 1]
assert [c.decode() for c in f["class_names"]] == ["heron", "wren"]
PY
echo "not an image" > imgs/wren/3.png
set +e; "$LORAREC_PYTHON" "$TOOL2" imgs bad.h5 2>err.txt; rc=$?; set -e
[ $rc -ne 0 ] && grep -q "imgs/wren/3.png" err.txt || fail "a broken image was not reported with its path"
[ ! -e bad.h5 ] || fail "output written despite the error"
echo "benchmark_data: folder import ok"
