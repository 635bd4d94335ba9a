#!/usr/bin/python3
"""data_tools/import_folder.py on tiny generated trees: formats and modes, nested folders, skips,
the --size default, the few-shot split layouts (class folders split by fraction or lists,
miniImageNet, CIFAR-FS), and the messages of the errors users hit.

  /usr/bin/python3 tests/data_tools/import_folder_test.py
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np
from PIL import Image

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data_tools", "import_folder.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("import_folder", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(path, color, size=(12, 10), mode="RGB"):
    """A solid image of `color` (an int for grey modes) in the format of path's extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args, "--jobs", "2"], capture_output=True, text=True, timeout=60)


def read(path):
    with h5py.File(path, "r") as f:
        names = [c.decode() if isinstance(c, bytes) else c for c in f["class_names"]]
        return np.array(f["images"]), np.array(f["labels"]), names, dict(f.attrs)


def class_tree(root, classes, per_class=2, size=(8, 8)):
    for i, c in enumerate(classes):
        for k in range(per_class):
            save(os.path.join(root, c, f"{k}.png"), (10 * i, 5 * k, 200), size)


class ToolTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def assert_ok(self, r):
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def assert_fails(self, r, *texts):
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        for t in texts:
            self.assertIn(t, r.stderr)

    def assert_no_tmp(self, directory):
        for d, _, files in os.walk(directory):
            self.assertFalse([f for f in files if f.endswith(".tmp")], d)


class ClassFolders(ToolTest):
    # (file, colour expected after the import); in import order within the class: sorted by relative path
    CAT = [("a.png", (255, 0, 0)), ("b.jpg", (0, 255, 0)), ("c.gif", (0, 0, 255)), ("d.tif", (255, 255, 0)),
           ("e.bmp", (0, 255, 255)), ("grey.png", (100, 100, 100)), ("rgba.png", (255, 255, 255)),
           ("sub/deeper/n.png", (7, 77, 177))]

    def make_tree(self):
        root = self.path("photos")
        sizes = [(40, 30), (30, 64), (17, 17), (50, 20), (9, 33), (20, 20), (25, 30), (31, 19)]
        for (name, color), size in zip(self.CAT, sizes):
            if name == "grey.png":
                save(os.path.join(root, "cat", name), 100, size, "L")
            elif name == "rgba.png":
                save(os.path.join(root, "cat", name), (0, 0, 0, 0), size, "RGBA")  # transparent black -> white
            else:  # c.gif is stored as a palette (P) image
                save(os.path.join(root, "cat", name), color, size)
        with open(os.path.join(root, "cat", "notes.txt"), "w") as f:
            f.write("not an image\n")
        with open(os.path.join(root, "cat", "broken.png"), "wb") as f:
            f.write(b"this is not a png")
        with open(os.path.join(root, "cat", "._a.jpg"), "wb") as f:  # macOS AppleDouble
            f.write(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
        save(os.path.join(root, "dog", "x.webp"), (10, 20, 30), (64, 32))
        save(os.path.join(root, "dog", "y.ppm"), (40, 50, 60), (32, 64))
        return root

    def test_skip_bad_imports_all_images_and_reports_skips(self):
        root = self.make_tree()
        out = self.path("new", "dir", "all.h5")  # its directory does not exist yet
        r = run(root, out, "--size", "16", "--skip-bad")
        self.assert_ok(r)
        x, y, names, attrs = read(out)
        self.assertEqual(x.shape, (10, 16, 16, 3))
        self.assertEqual(x.dtype, np.uint8)
        self.assertEqual(y.dtype, np.int32)
        self.assertEqual(list(y), [0] * 8 + [1] * 2)
        self.assertEqual(names, ["cat", "dog"])
        self.assertEqual((attrs["split"], attrs["image_size"]), ("custom", 16))
        self.assertEqual(attrs["source"], os.path.abspath(root))
        for i, (name, color) in enumerate(self.CAT + [("x.webp", (10, 20, 30)), ("y.ppm", (40, 50, 60))]):
            tolerance = 8 if name.endswith((".jpg", ".webp")) else 1
            self.assertTrue(np.all(np.abs(x[i].astype(int) - color) <= tolerance), f"{name}: {x[i].mean((0, 1))}")
        self.assertIn("layout: class folders", r.stdout)
        self.assertIn("skipped 3 file(s)", r.stdout)
        self.assertRegex(r.stdout, r"hidden file: 1: .*cat/\._a\.jpg")
        self.assertRegex(r.stdout, r"not an image .*: 1: .*cat/notes\.txt")
        self.assertRegex(r.stdout, r"unreadable image .*: 1: .*cat/broken\.png")
        self.assertIn(f"{out}: split custom, 2 classes, 10 images, 16x16, 3 skipped", r.stdout)
        self.assert_no_tmp(self.tmp)

    def test_bad_image_stops_without_skip_bad(self):
        root = self.make_tree()
        out = self.path("out", "all.h5")
        r = run(root, out, "--size", "16")
        self.assert_fails(r, "--skip-bad", os.path.join(root, "cat", "broken.png"))
        self.assertFalse(os.path.exists(out))
        self.assert_no_tmp(self.tmp)

    def test_min_per_class_names_the_class(self):
        root = self.make_tree()
        r = run(root, self.path("all.h5"), "--size", "8", "--skip-bad", "--min-per-class", "3")
        self.assert_fails(r, "class 'dog'", "has 2 images", "--min-per-class 3")


class SizeDefault(ToolTest):
    def import_size(self, *args):
        root = self.path("two")
        class_tree(root, ["a", "b"], per_class=1)
        out = self.path("out.h5")
        self.assert_ok(run(root, out, *args))
        return read(out)[0].shape[1:]

    def test_from_vision_config(self):
        os.makedirs(self.path("vision"))
        with open(self.path("vision", "config.json"), "w") as f:
            json.dump({"model_type": "clip_vision_model", "image_size": 48, "patch_size": 16}, f)
        self.assertEqual(self.import_size("--model", self.path("vision")), (48, 48, 3))

    def test_from_full_clip_config(self):
        os.makedirs(self.path("clip"))
        with open(self.path("clip", "config.json"), "w") as f:
            json.dump({"model_type": "clip", "projection_dim": 512,
                       "text_config": {"hidden_size": 512}, "vision_config": {"image_size": 40}}, f)
        self.assertEqual(self.import_size("--model", self.path("clip")), (40, 40, 3))

    def test_clip_default_and_explicit(self):
        self.assertEqual(self.import_size(), (224, 224, 3))
        self.assertEqual(self.import_size("--size", "20"), (20, 20, 3))

    def test_help_names_the_default(self):
        r = run("--help")
        self.assert_ok(r)
        self.assertIn("224", r.stdout)
        self.assertIn("--model", r.stdout)


class FewShotLayouts(ToolTest):
    def check_splits(self, out, expected):
        """expected: {split: [class names]}; every class has 4 images."""
        self.assertEqual(sorted(os.listdir(out)), sorted(f"{s}.h5" for s in expected))
        for split, classes in expected.items():
            x, y, names, attrs = read(os.path.join(out, f"{split}.h5"))
            self.assertEqual(names, sorted(classes))
            self.assertEqual(attrs["split"], split)
            self.assertEqual(x.shape, (4 * len(classes), 8, 8, 3))
            self.assertEqual(list(y), [c for c in range(len(classes)) for _ in range(4)])

    def test_miniimagenet(self):
        root = self.path("mini")
        wnids = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
                 "test": ["n01930112", "n01981276"]}
        for split, classes in wnids.items():
            rows = ["filename,label"]
            for c in classes:
                for k in range(4):
                    name = f"{c}{k + 1:08d}.jpg"
                    save(os.path.join(root, "images", name), (k * 40, 90, 30), (84, 84))
                    rows.append(f"{name},{c}")
            with open(os.path.join(root, f"{split}.csv"), "w") as f:
                f.write("\n".join(rows) + "\n")
        out = self.path("data", "mini")
        r = run(root, out, "--size", "8")
        self.assert_ok(r)
        self.assertIn("layout: miniImageNet", r.stdout)
        self.check_splits(out, wnids)
        self.assertIn(f"{os.path.join(out, 'train.h5')}: split train, 3 classes, 12 images, 8x8, 0 skipped", r.stdout)

    def test_cifar_fs(self):
        root = self.path("cifar100")
        lists = {"train": ["apple", "bee", "bowl"], "val": ["cloud", "crab"], "test": ["fox", "girl"]}
        class_tree(os.path.join(root, "data"), [c for cs in lists.values() for c in cs], per_class=4)
        os.makedirs(os.path.join(root, "splits", "bertinetto"))
        for split, classes in lists.items():
            with open(os.path.join(root, "splits", "bertinetto", f"{split}.txt"), "w") as f:
                f.write("\n".join(classes) + "\n")
        out = self.path("cifar-fs")
        r = run(root, out, "--size", "8")
        self.assert_ok(r)
        self.assertIn("layout: class lists", r.stdout)
        self.check_splits(out, lists)
        r = run(root, self.path("again"), "--size", "8", "--splits", os.path.join(root, "splits", "bertinetto"))
        self.assert_ok(r)
        self.check_splits(self.path("again"), lists)


class ClassSplits(ToolTest):
    CLASSES = [f"class{i:02d}" for i in range(10)]

    def setUp(self):
        super().setUp()
        self.root = self.path("tree")
        class_tree(self.root, self.CLASSES, per_class=4)

    def split_by_fraction(self, seed):
        out = self.path(f"seed{seed}")
        r = run(self.root, out, "--size", "8", "--split-classes", "0.6,0.2,0.2", "--seed", str(seed))
        self.assert_ok(r)
        return {s: read(os.path.join(out, f"{s}.h5"))[2] for s in ("train", "val", "test")}

    def assert_partition(self, splits):
        names = [c for cs in splits.values() for c in cs]
        self.assertEqual(sorted(names), self.CLASSES)  # disjoint and covering
        for cs in splits.values():
            self.assertEqual(cs, sorted(cs))

    def test_split_classes_is_seeded(self):
        a, b, c = self.split_by_fraction(1), self.split_by_fraction(1), self.split_by_fraction(2)
        self.assert_partition(a)
        self.assertEqual([len(a[s]) for s in ("train", "val", "test")], [6, 2, 2])
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        self.assert_partition(c)

    def test_split_counts(self):
        split_counts = load_tool().split_counts
        self.assertEqual(split_counts([0.64, 0.16, 0.20], 100, ""), [64, 16, 20])
        for n in range(3, 40):
            counts = split_counts([0.64, 0.16, 0.20], n, "")
            self.assertEqual(sum(counts), n)
            self.assertGreaterEqual(min(counts), 1)

    def test_class_lists(self):
        lists = {"train": self.CLASSES[:5], "val": self.CLASSES[5:7], "test": self.CLASSES[7:]}
        for split, classes in lists.items():
            with open(self.path(f"{split}.txt"), "w") as f:
                f.write("\n".join(reversed(classes)) + "\n")
        spec = ",".join(f"{s}={self.path(s + '.txt')}" for s in lists)
        out = self.path("lists")
        self.assert_ok(run(self.root, out, "--size", "8", "--class-lists", spec))
        got = {s: read(os.path.join(out, f"{s}.h5"))[2] for s in lists}
        self.assertEqual(got, lists)

    def test_class_list_with_unknown_class(self):
        with open(self.path("train.txt"), "w") as f:
            f.write("class00\nzebra\n")
        r = run(self.root, self.path("out"), "--size", "8", "--class-lists", f"train={self.path('train.txt')}")
        self.assert_fails(r, "'zebra'", self.path("train.txt"))


class Errors(ToolTest):
    def test_empty_root(self):
        os.makedirs(self.path("empty"))
        r = run(self.path("empty"), self.path("out.h5"))
        self.assert_fails(r, self.path("empty"), "class folders", "miniImageNet", "class lists")

    def test_class_folders_without_images(self):
        with open(self.path("notes.txt"), "w"):
            pass
        for c in ("a", "b"):
            os.makedirs(self.path("root", c))
            with open(self.path("root", c, "readme.txt"), "w") as f:
                f.write("x")
        r = run(self.path("root"), self.path("out.h5"))
        self.assert_fails(r, self.path("root"), "no images", "miniImageNet")


if __name__ == "__main__":
    unittest.main()
