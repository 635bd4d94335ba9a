#!/usr/bin/env bash
# The main job's script on the quick preset under mpirun -np 2, twice: every stage's outputs
# exist after the first run, and the second run reuses them all. Then `predict` on PNG folders
# and an HDF5 set, and its errors for bad input.
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" 2>&1 | tee run1.txt
for f in data/quick/manifest.json runs/quick/vfm/model.safetensors runs/quick/vfm/config.json \
         runs/quick/vfm/pretrain_report.json runs/quick/prior/model.safetensors runs/quick/zoo/manifest.json \
         runs/quick/pool/index.json runs/quick/pool/summary.json runs/quick/pool/lora_003.h5 runs/quick/pool/lora_000.png \
         runs/quick/meta/adapter_model.safetensors runs/quick/meta/metatrain.json runs/quick/meta.work/metrics.jsonl \
         runs/quick/meta_mask75/metatrain.json runs/quick/eval/results.csv runs/quick/eval/results.json \
         runs/quick/report/report.md runs/quick/report/val_curves.png runs/quick/report/surrogates.png; do
  [ -f "w/$f" ] || fail "missing w/$f"
done
[ "$(ls w/runs/quick/zoo | grep -c '^lora_')" = 4 ] || fail "expected 4 LoRAs"
grep -q "zoo: 4 LoRAs" run1.txt || fail "no zoo summary"
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" 2>&1 | tee run2.txt
grep -q "reusing runs/quick/vfm" run2.txt || fail "VFM not reused"
grep -q "reusing runs/quick/prior" run2.txt || fail "prior not reused"
grep -q "is complete" run2.txt || fail "data not reused"
grep -q "skips 2 finished" run2.txt || fail "zoo not reused"
grep -q "rank 0 inverts 0" run2.txt || fail "pool not reused"
grep -q "reusing runs/quick/meta$" run2.txt || fail "meta-LoRA not reused"
grep -q "reusing runs/quick/eval" run2.txt || fail "evaluation not reused"
# A config without the BN-prior term (w-bn = 0, as the demo preset's): stage 3 is skipped, not reused.
sed 's/^w-bn *=.*/w-bn = 0/' "$REPO/configs/quick.ini" >quick_nobn.ini
bash "$REPO/launch/demo.sh" --preset quick --workdir "$WORK/w" --config quick_nobn.ini --until prior 2>&1 | tee run3.txt
grep -q "skipped: \[invert\] w-bn = 0 in .*quick_nobn.ini (no BN-prior term)" run3.txt || fail "BN-prior stage not skipped at w-bn 0"
if grep -q "reusing runs/quick/prior" run3.txt; then fail "BN-prior stage reused at w-bn 0"; fi
"$LORAREC_PYTHON" - <<'PY'
import csv, json
rows = list(csv.DictReader(open("w/runs/quick/eval/results.csv")))
got = {(r["dataset"], r["method"], r["shot"]) for r in rows}
for d in ("test", "hangul"):
    for m in ("nn", "lora-avg", "lora-ft", "meta", "meta-mask75"):
        for s in ("1", "5"):
            assert (d, m, s) in got, (d, m, s)
for r in rows:
    assert 0 <= float(r["mean"]) <= 100 and float(r["tasks_per_s"]) > 0, r
# Paired differences: every row but nn against lora-avg (lora-avg against nn), on the same episodes;
# for the methods scored on every episode the difference of the means, and results.json holds the
# per-episode accuracies they come from.
by = {(r["dataset"], r["method"], r["shot"]): r for r in rows}
js = {(r["dataset"], r["method"], str(r["shot"])): r for r in json.load(open("w/runs/quick/eval/results.json"))["rows"]}
for k, r in by.items():
    want = "" if k[1] == "nn" else "nn" if k[1] == "lora-avg" else "lora-avg"
    assert r["ref"] == want, (k, r["ref"])
    acc = js[k]["episode_acc"]
    assert len(acc) == int(r["episodes"]) and abs(sum(acc) / len(acc) - float(r["mean"])) < 1e-3, k
    if want and k[1] in ("lora-avg", "meta", "meta-mask75"):
        ref = by[(k[0], want, k[2])]
        assert abs(float(r["diff"]) - (float(r["mean"]) - float(ref["mean"]))) < 1e-3, (k, r)
        assert js[k]["paired"]["ref"] == want and js[k]["paired"]["episodes"] == len(acc), k
m = json.load(open("w/runs/quick/meta_mask75/metatrain.json"))
assert m["mask_ratio"] == 0.75 and m["tokens_per_image"] == 17 and m["world_size"] == 2, m
print("eval: every method, dataset and shot present;", len(rows), "rows")
PY
# verify: every output of the run complete, intact and chained (eval <- meta <- pool <- zoo <- VFM).
(cd w && "$LORAREC_BIN" verify runs/quick) >verify.txt || { cat verify.txt; fail "verify on the quick run"; }
grep -q "^verify runs/quick: 11 outputs, 0 problems" verify.txt || { cat verify.txt; fail "verify summary"; }
grep -q "^ok  *eval  *runs/quick/eval: 24 result rows; VFM runs/quick/vfm; zoo runs/quick/zoo; meta-LoRA 'meta' runs/quick/meta" verify.txt ||
  { cat verify.txt; fail "eval's provenance chain"; }
echo "demo_quick: all stages ran and were reused"

# predict: PNG folders (one per class) and an HDF5 query set
cd w
"$LORAREC_PYTHON" - <<'PY'
import h5py, os
from PIL import Image
f = h5py.File("data/quick/test.h5", "r")
imgs, labels = f["images"][:], f["labels"][:]
for c in range(3):
    rows = [i for i in range(len(labels)) if labels[i] == c]
    os.makedirs(f"sup/class{c}", exist_ok=True)
    for k, r in enumerate(rows[:2]):
        Image.fromarray(imgs[r].squeeze()).save(f"sup/class{c}/{k}.png")
    os.makedirs("qry", exist_ok=True)
    Image.fromarray(imgs[rows[5]].squeeze()).convert("RGB").save(f"qry/q{c}.jpg", quality=95)
os.makedirs("sup_empty/a", exist_ok=True); os.makedirs("sup_empty/b", exist_ok=True)
Image.fromarray(imgs[0].squeeze()).save("sup_empty/a/0.png")
Image.fromarray(imgs[0].squeeze()).resize((16, 16)).save("odd.png")
open("broken.png", "wb").write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
PY
B=$LORAREC_BIN
$B predict --model runs/quick/vfm --lora runs/quick/meta --support sup --query qry --out preds.json >p.txt 2>&1 || { cat p.txt; fail "predict"; }
$B predict --model runs/quick/vfm --support sup --query qry/q0.jpg,data/quick/val.h5 --out preds.csv >p2.txt 2>&1 || { cat p2.txt; fail "predict csv"; }
"$LORAREC_PYTHON" - <<'PY'
import csv, json
j = json.load(open("preds.json"))
assert j["classes"] == ["class0", "class1", "class2"] and len(j["predictions"]) == 3, j
for p in j["predictions"]:
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-6 and p["prediction"] in j["classes"], p
rows = list(csv.reader(open("preds.csv")))
assert rows[0][:3] == ["query", "prediction", "probability"] and len(rows) == 1 + 1 + 300, len(rows)
print("predict: 3 JPEG queries ->", [p["prediction"] for p in j["predictions"]], "; CSV with", len(rows) - 1, "rows")
PY
expect_status 2 "class 'b' (sup_empty/b) has no support image" -- $B predict --model runs/quick/vfm --support sup_empty --query qry
# A query of another size is resized to the model's (CLIP's geometry), with one warning line.
$B predict --model runs/quick/vfm --support sup --query odd.png,qry/q0.jpg --out odd.json >odd.txt 2>&1 || { cat odd.txt; fail "predict of a 16 px query"; }
grep -q "1 of 8 support and query images resized to the model's 32x32" odd.txt || { cat odd.txt; fail "no resize warning"; }
# Other formats in the folders are named in one warning line; a class folder of them only is an error.
mkdir -p sup_webp/a sup_webp/b && cp sup/class0/0.png sup_webp/a/ && touch sup_webp/a/x.webp sup_webp/b/y.gif
cp -r sup sup_extra && touch sup_extra/class1/z.webp
$B predict --model runs/quick/vfm --support sup_extra --query qry --out extra.json >extra.txt 2>&1 || { cat extra.txt; fail "predict with a .webp in a class folder"; }
grep -q "skipped 1 file(s) (not PNG/JPEG: sup_extra/class1/z.webp" extra.txt || { cat extra.txt; fail "no skipped-file warning"; }
expect_status 2 "class 'b' (sup_webp/b) has no support image (not PNG/JPEG: sup_webp/b/y.gif" -- $B predict --model runs/quick/vfm --support sup_webp --query qry
expect_status 2 "broken.png: unreadable PNG" -- $B predict --model runs/quick/vfm --support sup --query broken.png
expect_status 2 "nothere.png: cannot open" -- $B predict --model runs/quick/vfm --support sup --query nothere.png
echo "demo_quick: predict checks passed"

# Precision: the run above used --precision auto (the default), which must follow this CPU's bf16
# instructions and say so; then invert, metatrain and eval in the other precision, asked for.
if grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo; then AUTO=bf16; OTHER=fp32; else AUTO=fp32; OTHER=bf16; fi
for cmd in invert metatrain eval; do
  grep -q "\[$cmd\] communicator .*, precision $AUTO (auto: " ../run1.txt || fail "$cmd did not log precision $AUTO (auto)"
done
C="--config $REPO/configs/quick.ini"
$B invert $C --out pool_other --precision $OTHER >inv_o.txt 2>&1 || { cat inv_o.txt; fail "invert --precision $OTHER"; }
grep -q "precision $OTHER (asked for)" inv_o.txt || { cat inv_o.txt; fail "invert: no 'precision $OTHER (asked for)'"; }
# bf16 asked for on a CPU without bf16 instructions runs emulated: a warning says so, and only there.
if [ "$OTHER" = bf16 ]; then
  grep -q "warn .*precision bf16: this CPU has no avx512_bf16 or amx_bf16" inv_o.txt || { cat inv_o.txt; fail "invert: no emulated-bf16 warning"; }
elif grep -q "bf16 matmuls are emulated" inv_o.txt ../run1.txt; then fail "an emulated-bf16 warning on a CPU with bf16 instructions"; fi
"$LORAREC_PYTHON" - "$OTHER" <<'PY'
import json, sys
other = sys.argv[1]
s_auto = json.load(open("runs/quick/pool/index.json"))["settings"]
s_other = json.load(open("pool_other/index.json"))["settings"]
# Only bf16 is recorded (fp32 pools of earlier versions stay valid).
assert ("--precision" in s_other) == (other == "bf16") and ("--precision" in s_auto) == (other == "fp32"), (s_auto, s_other)
acc = lambda p: [l["teacher_accuracy"] for l in json.load(open(p + "/summary.json"))["loras"]]
a, o = acc("runs/quick/pool"), acc("pool_other")
print("teacher accuracy on own surrogates, auto:", a, other + ":", o)
# The same inversion in either precision (the quick zoo is weak: its teachers score ~20-60 %).
assert abs(sum(o) / len(o) - sum(a) / len(a)) < 15, (a, o)
PY
[ $? = 0 ] || fail "pool in $OTHER"
# The auto pool is not reused in the other precision: the difference is named, nothing changes.
expect_status 2 "setting --precision" -- $B invert $C --precision $OTHER
$B metatrain $C --out meta_other --steps 4 --val-every 0 --precision $OTHER >mt_o.txt 2>&1 || { cat mt_o.txt; fail "metatrain --precision $OTHER"; }
"$LORAREC_PYTHON" -c "import json,sys; m=json.load(open('meta_other/metatrain.json')); sys.exit(0 if m['precision'] == '$OTHER' else 1)" ||
  fail "metatrain.json does not record precision $OTHER"
$B eval $C --methods nn,meta --data test=data/quick/test.h5 --shots 1 --out eval_other --precision $OTHER >ev_o.txt 2>&1 ||
  { cat ev_o.txt; fail "eval --precision $OTHER"; }
"$LORAREC_PYTHON" - <<'PY'
import csv
key = lambda r: (r["dataset"], r["method"], r["shot"])
auto = {key(r): float(r["mean"]) for r in csv.DictReader(open("runs/quick/eval/results.csv"))}
other = {key(r): float(r["mean"]) for r in csv.DictReader(open("eval_other/results.csv"))}
for k, v in other.items():
    print("eval", k, "auto", auto[k], "other precision", v)
    assert abs(v - auto[k]) < 5, (k, v, auto[k])  # the same episodes: the precisions agree closely
PY
[ $? = 0 ] || fail "eval in $OTHER disagrees with $AUTO"
# Distillation under a mask: the teacher's features of the kept patches (the attention-top ones,
# or each of the random subsets: the quick config's --mask-select random), or of every patch with
# --distill-dense (one target per image, with either selection); the flag alone is refused.
for dd in "--mask-select top|the kept patches" "|8 random patch subsets each" "--mask-select top --distill-dense|every patch" \
  "--distill-dense|every patch"; do
  want=${dd#*|}; dd=${dd%%|*}
  $B metatrain $C --out "meta_dd${dd// /}" --steps 2 --val-every 0 --mask-ratio 0.5 --distill-weight 1 $dd >mt_dd.txt 2>&1 ||
    { cat mt_dd.txt; fail "metatrain --mask-ratio 0.5 --distill-weight 1 $dd"; }
  grep -q "distillation targets: .* images under their own LoRAs ($want)" mt_dd.txt || { cat mt_dd.txt; fail "$dd: not $want"; }
done
expect_status 2 "--distill-dense changes the distillation targets under a mask" -- $B metatrain $C --out m_dd --distill-dense
expect_status 2 "--bf16 and --precision fp32 contradict each other" -- $B eval $C --bf16 --precision fp32
expect_status 2 "unknown precision 'fp16'" -- $B eval $C --precision fp16
expect_status 2 "the argument ('maybe') for option '--tf32' is invalid" -- $B eval $C --tf32 maybe
# Inversion options recorded only when used: the main pool is not reused with them, and bad
# values are named.
expect_status 2 "setting --zoom" -- $B invert $C --zoom 0.2
expect_status 2 "setting --init-lowres" -- $B invert $C --init-lowres 4
expect_status 2 "--zoom must be in [0, 1)" -- $B invert $C --zoom 1
expect_status 2 "--stop-confidence must be in [0, 1]" -- $B invert $C --stop-confidence 2
expect_status 2 "--init-lowres must be 0 (off) or >= 2" -- $B invert $C --init-lowres 1
expect_status 2 "setting --fourier" -- $B invert $C --fourier 1
expect_status 2 "--fourier must be in [0, 4]" -- $B invert $C --fourier -1
expect_status 2 "setting --strokes" -- $B invert $C --strokes 8
expect_status 2 "--strokes must be in [0, 64]" -- $B invert $C --strokes 65
expect_status 2 "cannot be combined with --fourier" -- $B invert $C --strokes 8 --fourier 1
expect_status 2 "setting --co-teacher" -- $B invert $C --co-teachers 1
expect_status 2 "setting --init-images" -- $B invert $C --init-images data/quick/base.h5
expect_status 2 "--co-teachers must be >= 0" -- $B invert $C --co-teachers -1
expect_status 2 "--init-images nope.h5: no such file" -- $B invert $C --init-images nope.h5 --out pool_img
expect_status 2 "setting --feature-prior" -- $B invert $C --feature-prior data/quick/base.h5
expect_status 2 "--feature-prior nope.h5: no such file" -- $B invert $C --feature-prior nope.h5 --out pool_fp
expect_status 2 "--w-feat must be >= 0" -- $B invert $C --feature-prior data/quick/base.h5 --w-feat -1 --out pool_fp
expect_status 2 "--feature-prior-samples must be >= 1" -- $B invert $C --feature-prior-samples 0 --out pool_fp
expect_status 2 "--w-adv needs --student" -- $B invert $C --w-adv 0.3 --out pool_st
expect_status 2 "--student needs --w-adv > 0" -- $B invert $C --student runs/quick/meta --out pool_st
expect_status 2 "--student nope: no such file" -- $B invert $C --student nope --w-adv 0.3 --out pool_st
expect_status 2 "--w-adv needs --per-class >= 2" -- $B invert $C --student runs/quick/meta --w-adv 0.3 --per-class 1 --out pool_st
expect_status 2 "setting --adv-temperature: (none)" -- $B invert $C --student runs/quick/meta --w-adv 0.3
# Retrieval (--retrieve): refused with the options it ignores and when the candidates cannot fill the
# classes; for real, every stored image is one of the public set's, each at most once per LoRA.
expect_status 2 "--retrieve and --real-images are two ways" -- $B invert $C --retrieve data/quick/base.h5 \
  --real-images data/quick/zoo.h5 --out pool_rt
expect_status 2 "--co-teachers have no effect with it" -- $B invert $C --retrieve data/quick/base.h5 \
  --init-images data/quick/base.h5 --out pool_rt
expect_status 2 "--retrieve-candidates must be >= 1" -- $B invert $C --retrieve data/quick/base.h5 --retrieve-candidates 0 --out pool_rt
expect_status 2 "3 candidate images cannot fill" -- $B invert $C --retrieve data/quick/base.h5 --retrieve-candidates 3 \
  --out pool_rt --restart
expect_status 2 "--retrieve-per-class must be >= 0" -- $B invert $C --retrieve data/quick/base.h5 --retrieve-per-class -1 \
  --out pool_rt
$B invert $C --out pool_rt --retrieve data/quick/base.h5 --retrieve-candidates 200 --retrieve-per-class 3 --restart \
  >inv_rt.txt 2>&1 || { cat inv_rt.txt; fail "invert --retrieve"; }
grep -q 'retrieve (content digest)' pool_rt/index.json && grep -q '"--retrieve-candidates": 200' pool_rt/index.json &&
  grep -q '"--per-class": 3' pool_rt/index.json || fail "pool_rt/index.json does not record --retrieve and its 3 per class"
"$LORAREC_PYTHON" - <<'PY'
import glob, h5py, numpy as np
base = h5py.File("data/quick/base.h5", "r")["images"][...]
keys = {b.tobytes(): i for i, b in enumerate(base)}
for path in sorted(glob.glob("pool_rt/lora_*.h5")):
    with h5py.File(path, "r") as f:
        rows = [keys.get(im.tobytes()) for im in f["images"][...]]
        counts = np.unique(f["labels"][...], return_counts=True)[1]
        assert f.attrs["retrieved_from"].endswith("base.h5"), path
    assert None not in rows, (path, "an image that is not one of the public set's")
    assert len(set(rows)) == len(rows), (path, "an image stored twice")
    assert (counts == 3).all(), (path, "--retrieve-per-class 3 stored", counts)
print("retrieve: every pool image is one of base.h5's, none twice within a LoRA, 3 per class")
PY
[ $? = 0 ] || fail "invert --retrieve stored images that are not the public set's"
# All four, for real (2 iterations): the pool records them and the log names the terms.
$B invert $C --out pool_co --iterations 2 --co-teachers 2 --init-images data/quick/base.h5 \
  --feature-prior data/quick/base.h5 --w-feat 0.1 --student runs/quick/meta --w-adv 0.3 --log-level debug >inv_co.txt 2>&1 ||
  { cat inv_co.txt; fail "invert --co-teachers 2 --init-images --feature-prior --student"; }
grep -q '"--co-teachers": 2' pool_co/index.json && grep -q 'init-images (content digest)' pool_co/index.json &&
  grep -q 'feature-prior (content digest)' pool_co/index.json && grep -q '"--w-feat": 0.1' pool_co/index.json &&
  grep -q 'student (content digest)' pool_co/index.json && grep -q '"--w-adv": 0.3' pool_co/index.json ||
  fail "pool_co/index.json does not record --co-teachers, --init-images, --feature-prior and --student"
grep -q 'against the student runs/quick/meta at weight 0.3' inv_co.txt || { cat inv_co.txt; fail "invert --student not logged"; }
echo "demo_quick: precision checks passed ($AUTO by auto, $OTHER asked for)"
