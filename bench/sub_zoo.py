#!/usr/bin/python3
"""A zoo of the first N LoRAs of another (symlinks and a cut manifest), so benchmark runs are short.

  /usr/bin/python3 bench/sub_zoo.py SRC_ZOO DST_DIR N
"""
import json
import os
import sys

src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
m = json.load(open(os.path.join(src, "manifest.json")))
m["loras"] = m["loras"][:n]
for e in m["loras"]:
    os.symlink(os.path.abspath(os.path.join(src, e["dir"])), os.path.join(dst, e["dir"]))
json.dump(m, open(os.path.join(dst, "manifest.json"), "w"))
