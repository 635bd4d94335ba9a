#!/usr/bin/python3
"""Imports your own labelled images into the benchmark's HDF5 image-set format (docs/formats.md):
/images uint8 [N,S,S,3], /labels int32 (0..C-1, classes sorted by name), /class_names, root
attributes split, source, image_size. Every format PIL reads is accepted (png, jpg, gif (first
frame), tif, bmp, webp, ppm, ...); images become RGB (transparency composited on white), their
shorter side is resized to S (bicubic) and the centre SxS crop kept, as CLIP's preprocessor does.

Layouts (the one found is printed; --format forces one):
  folders        ROOT/<class>/**/<image>  (images in sub-folders belong to the class) -> OUT.h5
                 split by classes with --split-classes or --class-lists -> OUT/<split>.h5
  miniimagenet   ROOT/images/*.jpg + ROOT/{train,val,test}.csv (filename,label) -> OUT/<csv>.h5
  class-lists    ROOT/data/<class>/ + ROOT/splits/<name>/{train,val,test}.txt (CIFAR-FS, FC100;
                 one class a line), or the lists of --splits DIR -> OUT/<txt>.h5

Examples:
  import_folder.py photos/ data/photos.h5 --model models/clip-vit-b16   # S = image_size of the model
  import_folder.py photos/ data/photos --split-classes 0.64,0.16,0.20 --seed 1
  import_folder.py photos/ data/photos --class-lists train=tr.txt,val=va.txt,test=te.txt
  import_folder.py mini-imagenet/ data/mini --size 84
  import_folder.py cifar100/ data/cifar-fs --size 32                     # cifar100/splits/bertinetto/
  import_folder.py cifar100/ data/fc100 --splits cifar100/splits/fc100 --size 32

Hidden files (.DS_Store, macOS ._x.jpg, __MACOSX/) and files with no PIL reader for their
extension are skipped; an image that cannot be decoded stops the import unless --skip-bad. Skips
are summarised at the end. Files are written as OUT.tmp and renamed when every split is complete.
"""
import argparse
import csv
import functools
import io
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import time

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

CLIP_SIZE = 224
BLOCK = 256                 # images per HDF5 write (and per /images chunk)
PROGRESS_EVERY_S = 2.0
SHOWN_PER_REASON = 3        # paths listed per skip reason
SPLIT_ORDER = ("train", "val", "test")
IMAGE_EXTS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

HIDDEN = "hidden file"
NOT_IMAGE = "not an image (no PIL reader for its extension)"
UNREADABLE = "unreadable image (skipped by --skip-bad)"
OUTSIDE = "not in a class folder"

LAYOUT_HELP = ("class folders (ROOT/<class>/<images>), miniImageNet (ROOT/images/ + train.csv, val.csv, "
               "test.csv), class lists (ROOT/data/<class>/ + ROOT/splits/<name>/*.txt)")


class ImportFailure(Exception):
    """A problem in the user's input or options; main prints it as one line and exits 1."""


class Skips:
    """Files left out, by reason, with the first few paths of each reason."""

    def __init__(self):
        self.count, self.shown = {}, {}

    def add(self, reason, path):
        self.count[reason] = self.count.get(reason, 0) + 1
        if len(self.shown.setdefault(reason, [])) < SHOWN_PER_REASON:
            self.shown[reason].append(path)

    def total(self):
        return sum(self.count.values())

    def merge(self, other):
        for reason, n in other.count.items():
            for path in other.shown[reason]:
                self.add(reason, path)
            self.count[reason] += n - len(other.shown[reason])


class Split:
    """One output file: its name and the images of each of its classes."""

    def __init__(self, name):
        self.name, self.classes, self.skips = name, {}, Skips()

    def images(self):
        return sum(len(v) for v in self.classes.values())


# ---------------------------------------------------------------- reading one image

def to_rgb(im):
    """RGB of any PIL mode: transparency on white, 16-bit grey scaled to 8 bits."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    if im.mode == "I" or im.mode.startswith("I;16"):
        grey = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return im.convert("RGB")


def resize_crop(im, size):
    """Shorter side to `size` (bicubic), then the centre size x size crop."""
    w, h = im.size
    s = size / min(w, h)
    # Half rounded up, as the C++ resize (llround) does.
    im = im.resize((max(size, int(w * s + 0.5)), max(size, int(h * s + 0.5))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode(path, size):
    """(image, None, upscaled) or (None, error text, False); runs in the worker processes."""
    try:
        with Image.open(path) as im:
            return resize_crop(to_rgb(im), size), None, min(im.size) < size
    except UnidentifiedImageError:
        return None, "PIL does not recognise its contents as an image", False
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
        return None, (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__, False


# ---------------------------------------------------------------- finding the images

def is_hidden(name):
    return name.startswith(".") or name == "__MACOSX"


def class_images(class_dir, skips):
    """Image files under class_dir, recursively, sorted by relative path; the rest go to skips."""
    found = []
    for d, subdirs, files in os.walk(class_dir, followlinks=True):
        for s in [s for s in subdirs if is_hidden(s)]:
            skips.add(HIDDEN, os.path.join(d, s) + os.sep)
            subdirs.remove(s)
        for f in files:
            path = os.path.join(d, f)
            if is_hidden(f):
                skips.add(HIDDEN, path)
            elif os.path.splitext(f)[1].lower() not in IMAGE_EXTS:
                skips.add(NOT_IMAGE, path)
            else:
                found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, class_dir).split(os.sep))


def class_folders(root, skips):
    """Sorted class folder names of root; files beside them go to skips."""
    names = []
    for e in sorted(os.listdir(root)):
        path = os.path.join(root, e)
        if is_hidden(e):
            skips.add(HIDDEN, path)
        elif os.path.isdir(path):
            try:
                e.encode("utf-8")
            except UnicodeEncodeError:
                raise ImportFailure(f"{path!r}: the class folder's name is not UTF-8 (HDF5 stores class names as "
                                    "UTF-8): rename the folder") from None
            names.append(e)
        else:
            skips.add(OUTSIDE, path)
    return names


def no_images_error(root, what):
    return ImportFailure(f"{root}: {what}; looked for these layouts: {LAYOUT_HELP} (see --help)")


def folder_split(name, root, classes):
    split = Split(name)
    for c in classes:
        split.classes[c] = class_images(os.path.join(root, c), split.skips)
    return split


def parse_named(text, option, default_names):
    """'a=x,b=y' -> [(a, x), (b, y)]; plain 'x,y,z' takes the names of default_names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items and all("=" in t for t in items):
        pairs = [tuple(s.strip() for s in t.split("=", 1)) for t in items]
    elif not any("=" in t for t in items) and len(items) in default_names:
        pairs = list(zip(default_names[len(items)], items))
    else:
        plain = f" or {' or '.join(str(n) for n in sorted(default_names))} plain values" if default_names else ""
        raise ImportFailure(f"{option} '{text}': give NAME=VALUE pairs (e.g. train=..,val=..,test=..){plain}")
    names = [n for n, _ in pairs]
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", n):
            raise ImportFailure(f"{option}: split name '{n}' is not a plain file name (letters, digits, _ . -)")
    if len(set(names)) != len(names):
        raise ImportFailure(f"{option} {text}: a split name is given twice")
    return pairs


def split_counts(fractions, n, option):
    """Class counts per split: each >= 1, summing to n, the rest by largest remainder."""
    if n < len(fractions):
        raise ImportFailure(f"{option}: {n} classes cannot fill {len(fractions)} splits with one class each")
    raw = [f * n for f in fractions]
    counts = [max(1, int(r)) for r in raw]
    while sum(counts) < n:
        counts[max(range(len(raw)), key=lambda i: raw[i] - counts[i])] += 1
    while sum(counts) > n:
        counts[min((i for i in range(len(raw)) if counts[i] > 1), key=lambda i: raw[i] - counts[i])] -= 1
    return counts


def splits_by_fraction(root, classes, text, seed):
    pairs = parse_named(text, "--split-classes", {2: ("train", "test"), 3: SPLIT_ORDER})
    try:
        fractions = [float(v) for _, v in pairs]
    except ValueError:
        raise ImportFailure(f"--split-classes {text}: the fractions must be numbers, e.g. 0.64,0.16,0.20") from None
    if min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ImportFailure(f"--split-classes {text}: the fractions must be positive and sum to 1 "
                            f"(they sum to {sum(fractions):g})")
    order = list(classes)
    random.Random(seed).shuffle(order)
    splits, start = [], 0
    for (name, _), k in zip(pairs, split_counts(fractions, len(order), "--split-classes")):
        splits.append(folder_split(name, root, sorted(order[start:start + k])))
        start += k
    return splits


def read_class_list(path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            names = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    except OSError as e:
        raise ImportFailure(f"class list {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ImportFailure(f"class list {path}: not UTF-8 text: save it as UTF-8") from None
    if not names:
        raise ImportFailure(f"class list {path} is empty: it needs one class folder name a line")
    return names


def splits_from_lists(root, classes, lists):
    """lists: [(split name, list file)]; every class must be a folder of root, in one list only."""
    known, owner, splits = set(classes), {}, []
    for name, path in lists:
        names = read_class_list(path)
        for c in names:
            if c not in known:
                raise ImportFailure(f"class list {path} names class '{c}', which is not a folder of {root}: "
                                    "fix the list or the folder name")
            if c in owner:
                raise ImportFailure(f"class '{c}' is in both {owner[c]} and {path}: a class belongs to one split")
            owner[c] = path
        splits.append(folder_split(name, root, sorted(names)))
    return splits


def list_files(split_dir):
    """The split lists of a directory: [(stem, path)], train/val/test first."""
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(split_dir) if f.endswith(".txt"))
    stems.sort(key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
    return [(s, os.path.join(split_dir, s + ".txt")) for s in stems]


def find_split_dir(root):
    """ROOT/splits itself or its only sub-folder holding *.txt lists; None when there is none."""
    top = os.path.join(root, "splits")
    if not (os.path.isdir(top) and os.path.isdir(os.path.join(root, "data"))):
        return None
    if list_files(top):
        return top
    sets = [d for d in sorted(os.listdir(top))
            if os.path.isdir(os.path.join(top, d)) and list_files(os.path.join(top, d))]
    if len(sets) > 1:
        raise ImportFailure(f"{top} holds several split sets ({', '.join(sets)}): choose one with --splits {top}/NAME")
    return os.path.join(top, sets[0]) if sets else None


def miniimagenet_csvs(root):
    return [(s, os.path.join(root, s + ".csv")) for s in SPLIT_ORDER if os.path.isfile(os.path.join(root, s + ".csv"))]


def miniimagenet_split(root, name, csv_path):
    split = Split(name)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ImportFailure(f"{csv_path}: not UTF-8 text: save it as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        rows = csv.reader(f)
        if [h.strip() for h in next(rows, [])] != ["filename", "label"]:
            raise ImportFailure(f"{csv_path}: the first line must be the header 'filename,label'")
        for i, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ImportFailure(f"{csv_path}:{i}: expected 'filename,label', got {','.join(row)!r}")
            path = os.path.join(root, "images", row[0].strip())
            if os.path.splitext(path)[1].lower() not in IMAGE_EXTS:
                split.skips.add(NOT_IMAGE, path)
            else:
                split.classes.setdefault(row[1].strip(), []).append(path)
    split.classes = {c: sorted(split.classes[c]) for c in sorted(split.classes)}
    return split


# ---------------------------------------------------------------- choosing the layout

def choose_format(a):
    """--format, or the layout ROOT and the options point at; refuses options of another layout."""
    root = a.root
    if not os.path.isdir(root):
        raise ImportFailure(f"{root}: no such directory")
    chooses_classes = a.split_classes or a.class_lists
    fmt = a.format
    if fmt == "auto":
        if chooses_classes:
            fmt = "folders"
        elif a.splits:
            fmt = "class-lists"
        elif os.path.isdir(os.path.join(root, "images")) and miniimagenet_csvs(root):
            fmt = "miniimagenet"
        else:
            fmt = "class-lists" if find_split_dir(root) else "folders"
    if chooses_classes and fmt != "folders":
        raise ImportFailure(f"--split-classes and --class-lists split a class-folder tree; --format {fmt} has "
                            "its own splits")
    if a.split_classes and a.class_lists:
        raise ImportFailure("give --split-classes or --class-lists, not both")
    if a.splits and fmt != "class-lists":
        raise ImportFailure(f"--splits DIR goes with the class-lists layout, not with --format {fmt}")
    return fmt


def miniimagenet_layout(root):
    csvs = miniimagenet_csvs(root)
    if not (csvs and os.path.isdir(os.path.join(root, "images"))):
        raise ImportFailure(f"{root}: --format miniimagenet needs {root}/images/ and train.csv, val.csv or test.csv")
    desc = f"miniImageNet ({root}/images/ + {', '.join(os.path.basename(p) for _, p in csvs)})"
    return desc, [miniimagenet_split(root, name, path) for name, path in csvs], False


def class_lists_layout(root, split_dir, root_skips):
    split_dir = split_dir or find_split_dir(root)
    if not split_dir:
        raise ImportFailure(f"{root}: --format class-lists needs {root}/data/ and {root}/splits/<name>/*.txt, "
                            "or the lists' directory in --splits DIR")
    if not os.path.isdir(split_dir) or not list_files(split_dir):
        raise ImportFailure(f"--splits {split_dir}: not a directory holding split lists (train.txt, val.txt, ...)")
    class_root = os.path.join(root, "data") if os.path.isdir(os.path.join(root, "data")) else root
    lists = list_files(split_dir)
    desc = f"class lists ({class_root}/<class>/ + {split_dir}/{{{','.join(s for s, _ in lists)}}}.txt)"
    return desc, splits_from_lists(class_root, class_folders(class_root, root_skips), lists), False


def folders_layout(a, root_skips):
    root = a.root
    classes = class_folders(root, root_skips)
    if not classes:
        loose = sum(os.path.splitext(e)[1].lower() in IMAGE_EXTS for e in os.listdir(root))
        raise no_images_error(root, f"no class folders (its {loose} images need one folder per class)" if loose
                              else "no class folders")
    desc = f"class folders ({root}/<class>/, {len(classes)} classes)"
    if a.split_classes:
        return (f"{desc} split by --split-classes, seed {a.seed}",
                splits_by_fraction(root, classes, a.split_classes, a.seed), False)
    if a.class_lists:
        lists = parse_named(a.class_lists, "--class-lists", {})
        return f"{desc} split by --class-lists", splits_from_lists(root, classes, lists), False
    split = folder_split(a.split or "custom", root, classes)
    if len(classes) < 2 and split.images():
        raise no_images_error(root, f"only one class folder ('{classes[0]}'); few-shot episodes need 2 or more classes")
    return desc, [split], True


def find_layout(a, root_skips):
    """(description, [Split], one_file) for the options and what ROOT holds."""
    fmt = choose_format(a)
    if fmt == "miniimagenet":
        return miniimagenet_layout(a.root)
    if fmt == "class-lists":
        return class_lists_layout(a.root, a.splits, root_skips)
    return folders_layout(a, root_skips)


# ---------------------------------------------------------------- writing

def image_size(a):
    """--size, else image_size of --model's config.json (CLIPVisionConfig or CLIPConfig), else 224."""
    model_size = None
    if a.model:
        path = os.path.join(a.model, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except OSError as e:
            raise ImportFailure(f"--model {a.model}: cannot read {path} ({e.strerror}); give a HF CLIP model "
                                "directory or set --size") from None
        except ValueError as e:
            raise ImportFailure(f"{path}: not valid JSON ({e}); fix it or set --size") from None
        vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else cfg
        model_size = vision.get("image_size") if isinstance(vision, dict) else None
        if not isinstance(model_size, int) or model_size <= 0:
            raise ImportFailure(f"{path}: no positive integer 'image_size' (in vision_config or at the top); "
                                "set --size")
    size = a.size if a.size is not None else model_size or CLIP_SIZE
    if size <= 0:
        raise ImportFailure(f"--size {size}: must be a positive number of pixels")
    if model_size and size != model_size:
        print(f"import_folder: note: --size {size} differs from the model's image_size {model_size}; embed will "
              "resize the images again", file=sys.stderr)
    return size


def output_paths(out, splits, one_file):
    """[(split, final path)]; creates the output directory."""
    if one_file:
        if os.path.isdir(out):
            raise ImportFailure(f"{out} is a directory; a class-folder import writes one file: give a file name "
                                f"such as {os.path.join(out, 'all.h5')} (or split it with --split-classes)")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        return [(splits[0], out)]
    names = ", ".join(s.name + ".h5" for s in splits)
    if out.endswith(".h5") or os.path.isfile(out):
        raise ImportFailure(f"this layout writes one file per split ({names}) into a directory: give a directory "
                            f"as OUT, not {out}")
    os.makedirs(out, exist_ok=True)
    return [(s, os.path.join(out, s.name + ".h5")) for s in splits]


def check_class_sizes(split, counts, minimum):
    for c, n in counts.items():
        if n < minimum:
            raise ImportFailure(f"class '{c}' (split {split.name}) has {n} images, fewer than --min-per-class "
                                f"{minimum}: add images, remove the class folder, or lower --min-per-class")


class Progress:
    """Images done/total, images/s and ETA on stderr, at most every PROGRESS_EVERY_S."""

    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.last = self.start

    def step(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = int((self.total - self.done) / max(rate, 1e-9))
        print(f"import_folder: {self.done}/{self.total} images ({100 * self.done // max(self.total, 1)}%), "
              f"{rate:.0f} images/s, ETA {eta // 60}m{eta % 60:02d}s", file=sys.stderr, flush=True)


def write_split(split, path, a, size, decoder, progress):
    """Decodes the split's images in order and streams them into path; returns (images, upscaled)."""
    names = list(split.classes)
    jobs = [(label, p) for label, c in enumerate(names) for p in split.classes[c]]
    chunk = max(1, min(BLOCK, len(jobs)))
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", shape=(0, size, size, 3), maxshape=(None, size, size, 3), dtype=np.uint8,
                                  chunks=(chunk, size, size, 3), compression="gzip", compression_opts=4, shuffle=True,
                                  track_times=False)
        labels = f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int32,
                                  chunks=(max(1, min(65536, len(jobs))),), track_times=False)
        f.create_dataset("class_names", data=np.array(names, dtype=h5py.string_dtype()), track_times=False)
        f.attrs["split"] = split.name
        f.attrs["source"] = os.path.abspath(a.root)
        f.attrs["image_size"] = size
        block_x, block_y, counts, upscaled = [], [], dict.fromkeys(names, 0), 0

        def flush():
            n = images.shape[0]
            images.resize(n + len(block_x), axis=0)
            labels.resize(n + len(block_x), axis=0)
            images[n:] = np.stack(block_x)
            labels[n:] = np.array(block_y, dtype=np.int32)
            block_x.clear()
            block_y.clear()

        for (label, p), (x, err, up) in zip(jobs, decoder([p for _, p in jobs])):
            progress.step(1)
            if err is not None:
                if not a.skip_bad:
                    raise ImportFailure(f"{p}: cannot read image ({err}); fix or remove the file, or pass "
                                        "--skip-bad to skip unreadable files")
                split.skips.add(UNREADABLE, p)
                continue
            block_x.append(x)
            block_y.append(label)
            counts[names[label]] += 1
            upscaled += up
            if len(block_x) == BLOCK:
                flush()
        if block_x:
            flush()
        check_class_sizes(split, counts, a.min_per_class)
        return images.shape[0], upscaled


def print_skips(skips):
    if not skips.total():
        return
    print(f"import_folder: skipped {skips.total()} file(s):", flush=True)
    for reason, n in skips.count.items():
        more = f", ... ({n - len(skips.shown[reason])} more)" if n > len(skips.shown[reason]) else ""
        print(f"import_folder:   {reason}: {n}: {', '.join(skips.shown[reason])}{more}", flush=True)


def run(a):
    size = image_size(a)
    root_skips = Skips()
    desc, splits, one_file = find_layout(a, root_skips)
    print(f"import_folder: layout: {desc}", flush=True)
    if a.split and not one_file:
        raise ImportFailure("--split names the one file of a plain class-folder import; here the layout names "
                            "the splits")
    if not any(s.images() for s in splits):
        raise no_images_error(a.root, f"no images in {desc}")
    for s in splits:
        check_class_sizes(s, {c: len(v) for c, v in s.classes.items()}, a.min_per_class)
    targets = output_paths(a.out, splits, one_file)
    progress = Progress(sum(s.images() for s in splits))
    written, done = [], []
    try:
        with multiprocessing.Pool(a.jobs, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
            decoder = functools.partial(pool.imap, functools.partial(decode, size=size), chunksize=8)
            for split, path in targets:
                written.append(path + ".tmp")
                done.append((split, path) + write_split(split, path + ".tmp", a, size, decoder, progress))
        for split, path, *_ in done:
            os.replace(path + ".tmp", path)
    finally:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
    for s in splits:
        root_skips.merge(s.skips)
    print_skips(root_skips)
    upscaled = sum(u for *_, u in done)
    if upscaled:
        print(f"import_folder: note: {upscaled} image(s) had a shorter side below {size} px and were upscaled",
              file=sys.stderr)
    for split, path, n, _ in done:
        print(f"import_folder: {path}: split {split.name}, {len(split.classes)} classes, {n} images, {size}x{size}, "
              f"{split.skips.total()} skipped", flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s ROOT OUT [options]")
    ap.add_argument("root", metavar="ROOT", help="the image tree (see the layouts above)")
    ap.add_argument("out", metavar="OUT", help="OUT.h5 for a single set, a directory for a layout with splits "
                    "(created with its parents)")
    ap.add_argument("--size", type=int, metavar="S", help=f"side S of the stored images in pixels (default: "
                    f"image_size of --model's config.json, else {CLIP_SIZE}, CLIP's)")
    ap.add_argument("--model", metavar="DIR", help="HF CLIP model directory whose config.json gives the default --size")
    ap.add_argument("--format", choices=("auto", "folders", "miniimagenet", "class-lists"), default="auto",
                    help="the layout of ROOT (default: auto, detected as described above)")
    ap.add_argument("--split-classes", metavar="F,F,F", help="split the class folders by classes: fractions of "
                    "train,val,test (or train,test, or NAME=F,...), e.g. 0.64,0.16,0.20; one file per split")
    ap.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the --split-classes shuffle (default: 0)")
    ap.add_argument("--class-lists", metavar="NAME=FILE,...", help="split the class folders by lists of class "
                    "names (one a line), e.g. train=tr.txt,val=va.txt,test=te.txt; one file per split")
    ap.add_argument("--splits", metavar="DIR", help="class-lists layout: the directory of the split lists "
                    "(NAME.txt each); default ROOT/splits/ or its only sub-folder")
    ap.add_argument("--split", metavar="NAME", help="split name stored in the one file of a plain class-folder "
                    "import (default: custom)")
    ap.add_argument("--min-per-class", type=int, default=1, metavar="N",
                    help="refuse classes with fewer images (default: 1)")
    ap.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded instead of stopping")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                    help="decoding processes (default: the cores, at most 8)")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.jobs < 1:
        sys.exit("import_folder: --jobs must be 1 or more")
    try:
        run(a)
    except ImportFailure as e:
        sys.exit(f"import_folder: {e}")
    except KeyboardInterrupt:
        sys.exit("import_folder: interrupted; nothing written")


if __name__ == "__main__":
    main()
