#!/usr/bin/env bash
# The whole pipeline from raw class folders, as a user with their own CLIP and images runs it
# (docs/own-data.md, whose worked example these commands are):
#  1. 10 class folders of PNG/JPEG/GIF/BMP/WebP/TIFF images of mixed sizes (a grey one, an RGBA
#     one, a palette GIF), a notes.txt and an undecodable .jpg among them;
#  2. a random CLIP with the real 224 px / patch-16 geometry (196 patches) at width 32, 2 layers;
#  3. data_tools/import_folder.py --model (224 px) --split-classes --skip-bad -> train/val/test;
#  4. zoo, invert, metatrain (--val), eval (nn, lora-avg, meta) under mpirun -np 2, from one
#     config file of the user's own with command-line overrides;
#  5. predict on a raw support folder (class sub-folders) and a raw query folder of mixed sizes:
#     one prediction per query, probabilities summing to 1.
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
PY=$LORAREC_PYTHON
B=$LORAREC_BIN
T0=$(date +%s)
# stage NAME command...: runs it into NAME.txt, prints its time, shows the log on failure.
stage() {
  local name=$1; shift
  local t; t=$(date +%s%N)
  "$@" >"$name.txt" 2>&1 || { cat "$name.txt"; fail "$name: '$*' exited non-zero"; }
  echo "ok: $name in $(( ($(date +%s%N) - t) / 1000000 )) ms"
}

# 1. Raw images: class c = its own colour and stripe period/angle, plus noise; sizes and formats
# vary image by image. raw/ for the import, sup/ and qry/ (PNG/JPEG, as predict reads) later.
"$PY" - <<'PY'
import os
import numpy as np
from PIL import Image

NAMES = ["apple", "boat", "cactus", "daisy", "eagle", "fern", "guitar", "harbor", "igloo", "jelly"]
COLOURS = [(220, 40, 40), (40, 90, 220), (40, 170, 60), (240, 220, 60), (120, 70, 30),
           (20, 200, 200), (200, 60, 200), (250, 140, 20), (235, 235, 235), (30, 30, 30)]
SIZES = [(224, 224), (320, 240), (180, 260), (500, 375), (96, 128), (640, 480), (256, 200), (150, 150)]
FORMATS = ["png", "jpg", "gif", "bmp", "webp", "tif", "jpg", "png"]

def image(c, w, h, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.pi * c / len(NAMES)
    stripes = np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / (10 + 6 * c)) > 0
    px = np.array(COLOURS[c], np.float32) * np.where(stripes, 1.0, 0.45)[..., None]
    px += rng.normal(0, 18, px.shape)
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB")

rng = np.random.default_rng(0)
for c, name in enumerate(NAMES):
    d = os.path.join("raw", name)
    os.makedirs(d)
    for i, (fmt, (w, h)) in enumerate(zip(FORMATS, SIZES[c % 3:] + SIZES[:c % 3])):
        im = image(c, w, h, rng)
        if i == 0 and c % 2 == 0:
            im = im.convert("L")                                  # grey
        if i == 7 and c % 2 == 1:
            im = im.convert("RGBA"); im.putalpha(200)             # translucent, composited on white
        if fmt == "gif":
            im = im.convert("P", palette=Image.ADAPTIVE)          # palette
        im.save(os.path.join(d, f"{i:02d}.{fmt}"))
    # Images in a sub-folder belong to the class too.
    os.makedirs(os.path.join(d, "more"))
    image(c, 300, 300, rng).save(os.path.join(d, "more", "08.jpg"), quality=90)
open("raw/apple/notes.txt", "w").write("not an image: skipped for its extension\n")
open("raw/boat/broken.jpg", "wb").write(b"\xff\xd8\xff\xe0" + b"not really a JPEG" * 4)  # --skip-bad

# predict's inputs: a support folder (one sub-folder per class, 2 images each) and a query folder,
# of classes cactus, fern and jelly, mixed sizes; a grey and an RGBA PNG among the support.
for c, name in ((2, "cactus"), (5, "fern"), (9, "jelly")):
    os.makedirs(f"sup/{name}")
    image(c, 400, 300, rng).convert("L").save(f"sup/{name}/a.png")
    rgba = image(c, 160, 224, rng).convert("RGBA"); rgba.putalpha(255)
    rgba.save(f"sup/{name}/b.png")
    os.makedirs("qry", exist_ok=True)
    image(c, 224, 224, rng).save(f"qry/{name}_1.png")
    image(c, 333, 250, rng).save(f"qry/{name}_2.jpg", quality=90)
open("qry/README.txt", "w").write("not an image\n")
PY
echo "ok: raw images in $(ls raw | wc -l) class folders, $(find raw -type f | wc -l) files"

# 2. The CLIP: random weights, the real geometry (224 px, patch 16: 14x14 patches), tiny width.
"$PY" "$REF" make-model clip --image-size 224 --patch 16 --width 32 --layers 2 --heads 2 --seed 5

# 3. Import: 224 px from --model, classes split 4/3/3.
stage import "$PY" "$REPO/data_tools/import_folder.py" raw data --model clip --split-classes 0.4,0.3,0.3 \
  --seed 1 --skip-bad
grep -q "broken.jpg" import.txt || { cat import.txt; fail "the undecodable image was not reported"; }
"$PY" - <<'PY'
import h5py
n = {}
for s in ("train", "val", "test"):
    with h5py.File(f"data/{s}.h5", "r") as f:
        img, lab, names = f["images"], f["labels"][:], [x.decode() if isinstance(x, bytes) else x for x in f["class_names"][:]]
        assert img.shape[1:] == (224, 224, 3) and img.dtype == "uint8", img.shape
        assert len(names) == {"train": 4, "val": 3, "test": 3}[s] and set(lab) == set(range(len(names))), (s, names)
        n[s] = (len(names), len(lab))
assert sum(c for c, _ in n.values()) == 10 and sum(i for _, i in n.values()) == 10 * 9, n  # 9 images a class; notes.txt and broken.jpg skipped
print("ok: imported (classes, images):", n)
PY

# 4. The stages, from a config file of the user's own ([common] + one section per command).
cat >own.ini <<'INI'
# The tiny run of tests/cli/own_data.sh; docs/own-data.md explains each key.
[common]
model = clip
zoo = runs/zoo
log-level = info

[zoo]
data = data/train.h5
out = runs/zoo
num-loras = 4
way = 3
classes = 4
epochs = 1
batch-size = 8

[invert]
out = runs/pool
per-class = 4
iterations = 10
preview = true

[metatrain]
pool = runs/pool
val = data/val.h5
out = runs/meta
way = 3
shot = 1
query = 3
steps = 4
episodes-per-step = 2
val-every = 2
val-episodes = 6
val-way = 3
val-query = 3
checkpoint-every = 2

[eval]
data = test=data/test.h5
meta = meta=runs/meta
methods = nn,lora-avg,meta
way = 3
shots = 1,2
query = 3
episodes = 12
timing-episodes = 2
out = runs/eval
INI
stage zoo mpirun2 "$B" zoo --config own.ini
for k in 000 001 002 003; do
  for f in adapter_model.safetensors adapter_config.json task.json; do
    [ -f runs/zoo/lora_$k/$f ] || fail "runs/zoo/lora_$k/$f missing"
  done
done
[ -f runs/zoo/manifest.json ] || fail "no zoo manifest"
stage invert mpirun2 "$B" invert --config own.ini
for f in index.json summary.json lora_000.h5 lora_003.h5 lora_000.png; do [ -f runs/pool/$f ] || fail "runs/pool/$f missing"; done
# A command-line value overrides the file's (--steps).
stage metatrain mpirun2 "$B" metatrain --config own.ini --steps 6
for f in adapter_model.safetensors adapter_config.json metatrain.json; do [ -f runs/meta/$f ] || fail "runs/meta/$f missing"; done
stage eval mpirun2 "$B" eval --config own.ini
for f in results.csv results.json; do [ -f runs/eval/$f ] || fail "runs/eval/$f missing"; done
# Imported at the model's size: no stage resizes.
for s in zoo invert metatrain eval; do
  ! grep -q "resized" $s.txt || { cat $s.txt; fail "$s resized images that were imported at 224 px"; }
done
"$PY" - <<'PY'
import csv, json
m = json.load(open("runs/meta/metatrain.json"))
assert m["world_size"] == 2 and m["steps"] == 6, m
assert m["val_initial"] is not None and m["val_final"] is not None, m
rows = list(csv.DictReader(open("runs/eval/results.csv")))
got = {(r["method"], r["shot"]) for r in rows}
for meth in ("nn", "lora-avg", "meta"):
    for shot in ("1", "2"):
        assert (meth, shot) in got, (meth, shot, got)
for r in rows:
    assert 0 <= float(r["mean"]) <= 100, r
print("ok: val", m["val_initial"]["val_mean"], "->", m["val_final"]["val_mean"], "; eval",
      ", ".join(f'{r["method"]} {r["shot"]}-shot {float(r["mean"]):.1f}' for r in rows))
PY

# 5. predict: raw folders of mixed sizes (bare model and with the meta-LoRA).
stage predict "$B" predict --config own.ini --lora runs/meta --support sup --query qry --out preds.json
grep -q "of 12 support and query images resized to the model's 224x224" predict.txt \
  || { cat predict.txt; fail "no resize warning from predict"; }
stage predict_csv "$B" predict --config own.ini --support sup --query qry,qry/fern_1.png --out preds.csv
"$PY" - <<'PY'
import csv, json
j = json.load(open("preds.json"))
assert j["classes"] == ["cactus", "fern", "jelly"], j["classes"]
assert len(j["predictions"]) == 6, len(j["predictions"])  # README.txt is not a query
for p in j["predictions"]:
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-6 and p["prediction"] in j["classes"], p
rows = list(csv.reader(open("preds.csv")))
assert rows[0][:3] == ["query", "prediction", "probability"] and len(rows) == 1 + 7, rows
for r in rows[1:]:
    assert abs(sum(float(x) for x in r[3:]) - 1) < 1e-4, r
right = sum(p["query"].split("/")[-1].split("_")[0] == p["prediction"] for p in j["predictions"])
print(f"ok: predict: 6 queries, probabilities sum to 1, {right} of 6 right; CSV with {len(rows) - 1} rows")
PY
echo "own_data: the whole pipeline from raw folders in $(( $(date +%s) - T0 )) s"
