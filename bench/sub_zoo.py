#!/usr/bin/python3
"""A zoo of some LoRAs of another (symlinks and a cut manifest), so benchmark runs are short.

  /usr/bin/python3 bench/sub_zoo.py SRC_ZOO DST_DIR N        the first N LoRAs
  /usr/bin/python3 bench/sub_zoo.py SRC_ZOO DST_DIR cover    the LoRAs, in zoo order, whose classes
                                                            are all new: each class once
The manifest's data and model paths are made absolute (relative ones are read from the current
directory, as the CLI reads them), so the sub-zoo works from any directory.
"""
import json
import os
import sys

src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3]
m = json.load(open(os.path.join(src, "manifest.json")))
if n == "cover":
    seen, keep = set(), []
    for e in m["loras"]:
        if not seen & set(e["classes"]):
            seen |= set(e["classes"])
            keep.append(e)
    m["loras"] = keep
else:
    m["loras"] = m["loras"][:int(n)]
m["num_loras"] = len(m["loras"])
m.pop("coverage", None)  # the whole zoo's; not this one's
for key in ("data", "model"):
    if key in m:
        m[key] = os.path.abspath(m[key])
os.makedirs(dst, exist_ok=True)
for e in m["loras"]:
    link = os.path.join(dst, e["dir"])
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(os.path.join(src, e["dir"])), link)
json.dump(m, open(os.path.join(dst, "manifest.json.tmp"), "w"))
os.replace(os.path.join(dst, "manifest.json.tmp"), os.path.join(dst, "manifest.json"))
