#!/usr/bin/python3
"""data_tools/convert_weights.py against the C++ loaders (ctest convert_weights).

hf-bin: a tiny CLIP (tests/reference/tiny_clip.py) saved as pytorch_model.bin (the full CLIPModel:
text tower, logit_scale, int64 position_ids), converted, and embedded by `lorarecycle embed`: the
features equal those of the original model.safetensors (fp32), or of the rounded weights (fp16,
bf16 with --out and --vision-only, a sharded checkpoint). torchvision-resnet50: a random
torchvision-layout ResNet-50 state dict, converted bit-exactly and loaded as the BN prior by
`lorarecycle invert --prior` (a zoo of no LoRAs: the cheapest command that loads a prior); a
damaged prior is refused by that command. Errors: one line, no traceback.

  LORAREC_BIN=build/lorarecycle /usr/bin/python3 tests/data_tools/convert_weights_test.py
"""
import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "data_tools", "convert_weights.py")
REF = os.path.join(REPO, "tests", "reference", "tiny_clip.py")
BIN = os.environ.get("LORAREC_BIN", os.path.join(REPO, "build", "lorarecycle"))
PY = sys.executable
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
from tiny_clip import st_read, st_write  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "data_tools"))
import convert_weights  # noqa: E402


def run(*args, ok=True):
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def tool(*args, ok=True):
    """convert_weights.py in this process (no torch import per call): exit status, stdout, stderr.
    An exception escaping main() fails the test as a traceback on the command line would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = convert_weights.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    p = Result(rc, out.getvalue(), err.getvalue())
    if ok and rc != 0:
        raise AssertionError(f"convert_weights.py {' '.join(map(str, args))} exited {rc}:\n{p.stdout}\n{p.stderr}")
    return p


def st_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), n


def features(path):
    with h5py.File(path, "r") as f:
        return np.array(f["features"], dtype=np.float64)


def resnet_state_dict(seed=0, width=64, blocks=(3, 4, 6, 3), classes=1000):
    """A torchvision Bottleneck ResNet state dict with random values, names and shapes written out by
    hand; the defaults are ResNet-50 (checked against torchvision when present)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[name] = torch.randn(o, i, k, k, generator=g) * (2.0 / (o * k * k)) ** 0.5

    def bn(name, c):
        sd[name + ".weight"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".bias"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)

    conv("conv1.weight", width, 3, 7)
    bn("bn1", width)
    inp = width
    for i, n in enumerate(blocks):
        planes = width << i
        for j in range(n):
            b = f"layer{i + 1}.{j}."
            conv(b + "conv1.weight", planes, inp, 1)
            bn(b + "bn1", planes)
            conv(b + "conv2.weight", planes, planes, 3)
            bn(b + "bn2", planes)
            conv(b + "conv3.weight", planes * 4, planes, 1)
            bn(b + "bn3", planes * 4)
            if j == 0:
                conv(b + "downsample.0.weight", planes * 4, inp, 1)
                bn(b + "downsample.1", planes * 4)
            inp = planes * 4
    sd["fc.weight"] = torch.randn(classes, inp, generator=g) * 0.02
    sd["fc.bias"] = torch.zeros(classes)
    return sd


class ConvertWeights(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lorarec_convert_")
        cls.ref = os.path.join(cls.tmp, "ref")
        cls.images = os.path.join(cls.tmp, "im.h5")
        run(PY, REF, "make-model", cls.ref, "--seed", 11)
        run(PY, REF, "make-images", cls.images, "--n", 7, "--size", 32)  # the tiny model's image_size
        cls.ref_tensors = st_read(os.path.join(cls.ref, "model.safetensors"))
        cls.ref_features = cls.embed(cls.ref)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def embed(cls, model):
        out = os.path.join(cls.tmp, os.path.basename(model) + "_features.h5")
        run(BIN, "embed", "--model", model, "--images", cls.images, "--out", out, "--log-level", "warn")
        return features(out)

    def hf_dir(self, name, tensors):
        """An HF directory: the reference's configs + tensors saved by torch.save as pytorch_model.bin."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        for f in ("config.json", "preprocessor_config.json"):
            shutil.copy(os.path.join(self.ref, f), d)
        torch.save(tensors, os.path.join(d, "pytorch_model.bin"))
        return d

    def torch_state(self, dtype=None):
        sd = {}
        for k, v in self.ref_tensors.items():
            t = torch.from_numpy(np.array(v))
            sd[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return sd

    def rounded_reference(self, name, dtype, vision_only=False):
        """The reference's weights rounded to dtype, stored as fp32 safetensors (what the C++ loader
        must compute from a dtype checkpoint)."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        for f in ("config.json", "preprocessor_config.json"):
            shutil.copy(os.path.join(self.ref, f), d)
        t = {k: (torch.from_numpy(np.array(v)).to(dtype).float().numpy() if v.dtype == np.float32 else v)
             for k, v in self.ref_tensors.items()
             if not vision_only or k.startswith(("vision_model.", "visual_projection."))}
        st_write(os.path.join(d, "model.safetensors"), t, {"format": "pt"})
        return d

    def assert_one_line_error(self, p, needle):
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertNotIn("Traceback", p.stderr)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn("error", lines[0])
        self.assertIn(needle, lines[0])

    # ---- hf-bin -------------------------------------------------------------------------------

    def test_hf_bin_fp32_full_clip_in_place(self):
        d = self.hf_dir("full32", self.torch_state())
        # Before the conversion the C++ loader names the converter and this directory.
        p = run(BIN, "embed", "--model", d, "--images", self.images, "--out", os.path.join(self.tmp, "x.h5"), ok=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(f"{d} holds pytorch_model.bin: convert it once with /usr/bin/python3 data_tools/convert_weights.py "
                      f"hf-bin {d}", p.stderr)
        p = run(PY, TOOL, "hf-bin", d)  # the command line itself, once per converter
        self.assertIn("3 text", p.stdout)
        st = os.path.join(d, "model.safetensors")
        hdr, n = st_header(st)
        self.assertEqual(n % 8, 0)
        self.assertEqual(hdr["__metadata__"]["format"], "pt")
        got = st_read(st)
        self.assertEqual(set(got), set(self.ref_tensors))  # everything kept, text tower included
        for k, v in self.ref_tensors.items():
            self.assertEqual(got[k].dtype, v.dtype, k)
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        f = self.embed(d)
        self.assertLessEqual(np.abs(f - self.ref_features).max(), 1e-5)
        # Refuses to overwrite; --force does.
        self.assert_one_line_error(tool("hf-bin", d, ok=False), "--force")
        tool("hf-bin", d, "--force")

    def test_hf_bin_fp16_kept_as_fp16(self):
        d = self.hf_dir("half", self.torch_state(torch.float16))
        tool("hf-bin", d)
        hdr, _ = st_header(os.path.join(d, "model.safetensors"))
        self.assertEqual(hdr["vision_model.encoder.layers.0.mlp.fc1.weight"]["dtype"], "F16")
        self.assertEqual(hdr["vision_model.embeddings.position_ids"]["dtype"], "I64")
        want = self.embed(self.rounded_reference("half_ref", torch.float16))
        f = self.embed(d)
        self.assertLessEqual(np.abs(f - want).max(), 1e-5)
        self.assertGreater(np.abs(f - self.ref_features).max(), 0)  # the rounding is visible

    def test_hf_bin_bf16_sharded_out_dir_vision_only(self):
        sd = self.torch_state(torch.bfloat16)
        d = os.path.join(self.tmp, "shards")
        os.makedirs(d)
        for f in ("config.json", "preprocessor_config.json"):
            shutil.copy(os.path.join(self.ref, f), d)
        names = sorted(sd)
        a, b = names[: len(names) // 2], names[len(names) // 2:]
        torch.save({k: sd[k] for k in a}, os.path.join(d, "pytorch_model-00001-of-00002.bin"))
        torch.save({k: sd[k] for k in b}, os.path.join(d, "pytorch_model-00002-of-00002.bin"))
        wm = {k: "pytorch_model-00001-of-00002.bin" for k in a}
        wm.update({k: "pytorch_model-00002-of-00002.bin" for k in b})
        with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
        out = os.path.join(self.tmp, "shards_out")
        p = tool("hf-bin", d, "--out", out, "--vision-only")
        self.assertIn("3 text dropped", p.stdout)
        self.assertTrue(os.path.exists(os.path.join(out, "config.json")))
        self.assertTrue(os.path.exists(os.path.join(out, "preprocessor_config.json")))
        self.assertFalse(os.path.exists(os.path.join(d, "model.safetensors")))
        hdr, _ = st_header(os.path.join(out, "model.safetensors"))
        self.assertFalse([k for k in hdr if k.startswith(("text_", "logit"))])
        self.assertEqual(hdr["visual_projection.weight"]["dtype"], "BF16")
        want = self.embed(self.rounded_reference("bf16_ref", torch.bfloat16, vision_only=True))
        self.assertLessEqual(np.abs(self.embed(out) - want).max(), 1e-5)

    def test_hf_bin_errors(self):
        missing = os.path.join(self.tmp, "no_such_dir")
        self.assert_one_line_error(tool("hf-bin", missing, ok=False), "not a directory")
        d = os.path.join(self.tmp, "nobin")
        os.makedirs(d)
        shutil.copy(os.path.join(self.ref, "config.json"), d)
        self.assert_one_line_error(tool("hf-bin", d, ok=False), "pytorch_model.bin: missing")
        d = self.hf_dir("notsd", [1, 2, 3])
        self.assert_one_line_error(run(PY, TOOL, "hf-bin", d, ok=False), "not a state dict")  # a real exit
        sd = self.torch_state()
        sd["visual.conv1.weight"] = torch.zeros(2)  # an open_clip name
        sd["visual.ln_pre.weight"] = torch.zeros(2)
        d = self.hf_dir("foreign", sd)
        self.assert_one_line_error(tool("hf-bin", d, ok=False), "2 unexpected keys")
        self.assertIn("'visual.conv1.weight'", tool("hf-bin", d, ok=False).stderr)
        d = self.hf_dir("garbage", {})
        with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
            f.write(b"not a pickle at all")
        self.assert_one_line_error(tool("hf-bin", d, ok=False), "cannot load as a PyTorch checkpoint")
        d = self.hf_dir("noconfig", self.torch_state())
        os.remove(os.path.join(d, "config.json"))
        self.assert_one_line_error(tool("hf-bin", d, ok=False), "config.json: missing")

    # ---- torchvision-resnet50 ---------------------------------------------------------------

    def test_resnet50_layout_matches_torchvision(self):
        try:
            import torchvision
        except ImportError:
            self.skipTest("no torchvision: the hand-written ResNet-50 layout is not cross-checked")
        want = {k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()}
        self.assertEqual({k: tuple(v.shape) for k, v in resnet_state_dict().items()}, want)

    def test_resnet50_converted_and_loaded_as_prior(self):
        sd = resnet_state_dict()
        pth = os.path.join(self.tmp, "resnet50-random.pth")
        torch.save(sd, pth)
        prior = os.path.join(self.tmp, "prior")
        p = run(PY, TOOL, "torchvision-resnet50", pth, prior)
        self.assertIn("Bottleneck [3, 4, 6, 3], width 64, 7x7 stem, 1000 classes", p.stdout)
        st = os.path.join(prior, "model.safetensors")
        got = st_read(st)
        self.assertEqual(set(got), set(sd))
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)  # bit-exact
        self.assertEqual(st_header(st)[0]["__metadata__"]["architecture"], "torchvision ResNet")
        # The C++ loads it as invert's BN prior (a zoo without LoRAs: nothing is inverted).
        zoo = os.path.join(self.tmp, "empty_zoo")
        os.makedirs(zoo)
        with open(os.path.join(zoo, "manifest.json"), "w") as f:
            json.dump({"loras": []}, f)
        p = run(BIN, "invert", "--model", self.ref, "--zoo", zoo, "--prior", prior, "--out",
                os.path.join(self.tmp, "pool"), "--log-level", "info")
        self.assertIn(f"BN prior {prior} at weight", p.stdout + p.stderr)
        # A .pth given as the prior, or a directory without model.safetensors: the converter is named.
        for bad in (pth, zoo):
            p = run(BIN, "invert", "--model", self.ref, "--zoo", zoo, "--prior", bad, "--out",
                    os.path.join(self.tmp, "pool_bad"), ok=False)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("data_tools/convert_weights.py torchvision-resnet50 FILE.pth DIR", p.stderr)
        # ... and that command does read the prior: one without bn1.weight is refused.
        small = {k: v.numpy() for k, v in resnet_state_dict(2, 8, (1, 1, 1, 1), 10).items()}
        broken = os.path.join(self.tmp, "prior_broken")
        os.makedirs(broken)
        st_write(os.path.join(broken, "model.safetensors"), {k: v for k, v in small.items() if k != "bn1.weight"})
        p = run(BIN, "invert", "--model", self.ref, "--zoo", zoo, "--prior", broken, "--out",
                os.path.join(self.tmp, "pool2"), ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("bn1.weight", p.stderr)
        # A small ResNet wrapped as {"state_dict": ...} with DataParallel's "module." prefix, in fp16:
        # unwrapped, kept fp16, loaded.
        sd = resnet_state_dict(3, 8, (2, 1, 1, 1), 10)
        pth2 = os.path.join(self.tmp, "wrapped.pth")
        torch.save({"epoch": 3, "state_dict": {"module." + k: (v.half() if v.is_floating_point() else v)
                                               for k, v in sd.items()}}, pth2)
        prior16 = os.path.join(self.tmp, "prior16")
        tool("torchvision-resnet50", pth2, prior16)
        hdr, _ = st_header(os.path.join(prior16, "model.safetensors"))
        self.assertEqual(hdr["layer4.0.conv3.weight"]["dtype"], "F16")
        self.assertIn("conv1.weight", hdr)
        run(BIN, "invert", "--model", self.ref, "--zoo", zoo, "--prior", prior16, "--out",
            os.path.join(self.tmp, "pool3"), "--log-level", "warn")

    def test_resnet_errors(self):
        sd = resnet_state_dict(1, 8, (1, 2, 1, 1), 10)  # any depth and width: small and quick
        out = os.path.join(self.tmp, "r_err")
        self.assert_one_line_error(tool("torchvision-resnet50", os.path.join(self.tmp, "nope.pth"), out,
                                       ok=False), "no such file")
        cases = {
            "extra": (dict(sd, **{"layer9.0.conv1.weight": torch.zeros(1), "head.weight": torch.zeros(1)}),
                      "2 unexpected keys"),
            "missing": ({k: v for k, v in sd.items() if k != "layer2.1.bn2.running_var"}, "layer2.1.bn2.running_var"),
            "shape": (dict(sd, **{"layer1.0.conv2.weight": torch.zeros(64, 64, 1, 1)}), "wrong shape"),
            "vit": (self.torch_state(), "missing tensor 'conv1.weight'"),
        }
        for name, (bad, needle) in cases.items():
            pth = os.path.join(self.tmp, f"bad_{name}.pth")
            torch.save(bad, pth)
            self.assert_one_line_error(tool("torchvision-resnet50", pth, out, ok=False), needle)
        self.assertFalse(os.path.exists(os.path.join(out, "model.safetensors")))

    def test_help(self):
        p = run(PY, TOOL, "--help")
        for word in ("hf-bin", "torchvision-resnet50", "pytorch_model.bin", "--prior", "--vision-only"):
            self.assertIn(word, p.stdout)
        self.assertEqual(run(PY, TOOL, ok=False).returncode, 2)
        self.assertIn("--out", tool("hf-bin", "--help").stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
