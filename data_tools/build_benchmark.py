#!/usr/bin/python3
"""Builds the embedded benchmark (DESIGN 3) from real data that Debian ships.

Glyphs: class = one character; samples = that character rendered in the fonts of Debian font
packages (different families, weights, regional variants) with a small random affine jitter,
32x32 RGB. Fashion-MNIST (package dataset-fashion-mnist) is a cross-domain set.

Splits, by class (one HDF5 file each, DESIGN 3 format):
  base        Latin, Greek, Cyrillic, symbols   pre-training of the VFM and the BN prior
  zoo         Han characters                    the 5-way tasks the LoRA zoo is pre-tuned on
  val         Han characters (disjoint)         validation during meta-training
  test        Han characters (disjoint)         in-domain few-shot evaluation
  cross_hangul  Hangul syllables                cross-domain: a held-out script
  cross_fashion Fashion-MNIST test set          cross-domain: photographs of clothing

Deterministic: the same seed and fonts give byte-identical files (no HDF5 timestamps).

  /usr/bin/python3 data_tools/build_benchmark.py --out data/demo [--preset demo|quick] [--seed 0]
"""
import argparse
import gzip
import hashlib
import json
import os
import sys
import time
import unicodedata

import h5py
import numpy as np
from fontTools.ttLib import TTCollection, TTFont
from PIL import Image, ImageDraw, ImageFont

VERSION = "3"
SIZE = 32          # stored image side
CANVAS = 64        # rendering canvas before the jitter and the downsampling
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]

# Font faces: (file, face index in a collection or 0).
D = "/usr/share/fonts/truetype/"
O = "/usr/share/fonts/opentype/noto/"
ALPHABETIC_FACES = [(D + "dejavu/" + f, 0) for f in [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSans-ExtraLight.ttf", "DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf"]] + [(D + "freefont/" + f, 0) for f in [
    "FreeSans.ttf", "FreeSansBold.ttf", "FreeSansOblique.ttf", "FreeSerif.ttf", "FreeSerifBold.ttf",
    "FreeSerifItalic.ttf", "FreeMono.ttf", "FreeMonoBold.ttf"]] + [(D + "liberation2/" + f, 0) for f in [
    "LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf", "LiberationSans-Italic.ttf",
    "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf"]] + [(D + "noto/" + f, 0) for f in [
    "NotoSans-Regular.ttf", "NotoSans-Bold.ttf", "NotoSans-Italic.ttf", "NotoSerif-Regular.ttf",
    "NotoSerif-Bold.ttf", "NotoSerif-Italic.ttf", "NotoSansMono-Regular.ttf", "NotoSansMono-Bold.ttf"]]
HAN_FACES = [(O + "NotoSansCJK-Regular.ttc", i) for i in (0, 2, 3)] + [(O + "NotoSansCJK-Bold.ttc", i) for i in (0, 2)] + \
            [(O + "NotoSerifCJK-Regular.ttc", i) for i in (0, 2, 3)] + [(O + "NotoSerifCJK-Bold.ttc", 2)] + \
            [(D + "arphic/ukai.ttc", 0), (D + "arphic/ukai.ttc", 2), (D + "arphic/uming.ttc", 0),
             (D + "arphic/uming.ttc", 2), (D + "wqy/wqy-microhei.ttc", 0), (D + "wqy/wqy-zenhei.ttc", 0),
             (D + "wqy/wqy-zenhei.ttc", 2)]
HANGUL_FACES = [(O + "NotoSansCJK-Regular.ttc", 1), (O + "NotoSansCJK-Bold.ttc", 1), (O + "NotoSansCJK-Regular.ttc", 6),
                (O + "NotoSerifCJK-Regular.ttc", 1), (O + "NotoSerifCJK-Bold.ttc", 1), (D + "wqy/wqy-microhei.ttc", 0),
                (D + "wqy/wqy-zenhei.ttc", 0), (D + "wqy/wqy-zenhei.ttc", 2)]

PRESETS = {
    # classes per split and images per class
    # base_symbols caps the symbol classes (many symbols differ only in fine detail at 32 px);
    # base_per_class: more images per base class for pre-training.
    # zoo_per_class: the zoo's LoRAs train on 80% of these and measure held-out accuracy on the rest.
    "demo": dict(base=None, base_symbols=150, base_per_class=48, zoo=600, zoo_per_class=48, val=150, test=300,
                 hangul=150, per_class=24, fashion_per_class=300),
    "quick": dict(base=80, base_symbols=40, base_per_class=20, zoo=40, zoo_per_class=20, val=15, test=30, hangul=20,
                  per_class=20, fashion_per_class=40),
}


def cmap_of(path, index):
    if path.endswith(".ttc"):
        font = TTCollection(path).fonts[index]
    else:
        font = TTFont(path, lazy=True)
    return set(font.getBestCmap().keys())


class Faces:
    """Loaded faces with their coverage; only faces whose file exists are used."""

    def __init__(self, faces):
        self.faces = []
        for path, index in faces:
            if not os.path.exists(path):
                continue
            self.faces.append((path, index, cmap_of(path, index), ImageFont.truetype(path, 44, index=index)))
        if not self.faces:
            sys.exit("build_benchmark: none of the fonts is installed (run launch/setup.sh --data)")

    def covering(self, ch):
        return [f for f in self.faces if ord(ch) in f[2]]

    def names(self):
        return [f"{os.path.basename(p)}#{i}" for p, i, _, _ in self.faces]


def render(ch, font, rng):
    """One sample: the glyph centred on a 64x64 canvas, random affine jitter, 32x32."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    l, t, r, b = draw.textbbox((0, 0), ch, font=font)
    draw.text(((CANVAS - (r - l)) / 2 - l, (CANVAS - (b - t)) / 2 - t), ch, fill=255, font=font)
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.85, 1.1)
    shear = rng.uniform(-0.15, 0.15)
    tx, ty = rng.uniform(-3, 3, size=2)
    # inverse map (output -> input) about the centre
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s + shear], [s, c]]) / scale
    cx = CANVAS / 2
    off = np.array([cx, cx]) - m @ np.array([cx + tx, cx + ty])
    img = img.transform(img.size, Image.AFFINE, (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1]),
                        resample=Image.BILINEAR)
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    a = 255 - np.asarray(img, dtype=np.uint8)  # dark glyph on white paper
    return np.repeat(a[:, :, None], 3, axis=2)


def fingerprint(ch, faces):
    f = faces.covering(ch)
    if not f:
        return None
    return render(ch, f[0][3], np.random.default_rng(0))[:, :, 0] // 32


def alphabetic_classes(faces, min_faces):
    """Latin, Greek, Cyrillic letters/digits and symbols, without homoglyphs of an earlier class."""
    ranges = [("Latin", [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x17F)]),
              ("Greek", [(0x391, 0x3A9), (0x3B1, 0x3C9)]),
              ("Cyrillic", [(0x410, 0x44F), (0x402, 0x40F), (0x452, 0x45F)]),
              ("Symbols", [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E), (0xA1, 0xBF), (0x2190, 0x21FF),
                           (0x2200, 0x22FF), (0x25A0, 0x25FF), (0x2600, 0x266F)])]
    seen, out = set(), []
    for script, rs in ranges:
        for a, b in rs:
            for cp in range(a, b + 1):
                ch = chr(cp)
                if unicodedata.category(ch).startswith(("C", "Z")) or ch in ("×", "÷") and script != "Symbols":
                    continue
                if len(faces.covering(ch)) < min_faces:
                    continue
                fp = fingerprint(ch, faces)
                key = fp.tobytes()
                if fp.sum() < 8 or key in seen:  # blank or a homoglyph (e.g. Cyrillic A == Latin A)
                    continue
                seen.add(key)
                out.append((ch, script))
    return out


def block_classes(faces, start, end, script, min_faces):
    return [(chr(cp), script) for cp in range(start, end + 1) if len(faces.covering(chr(cp))) >= min_faces]


def render_split(classes, faces, per_class, rng):
    n = len(classes) * per_class
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int32)
    k = 0
    for label, (ch, _) in enumerate(classes):
        cov = faces.covering(ch)
        order = rng.permutation(len(cov))
        for j in range(per_class):
            images[k] = render(ch, cov[order[j % len(cov)]][3], rng)  # cycle through the faces
            labels[k] = label
            k += 1
    return images, labels


def write_split(path, images, labels, class_names, class_script, attrs):
    tmp = path + ".tmp"
    with h5py.File(tmp, "w", track_order=False) as f:
        f.create_dataset("images", data=images, chunks=(min(256, len(images)), SIZE, SIZE, 3), compression="gzip",
                         compression_opts=4, shuffle=True, track_times=False)
        f.create_dataset("labels", data=labels, track_times=False)
        f.create_dataset("class_names", data=np.array(class_names, dtype=h5py.string_dtype()), track_times=False)
        f.create_dataset("class_script", data=np.array(class_script, dtype=h5py.string_dtype()), track_times=False)
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, path)


def fashion(per_class, rng):
    def idx(name):
        with gzip.open(os.path.join(FASHION_DIR, name)) as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(magic & 0xFF)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    x, y = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)])
    keep.sort()
    x = np.pad(x[keep], ((0, 0), (2, 2), (2, 2)))  # 28 -> 32, the 2-pixel frame is background
    return np.repeat(x[:, :, :, None], 3, axis=3), y[keep].astype(np.int32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest says it is complete")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    if os.path.exists(manifest_path) and not args.force:
        m = json.load(open(manifest_path))
        if m.get("preset") == args.preset and m.get("seed") == args.seed and m.get("version") == VERSION and all(
                os.path.exists(os.path.join(args.out, s["file"])) for s in m["splits"].values()):
            print(f"build_benchmark: {args.out} is complete ({args.preset}, seed {args.seed}); --force rebuilds")
            return
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    alpha = Faces(ALPHABETIC_FACES)
    han = Faces(HAN_FACES)
    hangul = Faces(HANGUL_FACES)

    base = alphabetic_classes(alpha, min_faces=8)
    symbols = [i for i, (_, sc) in enumerate(base) if sc == "Symbols"]
    drop = set(symbols) - set(np.array(symbols)[rng.permutation(len(symbols))[:p["base_symbols"]]].tolist())
    base = [c for i, c in enumerate(base) if i not in drop]
    if p["base"]:
        base = [base[i] for i in sorted(rng.permutation(len(base))[:p["base"]])]
    han_all = block_classes(han, 0x4E00, 0x9FFF, "Han", min_faces=len(han.faces))
    han_all = [han_all[i] for i in rng.permutation(len(han_all))]
    nz, nv, nt = p["zoo"], p["val"], p["test"]
    if nz + nv + nt > len(han_all):
        sys.exit(f"build_benchmark: only {len(han_all)} Han characters are covered by every face")
    zoo, val, test = han_all[:nz], han_all[nz:nz + nv], han_all[nz + nv:nz + nv + nt]
    hangul_all = block_classes(hangul, 0xAC00, 0xD7A3, "Hangul", min_faces=len(hangul.faces))
    cross = [hangul_all[i] for i in sorted(rng.permutation(len(hangul_all))[:p["hangul"]])]

    common = {"benchmark": "lorarecycle glyphs", "version": VERSION, "preset": args.preset, "seed": args.seed,
              "image_size": SIZE, "source": "characters rendered from Debian font packages with affine jitter"}
    manifest = {"version": VERSION, "preset": args.preset, "seed": args.seed, "splits": {}}
    for name, classes, faces in [("base", base, alpha), ("zoo", zoo, han), ("val", val, han), ("test", test, han),
                                 ("cross_hangul", cross, hangul)]:
        per_class = {"base": p["base_per_class"], "zoo": p["zoo_per_class"]}.get(name, p["per_class"])
        images, labels = render_split(classes, faces, per_class, np.random.default_rng([args.seed, len(name)]))
        fname = f"{name}.h5"
        write_split(os.path.join(args.out, fname), images, labels, [c for c, _ in classes],
                    [s for _, s in classes], dict(common, split=name, fonts=json.dumps(faces.names())))
        scripts = {}
        for _, s in classes:
            scripts[s] = scripts.get(s, 0) + 1
        manifest["splits"][name] = {"file": fname, "classes": len(classes), "images": int(len(labels)),
                                    "per_class": per_class, "scripts": scripts}
        print(f"build_benchmark: {name}: {len(classes)} classes, {len(labels)} images, scripts {scripts}", flush=True)
    fx, fy = fashion(p["fashion_per_class"], np.random.default_rng([args.seed, 99]))
    write_split(os.path.join(args.out, "cross_fashion.h5"), fx, fy, FASHION_NAMES, ["Fashion-MNIST"] * 10,
                dict(common, split="cross_fashion", source="Fashion-MNIST t10k (Debian dataset-fashion-mnist), padded to 32x32"))
    manifest["splits"]["cross_fashion"] = {"file": "cross_fashion.h5", "classes": 10, "images": int(len(fy)),
                                           "per_class": p["fashion_per_class"], "scripts": {"Fashion-MNIST": 10}}
    print(f"build_benchmark: cross_fashion: 10 classes, {len(fy)} images", flush=True)
    for s in manifest["splits"].values():
        s["sha256"] = hashlib.sha256(open(os.path.join(args.out, s["file"]), "rb").read()).hexdigest()
    manifest["build_seconds"] = round(time.time() - t0, 1)
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(manifest_path + ".tmp", manifest_path)
    print(f"build_benchmark: done in {manifest['build_seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
