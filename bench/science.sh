#!/usr/bin/env bash
# Does meta-training on the surrogates teach the VFM anything? The ablation behind docs/science.md.
#   bash bench/science.sh [pools|runs|zoo|variety|all|starts|lowres|zoo100|mask|zoomean|dropout|ensemble|imgstarts|coteach|featprior|scales|student|layers|teachers|border|iters|retrieve|fourier|strokes|strokes100|align|domalign|null|fullavg|public|shots|mainjob|affine|compose|teachers40|knobs|mix|scale|vfm|targets|way|ceiling|zoodist|glyphs|concat|zoo6|long|anchorw|anchorc|way10c|way10x|zoo40c|zoowide|zoo40k40|way20c|class40c|soup|composite|disagree|testceiling|alone10|augview|anchorn|anchorn3|anchorn320|anchormask|anchorsteps|anchorsteps2k|schedule|cycles|fp32|glyphs300|glyphs50|realanchor|capcheck|rank] [VARIANT ...]    (default: all, every variant)
# Needs the main job's VFM, BN prior and zoo (bash launch/demo.sh --until zoo). Pools, all in the
# same layout (pooled by real class) and built here once:
#   bn0.1    surrogates inverted with configs/demo.ini [invert] and the BN prior at weight 0.1 (the
#            main job's pool until this round; ~28 min on 2 cores);
#   bn0      the same without the BN prior (--w-bn 0, as configs/demo.ini has it): the main job's
#            pool until it drew its surrogates (--strokes 12 --co-teachers 2), painted, the control
#            of every part (PIX below; ~6-15 min; a painted runs/demo/pool copied here is reused);
#   div0.3   bn0 plus a diversity term (--w-div 0.3: same-class surrogates pushed apart in the
#            teacher's feature space; ~15 min);
#   real     the control: `invert --real-images data/demo/zoo.h5`, i.e. the same number of REAL
#            images of each zoo LoRA's classes, with that LoRA's logits and scores (~1 min);
#   perlora  the bn0.1 surrogates with classes numbered per LoRA (the old layout), for the
#            variants in PERLORA: what pooling by real class changes.
# bench/surrogate_check.sh prints, for each pool, how its images look to the bare VFM beside real
# images.
# Each variant meta-trains 300 steps (configs/demo.ini [metatrain] plus the variant's flags) on
# each pool and prints the validation accuracy (5-way 1-shot, the same 300 episodes of the val
# classes, real images) at 0 / 100 / 200 / 300 steps and the 95% CI at 300: 1-2 min per run on 2
# cores. Selection uses these validation numbers only; the test classes are never looked at here.
# Variants below; "paper" is the paper's objective (episodic CE at T 1 + KL on single-LoRA
# episodes, no distillation). Scratch output under ${BENCH_DIR:-/tmp/lorarec_science}.
# "zoo" (the last part, also in "all"): the zoo's average as the bar. It builds a second zoo of
# 32 LoRAs over 64 classes (2-3 LoRAs per class; ~10 min), its surrogate pool (~35 min) and its
# real-image control pool, then prints the validation accuracy of lora-avg (the meta-LoRA set to
# the zoo's mean delta at full rank, no training), of meta-training started from it
# (--init zoo-mean), and of 1,000-step runs on the 64-class pools (~10 min each).
# "variety" (after "zoo", also in "all"): how much of the surrogates' failure is their lack of
# variety. An inverted LoRA's surrogates of one class are near-copies; the real-image control pool
# is cut to 1 or 4 distinct real images per LoRA and class (the rest copies of them;
# bench/pool_copies.py) and meta-trained like the full one (paper T 128, 1,000 steps, ~10 min each),
# and the surrogates are meta-trained with --jitter 4 (augmentation in place of variety); then the
# 64-class zoo is inverted with a jitter shift per image (--jitter-per-image, ~21 min) and
# meta-trained alike.
# "starts" (after "zoo" or alone; not in "all"): the 64-class zoo inverted from smooth starting
# noise (invert --init-lowres 2, docs/science.md "Why a class's surrogates are near-copies"; ~11
# min in bf16) and meta-trained as the default pool is in "zoo" (paper T 128, 1,000 steps), both
# pools side by side, then the surrogate check of both. It builds the zoo and the default pool
# when "zoo" has not.
# "lowres", "zoo100", "mask", "zoomean" (alone; not in "all"): smooth starts with 32 surrogates
# per LoRA and class and with --zoom 0.5, under the paper's objective and the main recipe; the
# paper's zoo size (100 LoRAs over 64 classes); the main job's mask-0.75 gap (attention-top or
# random patch subsets, --distill-dense);
# small learning rates from the zoo's average on the zoo of 100; "dropout": random patch subsets
# as augmentation on the zoo of 100 (after "zoo100"); "ensemble": the zoo's feature ensemble against
# lora-avg on the validation classes, no training; "imgstarts" and "coteach" (after "zoo100"): the
# zoo of 100 inverted from the VFM's pre-training glyphs (invert --init-images) and with co-teachers
# (invert --co-teachers 2), meta-trained 1,000 steps; "scales" (makes the zoo of 100 and its pools
# when missing): only the singular values of the zoo's mean delta trained (metatrain --scales-only);
# "student" (after "zoo100"): the zoo of 100 inverted against lora-avg (invert --student --w-adv);
# "layers" (after "zoo100"): the meta-LoRA on the late or the early encoder layers only
# (metatrain --layers), surrogates and real images; "teachers" (after "zoo100"): the support of a
# class from one LoRA, its queries from the others (metatrain --disjoint-teachers); "border" (after
# "zoo100"): the zoo of 100 inverted with a white margin (invert --white-border 3); "iters" (after
# "zoo100"): the zoo of 100 inverted with 50 iterations instead of 200 (less exaggerated surrogates);
# "retrieve" (after "zoo100"): public glyphs each LoRA assigns to its classes instead of inverted ones
# (invert --retrieve), under the paper's objective, the main recipe and distillation alone.
# "fourier" (after the main job's invert): the surrogates' spectrum optimised instead of their pixels
# (invert --fourier 1), on the main job's zoo and, with ZOO100=1, on the zoo of 100.
# "strokes" (after the main job's invert): each surrogate drawn as 12 soft line segments on white
# (invert --strokes 12), on the main job's zoo.
# "strokes100" (makes the "zoo100" part's zoo and pools when missing): the zoo of 100 drawn with
# co-teachers (invert --strokes 12 --co-teachers 2 --iterations 100), the main job's inversion at
# the painted co-teacher pool's iteration count.
# "align" (makes the "zoo100" part's zoo and pools when missing): where the paper's objective moves
# the meta-LoRA from the zoo's average on surrogates and on real images, two seeds each, compared in
# weight space (bench/lora_delta.py); DRAWN=1 adds the zoo of 100 drawn with co-teachers.
# "domalign" (makes the "zoo100", "strokes100" and "retrieve" parts' pools when missing): the
# paper's objective on the drawn zoo of 100 with a feature-statistics alignment to public glyphs
# (metatrain --align-weight), against the same without it, on real images, and anchored to real
# images of the zoo's classes instead (control).
# "null" (makes the "zoo100" and "retrieve" parts' pools when missing): surrogates of a zoo that knows
# nothing (zero deltas, random heads; bench/null_zoo.py) from a fresh start and from the zoo of 100's
# average, and the zoo's surrogates from its average anchored to the start's features on public glyphs;
# DRAWN=1 adds the drawn pool (the "strokes100" part's) from the average, with and without the anchor.
# "fullavg" (makes the "zoo100", "strokes100" and "retrieve" parts' pools when missing): the "null"
# part's anchored drawn runs with a full-rank meta-LoRA started at lora-avg itself; ZOO20=1 the same on
# the main job's zoo of 20, CO=N on the zoo of 100 drawn with N co-teachers.
# "public" (makes the "fullavg" part's start, anchor and drawn pool when missing): the real-image
# control with the VFM's public pre-training glyphs in place of the zoo's classes
# (bench/public_pool.py), the same cut to a few real images per class (what a surrogate pool is
# worth), and surrogate pools of two kinds of inversion joined (bench/pool_union.py); DRAWN2=1 the
# drawn pool inverted again with another seed, alone and joined.
# "shots" (makes the "fullavg" part's start, anchor and drawn pool when missing): the anchored
# paper-objective recipe from lora-avg with 5-shot training episodes (prototypes of 5 images, from
# several teachers of the class) instead of 1-shot, on the drawn pool and on real images (control),
# beside the 1-shot runs again with this binary.
# "knobs" (after the main job's invert): the main recipe's temperature, learning rate, queries and
# episodes per step, one at a time, with real-image controls; its meta-LoRA extrapolated past itself.
# "mix" (after the main job's metatrain): W x a meta-LoRA + (1 - W) x lora-avg as one adapter
# (bench/lora_mix.py), evaluated on the validation classes.
# "scale" (after the main job's invert): the zoo's average scaled by W (task arithmetic), the same way.
# "vfm" (after the main job's invert): the main job made again from a VFM pre-trained for fewer
# (VFM_STEPS=600, the default) or more steps (VFM_STEPS=2400).
# "targets" (after the main job's invert): the main job made again with a zoo whose LoRAs adapt every
# linear layer (q, k, v, out, fc1, fc2) instead of q and v.
# "way" (after the main job's invert): the main job made again with 10-way zoo tasks instead of 5-way.
# "way10c" (after "anchorc"): that 10-way zoo made again under configs/demo.ini, with its recipe;
# "way10x" (after "way10c"): its recipe for 2,000 steps, on real images of its classes, at weight 8;
# "zoo40c" (after "way10x"): what that zoo holds beyond its average, and a zoo of 40 such LoRAs;
# "zoowide" (after "zoo40c"): the same for zoos of 20-way tasks and of 10-way tasks over 40 classes;
# "zoo40k40" (after "zoowide"): the same for a zoo of 40 LoRAs on 10-way tasks over 40 classes;
# "way20c" (after "way10c"): the main job made again with 20-way zoo tasks, with the main recipe;
# "class40c" (after "way10c"): the main job made again with 10-way zoo tasks over 40 classes;
# "soup" (after "way10c"): the three seeds of "way10c" averaged in weight space;
# "composite" (after "zoo40c"): public glyphs composed in pairs and triples as the anchor's images;
# "disagree" (after "way10c"): the anchor's images the public glyphs on which the zoo disagrees most;
# "testceiling" (after the main job and "zoo40c"): what the main job's zoo holds on the test classes;
# "alone10" (after "zoo40c"): the 10-way zoo's anchor alone, without the surrogates' episodes;
# "augview" (after "zoo40c"): the anchor's glyphs each under a random affine map, with their own targets;
# "anchorn" (after "zoo40c"): 160 and 80 anchor glyphs per episode instead of 40; "anchorn3" (after
# "anchorn"): 160 at seeds 1 and 2; "anchorn320" (after "anchorn"): 320; "anchormask" (after
# "anchorn"): 160 with a random part of each glyph's patches masked; "anchorsteps" (after "anchorn"):
# 160 in 500 steps; "anchorsteps2k" (after "anchorn"): in 2,000;
# "schedule" (after "anchorn"): 160 with one cosine over the run instead of cycles of 100 steps;
# "cycles" (after "anchorn"): cycles of 50 and of 200 steps; "fp32" (after "anchorn"): 160
# meta-trained in fp32 instead of bf16; "glyphs300" (after "anchorn"): 160 drawn from 300 glyphs per
# LoRA and class instead of 100; "glyphs50" (after "anchorn"): from 50;
# "realanchor" (after "zoo40c"): real images of the script (a control) or the surrogates as the anchor's;
# "capcheck" (after "zoo40c"): the anchor on the validation images themselves (a check of capacity);
# "rank" (after the main job, bash launch/demo.sh): its meta-training at rank 128 instead of 80.
# Each part's comment below says what it costs. Every part up to "anchorsteps" was run before the
# trained adapters on out_proj, fc1 and fc2 were merged into the weights (docs/metatrain.md, 2026-12-07):
# with LORAREC_UNMERGED_LORA=1 their meta-training rows rerun bit for bit, without it within rounding.
# Two rows of "concat" ("full rank (128, alpha 128)", from the 20-LoRA zoo's rank-80 mean) were run
# while the 48 components of q and v beyond rank 80 started at A = B = 0 and never trained; they now
# train (metatrain's --init, 2026-12-08), so those two rows would not rerun as measured (the "rank"
# part's QV=1 measures what they meant to).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
source launch/env.sh
WHAT=${1:-all}
shift || true
OUT=${BENCH_DIR:-/tmp/lorarec_science}
mkdir -p "$OUT"
B=build/lorarecycle
# The tables of docs/science.md were measured in fp32 (before --precision auto); PRECISION=auto
# runs them in what the main job now uses (bf16 on CPUs with avx512_bf16).
# Every part's meta-training was measured with configs/demo.ini's [metatrain] as it was until the
# main job started from lora-avg (the "mainjob" part): that recipe, kept by bench/rank4_ini.sh.
source bench/rank4_ini.sh
rank4_ini "$OUT/demo_rank4.ini"
CFG=(--config "$OUT/demo_rank4.ini" --precision "${PRECISION:-fp32}")
# Every part inverts with configs/demo.ini [invert] as it was when the part was measured: painted
# surrogates, no co-teachers. Since the round "Surrogates drawn as strokes" the main job draws its
# surrogates (strokes = 12, co-teachers = 2), so the parts invert from a copy without those two
# keys, and the painted main-job pool they compare against is $OUT/pool_bn0 (PIX), not runs/demo/pool.
# painted_ini SRC DST: the config SRC without the two drawing keys.
painted_ini() { sed -e '/^strokes *=/d' -e '/^co-teachers *=/d' "$1" >"$2"; }
painted_ini "$OUT/demo_rank4.ini" "$OUT/demo_painted.ini"
ICFG=(--config "$OUT/demo_painted.ini" --precision "${PRECISION:-fp32}")
PIX=$OUT/pool_bn0
# The parts that start from lora-avg ("mainjob", "affine", "compose", "teachers40", "knobs") were
# measured with configs/demo.ini's [metatrain] at T 128 and lr 1e-4, the main job's settings until
# the "knobs" part chose T 256 and lr 3e-4: they run from a copy with those two values (T128).
# Every part that runs configs/demo.ini's own recipe was measured with its anchor as it was until the
# "glyphs" part: the start's features on 800 retrieved glyphs (8 per class among 4,096), in
# runs/demo/anchor_pool. They run from a copy with that anchor (DEMO800, bench/rank4_ini.sh), and
# retrieve it when missing.
DEMO800=$OUT/demo_anchor800.ini
demo800_ini "$DEMO800"
T128=$OUT/demo_t128.ini
sed -e '/^\[metatrain\]/,/^\[/s/^temperature *=.*/temperature = 128/' \
  -e '/^\[metatrain\]/,/^\[/s/^lr *=.*/lr = 0.0001/' "$DEMO800" >"$T128"
PY=/usr/bin/python3
S0=$(sed -n '/^\[pretrain\]/,/^\[/s/^steps *= *//p' configs/demo.ini)  # the main job's VFM pre-training steps
# Metatrain flags shared by the parts: the paper's objective at T 128 (no distillation), and a
# 1,000-step run validated every 250 steps.
P128="--distill-weight 0 --temperature 128"
L1K="--steps 1000 --val-every 250"
P1K="$P128 $L1K"
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" -np 2 "${MPIRUN_ENV_FLAGS[@]}")
[ "$(nproc --all)" -ge 2 ] || MPI+=(--oversubscribe)
for need in runs/demo/vfm runs/demo/zoo/manifest.json data/demo/val.h5 data/demo/zoo.h5; do
  [ -e "$need" ] || { echo "science: $need missing; run bash launch/demo.sh --until zoo first" >&2; exit 2; }
done
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"

# Inverted pools: invert flags on top of the painted configs/demo.ini [invert] (ICFG); every pool
# lives in $OUT/pool_<name>; bn0 is the painted main job's pool (PIX).
declare -A POOL_FLAGS=([bn0.1]="--w-bn 0.1" [bn0]="--w-bn 0" [div0.3]="--w-bn 0 --w-div 0.3")
# derived_pool SRC DST [ARGS...]: the pool DST, a copy of the pool SRC edited by the python script
# on stdin (run with the copy's directory and ARGS), unless made. The copy is edited under DST.tmp
# and renamed when the script has run, so an interrupted edit is never taken for a finished pool.
derived_pool() {
  local src=$1 dst=$2
  shift 2
  [ -f "$dst/index.json" ] && return 0
  rm -rf "$dst.tmp" && cp -r "$src" "$dst.tmp"
  $PY - "$dst.tmp" "$@"
  mv "$dst.tmp" "$dst"
}
# once DONE_FILE LOG COMMAND...: runs COMMAND (output to LOG) unless DONE_FILE exists; on failure
# prints LOG and exits.
once() {
  local done=$1 log=$2
  shift 2
  [ -f "$done" ] && return 0
  "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }
}
# The BN prior: launch/demo.sh skips it (configs/demo.ini has w-bn 0), but the parts' pools with the
# BN-prior term and the remade jobs use it: trained here once when missing (configs/demo_prior.ini,
# ~3 min).
once runs/demo/prior/pretrain_report.json "$OUT/prior.log" "${MPI[@]}" $B pretrain --config configs/demo_prior.ini
# The 800-glyph anchor of DEMO800 (as launch/demo.sh retrieved it until the "glyphs" part; ~1 min).
if [ -f runs/demo/pool/index.json ]; then
  once runs/demo/anchor_pool/index.json "$OUT/anchor_pool.log" "${MPI[@]}" $B invert --config "$DEMO800" \
    --co-teachers 0 --retrieve data/demo/base.h5 --out runs/demo/anchor_pool
fi
# series METRICS DIGITS: the validation accuracies of a run, step 0 first, +- the CI at the last.
series() {
  $PY - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"val_mean"' in l]
d = int(sys.argv[2])
print(" / ".join(f"{r['val_mean']:.{d}f}" for r in rows) + f" +- {rows[-1]['val_ci95']:.{d}f}")
PY
}
# The real-image control pool of the main job's zoo (~1 min).
real_pool() {
  once "$OUT/pool_real/index.json" "$OUT/pool_real.log" \
    "${MPI[@]}" $B invert "${ICFG[@]}" --real-images data/demo/zoo.h5 --out "$OUT/pool_real"
}
pool_dir() { echo "$OUT/pool_$1"; }
# The main job's pool as it was until the drawings (painted, --w-bn 0; ~6-15 min): the control of
# every part. A copy of a painted runs/demo/pool made with the same settings is reused as it is.
pixel_pool() {
  once "$PIX/index.json" "$OUT/pool_bn0.log" "${MPI[@]}" $B invert "${ICFG[@]}" --w-bn 0 --out "$PIX"
}
# zoo_mean_start OUT [FLAGS]: the meta-LoRA that metatrain --init zoo-mean starts from (the zoo's
# mean delta cut to the run's rank), written as a PEFT adapter without training (one step at lr
# 1e-30); FLAGS (e.g. --pool, --rank) choose the pool, and so the zoo, and the rank. RUN_CONFIG, as
# for run_rows, replaces the config (e.g. a remade job's, run from its work directory).
zoo_mean_start() {
  local out=$1 cfg=("${CFG[@]}")
  shift
  [ -n "${RUN_CONFIG:-}" ] && cfg=(--config "$RUN_CONFIG" --precision "${PRECISION:-fp32}")
  once "$out/adapter_config.json" "$out.log" "${MPI[@]}" "$REPO/$B" metatrain "${cfg[@]}" --out "$out" --restart \
    --init zoo-mean --steps 1 --lr 1e-30 --lr-min 0 --val-every 0 "$@"
}
# lora_avg OUT RANK [FLAGS]: that start at rank RANK with alpha = rank (the exact mean at full rank).
lora_avg() {
  local out=$1 rank=$2
  shift 2
  zoo_mean_start "$out" --rank "$rank" --alpha "$rank" "$@"
}
# zoo_rank: the full rank of the zoo runs/demo/zoo (of the working directory): its LoRAs x their rank.
zoo_rank() {
  local nz zr
  nz=$(ls -d runs/demo/zoo/lora_* | wc -l)
  zr=$($PY -c 'import json; print(json.load(open("runs/demo/zoo/lora_000/adapter_config.json"))["r"])')
  echo $((nz * zr))
}
# embed_val DIR IMAGES NAME|LORA...: the features of the image set IMAGES under the VFM
# runs/demo/vfm (of the working directory) and each LORA (empty: none) into DIR/NAME.h5, unless
# there; two embeds at a time, one thread each.
embed_val() {
  local e=$1 images=$2 item
  shift 2
  for item in "$@"; do
    local name=${item%%|*} lora=${item#*|}
    [ -f "$e/$name.h5" ] && continue
    [ "$(jobs -rp | wc -l)" -lt 2 ] || wait -n
    OMP_NUM_THREADS=1 "$REPO/$B" embed --precision "${PRECISION:-fp32}" --model runs/demo/vfm ${lora:+--lora "$lora"} \
      --images "$images" --out "$e/$name.h5.tmp" --log-level warn && mv "$e/$name.h5.tmp" "$e/$name.h5" &
  done
  wait
  for item in "$@"; do
    [ -f "$e/${item%%|*}.h5" ] || { echo "science: embed of ${item%%|*} failed ($e)" >&2; exit 1; }
  done
}
# zoo_embeds: embed_val's NAME|LORA items for every LoRA of runs/demo/zoo (zoo_lora_NNN).
zoo_embeds() {
  local d
  for d in runs/demo/zoo/lora_*; do echo "zoo_$(basename "$d")|$d"; done
}
# anchor_pool SRC DST START: a copy of the pool SRC whose files name the adapter START as their
# LoRA, so that --distill-pool DST distils START's own features on SRC's images (an anchor: learning
# without forgetting).
anchor_pool() {
  derived_pool "$1" "$2" "$3" <<'PY'
import glob, sys, h5py
for p in glob.glob(f"{sys.argv[1]}/*.h5"):
    with h5py.File(p, "r+") as f:
        f.attrs["lora_path"] = sys.argv[2]
PY
}
# align_runs STEPS: the "align" part's runs from the zoo of 100's average ($START, written when
# missing), the paper's objective at T 128 and lr 3e-4 for STEPS steps on the smooth-start
# surrogates and on real images, two seeds each (made when missing; its validation rows printed);
# sets ZM (their flags) and RUNS (their bench/lora_delta.py arguments).
align_runs() {
  local steps=$1
  START=$OUT/al_start
  zoo_mean_start "$START" --pool "$OUT/pool100_lr2"  # the runs' own rank and alpha
  ZM="--init zoo-mean $P128 --lr 3e-4 --steps $steps --val-every $((steps / 4))"
  run_rows "al$steps" "surrogates (smooth starts), seed 0|$OUT/pool100_lr2|$ZM" \
    "surrogates (smooth starts), seed 1|$OUT/pool100_lr2|$ZM --seed 1" \
    "real images, seed 0|$OUT/pool100_real|$ZM" "real images, seed 1|$OUT/pool100_real|$ZM --seed 1"
  RUNS=("sur0=$OUT/al${steps}_1" "sur1=$OUT/al${steps}_2" "real0=$OUT/al${steps}_3" "real1=$OUT/al${steps}_4")
}

if [ "$WHAT" = all ] || [ "$WHAT" = pools ]; then
  for pool in bn0.1 bn0 div0.3; do
    once "$(pool_dir $pool)/index.json" "$OUT/pool_$pool.log" \
      "${MPI[@]}" $B invert "${ICFG[@]}" ${POOL_FLAGS[$pool]} --out "$(pool_dir $pool)"
  done
  real_pool
  # The old layout as a control of the pooling itself: the same surrogates, classes numbered per
  # LoRA (lora_id * N + label), so no class mixes teachers.
  derived_pool "$OUT/pool_bn0.1" "$OUT/pool_perlora" <<'PY'
import json, sys, h5py
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
for e in idx["files"]:
    with h5py.File(f"{d}/{e['file']}", "r+") as f:
        n = f["teacher_logits"].shape[1]
        f["global_class"][...] = f["labels"][:] + e["lora_id"] * n
        if "data_digest" in f.attrs:  # edited on purpose: the integrity digest no longer applies
            del f.attrs["data_digest"]
idx["classes"] = []
json.dump(idx, open(f"{d}/index.json", "w"))
PY
  $PY - "$OUT/pool_bn0.1" "$PIX" "$OUT/pool_div0.3" "$OUT/pool_real" "$OUT/pool_perlora" <<'PY'
import glob, json, sys, h5py, numpy as np
print(f"{'pool':28s} {'classes':>7s} {'img/class':>9s} {'LoRAs/class':>11s} {'mean':>6s} {'white':>6s} {'teacher acc':>11s}")
for d in sys.argv[1:]:
    idx = json.load(open(f"{d}/index.json"))
    fs = [h5py.File(f, "r") for f in sorted(glob.glob(f"{d}/lora_*.h5"))]
    im = np.concatenate([f["images"][:] for f in fs]).astype(float)
    acc = np.mean([f.attrs["teacher_accuracy"] for f in fs])
    classes = {}
    for f in fs:
        for c in f["global_class"][:]:
            classes.setdefault(int(c), [0, set()])[0] += 1
            classes[int(c)][1].add(int(f.attrs["lora_id"]))
    n = [v[0] for v in classes.values()]; l = [len(v[1]) for v in classes.values()]
    print(f"{d:28s} {len(n):7d} {min(n):4d}-{max(n):<4d} {min(l):5d}-{max(l):<5d} {im.mean():6.1f} "
          f"{(im.mean(-1) > 200).mean():6.2f} {acc:11.1f}")
PY
fi

# VARIANT NAME -> metatrain flags on top of configs/demo.ini [metatrain].
declare -A FLAGS=(
  [paper]="--distill-weight 0 --temperature 1"
  [paper-lr1e-4]="--distill-weight 0 --temperature 1 --lr 1e-4"
  [paper-t16]="--distill-weight 0 --temperature 16"
  [paper-t128]="--distill-weight 0 --temperature 128"
  [paper-t128-lr3e-4]="--distill-weight 0 --temperature 128 --lr 3e-4"
  [paper-t16-jit4]="--distill-weight 0 --temperature 16 --jitter 4"
  [paper-t128-jit4]="--distill-weight 0 --temperature 128 --jitter 4"
  [distill-only]="--distill-weight 1 --temperature 1e9"
  [main]=""
  [main-lr3e-4]="--lr 3e-4"
)
ORDER=(paper paper-lr1e-4 paper-t16 paper-t128 paper-t128-lr3e-4 paper-t16-jit4 paper-t128-jit4 distill-only main main-lr3e-4)
declare -A PERLORA=([paper-t128]=1 [main]=1)  # variants also run on the per-LoRA pool
[ $# -gt 0 ] && ORDER=("$@")

if [ "$WHAT" = all ] || [ "$WHAT" = runs ]; then
  echo "validation accuracy (%) at 0 / 100 / 200 / 300 steps +- 95% CI at 300, per pool:"
  printf '%-16s %-44s %-28s %-28s %-28s %-28s %s\n' variant "flags (on configs/demo.ini)" "surrogates, BN prior 0.1" \
    "surrogates, no BN prior" "no BN prior, w-div 0.3" "real images (control)" "bn0.1 surrogates, per LoRA"
  for name in "${ORDER[@]}"; do
    [ -n "${FLAGS[$name]+x}" ] || { echo "science: unknown variant $name (${!FLAGS[*]})" >&2; exit 2; }
    res=()
    for pool in bn0.1 bn0 div0.3 real perlora; do
      [ $pool = perlora ] && [ -z "${PERLORA[$name]+x}" ] && { res+=("-"); continue; }
      p=$(pool_dir $pool)
      run="$OUT/m_${name}_$pool"
      once "$run/metatrain.json" "$run.log" "${MPI[@]}" $B metatrain "${CFG[@]}" --pool "$p" \
        --out "$run" --restart --steps 300 --val-every 100 ${FLAGS[$name]}
      res+=("$(series "$run.work/metrics.jsonl" 1)")
    done
    printf '%-16s %-44s %-28s %-28s %-28s %-28s %s\n' "$name" "${FLAGS[$name]:-(configs/demo.ini)}" "${res[@]}"
  done
fi

# eval_val NAME CONFIG TITLE META...: eval (CONFIG, from the current directory) of nn, lora-avg and
# the meta-LoRAs META (name=dir each) on the validation classes' 600 episodes into $OUT/NAME, unless
# done; prints TITLE and the results.
eval_val() {
  local name=$1 conf=$2 title=$3
  shift 3
  once "$OUT/$name/results.json" "$OUT/$name.log" "${MPI[@]}" "$REPO/$B" eval --config "$conf" \
    --precision "${PRECISION:-fp32}" --data val=data/demo/val.h5 --shots 1 --methods nn,lora-avg,meta \
    --meta "$(IFS=,; echo "$*")" --out "$OUT/$name"
  echo "$title"
  cat "$OUT/$name/results.csv"
}
# val_eval PREFIX N: eval of nn, lora-avg and the meta-LoRAs $OUT/PREFIX_1 .. PREFIX_N (named so)
# on 600 validation episodes (5-way 1-shot, paired against lora-avg) into $OUT/PREFIX_eval unless
# done, and its table.
val_eval() {
  local prefix=$1 i metas=()
  for i in $(seq "$2"); do metas+=("${prefix}_$i=$OUT/${prefix}_$i"); done
  eval_val "${prefix}_eval" configs/demo.ini "validation classes, 600 episodes 5-way 1-shot (eval):" "${metas[@]}"
}

# distill_term "STEP..." RUN...: each run's logged loss less ln 5 at those steps ("-" where it has none):
# under the flat CE (T 1e9), the distillation term on the glyphs it trains on.
distill_term() {
  $PY - "$OUT" "$@" <<'PY'
import json, math, sys
steps = [int(s) for s in sys.argv[2].split()]
print("distillation term on the training glyphs (loss - ln 5) at steps " + " / ".join(map(str, steps)) + ":")
for run in sys.argv[3:]:
    loss = {m["step"]: m["loss"] for m in map(json.loads, open(f"{sys.argv[1]}/{run}.work/metrics.jsonl")) if "loss" in m}
    print(f"  {run:<6}" + " / ".join(f"{loss[s] - math.log(5):.4f}" if s in loss else "-" for s in steps))
PY
}
# run_rows PREFIX "NAME|POOL|FLAGS"...: metatrain (the rank-4 recipe's [metatrain], or RUN_CONFIG's
# when set, plus FLAGS) on POOL as $OUT/PREFIX_<i>, unless done, and prints each run's validation
# series. Runs from the current directory (a remade job's work directory, say).
run_rows() {
  local prefix=$1 i=0 row name p flags run cfg=("${CFG[@]}")
  [ -n "${RUN_CONFIG:-}" ] && cfg=(--config "$RUN_CONFIG" --precision "${PRECISION:-fp32}")
  shift
  for row in "$@"; do
    IFS='|' read -r name p flags <<<"$row"
    i=$((i + 1))
    run="$OUT/${prefix}_$i"
    once "$run/metatrain.json" "$run.log" \
      "${MPI[@]}" "$REPO/$B" metatrain "${cfg[@]}" --pool "$p" --out "$run" --restart $flags
    printf '%-48s %s\n' "$name" "$(series "$run.work/metrics.jsonl" 2)"
  done
}

# The second zoo (32 LoRAs over 64 classes) and its surrogate pool, unless made before.
zoo64_and_pool() {
  once "$OUT/zoo64/manifest.json" "$OUT/zoo64.log" \
    "${MPI[@]}" $B zoo "${CFG[@]}" --out "$OUT/zoo64" --num-loras 32 --classes 64
  once "$OUT/pool64/index.json" "$OUT/pool64.log" \
    "${MPI[@]}" $B invert "${ICFG[@]}" --zoo "$OUT/zoo64" --out "$OUT/pool64"
}

# The zoo's average as the bar (docs/science.md, "Starting from the zoo's average").
if [ "$WHAT" = all ] || [ "$WHAT" = zoo ]; then
  real_pool
  zoo64_and_pool
  once "$OUT/pool64_real/index.json" "$OUT/pool64_real.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --real-images data/demo/zoo.h5 --out "$OUT/pool64_real"
  # NAME|POOL|metatrain flags on top of configs/demo.ini [metatrain]. lora-avg: the zoo's mean
  # delta at full rank (zoo rank 4 x LoRAs; alpha = rank keeps the zoo's scale 1), no training.
  AVG="--init zoo-mean --steps 1 --lr 1e-30 --lr-min 0"
  pixel_pool
  ZOO_RUNS=(
    "lora-avg, zoo of 20|$PIX|$AVG --rank 80 --alpha 80"
    "lora-avg, zoo of 32 over 64 classes|$OUT/pool64_real|$AVG --rank 128 --alpha 128"
    "zoo-mean rank 4, no training, zoo of 32|$OUT/pool64_real|$AVG"
    "zoo-mean + main, surrogates 20|$PIX|--init zoo-mean --steps 300 --val-every 50"
    "zoo-mean + paper T128 lr 3e-4, surrogates 20|$PIX|--init zoo-mean $P128 --lr 3e-4 --steps 300 --val-every 50"
    "zoo-mean + paper T128 lr 3e-4, real 20|$OUT/pool_real|--init zoo-mean $P128 --lr 3e-4 --steps 300 --val-every 50"
    "zoo-mean + paper T128 lr 3e-4, real 64|$OUT/pool64_real|--init zoo-mean $P128 --lr 3e-4 --steps 300 --val-every 50"
    "paper T128 lr 3e-4, real 64|$OUT/pool64_real|$P128 --lr 3e-4 --steps 300 --val-every 50"
    "paper T128, 1000 steps, real 64|$OUT/pool64_real|$P1K"
    "paper T128, 1000 steps, surrogates 64|$OUT/pool64|$P1K"
    "main, 1000 steps, surrogates 64|$OUT/pool64|$L1K"
    "paper T128 lr 3e-4, surrogates 64|$OUT/pool64|$P128 --lr 3e-4 --steps 300 --val-every 50"
  )
  echo "validation accuracy (%) at each validation (step 0 first) +- 95% CI at the last:"
  run_rows z "${ZOO_RUNS[@]}"
fi

# Variety: real images cut to 1 or 4 distinct per LoRA and class, against 8 (docs/science.md).
if [ "$WHAT" = all ] || [ "$WHAT" = variety ]; then
  [ -f "$OUT/pool64_real/index.json" ] && [ -f "$OUT/pool64/index.json" ] ||
    { echo "science: run 'bash bench/science.sh zoo' first (the 64-class pools)" >&2; exit 2; }
  for d in 1 4; do
    [ -f "$OUT/pool64_real_d$d/index.json" ] || $PY bench/pool_copies.py "$OUT/pool64_real" "$OUT/pool64_real_d$d" "$d"
  done
  # The inversion's side: a jitter shift (and flip) per image instead of one per batch (~21 min).
  once "$OUT/pool64_pi/index.json" "$OUT/pool64_pi.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --out "$OUT/pool64_pi" --jitter-per-image
  VARIETY_RUNS=(
    "real 64, 1 distinct image per LoRA and class|$OUT/pool64_real_d1|$P1K"
    "real 64, 4 distinct images per LoRA and class|$OUT/pool64_real_d4|$P1K"
    "surrogates 64, --jitter 4|$OUT/pool64|$P1K --jitter 4"
    "surrogates 64, inverted with --jitter-per-image|$OUT/pool64_pi|$P1K"
  )
  # Soft two-class targets (--target-mix 0.5): the surrogate check only (it fell; no 1,000-step run).
  once "$OUT/pool64_tm/index.json" "$OUT/pool64_tm.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --out "$OUT/pool64_tm" --target-mix 0.5
  echo "paper T128, 1000 steps: validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last"
  echo "(8 distinct real images per LoRA and class, and the surrogates without jitter: the \"zoo\" part's rows)"
  run_rows v "${VARIETY_RUNS[@]}"
  echo "surrogate check of the shared-shift, per-image-shift and soft-target pools:"
  bash bench/surrogate_check.sh "$OUT/pool64" "$OUT/pool64_pi" "$OUT/pool64_tm"
fi

# Smooth starting noise on the 64-class zoo, against the default pool (docs/science.md).
if [ "$WHAT" = starts ]; then
  zoo64_and_pool
  once "$OUT/pool64_lr2/index.json" "$OUT/pool64_lr2.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --out "$OUT/pool64_lr2" --init-lowres 2
  STARTS_RUNS=(
    "surrogates 64, white-noise starts (default)|$OUT/pool64|$P1K"
    "surrogates 64, --init-lowres 2|$OUT/pool64_lr2|$P1K"
  )
  echo "paper T128, 1000 steps: validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last"
  run_rows s "${STARTS_RUNS[@]}"
  echo "surrogate check of both pools:"
  bash bench/surrogate_check.sh "$OUT/pool64" "$OUT/pool64_lr2"
fi

# Smooth starts with more surrogates per LoRA and class (32, not 8: ~17 min), with scale
# augmentation (~5 min), and the main recipe (distillation) on them and on the default pool.
# docs/science.md, "Smooth starts, more images, the main recipe".
if [ "$WHAT" = lowres ]; then
  zoo64_and_pool
  once "$OUT/pool64_lr2_pc32/index.json" "$OUT/pool64_lr2_pc32.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --out "$OUT/pool64_lr2_pc32" --init-lowres 2 --per-class 32
  once "$OUT/pool64_lr2_zoom/index.json" "$OUT/pool64_lr2_zoom.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo64" --out "$OUT/pool64_lr2_zoom" --init-lowres 2 --zoom 0.5
  LOWRES_RUNS=(
    "--init-lowres 2, 32 per LoRA and class|$OUT/pool64_lr2_pc32|$P1K"
    "--init-lowres 2 --zoom 0.5|$OUT/pool64_lr2_zoom|$P1K"
    "main recipe, --init-lowres 2, 32 per class|$OUT/pool64_lr2_pc32|$L1K"
    "main recipe, --init-lowres 2|$OUT/pool64_lr2|$L1K"
    "main recipe, --init-lowres 2 --zoom 0.5|$OUT/pool64_lr2_zoom|$L1K"
  )
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last"
  run_rows l "${LOWRES_RUNS[@]}"
  # The main recipe on the default pool in the same precision (the "zoo" part's row is fp32).
  run_rows lw "main recipe, white-noise starts|$OUT/pool64|$L1K"
  echo "surrogate check:"
  bash bench/surrogate_check.sh "$OUT/pool64" "$OUT/pool64_lr2" "$OUT/pool64_lr2_pc32" "$OUT/pool64_lr2_zoom"
fi

# The paper's zoo: 100 LoRAs over the 64 classes (~7.8 LoRAs per class, against 2-3 in the zoo of
# 32; ~11 min), inverted from smooth starts and from white noise (~13 min each in bf16) and its
# real-image control pool, then lora-avg and 1,000-step runs (~2-4 min each; docs/science.md,
# "The paper's zoo size").
# pool100 NAME FLAGS...: the pool $OUT/pool100NAME of the zoo of 100, written by invert FLAGS, unless made.
pool100() {
  local name=$1
  shift
  once "$OUT/pool100$name/index.json" "$OUT/pool100$name.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo100" --out "$OUT/pool100$name" "$@"
}
# zoo100_pools: the zoo of 100, its smooth-start pool and its real-image control pool, unless made.
zoo100_pools() {
  once "$OUT/zoo100/manifest.json" "$OUT/zoo100.log" \
    "${MPI[@]}" $B zoo "${CFG[@]}" --out "$OUT/zoo100" --num-loras 100 --classes 64
  pool100 _lr2 --init-lowres 2
  pool100 _real --real-images data/demo/zoo.h5
}
if [ "$WHAT" = zoo100 ]; then
  zoo100_pools
  # The same zoo inverted from white noise (the default; ~13 min), for what smooth starts do here.
  pool100 ""
  ZOO100_RUNS=(
    "lora-avg, zoo of 100 over 64 classes|$OUT/pool100_lr2|--init zoo-mean --steps 1 --lr 1e-30 --lr-min 0 --rank 128 --alpha 128"
    "paper T128, --init-lowres 2, zoo of 100|$OUT/pool100_lr2|$P1K"
    "main recipe, --init-lowres 2, zoo of 100|$OUT/pool100_lr2|$L1K"
    "paper T128 lr 3e-4, --init-lowres 2, zoo of 100|$OUT/pool100_lr2|$P1K --lr 3e-4"
    "paper T128, real images, zoo of 100|$OUT/pool100_real|$P1K"
    "main recipe, 2000 steps, --init-lowres 2, zoo of 100|$OUT/pool100_lr2|--steps 2000 --val-every 250"
    "paper T128 lr 3e-4, white-noise starts, zoo of 100|$OUT/pool100|$P1K --lr 3e-4"
    "main recipe, white-noise starts, zoo of 100|$OUT/pool100|$L1K"
    "zoo-mean + paper T128 lr 3e-4, smooth starts, zoo of 100|$OUT/pool100_lr2|--init zoo-mean $P1K --lr 3e-4"
    "zoo-mean + paper T128 lr 3e-4, real images, zoo of 100|$OUT/pool100_real|--init zoo-mean $P1K --lr 3e-4"
  )
  echo "validation accuracy (%) at each validation (step 0 first) +- 95% CI at the last:"
  run_rows h "${ZOO100_RUNS[@]}"
  bash bench/surrogate_check.sh "$OUT/pool64_lr2" "$OUT/pool100" "$OUT/pool100_lr2"
fi

# Re-weighting the zoo's directions (docs/science.md, "Training only the singular values of the
# zoo's average"): metatrain --scales-only from --init zoo-mean at full rank (128, the width), so
# A and B stay the zoo's mean delta's singular vectors and only its 1,024 singular values (128 per
# adapted matrix) are trained, from lora-avg itself. Surrogates against real images of the same
# classes, the paper's objective and the main recipe. Makes the zoo of 100 and its two pools when
# missing (~25 min), then 1,000-step runs (~3-4 min each on 2 idle cores).
if [ "$WHAT" = scales ]; then
  zoo100_pools
  SC="--init zoo-mean --rank 128 --alpha 128 --scales-only"
  SCALES_RUNS=(
    "lora-avg, zoo of 100 (no training)|$OUT/pool100_lr2|--init zoo-mean --steps 1 --lr 1e-30 --lr-min 0 --rank 128 --alpha 128"
    "scales, paper T128 lr 1e-2, surrogates|$OUT/pool100_lr2|$SC $P1K --lr 1e-2"
    "scales, paper T128 lr 1e-2, real images|$OUT/pool100_real|$SC $P1K --lr 1e-2"
    "scales, main recipe lr 1e-2, surrogates|$OUT/pool100_lr2|$SC $L1K --lr 1e-2"
    "scales, paper T128 lr 1e-3, surrogates|$OUT/pool100_lr2|$SC $P1K --lr 1e-3"
    "scales, paper T128 lr 1e-3, real images|$OUT/pool100_real|$SC $P1K --lr 1e-3"
  )
  echo "validation accuracy (%) at each validation (step 0 first) +- 95% CI at the last:"
  run_rows sc "${SCALES_RUNS[@]}"
fi

# From the zoo's average at small learning rates (needs the "zoo100" part's pools; 5 runs, ~1 min
# each): which way the first steps on surrogates and on real images move validation.
if [ "$WHAT" = zoomean ]; then
  [ -f "$OUT/pool100_real/index.json" ] || { echo "science: run the zoo100 part first" >&2; exit 2; }
  ZM="--init zoo-mean $P128 --keep best"
  ZOOMEAN_RUNS=(
    "zoo-mean, paper T128 lr 3e-5, surrogates|$OUT/pool100_lr2|$ZM --lr 3e-5 --steps 500 --val-every 100"
    "zoo-mean, paper T128 lr 3e-5, real images|$OUT/pool100_real|$ZM --lr 3e-5 --steps 500 --val-every 100"
    "zoo-mean, main recipe lr 3e-5, surrogates|$OUT/pool100_lr2|--init zoo-mean --keep best --lr 3e-5 --steps 500 --val-every 100"
    "zoo-mean, paper T128 lr 1e-4, surrogates|$OUT/pool100_lr2|$ZM --lr 1e-4 --steps 1000 --val-every 200"
    "zoo-mean, paper T128 lr 1e-4, real images|$OUT/pool100_real|$ZM --lr 1e-4 --steps 1000 --val-every 200"
  )
  echo "validation accuracy (%) at each validation (step 0 first) +- 95% CI at the last:"
  run_rows zm "${ZOOMEAN_RUNS[@]}"
fi

# The mask-0.75 gap of the main job, on its pool and recipe (docs/science.md): the paper's
# attention-top quarter of the patches with distillation targets of the kept patches or of the
# whole surrogate (--distill-dense), and random quarters (--mask-select random, the main job's since
# this round) with 1, 8 or 32 fixed subsets per image.
if [ "$WHAT" = mask ]; then
  pixel_pool
  MASK_RUNS=(
    "main, dense|$PIX|"
    "main, mask 0.75, attention-top patches|$PIX|--mask-ratio 0.75 --mask-select top"
    "main, mask 0.75, attention-top, --distill-dense|$PIX|--mask-ratio 0.75 --mask-select top --distill-dense"
    "main, mask 0.75, random subsets, 1 per image|$PIX|--mask-ratio 0.75 --mask-select random --mask-variants 1"
    "main, mask 0.75, random subsets, 8 per image|$PIX|--mask-ratio 0.75 --mask-select random --mask-variants 8"
    "main, mask 0.75, random subsets, 32 per image|$PIX|--mask-ratio 0.75 --mask-select random --mask-variants 32"
  )
  echo "validation accuracy (%) at 0 / 100 / 200 / 300 steps +- 95% CI at the last:"
  run_rows k "${MASK_RUNS[@]}"
fi

# Random patch subsets as augmentation (docs/science.md, "Random patch subsets as augmentation"):
# the zoo of 100's smooth-start pool ("zoo100" makes it), 1,000 steps each, ~1 min each on 2 idle
# cores.
if [ "$WHAT" = dropout ]; then
  [ -f "$OUT/pool100_lr2/index.json" ] || { echo "science: run bash bench/science.sh zoo100 first" >&2; exit 2; }
  DROPOUT_RUNS=(
    "main recipe, random half of the patches|$OUT/pool100_lr2|$L1K --mask-ratio 0.5 --mask-select random"
    "paper T128, random half|$OUT/pool100_lr2|$P1K --mask-ratio 0.5 --mask-select random"
    "paper T128, random quarter|$OUT/pool100_lr2|$P1K --mask-ratio 0.75 --mask-select random"
  )
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows dr "${DROPOUT_RUNS[@]}"
fi

# pool_features POOL NAME [embed flags]: $OUT/hard_POOL_NAME.feat.h5, the features of $OUT/POOL's
# images (packed in file order by bench/pool_hardness.py) under the VFM with the flags, unless made.
pool_features() {
  local p=$1 m=$2
  shift 2
  [ -f "$OUT/hard_$p.h5" ] || $PY bench/pool_hardness.py pack "$OUT/$p" "$OUT/hard_$p.h5"
  [ -f "$OUT/hard_${p}_$m.feat.h5" ] || OMP_NUM_THREADS=1 $B embed "${CFG[@]}" --model runs/demo/vfm "$@" \
    --images "$OUT/hard_$p.h5" --out "$OUT/hard_${p}_$m.feat.h5" --log-level warn
}

# zoo100_variant PREFIX NAME LABEL "INVERT FLAGS": the zoo of 100 (the "zoo100" part's) inverted
# with FLAGS as $OUT/pool100_NAME, meta-trained 1,000 steps with the paper's objective (T 128, lr
# 1e-3 and 3e-4) and the main recipe (runs $OUT/PREFIX_<i>), then the surrogate check beside the
# smooth-start and real-image pools.
zoo100_variant() {
  local prefix=$1 label=$3 flags=$4 pool=$OUT/pool100_$2
  [ -f "$OUT/pool100_lr2/index.json" ] || { echo "science: run bash bench/science.sh zoo100 first" >&2; exit 2; }
  # shellcheck disable=SC2086  # flags are words
  pool100 "_$2" $flags
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows "$prefix" "paper T128, $label, zoo of 100|$pool|$P1K" "main recipe, $label, zoo of 100|$pool|$L1K" \
    "paper T128 lr 3e-4, $label, zoo of 100|$pool|$P1K --lr 3e-4"
  bash bench/surrogate_check.sh "$OUT/pool100_lr2" "$pool" "$OUT/pool100_real"
}
# Starts from the VFM's pre-training images (invert --init-images data/demo/base.h5: other scripts'
# glyphs, none of the zoo's classes; ~18 min in bf16), against the smooth-start pool
# (docs/science.md, "Starting from public images, and co-teachers").
# Real glyphs hold no ink in their outer 3 pixels, the surrogates are textures over the whole frame
# (docs/science.md, "A white margin"): the zoo of 100 inverted with its outer 3 px held white.
if [ "$WHAT" = border ]; then
  zoo100_variant wb border3 "white border 3" "--init-lowres 2 --white-border 3"
  run_rows wb2 "paper T256 lr 3e-4, white border 3, zoo of 100|$OUT/pool100_border3|$L1K --distill-weight 0 --temperature 256 --lr 3e-4"
fi
# The surrogates are caricatures of their classes (further apart than real images; "teachers"
# part): fewer inversion iterations stop them earlier on the way to the teacher's extreme.
if [ "$WHAT" = iters ]; then
  zoo100_variant it it50 "50 iterations" "--init-lowres 2 --iterations 50"
  run_rows it2 "paper T256 lr 3e-4, 50 iterations, zoo of 100|$OUT/pool100_it50|$L1K --distill-weight 0 --temperature 256 --lr 3e-4"
  for p in pool100_lr2 pool100_it50; do pool_features $p bare; done
  $PY bench/pool_episodes.py "smooth starts=$OUT/pool100_lr2=$OUT/hard_pool100_lr2_bare.feat.h5" \
    "50 iterations=$OUT/pool100_it50=$OUT/hard_pool100_it50_bare.feat.h5"
fi
if [ "$WHAT" = imgstarts ]; then zoo100_variant im img "base-glyph starts" "--init-images data/demo/base.h5"; fi
# Retrieval instead of synthesis (invert --retrieve data/demo/base.h5): each LoRA's "surrogates" are
# the public glyphs (other scripts) it assigns to each of its classes most confidently, out of 4,096
# drawn per LoRA; nothing is inverted (docs/science.md, "Public glyphs chosen by the zoo").
if [ "$WHAT" = retrieve ]; then
  zoo100_variant rt retr "retrieved base glyphs" "--retrieve data/demo/base.h5"
  run_rows rt2 "paper T256 lr 3e-4, retrieved base glyphs, zoo of 100|$OUT/pool100_retr|$L1K --distill-weight 0 --temperature 256 --lr 3e-4"
  # The main recipe gains where the episodic objective loses: distillation alone (no CE), each with
  # its smooth-start control; 32 retrieved images per LoRA and class; from the zoo's average.
  DO="--distill-weight 1 --temperature 1e9"
  run_rows rt3 "distillation only, retrieved base glyphs|$OUT/pool100_retr|$L1K $DO" \
    "distillation only, smooth starts|$OUT/pool100_lr2|$L1K $DO"
  pool100 _retr32 --retrieve data/demo/base.h5 --per-class 32
  run_rows rt4 "main recipe, 32 retrieved per class|$OUT/pool100_retr32|$L1K" \
    "distillation only, 32 retrieved per class|$OUT/pool100_retr32|$L1K $DO"
  run_rows rt5 "main recipe from the zoo's average lr 3e-4, retrieved|$OUT/pool100_retr|$L1K --init zoo-mean --lr 3e-4" \
    "main recipe from the zoo's average lr 3e-4, smooth starts|$OUT/pool100_lr2|$L1K --init zoo-mean --lr 3e-4"
  # Distillation alone on the retrieved glyphs, still rising at step 1,000: twice the steps, and
  # from the zoo's average.
  run_rows rt6 "distillation only, retrieved, 2,000 steps|$OUT/pool100_retr|--steps 2000 --val-every 500 $DO" \
    "distillation only from the zoo's average lr 3e-4, retrieved|$OUT/pool100_retr|$L1K $DO --init zoo-mean --lr 3e-4"
  # From the zoo's full average (rank 128: lora-avg itself at step 0) rather than its rank-4 cut.
  ZM="--init zoo-mean --rank 128 --alpha 128 --lr 3e-4"
  run_rows rt7 "distillation only from lora-avg (rank 128) lr 3e-4, retrieved|$OUT/pool100_retr|$L1K $DO $ZM" \
    "distillation only from lora-avg (rank 128) lr 3e-4, smooth starts|$OUT/pool100_lr2|$L1K $DO $ZM"
  # The control: distillation on real images of the zoo's classes, the best transfer set there is.
  run_rows rt8 "distillation only, real images (control)|$OUT/pool100_real|$L1K $DO" \
    "distillation only from the zoo's average lr 3e-4, real images|$OUT/pool100_real|$L1K $DO --init zoo-mean --lr 3e-4"
  # Both: the episodic objective on the inverted surrogates (class content), distillation on the
  # retrieved glyphs (real-looking inputs; metatrain --distill-pool), the main recipe's weights.
  RD="--distill-pool $OUT/pool100_retr"
  run_rows rt9 "main recipe, CE on surrogates + distillation on retrieved|$OUT/pool100_lr2|$L1K $RD" \
    "the same from the zoo's average lr 3e-4|$OUT/pool100_lr2|$L1K $RD --init zoo-mean --lr 3e-4" \
    "main recipe, CE on real images + distillation on retrieved (control)|$OUT/pool100_real|$L1K $RD"
  # The same with the settings at which the paper's objective did best on surrogates (T 256, lr
  # 3e-4), at distillation weight 1 and 0.3.
  run_rows rt10 "T256 lr 3e-4, CE on surrogates + distillation on retrieved|$OUT/pool100_lr2|$L1K $RD --temperature 256 --lr 3e-4" \
    "the same at distillation weight 0.3|$OUT/pool100_lr2|$L1K $RD --temperature 256 --lr 3e-4 --distill-weight 0.3"
fi
# Co-teachers (invert --co-teachers 2): each surrogate of class c must also be c to 2 other LoRAs of
# the zoo of 100 whose tasks hold c, on top of the smooth starts of pool100_lr2, at 100 iterations
# (half the main job's, to keep the cost near one default inversion: ~20 min in bf16 here; the
# inversion screen's "100 iterations" row changed the surrogate check by about a point).
if [ "$WHAT" = coteach ]; then
  zoo100_variant co co2 "co-teachers 2" "--init-lowres 2 --co-teachers 2 --iterations 100"
fi
# A feature prior (invert --feature-prior data/demo/base.h5 --w-feat 0.1): the residual stream's
# per-channel statistics at every layer must match those of the VFM's pre-training glyphs under the
# inverted LoRA, on top of the smooth starts of pool100_lr2 (~15 min in bf16).
if [ "$WHAT" = featprior ]; then
  zoo100_variant fp feat0.1 "feature prior 0.1" "--init-lowres 2 --feature-prior data/demo/base.h5 --w-feat 0.1"
fi

# Surrogates inverted against a student (docs/science.md, "Surrogates that ask about the student's
# mistakes"): the zoo of 100 inverted from smooth starts with invert --student lora-avg (the zoo's
# mean delta at full rank, written by metatrain --init zoo-mean without training) --w-adv 0.3 and
# 0.1, so each surrogate is also pushed away from what lora-avg's prototypes take for its class (~26
# min per pool in bf16: a second forward and backward per iteration), then for each the 1,000-step
# runs of the other pools, the run from the zoo's average and the surrogate check, and how hard each
# pool's episodes are for lora-avg and the bare VFM.
if [ "$WHAT" = student ]; then
  zoo100_pools
  AVG=$OUT/avg100
  lora_avg "$AVG" 128 --pool "$OUT/pool100_lr2"  # full rank: the VFM's width
  zoo100_variant st adv0.3 "against lora-avg 0.3" "--init-lowres 2 --student $AVG --w-adv 0.3"
  run_rows st0 "zoo-mean + paper T128 lr 3e-4, against lora-avg|$OUT/pool100_adv0.3|--init zoo-mean $P1K --lr 3e-4"
  # A weaker push (W 0.1): is a little hardness, short of leaving the class, what helps?
  zoo100_variant sw adv0.1 "against lora-avg 0.1" "--init-lowres 2 --student $AVG --w-adv 0.1"
  run_rows sw0 "zoo-mean + paper T128 lr 3e-4, against lora-avg 0.1|$OUT/pool100_adv0.1|--init zoo-mean $P1K --lr 3e-4"
  # How hard each pool's episodes are for lora-avg and for the bare VFM (~1 min).
  FEATS=()
  for p in pool100_adv0.1 pool100_adv0.3 pool100_lr2; do
    pool_features $p avg --lora "$AVG"
    pool_features $p bare
    FEATS+=("$OUT/hard_${p}_avg.feat.h5" "$OUT/hard_${p}_bare.feat.h5")
  done
  $PY bench/pool_hardness.py score 5 "${FEATS[@]}"
fi

# Which layers the surrogates teach (docs/science.md, "Which layers the surrogates teach, and from
# which teacher"): the
# meta-LoRA on a subset of the encoder layers (metatrain --layers; the others stay bare), on the zoo
# of 100's smooth-start pool and its real-image control, 1,000 steps each (~1.5 min each).
if [ "$WHAT" = layers ]; then
  [ -f "$OUT/pool100_real/index.json" ] || { echo "science: run bash bench/science.sh zoo100 first" >&2; exit 2; }
  P3="$P1K --lr 3e-4"
  LAYER_RUNS=(
    "paper T128 lr 3e-4, real, every layer|$OUT/pool100_real|$P3"
    "paper T128 lr 3e-4, surrogates, layers 2,3|$OUT/pool100_lr2|$P3 --layers 2,3"
    "paper T128 lr 3e-4, real, layers 2,3|$OUT/pool100_real|$P3 --layers 2,3"
    "paper T128 lr 3e-4, surrogates, layers 0,1|$OUT/pool100_lr2|$P3 --layers 0,1"
    "paper T128 lr 3e-4, real, layers 0,1|$OUT/pool100_real|$P3 --layers 0,1"
    "main recipe, surrogates, layers 2,3|$OUT/pool100_lr2|$L1K --layers 2,3"
    "main recipe, surrogates, layers 0,1|$OUT/pool100_lr2|$L1K --layers 0,1"
  )
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows ly "${LAYER_RUNS[@]}"
fi

# Support and queries from different teachers (docs/science.md, "Which layers the surrogates
# teach, and from which teacher"): how hard the zoo of 100's pooled episodes are for the bare VFM (queries from
# the support's LoRA and from the others; bench/pool_episodes.py), then 1,000-step runs with and
# without metatrain --disjoint-teachers, softer softmaxes, and harder episodes (metatrain
# --hard-classes; ~1.2 min each).
if [ "$WHAT" = teachers ]; then
  [ -f "$OUT/pool100_real/index.json" ] || { echo "science: run bash bench/science.sh zoo100 first" >&2; exit 2; }
  for p in pool100_lr2 pool100_real; do pool_features $p bare; done
  $PY bench/pool_episodes.py "surrogates, smooth starts=$OUT/pool100_lr2=$OUT/hard_pool100_lr2_bare.feat.h5" \
    "real images (control)=$OUT/pool100_real=$OUT/hard_pool100_real_bare.feat.h5"
  P3="$P1K --lr 3e-4"
  TEACHER_RUNS=(
    "paper T128 lr 3e-4, surrogates|$OUT/pool100_lr2|$P3"
    "paper T128 lr 3e-4, surrogates, disjoint teachers|$OUT/pool100_lr2|$P3 --disjoint-teachers"
    "main recipe, surrogates|$OUT/pool100_lr2|$L1K"
    "main recipe, surrogates, disjoint teachers|$OUT/pool100_lr2|$L1K --disjoint-teachers"
    "paper T128 lr 3e-4, real, disjoint teachers|$OUT/pool100_real|$P3 --disjoint-teachers"
    # The surrogates' squared distances are 1.6x the real images' (pool_episodes.py): a softer
    # softmax for them (Adam takes out the 1/T of the gradient's size, so T sets only the sharpness).
    "paper T256 lr 3e-4, surrogates|$OUT/pool100_lr2|$L1K --distill-weight 0 --temperature 256 --lr 3e-4"
    "paper T512 lr 3e-4, surrogates|$OUT/pool100_lr2|$L1K --distill-weight 0 --temperature 512 --lr 3e-4"
    "paper T256 lr 3e-4, real|$OUT/pool100_real|$L1K --distill-weight 0 --temperature 256 --lr 3e-4"
    # The softer softmax with the two other changes that each moved the ends by about a point.
    "main recipe at T256, surrogates|$OUT/pool100_lr2|$L1K --temperature 256"
    "paper T256 lr 3e-4, random half, surrogates|$OUT/pool100_lr2|$L1K --distill-weight 0 --temperature 256 --lr 3e-4 --mask-ratio 0.5 --mask-select random"
    "main recipe at T256, random half, surrogates|$OUT/pool100_lr2|$L1K --temperature 256 --mask-ratio 0.5 --mask-select random"
  )
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows dt "${TEACHER_RUNS[@]}"
  # Harder episodes: the other classes among the first's M nearest (bare VFM prototypes).
  HARD_RUNS=(
    "paper T128 lr 3e-4, hard classes 16, surrogates|$OUT/pool100_lr2|$P3 --hard-classes 16"
    "paper T128 lr 3e-4, hard classes 8, surrogates|$OUT/pool100_lr2|$P3 --hard-classes 8"
    "paper T128 lr 3e-4, hard classes 8, real|$OUT/pool100_real|$P3 --hard-classes 8"
    "paper T128 lr 3e-4, hard classes 16, real|$OUT/pool100_real|$P3 --hard-classes 16"
    "main recipe, hard classes 8, surrogates|$OUT/pool100_lr2|$L1K --hard-classes 8"
  )
  run_rows hc "${HARD_RUNS[@]}"
fi

# The zoo's feature ensemble against its weight average (lora-avg) and the main job's meta-LoRA:
# embed the validation images under each zoo LoRA, lora-avg (the exact mean delta at full rank)
# and runs/demo/meta, then 600 seeded 5-way 1-shot 15-query episodes in numpy (~2 min).
if [ "$WHAT" = ensemble ]; then
  E=$OUT/ensemble; mkdir -p "$E"
  lora_avg "$E/avg" "$(zoo_rank)"
  mapfile -t ZOO_EMBEDS < <(zoo_embeds)
  embed_val "$E" data/demo/val.h5 "bare|" "avg|$E/avg" "meta|runs/demo/meta" "${ZOO_EMBEDS[@]}"
  $PY bench/zoo_ensemble.py "$E" meta
fi
# The surrogates' spectrum optimised instead of their pixels (invert --fourier 1: Adam on the
# 1/|f|-scaled spectrum, the decorrelated parametrisation of feature visualisation, whose steps
# draw broad strokes where pixel steps add high-frequency texture; docs/science.md, "Broad strokes,
# and the meta-LoRA mixed with the zoo's average"): the main job's zoo inverted so (~5 min in bf16),
# 300-step runs against the main job's own pool, and the surrogate check of both; with ZOO100=1
# also the zoo of 100 from smooth starts (after "zoo100"; ~15 min + three 1,000-step runs).
# main_pool NAME FLAGS...: the main job's zoo inverted with configs/demo.ini [invert] plus FLAGS into
# $OUT/pool_NAME, unless made.
main_pool() {
  local name=$1
  shift
  once "$OUT/pool_$name/index.json" "$OUT/pool_$name.log" "${MPI[@]}" $B invert "${ICFG[@]}" "$@" --out "$OUT/pool_$name"
}
if [ "$WHAT" = fourier ]; then
  pixel_pool
  real_pool
  main_pool fourier1 --fourier 1
  echo "validation accuracy (%) at 0 / 100 / 200 / 300 steps +- 95% CI at the last:"
  run_rows fo "paper T128 lr 3e-4, pixels (the painted main-job pool)|$PIX|$P128 --lr 3e-4" \
    "paper T128 lr 3e-4, --fourier 1|$OUT/pool_fourier1|$P128 --lr 3e-4" \
    "main recipe, pixels (the painted main-job pool)|$PIX|" "main recipe, --fourier 1|$OUT/pool_fourier1|"
  bash bench/surrogate_check.sh "$PIX" "$OUT/pool_fourier1" "$OUT/pool_real"
  # Steps on the spectrum leave the white-noise start's high frequencies in place: both again from
  # smooth starts (--init-lowres 2), the paper's objective only.
  main_pool lr2 --init-lowres 2
  main_pool lr2_fourier1 --init-lowres 2 --fourier 1
  run_rows fo2 "paper T128 lr 3e-4, --init-lowres 2|$OUT/pool_lr2|$P128 --lr 3e-4" \
    "paper T128 lr 3e-4, --init-lowres 2 --fourier 1|$OUT/pool_lr2_fourier1|$P128 --lr 3e-4"
  bash bench/surrogate_check.sh "$OUT/pool_lr2" "$OUT/pool_lr2_fourier1" "$OUT/pool_real"
  if [ "${ZOO100:-0}" = 1 ]; then zoo100_variant fo100 fourier1 "fourier 1" "--init-lowres 2 --fourier 1"; fi
fi
# Weight-space mixes of a meta-LoRA with the zoo's average (bench/lora_mix.py: exactly W x meta +
# (1 - W) x lora-avg as one adapter, as WiSE-FT mixes a fine-tuned model with its start): does the
# meta-LoRA carry anything that lora-avg lacks? eval on the validation classes only (its own 600
# episodes, 5-way 1-shot), so W can be chosen there. For the main job's meta-LoRA and, as the
# control, for one meta-trained on the real-image control pool (paper T128, 300 steps);
# MIX_WEIGHTS (default 0.25 0.5 0.75 1); ~5 min each after the main job's metatrain.
# mix_eval META_DIR [BASE_DIR]: the mixes of one meta-LoRA with BASE_DIR (default: the zoo of 100's
# lora-avg, $OUT/lora_avg128; W > 1 extrapolates; "zero": the bare VFM, so mixW = W x META), evaluated
# with nn and lora-avg on the same episodes.
mix_eval() {
  local meta=$1 base=${2:-$OUT/lora_avg128} tag w metas
  tag=$(basename "$meta")
  # Checks of the mix: mix1 must give what $tag gives, the base what eval's own lora-avg gives (the
  # bare VFM, "zero", is nn's).
  metas="$tag=$meta"
  [ "$base" = zero ] || metas="$(basename "$base" | sed 's/^lora_//')=$base,$metas"
  for w in ${MIX_WEIGHTS:-0.25 0.5 0.75 1}; do
    $PY bench/lora_mix.py "$OUT/mix_${tag}_$w" "$w" "$meta" "$base" >/dev/null
    metas+=",mix$w=$OUT/mix_${tag}_$w"
  done
  once "$OUT/mix_${tag}_eval/results.json" "$OUT/mix_${tag}_eval.log" "${MPI[@]}" $B eval "${CFG[@]}" \
    --data val=data/demo/val.h5 --shots 1 --methods nn,lora-avg,meta --meta "$metas" --out "$OUT/mix_${tag}_eval"
  echo "validation classes, 600 episodes 5-way 1-shot (mixW = W x $meta + (1 - W) x $base):"
  cat "$OUT/mix_${tag}_eval/results.csv"
}
# Feature-statistics alignment with public glyphs (docs/science.md, "Aligning the surrogates'
# features with public glyphs"): the "align" part found the surrogates teaching a direction
# orthogonal to real images'. Here the paper's objective on the zoo of 100 drawn with co-teachers
# (the "strokes100" pool) gets a term that matches the per-dimension mean and spread of the
# episodes' features to those of public glyphs that hold none of the zoo's classes
# (metatrain --align-weight W with --distill-pool: the "retrieve" part's pool, invert --retrieve
# data/demo/base.h5), so that what the episodes teach must hold where real glyphs lie. WEIGHTS
# (default "1 10 0.1") the alignment weights; the control without it; the real-image control with the
# first weight. ~2 min per run after the pools (4 with the alignment's extra forward).
if [ "$WHAT" = domalign ]; then
  zoo100_pools
  pool100 _strokes12_co2 --strokes 12 --co-teachers 2 --iterations 100
  pool100 _retr --retrieve data/demo/base.h5
  DRAWN100=$OUT/pool100_strokes12_co2
  PUB="--distill-pool $OUT/pool100_retr"
  rows=("paper T128 lr 3e-4, drawn (control)|$DRAWN100|$P1K --lr 3e-4")
  for w in ${WEIGHTS:-1 10 0.1}; do rows+=("... + alignment $w with public glyphs|$DRAWN100|$P1K --lr 3e-4 $PUB --align-weight $w"); done
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows da "${rows[@]}"
  read -r w1 _ <<<"${WEIGHTS:-1 10 0.1}"
  run_rows dar "paper T128 lr 3e-4, real images (control)|$OUT/pool100_real|$P1K --lr 3e-4" \
    "... + alignment $w1 with public glyphs|$OUT/pool100_real|$P1K --lr 3e-4 $PUB --align-weight $w1"
  # The in-domain control: the drawn surrogates aligned with real images of the zoo's classes (the
  # real-image pool, which the method never has) instead of public glyphs: does an anchor in the
  # validation glyphs' domain help where the public glyphs hurt?
  run_rows dai "drawn + alignment 1 with real zoo-class images (control)|$DRAWN100|$P1K --lr 3e-4 --distill-pool $OUT/pool100_real --align-weight 1" \
    "drawn + alignment 0.1 with real zoo-class images (control)|$DRAWN100|$P1K --lr 3e-4 --distill-pool $OUT/pool100_real --align-weight 0.1"
  # DELTA=1: the "align" part's check (its runs, made when missing): from the zoo's average on the
  # smooth-start surrogates with the first weight, 100 and 1,000 steps; does the alignment move the
  # meta-LoRA where real images move it (bench/lora_delta.py)?
  if [ "${DELTA:-0}" = 1 ]; then
    for steps in 100 1000; do
      align_runs "$steps"
      run_rows "dal$steps" "surrogates (smooth starts) + alignment $w1, seed 0|$OUT/pool100_lr2|$ZM $PUB --align-weight $w1"
      $PY bench/lora_delta.py "$START" "aligned=$OUT/dal${steps}_1" "${RUNS[@]}"
    done
  fi
fi
# A zoo that knows nothing (docs/science.md, "Surrogates of a zoo that knows nothing"): 20 of the
# zoo of 100's entries with their LoRA deltas zeroed and random heads (bench/null_zoo.py), inverted
# as the smooth-start pool is (~2.5 min on 2 cores in bf16), meta-trained with the paper's objective
# (T 128, lr 3e-4, 1,000 steps) from a fresh start and from the zoo of 100's average (the "align"
# part's start through --init DIR: the null zoo's own mean is 0), and compared in weight space with
# the "align" part's runs. Then the real zoo's surrogates from its average with an anchor:
# --distill-pool's public glyphs (the "retrieve" part's pool) distilled towards the start's own
# features (a copy of the pool whose files name the start as their LoRA: learning without
# forgetting), weights 1 and 10, the same anchored on real images of the zoo's classes, and real
# images anchored to public glyphs (controls: does the anchor only freeze the meta-LoRA?). ~30 min
# after the pools, plus ~8 min for the "align" part's four 1,000-step runs when they are missing.
if [ "$WHAT" = null ]; then
  zoo100_pools
  pool100 _retr --retrieve data/demo/base.h5
  once "$OUT/zoonull/manifest.json" "$OUT/zoonull.log" $PY bench/null_zoo.py "$OUT/zoo100" "$OUT/zoonull" 20
  once "$OUT/poolnull_lr2/index.json" "$OUT/poolnull_lr2.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoonull" --out "$OUT/poolnull_lr2" --init-lowres 2
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  echo "from the zoo's average, the align part's runs:"
  align_runs 1000
  for src in retr real; do anchor_pool "$OUT/pool100_$src" "$OUT/anchor_$src" "$START"; done
  ZS="--init $START --temperature 128 $L1K --lr 3e-4"
  run_rows nul "null zoo, fresh start|$OUT/poolnull_lr2|$P1K --lr 3e-4" \
    "null zoo, from the zoo of 100's average|$OUT/poolnull_lr2|$ZS --distill-weight 0" \
    "the zoo of 100's surrogates, fresh start (control)|$OUT/pool100_lr2|$P1K --lr 3e-4"
  run_rows anc "surrogates from the zoo's average (--init DIR)|$OUT/pool100_lr2|$ZS --distill-weight 0" \
    "... + anchor 1 on public glyphs|$OUT/pool100_lr2|$ZS --distill-pool $OUT/anchor_retr --distill-weight 1" \
    "... + anchor 10 on public glyphs|$OUT/pool100_lr2|$ZS --distill-pool $OUT/anchor_retr --distill-weight 10" \
    "... + anchor 1 on real zoo-class images (control)|$OUT/pool100_lr2|$ZS --distill-pool $OUT/anchor_real --distill-weight 1" \
    "real images from the zoo's average + anchor 1 on public glyphs (control)|$OUT/pool100_real|$ZS --distill-pool $OUT/anchor_retr --distill-weight 1"
  $PY bench/lora_delta.py "$START" "${RUNS[@]}" "null=$OUT/nul_2" "sur0_dir=$OUT/anc_1" "anchor1=$OUT/anc_2" \
    "anchor10=$OUT/anc_3" "anchor_real=$OUT/anc_4" "real_anchor1=$OUT/anc_5"
  # DRAWN=1: the best pool of the zoo of 100 (drawn with co-teachers, the "strokes100" part's; made
  # when missing, ~20 min) from the zoo's average under the paper's objective, without and with the
  # anchor (also at lr 1e-3, for 2,000 steps and with a second seed; ~35 min), and under the main
  # recipe (CE at T 128 + each surrogate's own LoRA distilled, lr 1e-3; here without the anchor,
  # the "fullavg" part runs both with --distill-pool-weight).
  if [ "${DRAWN:-0}" = 1 ]; then
    pool100 _strokes12_co2 --strokes 12 --co-teachers 2 --iterations 100
    D=$OUT/pool100_strokes12_co2
    run_rows ancd "drawn from the zoo's average, paper objective|$D|$ZS --distill-weight 0" \
      "... + anchor 1 on public glyphs|$D|$ZS --distill-pool $OUT/anchor_retr --distill-weight 1" \
      "drawn from the zoo's average, main recipe|$D|--init $START $L1K" \
      "drawn + anchor 1, lr 1e-3|$D|${ZS/--lr 3e-4/--lr 1e-3} --distill-pool $OUT/anchor_retr --distill-weight 1" \
      "drawn + anchor 1, 2,000 steps|$D|${ZS/$L1K/--steps 2000 --val-every 500} --distill-pool $OUT/anchor_retr --distill-weight 1" \
      "drawn + anchor 1, seed 1|$D|$ZS --distill-pool $OUT/anchor_retr --distill-weight 1 --seed 1" \
      "drawn, seed 1 (no anchor)|$D|$ZS --distill-weight 0 --seed 1"
    $PY bench/lora_delta.py "$START" "${RUNS[@]}" "drawn=$OUT/ancd_1" "drawn_anchor=$OUT/ancd_2" "drawn_main=$OUT/ancd_3" \
      "anchor_lr1e-3=$OUT/ancd_4" "anchor_2000=$OUT/ancd_5" "anchor_seed1=$OUT/ancd_6" "drawn_seed1=$OUT/ancd_7"
  fi
fi
# From lora-avg itself (docs/science.md, "From `lora-avg` itself, and the main recipe with an
# anchor"): the "null" part's
# best recipe (the drawn pool with co-teachers, the paper's objective at T 128, anchored to the
# start's features on public glyphs) with the meta-LoRA at full rank (128, alpha 128) started at the
# zoo of 100's exact mean delta instead of its rank-4 cut; lr 3e-4 and 1e-4 (a full-rank LoRA moves
# its delta faster per Adam step), the same without the anchor, and real images anchored (control).
# Makes the "zoo100", "strokes100" and "retrieve" parts' pools when missing. ~4 min per run.
# The "fullavg" part's inputs, made when missing: the zoo of 100's pools, the public glyphs it
# retrieves, its drawn pool, its lora-avg at full rank (S128) and the anchor's copy of those glyphs.
fullavg_inputs() {
  zoo100_pools
  pool100 _retr --retrieve data/demo/base.h5
  pool100 _strokes12_co2 --strokes 12 --co-teachers 2 --iterations 100
  S128=$OUT/avg100_128
  lora_avg "$S128" 128 --pool "$OUT/pool100_lr2"
  anchor_pool "$OUT/pool100_retr" "$OUT/anchor128_retr" "$S128"
}
if [ "$WHAT" = fullavg ]; then
  fullavg_inputs
  D=$OUT/pool100_strokes12_co2
  F="--init $S128 --rank 128 --alpha 128 --temperature 128 $L1K"
  A="--distill-pool $OUT/anchor128_retr --distill-weight 1"
  MA="--distill-pool $OUT/anchor128_retr --distill-pool-weight 1"  # beside the main recipe's distillation
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows fa "drawn from lora-avg, paper objective + anchor 1, lr 3e-4|$D|$F --lr 3e-4 $A" \
    "... lr 1e-4|$D|$F --lr 1e-4 $A" \
    "drawn from lora-avg, paper objective, lr 1e-4 (no anchor)|$D|$F --lr 1e-4 --distill-weight 0" \
    "real images from lora-avg + anchor 1, lr 1e-4 (control)|$OUT/pool100_real|$F --lr 1e-4 $A" \
    "drawn from lora-avg, paper objective + anchor 1, lr 1e-4, seed 1|$D|$F --lr 1e-4 $A --seed 1" \
    "... lr 1e-4, 2,000 steps|$D|${F/$L1K/--steps 2000 --val-every 500} --lr 1e-4 $A" \
    "real images from lora-avg, lr 1e-4, no anchor (control)|$OUT/pool100_real|$F --lr 1e-4 --distill-weight 0" \
    "drawn from lora-avg, paper objective + anchor 0.3, lr 1e-4|$D|$F --lr 1e-4 ${A/--distill-weight 1/--distill-weight 0.3}" \
    "drawn from lora-avg, paper objective + anchor 0.1, lr 1e-4|$D|$F --lr 1e-4 ${A/--distill-weight 1/--distill-weight 0.1}"
  # The main recipe (CE at T 128 + each surrogate's own LoRA distilled) with the anchor beside it
  # (--distill-pool-weight), from the rank-4 start of the "null" part and from lora-avg.
  START=$OUT/al_start
  zoo_mean_start "$START" --pool "$OUT/pool100_lr2"
  anchor_pool "$OUT/pool100_retr" "$OUT/anchor_retr" "$START"
  M4="--init $START $L1K --distill-pool $OUT/anchor_retr --distill-pool-weight 1"
  run_rows fam "drawn from the rank-4 average, main recipe + anchor 1|$D|$M4" \
    "... lr 3e-4|$D|$M4 --lr 3e-4" \
    "drawn from lora-avg, main recipe + anchor 1, lr 1e-4|$D|$F --lr 1e-4 $MA" \
    "drawn from lora-avg, main recipe, lr 1e-4 (no anchor)|$D|$F --lr 1e-4"
  # ZOO20=1: the same from the main job's zoo of 20 (its lora-avg at full rank: 20 LoRAs x rank 4),
  # with the main job's drawn pool (configs/demo.ini [invert], ~5 min), its real-image control
  # pool and public glyphs it retrieves (~1 min each).
  if [ "${ZOO20:-0}" = 1 ]; then
    real_pool
    once "$OUT/pool20_drawn/index.json" "$OUT/pool20_drawn.log" "${MPI[@]}" $B invert "${CFG[@]}" --out "$OUT/pool20_drawn"
    once "$OUT/pool20_retr/index.json" "$OUT/pool20_retr.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
      --retrieve data/demo/base.h5 --out "$OUT/pool20_retr"
    S80=$OUT/avg20_80
    lora_avg "$S80" 80 --pool "$OUT/pool_real"
    anchor_pool "$OUT/pool20_retr" "$OUT/anchor80_retr" "$S80"
    F20="--init $S80 --rank 80 --alpha 80 --temperature 128 $L1K --lr 1e-4"
    A20="--distill-pool $OUT/anchor80_retr"
    run_rows f20 "zoo of 20, drawn from lora-avg, paper objective + anchor 1|$OUT/pool20_drawn|$F20 $A20 --distill-weight 1" \
      "zoo of 20, drawn from lora-avg, main recipe + anchor 1|$OUT/pool20_drawn|$F20 $A20 --distill-pool-weight 1" \
      "zoo of 20, real images from lora-avg + anchor 1 (control)|$OUT/pool_real|$F20 $A20 --distill-weight 1" \
      "zoo of 20, real images from lora-avg + anchor 1, seed 1 (control)|$OUT/pool_real|$F20 $A20 --distill-weight 1 --seed 1"
  fi
  # CO=N: the zoo of 100 drawn with N co-teachers instead of 2 (each surrogate judged by up to N
  # more LoRAs of its class, of the 7-8 that cover it; ~(1 + N) / 3 x the co-teachers-2 inversion's
  # 20 min), under the two anchored recipes from lora-avg at lr 1e-4.
  if [ -n "${CO:-}" ]; then
    pool100 "_strokes12_co$CO" --strokes 12 --co-teachers "$CO" --iterations 100
    DC=$OUT/pool100_strokes12_co$CO
    run_rows "fc$CO" "drawn, $CO co-teachers, from lora-avg, paper objective + anchor 1, lr 1e-4|$DC|$F --lr 1e-4 $A" \
      "drawn, $CO co-teachers, from lora-avg, main recipe + anchor 1, lr 1e-4|$DC|$F --lr 1e-4 $MA"
  fi
fi
# Public glyphs as episodes (docs/science.md, "Episodes of public glyphs"): the real-image control
# pool of the zoo of 100 with each zoo class's images replaced by the images of one class of
# data/demo/base.h5 (the VFM's pre-training glyphs: other scripts; bench/public_pool.py, seconds),
# everything else kept. Does what real images of the zoo's classes teach come from their domain or
# from episodes of real glyphs as such? From lora-avg (the "fullavg" part's start) under the
# "fullavg" part's recipe, with and without the anchor, and from a fresh meta-LoRA under the "zoo100"
# part's real-image row (the paper's objective at T 128, lr 1e-3); then the real-image control cut
# to a few images per class, and surrogate pools joined. ~3-4 min per run (11 runs).
if [ "$WHAT" = public ]; then
  fullavg_inputs
  [ -f "$OUT/pool100_pub/index.json" ] ||
    $PY bench/public_pool.py "$OUT/pool100_real" data/demo/base.h5 "$OUT/pool100_pub"
  F="--init $S128 --rank 128 --alpha 128 --temperature 128 $L1K --lr 1e-4"
  A="--distill-pool $OUT/anchor128_retr --distill-weight 1"
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows pub "public glyphs from lora-avg, paper objective + anchor 1|$OUT/pool100_pub|$F $A" \
    "public glyphs from lora-avg, paper objective (no anchor)|$OUT/pool100_pub|$F --distill-weight 0" \
    "public glyphs from the bare VFM (fresh, rank 4), paper objective|$OUT/pool100_pub|$P1K"
  # What the surrogates are worth in real images: the real-image control cut to one distinct image
  # per LoRA and class (6 distinct per class: the LoRAs of a class share real images;
  # bench/pool_copies.py), anchored from lora-avg as above.
  [ -f "$OUT/pool100_real_d1/index.json" ] || $PY bench/pool_copies.py "$OUT/pool100_real" "$OUT/pool100_real_d1" 1
  # The same cut to 1, 2, 4 and 6 distinct images per real class ("class": each file keeps its
  # teacher logits).
  [ -f "$OUT/pool100_real_c1/index.json" ] ||
    $PY bench/pool_copies.py "$OUT/pool100_real" "$OUT/pool100_real_c1" 1 class
  [ -f "$OUT/pool100_real_c2/index.json" ] ||
    $PY bench/pool_copies.py "$OUT/pool100_real" "$OUT/pool100_real_c2" 2 class
  [ -f "$OUT/pool100_real_c4/index.json" ] ||
    $PY bench/pool_copies.py "$OUT/pool100_real" "$OUT/pool100_real_c4" 4 class
  [ -f "$OUT/pool100_real_c6/index.json" ] ||
    $PY bench/pool_copies.py "$OUT/pool100_real" "$OUT/pool100_real_c6" 6 class
  run_rows pubd "real images, 1 distinct per LoRA and class, from lora-avg + anchor 1|$OUT/pool100_real_d1|$F $A" \
    "real images, 1 distinct per class, from lora-avg + anchor 1|$OUT/pool100_real_c1|$F $A" \
    "real images, 2 distinct per class, from lora-avg + anchor 1|$OUT/pool100_real_c2|$F $A" \
    "real images, 4 distinct per class, from lora-avg + anchor 1|$OUT/pool100_real_c4|$F $A" \
    "real images, 6 distinct per class, from lora-avg + anchor 1|$OUT/pool100_real_c6|$F $A"
  # More surrogates per class from inversions of another kind: the painted pool (smooth starts) alone
  # and joined to the drawn pool(s) (bench/pool_union.py; the 4-co-teacher pool when CO=4 made it).
  D=$OUT/pool100_strokes12_co2
  [ -f "$OUT/pool100_u2/index.json" ] || $PY bench/pool_union.py "$OUT/pool100_u2" "$D" "$OUT/pool100_lr2"
  U=("painted (smooth starts) from lora-avg + anchor 1|$OUT/pool100_lr2|$F $A"
    "drawn + painted (128 per class) from lora-avg + anchor 1|$OUT/pool100_u2|$F $A")
  if [ -f "$OUT/pool100_strokes12_co4/index.json" ]; then
    [ -f "$OUT/pool100_u3/index.json" ] ||
      $PY bench/pool_union.py "$OUT/pool100_u3" "$D" "$OUT/pool100_strokes12_co4" "$OUT/pool100_lr2"
    U+=("drawn (2 and 4 co-teachers) + painted (192 per class) from lora-avg + anchor 1|$OUT/pool100_u3|$F $A")
  fi
  run_rows pubu "${U[@]}"
  # DRAWN2=1: more surrogates of the same kind instead: the drawn pool inverted again with seed 1
  # (other starts; ~20 min on 2 ranks), alone and joined to the seed-0 pool (128 per class).
  if [ "${DRAWN2:-0}" = 1 ]; then
    pool100 _strokes12_co2_s1 --strokes 12 --co-teachers 2 --iterations 100 --seed 1
    [ -f "$OUT/pool100_u2s/index.json" ] ||
      $PY bench/pool_union.py "$OUT/pool100_u2s" "$D" "$OUT/pool100_strokes12_co2_s1"
    run_rows pubs "drawn, seed 1, from lora-avg + anchor 1|$OUT/pool100_strokes12_co2_s1|$F $A" \
      "drawn, seeds 0 and 1 (128 per class) from lora-avg + anchor 1|$OUT/pool100_u2s|$F $A"
  fi
fi
# 5-shot training episodes (docs/science.md, "Five-shot training episodes"): K + Q = 8 images per
# class as in the 1-shot 7-query episodes of every other run, so the same images per step; the
# validation stays 5-way 1-shot. ~5 min per run (4 runs).
if [ "$WHAT" = shots ]; then
  fullavg_inputs
  D=$OUT/pool100_strokes12_co2
  F="--init $S128 --rank 128 --alpha 128 --temperature 128 $L1K --lr 1e-4"
  A="--distill-pool $OUT/anchor128_retr --distill-weight 1"
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows shot "drawn from lora-avg + anchor 1, 1-shot 7-query episodes|$D|$F $A --shot 1 --query 7" \
    "drawn from lora-avg + anchor 1, 5-shot 3-query episodes|$D|$F $A --shot 5 --query 3" \
    "real images from lora-avg + anchor 1, 1-shot 7-query (control)|$OUT/pool100_real|$F $A --shot 1 --query 7" \
    "real images from lora-avg + anchor 1, 5-shot 3-query (control)|$OUT/pool100_real|$F $A --shot 5 --query 3"
fi
# The main job's pool and anchor pool (launch/demo.sh --until invert), and the real-image pool.
mainjob_inputs() {
  local f
  for f in runs/demo/pool/index.json runs/demo/anchor_pool/index.json; do
    [ -f "$f" ] || { echo "science: $f missing: run bash launch/demo.sh --until invert" >&2; exit 2; }
  done
  real_pool
  echo "validation accuracy (%), step 0 first, +- 95% CI at the last:"
}
# The main job's recipe dense, at mask 0.75 and on real images ("mj" runs, shared by two parts).
mainjob_rows() {
  RUN_CONFIG=$T128 run_rows mj "from lora-avg + anchor (T 128, lr 1e-4), dense|runs/demo/pool|" \
    "from lora-avg + anchor, mask 0.75|runs/demo/pool|--mask-ratio 0.75" \
    "real images from lora-avg + anchor (control)|$OUT/pool_real|"
}
# The main job from lora-avg (docs/science.md, "The main job from lora-avg"): configs/demo.ini's
# recipe (from the zoo's average at full rank, the paper's objective at T 128, lr 1e-4, 1,000 steps,
# anchored on public glyphs the zoo retrieves) against the rank-4 recipe it replaced, dense and at
# mask 0.75, on the main job's pool (launch/demo.sh --until invert makes it and the anchor's
# runs/demo/anchor_pool); the anchor's share (the same without it) and real images of the zoo's
# classes in the pool's layout (control). ~2 min per run, the rank-4 ones ~40 s.
if [ "$WHAT" = mainjob ]; then
  mainjob_inputs
  run_rows mj4 "rank-4 recipe (until 2026-12-05), dense|runs/demo/pool|" \
    "rank-4 recipe, mask 0.75|runs/demo/pool|--mask-ratio 0.75"
  mainjob_rows
  # Without the anchor: the config without its two keys (a command line cannot unset a key).
  sed -e '/^distill-pool *=/d' -e '/^distill-targets *=/d' "$T128" >"$OUT/demo_noanchor.ini"
  RUN_CONFIG=$OUT/demo_noanchor.ini run_rows mjn "from lora-avg, no anchor, dense|runs/demo/pool|--distill-weight 0" \
    "from lora-avg, no anchor, mask 0.75|runs/demo/pool|--distill-weight 0 --mask-ratio 0.75" \
    "real images from lora-avg, no anchor (control)|$OUT/pool_real|--distill-weight 0"
fi
# Random affine maps of the training images (metatrain --affine S: rotation, scale, shear and shift,
# per image and step; docs/science.md, "Random affine maps of the training images"): the main job's
# recipe (configs/demo.ini) with S = 0.5, 1 and 2 on its pool, and S = 1 on real images of the zoo's
# classes (control); the controls without the maps are the "mainjob" part's runs (reused when
# made). ~2-4 min per run. INV=1 adds surrogates inverted under the maps (below).
if [ "$WHAT" = affine ]; then
  mainjob_inputs
  mainjob_rows
  RUN_CONFIG=$T128 run_rows aff "... + affine 1|runs/demo/pool|--affine 1" \
    "real images ... + affine 1 (control)|$OUT/pool_real|--affine 1" \
    "... + affine 0.5|runs/demo/pool|--affine 0.5" \
    "... + affine 2|runs/demo/pool|--affine 2" \
    "... + affine 1, mask 0.75|runs/demo/pool|--affine 1 --mask-ratio 0.75"
  # INV=1: the main job's pool inverted again with the maps in the inversion too (invert --affine 1:
  # each surrogate must be its class under them; ~8 min on 2 ranks), meta-trained without and with
  # them.
  if [ "${INV:-0}" = 1 ]; then
    once "$OUT/pool_drawn_affine1/index.json" "$OUT/pool_drawn_affine1.log" "${MPI[@]}" $B invert \
      --config configs/demo.ini --precision "${PRECISION:-fp32}" --affine 1 --out "$OUT/pool_drawn_affine1"
    RUN_CONFIG=$T128 run_rows affi "inverted under affine 1|$OUT/pool_drawn_affine1|" \
      "inverted under affine 1, + affine 1|$OUT/pool_drawn_affine1|--affine 1"
  fi
fi
# Composed classes (metatrain --compose P: in a share P of the episodes every class is made of two
# real classes, the part past a cut taken from the second; task augmentation; docs/science.md,
# "Composed classes"): the main job's recipe on its pool at P 0.5 and 1, and real images of the
# zoo's classes at P 0.5 (control); the rows without it are re-run with the same binary; then the
# same at P 0.5 with the part from another image of the same class (--compose-partner same: variants
# of a class between its teachers' versions, no new classes). ~3 min per run. TEST=1 adds the
# real-image controls' test figures (below).
if [ "$WHAT" = compose ]; then
  mainjob_inputs
  RUN_CONFIG=$T128 run_rows cmp "... + compose 0.5|runs/demo/pool|--compose 0.5" \
    "real images ... + compose 0.5 (control)|$OUT/pool_real|--compose 0.5" \
    "... + compose 1|runs/demo/pool|--compose 1" \
    "from lora-avg + anchor (T 128, lr 1e-4), dense|runs/demo/pool|" \
    "real images from lora-avg + anchor (control)|$OUT/pool_real|" \
    "... + compose 0.5, same class|runs/demo/pool|--compose 0.5 --compose-partner same" \
    "real images ... + compose 0.5, same class (control)|$OUT/pool_real|--compose 0.5 --compose-partner same"
  # TEST=1: what the real-image controls (not data-free) score on the test classes beside lora-avg
  # and the main job's meta-LoRA: whether the bar can be cleared on this benchmark at all. Read
  # after every choice was made; nothing is chosen on it. The affine part's control joins when made.
  if [ "${TEST:-0}" = 1 ]; then
    metas=$OUT/cmp_5,$OUT/cmp_2
    [ -f "$OUT/aff_2/adapter_model.safetensors" ] && metas=$metas,$OUT/aff_2
    "${MPI[@]}" $B eval --config configs/demo.ini --data test=data/demo/test.h5 --methods lora-avg,meta \
      --meta "$metas,runs/demo/meta" --shots 1 --out "$OUT/eval_real_test" --log-level warn
    echo "(cmp_5: real images; cmp_2: real images + compose 0.5; aff_2: real images + affine 1; meta: the main job's)"
  fi
fi
# Teachers per class (docs/science.md, "Ten teachers per class"): a class's surrogates are about one
# version per teacher, so a zoo of 40 LoRAs over the main job's 20 classes (10 LoRAs per class)
# against the main job's 20 (5 per class). Both inverted painted with the same settings (PIX and
# pool_z40; drawings with co-teachers would take about 40 min for 40 LoRAs), the main job's recipe
# from each zoo's own lora-avg at full rank (the zoo of 20: rank 80 = 4 x 20; the zoo of 40: 128, the
# ViT's width, exact), and real images of the zoo of 40's classes (control; the zoo of 20's is the
# compose part's). ~7 min for the zoo, ~6 and ~12 min for the pools, ~3 min per run.
if [ "$WHAT" = teachers40 ]; then
  mainjob_inputs
  pixel_pool
  once "$OUT/zoo40/manifest.json" "$OUT/zoo40.log" \
    "${MPI[@]}" $B zoo --config configs/demo.ini --out "$OUT/zoo40" --num-loras 40 --classes 20
  once "$OUT/pool_z40/index.json" "$OUT/pool_z40.log" \
    "${MPI[@]}" $B invert "${ICFG[@]}" --w-bn 0 --zoo "$OUT/zoo40" --out "$OUT/pool_z40"
  once "$OUT/pool_z40_real/index.json" "$OUT/pool_z40_real.log" "${MPI[@]}" $B invert "${ICFG[@]}" \
    --zoo "$OUT/zoo40" --real-images data/demo/zoo.h5 --out "$OUT/pool_z40_real"
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print('zoo of 40, LoRAs per class:', m.get('coverage'))" \
    "$OUT/zoo40/manifest.json"
  RUN_CONFIG=$T128 run_rows t40 "zoo of 20 (5 per class), painted|$PIX|" \
    "zoo of 40 (10 per class), painted|$OUT/pool_z40|--rank 128 --alpha 128" \
    "zoo of 40, real images (control)|$OUT/pool_z40_real|--rank 128 --alpha 128"
  # DRAWN=1: the zoo of 40 inverted as the main job inverts (configs/demo.ini [invert]: drawn, 2
  # co-teachers; ~20 min on 2 ranks) and the recipe on it; the zoo of 20's drawn row is the main
  # job's pool (the compose part's "from lora-avg + anchor" row).
  if [ "${DRAWN:-0}" = 1 ]; then
    once "$OUT/pool_z40_drawn/index.json" "$OUT/pool_z40_drawn.log" "${MPI[@]}" $B invert --config configs/demo.ini \
      --precision "${PRECISION:-fp32}" --zoo "$OUT/zoo40" --out "$OUT/pool_z40_drawn"
    RUN_CONFIG=$T128 run_rows t40d "zoo of 40 (10 per class), drawn|$OUT/pool_z40_drawn|--rank 128 --alpha 128"
  fi
fi
# The main recipe's own settings, one change at a time (docs/science.md, "The main recipe's
# settings"): the softmax temperature, the learning rate, queries per class and episodes per step,
# each against the main job's recipe run again with this binary, and the real-image control for
# each; then the ones that helped together, at mask 0.75, and with the share of single-LoRA KL
# episodes (0.1) at 0.5, without the KL term, and 10-way (no single-LoRA episodes: a LoRA has 5
# classes); the choice again with two more seeds (their own validation episodes), and a lighter
# anchor. Then the meta-LoRA extrapolated past itself along its displacement from lora-avg
# (bench/lora_mix.py with W > 1: lora-avg + W x (meta - lora-avg)), evaluated by eval on the
# validation classes' own 600 episodes (5-way 1-shot; mix_eval), for the first row's meta-LoRA,
# its real-image control and, when the "mainjob" part has made it, the unanchored run. ~2.5 min
# per run (5 for the doubled ones, 10 for all four), ~40 s per evaluation.
if [ "$WHAT" = knobs ]; then
  mainjob_inputs
  KN4="--temperature 256 --lr 3e-4 --query 15 --episodes-per-step 4"
  RUN_CONFIG=$T128 run_rows kn "from lora-avg + anchor (T 128, lr 1e-4), dense|runs/demo/pool|" \
    "real images from lora-avg + anchor (control)|$OUT/pool_real|" \
    "... T 256|runs/demo/pool|--temperature 256" \
    "... lr 3e-4|runs/demo/pool|--lr 3e-4" \
    "... 15 queries per class|runs/demo/pool|--query 15" \
    "... 4 episodes per step|runs/demo/pool|--episodes-per-step 4" \
    "real images ... T 256 (control)|$OUT/pool_real|--temperature 256" \
    "real images ... lr 3e-4 (control)|$OUT/pool_real|--lr 3e-4" \
    "real images ... 15 queries per class (control)|$OUT/pool_real|--query 15" \
    "real images ... 4 episodes per step (control)|$OUT/pool_real|--episodes-per-step 4" \
    "... T 256 + lr 3e-4|runs/demo/pool|--temperature 256 --lr 3e-4" \
    "... lr 1e-3|runs/demo/pool|--lr 1e-3" \
    "real images ... T 256 + lr 3e-4 (control)|$OUT/pool_real|--temperature 256 --lr 3e-4" \
    "... all four: T 256, lr 3e-4, 15 queries, 4 episodes per step|runs/demo/pool|$KN4" \
    "real images ... all four (control)|$OUT/pool_real|$KN4" \
    "... mask 0.75 (the main job's masked run)|runs/demo/pool|--mask-ratio 0.75" \
    "... T 256 + lr 3e-4, mask 0.75|runs/demo/pool|--temperature 256 --lr 3e-4 --mask-ratio 0.75" \
    "... T 256 + lr 3e-4, single-LoRA KL episodes 0.5|runs/demo/pool|--temperature 256 --lr 3e-4 --single-lora-prob 0.5" \
    "... T 256 + lr 3e-4, no KL term|runs/demo/pool|--temperature 256 --lr 3e-4 --kl-weight 0" \
    "... T 256 + lr 3e-4, 10-way|runs/demo/pool|--temperature 256 --lr 3e-4 --way 10" \
    "... seed 1|runs/demo/pool|--seed 1" \
    "... T 256 + lr 3e-4, seed 1|runs/demo/pool|--temperature 256 --lr 3e-4 --seed 1" \
    "... T 256 + lr 3e-4, anchor 0.5|runs/demo/pool|--temperature 256 --lr 3e-4 --distill-weight 0.5" \
    "... mask 0.75, seed 1|runs/demo/pool|--mask-ratio 0.75 --seed 1" \
    "... T 256 + lr 3e-4, mask 0.75, seed 1|runs/demo/pool|--temperature 256 --lr 3e-4 --mask-ratio 0.75 --seed 1" \
    "... seed 2|runs/demo/pool|--seed 2" \
    "... T 256 + lr 3e-4, seed 2|runs/demo/pool|--temperature 256 --lr 3e-4 --seed 2" \
    "... mask 0.75, seed 2|runs/demo/pool|--mask-ratio 0.75 --seed 2" \
    "... T 256 + lr 3e-4, mask 0.75, seed 2|runs/demo/pool|--temperature 256 --lr 3e-4 --mask-ratio 0.75 --seed 2"
  # mW = lora-avg + W x (meta - lora-avg); kn_1: the recipe, kn_2: real images (control), mjn_1: no
  # anchor.
  lora_avg "$OUT/lora_avg80" 80
  for meta in "$OUT/kn_1" "$OUT/kn_2" "$OUT/mjn_1"; do
    [ -f "$meta/adapter_model.safetensors" ] || continue  # mjn_1: made by the "mainjob" part
    MIX_WEIGHTS=${EXTRA_WEIGHTS:-1 1.5 2 3} mix_eval "$meta" "$OUT/lora_avg80"
  done
  # TEST=1: the real-image control at the main job's new settings (T 256, lr 3e-4; not data-free) on
  # the test classes beside lora-avg and the main job's meta-LoRA (the compose part's TEST=1 did the
  # same at T 128, lr 1e-4), and the main job's recipe with the other two seeds, dense and at mask
  # 0.75 (kn_22, kn_27; kn_25, kn_29; seed 0 is the main job's own), each with eval's paired
  # difference against lora-avg on the same episodes. Read after the choice; nothing is chosen on it.
  if [ "${TEST:-0}" = 1 ]; then
    "${MPI[@]}" $B eval --config configs/demo.ini --data test=data/demo/test.h5 --methods lora-avg,meta \
      --meta "$OUT/kn_9,runs/demo/meta,seed1=$OUT/kn_22,seed2=$OUT/kn_27,mask75=runs/demo/meta_mask75,mask75-seed1=$OUT/kn_25,mask75-seed2=$OUT/kn_29" \
      --shots 1 --out "$OUT/eval_real_test_kn" --log-level warn
    echo "(kn_9: real images at T 256, lr 3e-4; meta: the main job's; seedN: its recipe with seed N)"
  fi
fi
# The zoo's average scaled (task arithmetic's coefficient on the mean delta; docs/science.md, "The
# zoo's average scaled"): W x lora-avg of the main job's zoo for W from 0.5 to 4 (bench/lora_mix.py
# with the bare VFM as its second adapter), on the validation classes' own 600 episodes (mix_eval;
# ~1 min after the main job's invert stage).
if [ "$WHAT" = scale ]; then
  [ -f runs/demo/pool/index.json ] || { echo "science: run the main job's invert stage first (runs/demo/pool)" >&2; exit 2; }
  lora_avg "$OUT/lora_avg80" 80
  MIX_WEIGHTS=${SCALE_WEIGHTS:-0.5 0.8 1 1.2 1.5 2 3 4} mix_eval "$OUT/lora_avg80" zero
fi
# The VFM's pre-training length (docs/science.md, "The VFM's pre-training length"), a knob of the main
# job that no earlier part varied: the main job made again from a VFM pre-trained VFM_STEPS steps
# (default 600; VFM_STEPS=2400 the other way; configs/demo.ini has 1,200) in $OUT/vfm<STEPS> by
# launch/demo.sh --config, up to its pool and anchor (the benchmark data and the BN prior, unused at
# --w-bn 0, are the repo's). For that VFM and for the main job's own: the main recipe dense from its
# zoo's lora-avg, the same on real images of its zoo's classes (control), and eval on the validation
# classes' 600 episodes (nn, lora-avg, meta, real; paired differences against lora-avg). ~22 min to
# make the 600-step job (31 min the 2,400-step one), then ~10-12 min per VFM (fp32, 2 cores; 45 min in
# all on an AMD EPYC with AVX2).
# real_images_pool TAG CONFIG POOL: in the current directory (a job's work directory), the pool POOL
# of real images of the zoo's classes that CONFIG's zoo covers (invert --real-images with CONFIG's
# painted copy, $OUT/TAG_real.ini; the real-image control), unless made.
real_images_pool() {
  local tag=$1 conf=$2 pool=$3
  painted_ini "$conf" "$OUT/${tag}_real.ini"
  once "$pool/index.json" "$OUT/${tag}_pool_real.log" "${MPI[@]}" "$REPO/$B" invert --config "$OUT/${tag}_real.ini" \
    --precision "${PRECISION:-fp32}" --real-images data/demo/zoo.h5 --out "$pool"
}
job_rows() {  # job_rows TAG WORKDIR CONFIG: the runs and the validation eval of one main job
  local tag=$1 w=$2 conf=$3
  (
    cd "$w"
    real_images_pool "$tag" "$conf" "$OUT/${tag}_pool_real"
    for run in meta real; do
      local pool=runs/demo/pool
      [ "$run" = real ] && pool=$OUT/${tag}_pool_real
      once "$OUT/${tag}_$run/metatrain.json" "$OUT/${tag}_$run.log" "${MPI[@]}" "$REPO/$B" metatrain --config "$conf" \
        --precision "${PRECISION:-fp32}" --pool "$pool" --out "$OUT/${tag}_$run" --restart
      printf '%-44s %s\n' "$tag: main recipe, $run" "$(series "$OUT/${tag}_$run.work/metrics.jsonl" 2)"
    done
    eval_val "${tag}_eval" "$conf" "$tag: validation classes, 600 episodes 5-way 1-shot:" \
      "meta=$OUT/${tag}_meta" "real=$OUT/${tag}_real"
  )
}
# remake TAG BASE SED_ARG...: the main job made again in $OUT/TAG from the config BASE edited by
# sed SED_ARG..., by launch/demo.sh --config up to its pool and anchor (the data and BN prior are the
# main job's, and so is the VFM unless the edit changes [pretrain]), unless made.
pretrain_ini() { sed -n '/^\[pretrain\]/,/^\[/p' "$1"; }  # pretrain_ini CONFIG: its [pretrain] section
# job_dir TAG BASE SED_ARG...: the work directory $OUT/TAG of a job made again: its config demo.ini (BASE
# edited by sed SED_ARG...) and links to the main job's data and BN prior, and to its VFM unless the
# edit changes [pretrain].
job_dir() {
  local w=$OUT/$1 base=$2
  shift 2
  mkdir -p "$w/data" "$w/runs/demo"
  ln -sfn "$REPO/data/demo" "$w/data/demo"
  ln -sfn "$REPO/runs/demo/prior" "$w/runs/demo/prior"
  sed "$@" "$base" >"$w/demo.ini"
  [ "$(pretrain_ini configs/demo.ini)" != "$(pretrain_ini "$w/demo.ini")" ] || ln -sfn "$REPO/runs/demo/vfm" "$w/runs/demo/vfm"
}
# zoo_heldout LABEL WORKDIR: the mean held-out accuracy of WORKDIR's zoo LoRAs (runs/demo/zoo).
zoo_heldout() {
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); a=[l['heldout_accuracy'] for l in m['loras']]; print(sys.argv[2], 'zoo: held-out accuracy, mean over its LoRAs', round(sum(a)/len(a),1))" \
    "$2/runs/demo/zoo/manifest.json" "$1"
}
remake() {
  local tag=$1 w=$OUT/$1 anchor
  [ -f runs/demo/pool/index.json ] || { echo "science: run the main job's invert stage first (runs/demo/pool)" >&2; exit 2; }
  job_dir "$@"
  anchor=$(sed -n '/^\[metatrain\]/,/^\[/s/^distill-pool *= *//p' "$w/demo.ini")
  once "$w/$anchor/index.json" "$OUT/${tag}_demo.log" \
    bash launch/demo.sh --workdir "$w" --config "$w/demo.ini" --until invert
}
# paired_across EVAL_A EVAL_B TITLE "METHOD_B=METHOD_A"...: METHOD_B of $OUT/EVAL_B less METHOD_A of
# $OUT/EVAL_A, episode by episode (both evals draw the same 600 validation episodes; mean +- 95% CI
# as eval computes it).
paired_across() {
  $PY - "$OUT/$1/results.json" "$OUT/$2/results.json" "$3" "${@:4}" <<'PYEOF'
import json, sys
import numpy as np
a, b = ({r["method"]: np.array(r["episode_acc"]) for r in json.load(open(f))["rows"]} for f in sys.argv[1:3])
for pair in sys.argv[4:]:
    mb, ma = pair.split("=")
    d = b[mb] - a[ma]
    print(f"{sys.argv[3]}: {mb} - {ma}: {d.mean():+.2f} +- {1.96 * d.std() / np.sqrt(len(d)):.2f} (paired, {len(d)} episodes)")
PYEOF
}
# remade_job TAG SED_ARG...: remake TAG from the rank-4 recipe's config (DEMO800); then job_rows for
# the main job and for it, and their eval rows compared episode by episode.
remade_job() {
  local tag=$1 w=$OUT/$1
  shift
  remake "$tag" "$DEMO800" "$@"
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  job_rows "vfm$S0" "$REPO" "$DEMO800"
  job_rows "$tag" "$w" "$w/demo.ini"
  zoo_heldout "$tag" "$w"
  paired_across "vfm${S0}_eval" "${tag}_eval" "$tag - the main job" lora-avg=lora-avg meta=meta real=real
}
if [ "$WHAT" = vfm ]; then
  S=${VFM_STEPS:-600}
  remade_job "vfm$S" -e "/^\[pretrain\]/,/^\[/s/^steps *=.*/steps = $S/"
  # The VFMs themselves on their held-out base classes (their pretrain_report.json; its test-class
  # figure is not printed here: nothing is chosen on the test classes).
  for t in "vfm$S0 runs/demo" "vfm$S $OUT/vfm$S/runs/demo"; do
    read -r tag dir <<<"$t"
    $PY -c "import json,sys; h=json.load(open(sys.argv[1]))['heldout_proto_5w1s']; print(sys.argv[2], 'VFM: held-out base classes, 5-way 1-shot prototypes', f\"{h['mean']:.2f} +- {h['ci95']:.2f}\")" \
      "$dir/vfm/pretrain_report.json" "$tag"
  done
fi
# The zoo's target modules (docs/science.md, "A zoo that adapts every layer"): the main job's LoRAs
# adapt q_proj and v_proj, as the paper's; here the zoo's 20 LoRAs (same tasks, same seed, same VFM)
# adapt all six linear layers of each block, so that they, their average and their inversions can
# carry more of each class; the meta-LoRA on the same six layers, rank 80 = the zoo's 20 x 4, so it
# starts exactly at that zoo's lora-avg. ~20 min to make the zoo and its pools, then ~12 min (fp32,
# 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = targets ]; then
  ALL=q_proj,k_proj,v_proj,out_proj,fc1,fc2
  remade_job targets6 -e "/^\[zoo\]/a targets = $ALL" -e "/^\[metatrain\]/a targets = $ALL"
fi
# Wider zoo tasks (docs/science.md, "Ten-way zoo tasks"): every LoRA of the main job's zoo separates
# 5 classes; here each of the 20 LoRAs is tuned on 10 of the same 20 classes (each class covered by
# 10 LoRAs instead of 5), so that a LoRA must hold more of the domain's distinctions, and inverted into
# 4 surrogates per class instead of 8 (40 per class in the pool, as the main job's, in the same
# inversion time; with 4 < K + Q = 8 no single-LoRA KL episode can be drawn, a term the "knobs" part
# found changes nothing). ~22 min to make (zoo 4.4, drawn inversion 16), then ~12 min.
if [ "$WHAT" = way ]; then
  remade_job way10 -e "/^\[zoo\]/,/^\[/s/^way *=.*/way = 10/" -e "/^\[invert\]/,/^\[/s/^per-class *=.*/per-class = 4/"
fi
# ceiling_features TAG WORKDIR CONFIG: zoo_ceiling in $OUT/ceiling_TAG with the job's two job_rows
# meta-LoRAs (surrogates, real images).
ceiling_features() { zoo_ceiling "$OUT/ceiling_$1" "$2" "$3" "meta|$OUT/${1}_meta" "real|$OUT/${1}_real"; }
# zoo_ceiling DIR WORKDIR CONFIG [NAME|LORA...]: in DIR, the validation images under the bare VFM, the
# lora-avg of WORKDIR's zoo (made with CONFIG, at the zoo's full rank or the VFM's width 128 if less)
# and each zoo LoRA, and under each adapter LORA as NAME.
zoo_ceiling() {
  local e=$1 w=$2 conf=$3 rank
  shift 3
  mkdir -p "$e"
  (
    cd "$w"
    rank=$(zoo_rank)
    RUN_CONFIG=$conf lora_avg "$e/avg" "$((rank < 128 ? rank : 128))"
    mapfile -t zoo < <(zoo_embeds)
    embed_val "$e" data/demo/val.h5 "bare|" "avg|$e/avg" "$@" "${zoo[@]}"
  )
}
# zoo_job TAG BASE SED_ARG...: a zoo alone made in $OUT/TAG (job_dir; no anchor: only lora-avg is
# made from it, with a pool of real images that names its LoRAs), then zoo_ceiling in $OUT/ceiling_TAG.
zoo_job() {
  local tag=$1 w=$OUT/$1
  job_dir "$@" -e '/^distill-/d'
  (
    cd "$w"
    once runs/demo/zoo/manifest.json "$OUT/${tag}_zoo.log" "${MPI[@]}" "$REPO/$B" zoo --config "$w/demo.ini" \
      --precision "${PRECISION:-fp32}"
    real_images_pool "$tag" "$w/demo.ini" runs/demo/pool
  )
  zoo_ceiling "$OUT/ceiling_$tag" "$w" "$w/demo.ini"
}
# ceiling_job TAG WORKDIR CONFIG: ceiling_features, then bench/zoo_ensemble.py's rows.
ceiling_job() {
  ceiling_features "$@"
  echo "== $1"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_$1" meta real
}
# What each zoo holds beyond its average (docs/science.md, "What the zoo holds beyond its
# average"): for the main job and every job that "vfm", "targets" and "way" made again, the
# validation images embedded under the bare VFM, each zoo LoRA, that zoo's lora-avg (its mean
# delta at full rank, the start of its meta-LoRA), its meta-LoRA (surrogates) and its real-image
# control (the job_rows runs), then bench/zoo_ensemble.py: the zoo's feature ensembles, the most a
# teacher made of the zoo alone gives, beside what the surrogates and real images add, all paired
# against lora-avg on the same 600 episodes. ~2 min per job (two embeds at a time), no training.
if [ "$WHAT" = ceiling ]; then
  [ -f "$OUT/vfm${S0}_real/metatrain.json" ] || { echo "science: run the 'vfm' part first (the main job's rows)" >&2; exit 2; }
  ceiling_job "vfm$S0" "$REPO" "$DEMO800"
  for tag in vfm600 vfm2400 targets6 way10; do
    if [ -f "$OUT/${tag}_real/metatrain.json" ]; then ceiling_job "$tag" "$OUT/$tag" "$OUT/$tag/demo.ini"; fi
  done
fi
# The zoo's ensemble distilled (docs/science.md, "What the zoo holds beyond its average"): the main
# job's recipe with its anchor's targets (the start's features on the public glyphs that the zoo
# retrieves, runs/demo/anchor_pool) replaced by the zoo's: the pairwise distances of its LoRAs'
# features concatenated (--distill-targets zoo) or their mean (zoo-mean). Rows as the "vfm" part's
# (its main-job runs are the control: run it first); then eval on the validation classes beside
# them, and the runs' features on the validation images beside the "ceiling" part's rows of the
# main job (with their distance to the zoo's geometry). ~5 min per run (fp32, 2 cores), ~3 min for eval.
if [ "$WHAT" = zoodist ]; then
  [ -f "$OUT/vfm${S0}_real/metatrain.json" ] || { echo "science: run the 'vfm' part first (the main job's rows)" >&2; exit 2; }
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  printf '%-48s %s\n' "main recipe (anchor: the start's features)" "$(series "$OUT/vfm${S0}_meta.work/metrics.jsonl" 2)"
  ZN="--distill-targets zoo --distill-zoo-softmax 0.1 --temperature 1e9 --single-lora-prob 0 --lr 1e-3"
  ZD_RUNS=(
    "anchor: the zoo's distances (zoo)|runs/demo/pool|--distill-targets zoo"
    "anchor: the zoo's mean features (zoo-mean)|runs/demo/pool|--distill-targets zoo-mean"
    "the zoo's distances alone (flat CE: T 1e9)|runs/demo/pool|--distill-targets zoo --temperature 1e9"
    "the zoo's distances alone, on the surrogates|runs/demo/pool|--distill-targets zoo --temperature 1e9 --distill-pool runs/demo/pool"
    "the zoo's mean features alone (flat CE)|runs/demo/pool|--distill-targets zoo-mean --temperature 1e9"
    "the zoo's distances alone, surrogates, lr 3e-3|runs/demo/pool|--distill-targets zoo --temperature 1e9 --single-lora-prob 0 --lr 3e-3 --distill-pool runs/demo/pool"
    "the zoo's distances alone, lr 3e-3|runs/demo/pool|--distill-targets zoo --temperature 1e9 --single-lora-prob 0 --lr 3e-3"
    "the zoo's neighbours alone (softmax R 0.1)|runs/demo/pool|$ZN"
    "the zoo's neighbours alone, surrogates|runs/demo/pool|$ZN --distill-pool runs/demo/pool"
    "anchor: the zoo's mean features, seed 1|runs/demo/pool|--distill-targets zoo-mean --seed 1"
    "main recipe, seed 1 (its control)|runs/demo/pool|--seed 1"
  )
  RUN_CONFIG=$DEMO800 run_rows zd "${ZD_RUNS[@]}"
  # eval's names of the runs zd_1, zd_2, ... (in ZD_RUNS' order)
  ZD_META=("meta=$OUT/vfm${S0}_meta") i=0
  for name in zoo zoo-mean zoo-alone zoo-surr zoo-mean-alone zoo-surr-3e-3 zoo-3e-3 zoo-near zoo-near-surr \
    zoo-mean-seed1 meta-seed1; do
    i=$((i + 1)) && ZD_META+=("$name=$OUT/zd_$i")
  done
  once "$OUT/zd_eval/results.json" "$OUT/zd_eval.log" "${MPI[@]}" $B eval --config configs/demo.ini \
    --precision "${PRECISION:-fp32}" --data val=data/demo/val.h5 --shots 1 --methods nn,lora-avg,meta \
    --meta "$(IFS=,; echo "${ZD_META[*]}")" --out "$OUT/zd_eval"
  echo "validation classes, 600 episodes 5-way 1-shot (eval):"
  cat "$OUT/zd_eval/results.csv"
  # Did the runs take on the zoo's geometry where it counts, on the validation images? The
  # "ceiling" part's rows of the main job with these runs' features beside them (~1 min more).
  ceiling_features "vfm$S0" "$REPO" "$DEMO800"
  ZD=()
  for i in $(seq ${#ZD_RUNS[@]}); do ZD+=("zd_$i|$OUT/zd_$i"); done
  embed_val "$OUT/ceiling_vfm$S0" data/demo/val.h5 "${ZD[@]}"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_vfm$S0" meta real "${ZD[@]%%|*}"
  # Where the zoo's LoRAs disagree (their ensemble's geometry differs from their average's): the
  # surrogates, the anchor's public glyphs and real images of the zoo's classes (the control pool;
  # 800 images each, packed into one image set by bench/pool_hardness.py) beside the validation images.
  AG=$OUT/agree
  AGREE=()
  for set in "surrogates|runs/demo/pool" "public glyphs (the anchor's)|runs/demo/anchor_pool" \
    "real images of the zoo's classes|$OUT/vfm${S0}_pool_real"; do
    IFS='|' read -r name dir <<<"$set"
    tag=$(basename "$dir")
    mkdir -p "$AG/$tag"
    [ -f "$AG/$tag.h5" ] || $PY bench/pool_hardness.py pack "$dir" "$AG/$tag.h5"
    mapfile -t ZOO_EMBEDS < <(zoo_embeds)
    embed_val "$AG/$tag" "$AG/$tag.h5" "avg|$OUT/ceiling_vfm$S0/avg" "${ZOO_EMBEDS[@]}"
    AGREE+=("$name=$AG/$tag")
  done
  $PY bench/zoo_agreement.py "${AGREE[@]}" "validation images=$OUT/ceiling_vfm$S0"
fi
# The zoo's geometry taught on more public glyphs (docs/science.md, "Distilled on more public
# glyphs"): the "zoodist" runs fit the zoo's geometry on their 800 training images ten times closer
# than on the validation images. Are 800 too few? The same runs with a distillation pool of ~10,000
# public glyphs: each zoo LoRA's 100 most confident images per class among all 24,048 of the VFM's
# pre-training set (the anchor: 8 per class among 4,096 drawn). Then eval beside the "zoodist" rows,
# the runs' distance to the zoo's geometry on the validation images, and on the images they trained
# on (the anchor's glyphs, the surrogates, real images of the zoo's classes). A control distils the
# zoo's distances on real images of the zoo's classes (the "vfm" part's control pool); the last run
# is the adopted anchor without the surrogates (flat CE, no KL episodes). Run "zoodist"
# first. ~6 min for the pool, ~8 min per run (the five on the 10,000 images spend ~2.5 min of it
# computing the zoo's targets), ~5 min for eval and embeds (fp32, 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = glyphs ]; then
  [ -f "$OUT/zd_eval/results.json" ] || { echo "science: run the 'zoodist' part first" >&2; exit 2; }
  BIG=$OUT/anchor_big
  once "$BIG/index.json" "$BIG.log" "${MPI[@]}" $B invert --config configs/demo.ini --precision "${PRECISION:-fp32}" \
    --co-teachers 0 --retrieve data/demo/base.h5 --retrieve-per-class 100 --retrieve-candidates 24048 --out "$BIG"
  $PY - "$BIG" <<'PY'
import glob, sys, h5py, numpy as np
imgs = np.concatenate([h5py.File(p, "r")["images"][:] for p in sorted(glob.glob(f"{sys.argv[1]}/*.h5"))])
print(f"{sys.argv[1]}: {len(imgs)} images, {len(np.unique(imgs.reshape(len(imgs), -1), axis=0))} distinct")
PY
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  G_RUNS=(
    "the zoo's distances alone, 10,000 glyphs|runs/demo/pool|--distill-targets zoo --temperature 1e9 --distill-pool $BIG"
    "anchor: the zoo's mean features, 10,000 glyphs|runs/demo/pool|--distill-targets zoo-mean --distill-pool $BIG"
    "main recipe, anchor on 10,000 glyphs|runs/demo/pool|--distill-pool $BIG"
    "anchor: the zoo's mean features, 10,000 glyphs, seed 1|runs/demo/pool|--distill-targets zoo-mean --distill-pool $BIG --seed 1"
    "the zoo's distances alone, real zoo-class images (control)|runs/demo/pool|--distill-targets zoo --temperature 1e9 --distill-pool $OUT/vfm${S0}_pool_real"
    "the zoo's mean features alone, 10,000 glyphs (no surrogate term)|runs/demo/pool|--distill-targets zoo-mean --temperature 1e9 --single-lora-prob 0 --distill-pool $BIG"
  )
  RUN_CONFIG=$DEMO800 run_rows gl "${G_RUNS[@]}"
  GL=()
  for i in $(seq ${#G_RUNS[@]}); do GL+=("gl_$i|$OUT/gl_$i"); done
  val_eval gl ${#G_RUNS[@]}
  # the "zoodist" rows they repeat on 800 glyphs (the main recipe, zd_3, zd_2, zd_10, zd_11), from
  # that part's eval of the same episodes
  grep -E '^val,(meta|zoo-alone|zoo-mean|zoo-mean-seed1|meta-seed1),' "$OUT/zd_eval/results.csv"
  embed_val "$OUT/ceiling_vfm$S0" data/demo/val.h5 "${GL[@]}"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_vfm$S0" meta zd_3 zd_2 zd_10 zd_11 "${GL[@]%%|*}" --curve
  # The same distance on the images the runs trained on: the anchor's glyphs, the surrogates and
  # the real-image control (the "zoodist" part's packed sets), under zd_3, zd_4 (the zoo's distances
  # alone on the surrogates; "zoodist" embedded the validation images under both) and these runs.
  TRAINED=("zd_3|$OUT/zd_3" "zd_4|$OUT/zd_4" "${GL[@]}")
  for tag in anchor_pool pool "vfm${S0}_pool_real"; do
    embed_val "$OUT/agree/$tag" "$OUT/agree/$tag.h5" "${TRAINED[@]}"
  done
  $PY bench/zoo_agreement.py "public glyphs (the anchor's)=$OUT/agree/anchor_pool" "surrogates=$OUT/agree/pool" \
    "real images of the zoo's classes=$OUT/agree/vfm${S0}_pool_real" "validation images=$OUT/ceiling_vfm$S0" \
    --runs "$(IFS=,; echo "${TRAINED[*]%%|*}")"
fi
# The zoo's concatenated features as the anchor's targets (docs/science.md, "The zoo's features
# concatenated as targets"): the zoo's mean features (the adopted anchor) carry +0.53 of the +1.29
# that its concatenation scores over lora-avg; distilling the concatenation's distances did not carry
# it. metatrain --distill-targets zoo-concat gives feature targets with those distances: the
# concatenation cut to the model's width (128 principal components over the 10,000 glyphs) and
# turned onto the zoo's mean features. The adopted anchor's runs of the "glyphs" part (gl_2, gl_4,
# gl_6) with these targets, on the same eval episodes, and two changes of capacity to the last (lr
# 1e-3; full rank); the distillation term on the training glyphs; what the cut keeps on the
# validation images when fitted on other images (bench/zoo_concat.py, numpy: the zoo's features on
# the anchor's 800 glyphs, embedded by "zoodist") and how close each run comes to the zoo's
# geometry there. Run "glyphs" first. ~8 min per run, ~4 min eval and embeds, ~1 min numpy (fp32,
# 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = concat ]; then
  [ -f "$OUT/gl_eval/results.json" ] || { echo "science: run the 'glyphs' part first" >&2; exit 2; }
  BIG=$OUT/anchor_big
  # a meta-LoRA with more room than the zoo's adapters (q and v): the zoo's mean there, 0 elsewhere
  EVERY="--targets q_proj,k_proj,v_proj,out_proj,fc1,fc2 --init-partial"
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  C_RUNS=(
    "anchor: the zoo's features concatenated, 10,000 glyphs|runs/demo/pool|--distill-targets zoo-concat --distill-pool $BIG"
    "the same, seed 1|runs/demo/pool|--distill-targets zoo-concat --distill-pool $BIG --seed 1"
    "the zoo's features concatenated alone (no surrogate term)|runs/demo/pool|--distill-targets zoo-concat --temperature 1e9 --single-lora-prob 0 --distill-pool $BIG"
    "the same, lr 1e-3|runs/demo/pool|--distill-targets zoo-concat --temperature 1e9 --single-lora-prob 0 --distill-pool $BIG --lr 1e-3"
    "the same at lr 3e-4, full rank (128, alpha 128)|runs/demo/pool|--distill-targets zoo-concat --temperature 1e9 --single-lora-prob 0 --distill-pool $BIG --rank 128 --alpha 128"
    "the same at rank 80, on every projection and MLP layer|runs/demo/pool|--distill-targets zoo-concat --temperature 1e9 --single-lora-prob 0 --distill-pool $BIG $EVERY"
    "anchor: the zoo's features concatenated, every projection and MLP layer|runs/demo/pool|--distill-targets zoo-concat --distill-pool $BIG $EVERY"
    "anchor: the zoo's mean features, every projection and MLP layer|runs/demo/pool|--distill-targets zoo-mean --distill-pool $BIG $EVERY"
    "the same, seed 1|runs/demo/pool|--distill-targets zoo-mean --distill-pool $BIG $EVERY --seed 1"
    "the same at full rank (128, alpha 128), seed 0|runs/demo/pool|--distill-targets zoo-mean --distill-pool $BIG $EVERY --rank 128 --alpha 128"
  )
  RUN_CONFIG=$DEMO800 run_rows zc "${C_RUNS[@]}"
  # How far the runs without surrogate term come on the glyphs they train on: under the flat CE
  # (T 1e9: ln 5 whatever the features) the logged loss less ln 5 is the distillation term, the mean
  # squared difference to the targets.
  distill_term "20 100 500 1000" gl_6 zc_3 zc_4 zc_5 zc_6
  ZC=()
  for i in $(seq ${#C_RUNS[@]}); do ZC+=("zc_$i|$OUT/zc_$i"); done
  val_eval zc ${#C_RUNS[@]}
  # the zoo's mean features as the targets (gl_2, gl_4, gl_6), from the "glyphs" part's eval of the
  # same episodes
  grep -E '^val,(gl_2|gl_4|gl_6),' "$OUT/gl_eval/results.csv"
  embed_val "$OUT/ceiling_vfm$S0" data/demo/val.h5 "${ZC[@]}"
  # what the cut keeps (fitted on the anchor's 800 glyphs), and how close each run comes to the
  # zoo's geometry on the validation images (scale aside), beside the zoo's mean features as targets
  # (gl_2, gl_4, gl_6), and the runs that distilled the zoo's distances or neighbours alone (gl_1, the
  # "zoodist" part's zd_3, zd_4, zd_6 to zd_9) and their real-image control (gl_5)
  $PY bench/zoo_concat.py "$OUT/agree/anchor_pool" "$OUT/ceiling_vfm$S0" "${ZC[@]%%|*}" gl_2 gl_4 gl_6 gl_1 gl_5 \
    zd_3 zd_4 zd_6 zd_7 zd_8 zd_9
fi
# The adopted recipe on the zoo that adapts every layer (docs/science.md, "The adopted recipe on a
# zoo that adapts every layer"): the "targets" part's zoo (the main job's 20 tasks with all six
# targets; its zoo's features concatenated hold +2.15 over its lora-avg on the validation images,
# the main job's +1.29) with configs/demo.ini's recipe of that round (the meta-LoRA on every
# projection and MLP layer from the zoo's lora-avg, the anchor towards the zoo's mean features on
# 10,000 public glyphs that this zoo retrieves, at weight 1 as then), two seeds, and eval on the
# validation classes against that zoo's own lora-avg. Run "targets" and "concat" first. ~9 min to
# retrieve, ~12 min per run, ~1 min eval (fp32, 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = zoo6 ]; then
  [ -f "$OUT/targets6_eval/results.json" ] || { echo "science: run the 'targets' part first" >&2; exit 2; }
  [ -f "$OUT/zc_eval/results.json" ] || { echo "science: run the 'concat' part first" >&2; exit 2; }
  W=$OUT/targets6
  (
    cd "$W"
    once "$OUT/targets6_big/index.json" "$OUT/targets6_big.log" "${MPI[@]}" "$REPO/$B" invert \
      --config "$REPO/configs/demo.ini" --precision "${PRECISION:-fp32}" --co-teachers 0 \
      --retrieve data/demo/base.h5 --out "$OUT/targets6_big"
    echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
    for seed in 0 1; do
      once "$OUT/z6_$seed/metatrain.json" "$OUT/z6_$seed.log" "${MPI[@]}" "$REPO/$B" metatrain \
        --config "$REPO/configs/demo.ini" --precision "${PRECISION:-fp32}" --distill-pool "$OUT/targets6_big" \
        --distill-weight 1 --out "$OUT/z6_$seed" --restart --seed "$seed"
      printf '%-48s %s\n' "six-target zoo, the adopted recipe, seed $seed" "$(series "$OUT/z6_$seed.work/metrics.jsonl" 2)"
    done
    eval_val z6_eval "$REPO/configs/demo.ini" \
      "six-target zoo: validation classes, 600 episodes 5-way 1-shot (eval; lora-avg is this zoo's):" \
      "z6_0=$OUT/z6_0" "z6_1=$OUT/z6_1"
  )
  # the same recipe on the main job's zoo (q and v), on the same episodes ("concat" part: zc_8, zc_9)
  grep -E '^val,(lora-avg|zc_8|zc_9),' "$OUT/zc_eval/results.csv"
fi
# every_rows PREFIX FLAGS "NAME|FLAGS"...: the "concat" part's recipe on every projection and MLP layer
# (DEMO800, the meta-LoRA on q, k, v, out, fc1 and fc2 from lora-avg, the 10,000-glyph anchor pool)
# with FLAGS and each row's flags, on the main job's pool as $OUT/PREFIX_<i> (run_rows). Needs the
# "concat" part, whose rows they are compared with.
every_rows() {
  local prefix=$1 common=$2 row rows=()
  shift 2
  [ -f "$OUT/zc_eval/results.json" ] || { echo "science: run the 'concat' part first" >&2; exit 2; }
  for row in "$@"; do
    rows+=("${row%%|*}|runs/demo/pool|${row#*|} --distill-pool $OUT/anchor_big --targets q_proj,k_proj,v_proj,out_proj,fc1,fc2 --init-partial $common")
  done
  RUN_CONFIG=$DEMO800 run_rows "$prefix" "${rows[@]}"
}
# Longer runs on every projection and MLP layer (docs/science.md, "Longer runs and a heavier anchor on
# every layer"): the "concat" part's rows 6 to 8 (the zoo's features concatenated as targets alone and
# with the surrogates' episodes, and the adopted recipe) at 2,000 steps instead of 1,000, seed 0, eval
# on the same 600 validation episodes, beside the 1,000-step rows. Run "concat" first. ~16-18 min per
# run, ~2 min eval (fp32, 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = long ]; then
  echo "validation accuracy (%) every 250 steps from 0 to 2000 +- 95% CI at the last:"
  L_RUNS=(
    "the zoo's features concatenated alone, every layer, 2,000 steps|--distill-targets zoo-concat --temperature 1e9 --single-lora-prob 0"
    "anchor: the zoo's features concatenated, every layer, 2,000 steps|--distill-targets zoo-concat"
    "anchor: the zoo's mean features (adopted), every layer, 2,000 steps|--distill-targets zoo-mean"
  )
  every_rows lg "--steps 2000" "${L_RUNS[@]}"
  # the distillation term on the training glyphs of the run without surrogate term (loss - ln 5 under
  # the flat CE, as in the "concat" part), beside its 1,000-step row (zc_6)
  distill_term "20 100 500 1000 1500 2000" zc_6 lg_1
  val_eval lg ${#L_RUNS[@]}
  # the same rows at 1,000 steps ("concat" part), on the same episodes
  grep -E '^val,(zc_6|zc_7|zc_8),' "$OUT/zc_eval/results.csv"
fi
# The anchor's weight in the adopted recipe (docs/science.md, "Longer runs and a heavier anchor on
# every layer"): configs/demo.ini's recipe ("concat" part's row 8: the meta-LoRA on every projection
# and MLP layer from lora-avg, the anchor towards the zoo's mean features on 10,000 public glyphs)
# with --distill-weight 2, 4 and 8 instead of 1 (seed 0; 4 also seeds 1 and 2, beside weight 1 at
# seed 2), and the anchor alone (no surrogate term: the flat CE at T 1e9, as the "concat" part's
# row 6), 1,000 steps, eval on the same 600 validation episodes beside rows 8 and 9. Run "concat"
# first. ~9 min per run, ~3 min eval (fp32, 2 cores, AMD EPYC with AVX2).
if [ "$WHAT" = anchorw ]; then
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  A_RUNS=(
    "the adopted recipe, anchor weight 2|--distill-targets zoo-mean --distill-weight 2"
    "the adopted recipe, anchor weight 4|--distill-targets zoo-mean --distill-weight 4"
    "the same, seed 1|--distill-targets zoo-mean --distill-weight 4 --seed 1"
    "the adopted recipe, anchor weight 8|--distill-targets zoo-mean --distill-weight 8"
    "the zoo's mean features alone (no surrogate term)|--distill-targets zoo-mean --temperature 1e9 --single-lora-prob 0"
    "the adopted recipe, anchor weight 4, seed 2|--distill-targets zoo-mean --distill-weight 4 --seed 2"
    "the adopted recipe (anchor weight 1), seed 2|--distill-targets zoo-mean --seed 2"
  )
  every_rows aw "" "${A_RUNS[@]}"
  val_eval aw ${#A_RUNS[@]}
  # the same recipe at weight 1 ("concat" part's rows 8 and 9: seeds 0 and 1), on the same episodes
  grep -E '^val,(zc_8|zc_9),' "$OUT/zc_eval/results.csv"
fi
# The zoo's features concatenated under the heavier anchor (docs/science.md, "The concatenation's
# targets at anchor weight 4"): configs/demo.ini's recipe as it was then (every projection and MLP
# layer from lora-avg, the anchor at weight 4 towards the zoo's mean features on the main job's
# 10,000 retrieved glyphs) against the same with --distill-targets zoo-concat (the main job's since
# this part), seeds 0, 1 and 2, on the main job's zoo, pool and anchor glyphs of that day (5-way zoo
# tasks: $OUT/w5, remade from configs/demo.ini with FIVE_WAY when missing, ~14 min in bf16), eval on
# 600 validation episodes. The first row ($OUT/acm_1) was the main job's own dense run of that day
# (the same command, moved here when the main job took the concatenation's targets). Run with the
# PRECISION the main job used (launch/demo.sh uses auto). ~5.5 min per run, ~4 min eval (bf16, 2
# cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchorc ]; then
  remake w5 configs/demo.ini "${FIVE_WAY[@]}"
  W5=$OUT/w5
  AW="--distill-weight 4"  # configs/demo.ini's since the "anchorw" part, named so that the rows stay as run
  AC_RUNS=(
    "the zoo's mean features, seed 1|runs/demo/pool|$AW --distill-targets zoo-mean --seed 1"
    "the zoo's features concatenated as targets, seed 0|runs/demo/pool|$AW --distill-targets zoo-concat"
    "the same, seed 1|runs/demo/pool|$AW --distill-targets zoo-concat --seed 1"
    "the zoo's mean features, seed 2|runs/demo/pool|$AW --distill-targets zoo-mean --seed 2"
    "the zoo's features concatenated as targets, seed 2|runs/demo/pool|$AW --distill-targets zoo-concat --seed 2"
  )
  AC=("main=$OUT/acm_1")
  for i in $(seq ${#AC_RUNS[@]}); do AC+=("ac_$i=$OUT/ac_$i"); done
  (
    cd "$W5"
    echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
    RUN_CONFIG=$W5/demo.ini run_rows acm "the zoo's mean features (main), seed 0|runs/demo/pool|$AW --distill-targets zoo-mean"
    RUN_CONFIG=$W5/demo.ini run_rows ac "${AC_RUNS[@]}"
    eval_val ac_eval "$W5/demo.ini" "validation classes, 600 episodes 5-way 1-shot (eval):" "${AC[@]}"
  )
fi
# The main recipe on a 10-way zoo (docs/science.md, "The main recipe on a zoo of 10-way tasks"): the
# zoo's features concatenated hold +2.28 over their lora-avg on the validation classes with 10-way
# zoo tasks against +1.29 with the main job's 5-way ones ("ceiling" part), and the recipe with the
# concatenation's targets now reaches about what the zoo holds. The main job made again from
# configs/demo.ini with zoo --way 10 and 4 drawn surrogates per LoRA and class (40 per class, as the
# 5-way zoo's 8 per LoRA give; the "way" part's zoo; the main job's since this part), then
# configs/demo.ini's recipe on it (W10_RECIPE, named, so that the rows stay as run), seeds 0, 1 and
# 2, eval on the same 600 validation episodes as the "anchorc" part, whose rows on the 5-way zoo are
# the comparison. Run "anchorc" first. ~15 min to make (bf16), then ~6 min per run and ~4 min eval
# (bf16, 2 cores, AMD EPYC with avx512_bf16).
W10_RECIPE="--distill-targets zoo-concat --distill-weight 4"  # configs/demo.ini's since the "anchorc" part
if [ "$WHAT" = way10c ]; then
  [ -f "$OUT/ac_eval/results.json" ] || { echo "science: run the 'anchorc' part first" >&2; exit 2; }
  remake w10c configs/demo.ini -e "/^\[zoo\]/,/^\[/s/^way *=.*/way = 10/" \
    -e "/^\[invert\]/,/^\[/s/^per-class *=.*/per-class = 4/"
  W=$OUT/w10c
  (
    cd "$W"
    echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
    RUN_CONFIG=$W/demo.ini run_rows w10 "10-way zoo, the main recipe, seed 0|runs/demo/pool|$W10_RECIPE" \
      "the same, seed 1|runs/demo/pool|$W10_RECIPE --seed 1" "the same, seed 2|runs/demo/pool|$W10_RECIPE --seed 2"
    eval_val w10_eval "$W/demo.ini" "10-way zoo: validation classes, 600 episodes 5-way 1-shot (eval; lora-avg is this zoo's):" \
      "w10_1=$OUT/w10_1" "w10_2=$OUT/w10_2" "w10_3=$OUT/w10_3"
  )
  zoo_heldout 10-way "$W"
  # the same recipe on the main job's 5-way zoo ("anchorc" part: seeds 0, 1, 2), on the same episodes
  grep -E '^val,(lora-avg|ac_2|ac_3|ac_5),' "$OUT/ac_eval/results.csv"
  paired_across ac_eval w10_eval "10-way zoo - the main job's" lora-avg=lora-avg w10_1=ac_2 w10_2=ac_3 w10_3=ac_5
fi
# The 10-way zoo's recipe run on (docs/science.md, "The main recipe on a zoo of 10-way tasks"): the
# "way10c" part's seed-0 row for 2,000 steps instead of 1,000 (the learning-rate schedule restarts
# every 100 steps, so its first 1,000 steps repeat that row), and the same recipe on real images of
# the zoo's classes in the pool's layout (4 per LoRA and class; the control), and the anchor at
# weight 8 instead of 4 (seed 0), eval on the same 600 validation episodes beside the "way10c" rows.
# Run "way10c" first. ~10 min for the long run, ~6 min each other row, ~4 min eval (bf16, 2 cores,
# AMD EPYC with avx512_bf16).
if [ "$WHAT" = way10x ]; then
  [ -f "$OUT/w10_eval/results.json" ] || { echo "science: run the 'way10c' part first" >&2; exit 2; }
  W=$OUT/w10c
  (
    cd "$W"
    real_images_pool w10c "$W/demo.ini" "$OUT/w10c_pool_real"
    echo "validation accuracy (%) every 250 steps +- 95% CI at the last:"
    RUN_CONFIG=$W/demo.ini run_rows w10x "10-way zoo, the main recipe, 2,000 steps|runs/demo/pool|$W10_RECIPE --steps 2000" \
      "the same recipe, real images (control)|$OUT/w10c_pool_real|$W10_RECIPE" \
      "the main recipe at anchor weight 8|runs/demo/pool|--distill-targets zoo-concat --distill-weight 8"
    eval_val w10x_eval "$W/demo.ini" "10-way zoo: validation classes, 600 episodes 5-way 1-shot (eval; lora-avg is this zoo's):" \
      "w10x_1=$OUT/w10x_1" "w10x_2=$OUT/w10x_2" "w10x_3=$OUT/w10x_3"
  )
  # the 1,000-step row of "way10c" (seed 0), on the same episodes
  grep -E '^val,w10_1,' "$OUT/w10_eval/results.csv"
  paired_across w10_eval w10x_eval "10-way zoo" w10x_1=w10_1 w10x_2=w10_1 w10x_3=w10_1
fi
# What a zoo of 10-way tasks holds with 20 LoRAs and with 40 (docs/science.md, "The main recipe on a
# zoo of 10-way tasks"): no training beyond the zoo. The "ceiling" part's features and
# bench/zoo_ensemble.py (with --curve: the ensembles of k of the zoo's LoRAs) for the "way10c" zoo
# (the main job's since then), with its meta-LoRA (w10_1) and real-image control (w10x_2), and for a
# zoo of 40 LoRAs on 10-way tasks over the same 20 classes (20 per class: the same config with
# num-loras 40, in $OUT/w40). Run "way10x" first. ~7 min for the zoo of 40, ~3 min per zoo's features
# (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = zoo40c ]; then
  [ -f "$OUT/w10x_eval/results.json" ] || { echo "science: run the 'way10x' part first" >&2; exit 2; }
  W=$OUT/w10c
  zoo_ceiling "$OUT/ceiling_w10c" "$W" "$W/demo.ini" "meta|$OUT/w10_1" "real|$OUT/w10x_2"
  echo "== the 10-way zoo of 20 LoRAs (the main job's)"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_w10c" meta real --curve
  zoo_job w40 "$W/demo.ini" -e '/^\[zoo\]/,/^\[/s/^num-loras *=.*/num-loras = 40/'
  echo "== the 10-way zoo of 40 LoRAs"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_w40" --curve
fi
# need_zoo40c: stop unless the "zoo40c" part has embedded the validation images under the 10-way zoo.
need_zoo40c() { [ -d "$OUT/ceiling_w10c" ] || { echo "science: run the 'zoo40c' part first" >&2; exit 2; }; }
need_anchorn() { [ -f "$OUT/an_eval/results.json" ] || { echo "science: run the 'anchorn' part first" >&2; exit 2; }; }
# zoo_curve TAG TITLE SED_ARG...: zoo_job TAG from the "way10c" part's config edited by SED_ARG...,
# then TITLE and bench/zoo_ensemble.py --curve on its features.
zoo_curve() {
  local tag=$1 title=$2
  shift 2
  zoo_job "$tag" "$OUT/w10c/demo.ini" "$@"
  echo "== $title"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_$tag" --curve
}
# Wider zoos (docs/science.md, "Wider zoos"): what a zoo of 20 LoRAs holds beyond its average when
# its tasks are wider still, as the "zoo40c" part measures it (no training beyond the zoo): 20-way
# tasks over the same 20 classes (every LoRA covers every class; 2 surrogates per LoRA and class
# would keep 40 per class), and 10-way tasks over 40 classes (5 LoRAs per class). Run "zoo40c"
# first. ~8 min per zoo, ~3 min per zoo's features (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = zoowide ]; then
  need_zoo40c
  zoo_curve w20w "a zoo of 20 LoRAs on 20-way tasks over 20 classes" -e '/^\[zoo\]/,/^\[/s/^way *=.*/way = 20/' \
    -e '/^\[invert\]/,/^\[/s/^per-class *=.*/per-class = 2/'
  zoo_curve w10k40 "a zoo of 20 LoRAs on 10-way tasks over 40 classes" \
    -e '/^\[zoo\]/,/^\[/s/^classes *=.*/classes = 40/'
fi
# A zoo of 40 LoRAs on 10-way tasks over 40 classes (docs/science.md, "Wider zoos"): "zoowide"'s
# zoo over 40 classes with twice the LoRAs (10 per class, as the main zoo has), whose ensemble was
# still rising at 20 LoRAs. Run "zoowide" first. ~8 min for the zoo, ~5 min for its features (bf16,
# 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = zoo40k40 ]; then
  [ -d "$OUT/ceiling_w10k40" ] || { echo "science: run the 'zoowide' part first" >&2; exit 2; }
  zoo_curve w40k40 "a zoo of 40 LoRAs on 10-way tasks over 40 classes" \
    -e '/^\[zoo\]/,/^\[/s/^classes *=.*/classes = 40/' -e '/^\[zoo\]/,/^\[/s/^num-loras *=.*/num-loras = 40/'
fi
# recipe_on_zoo TAG PREFIX LABEL SED_ARG...: remake TAG from configs/demo.ini edited by SED_ARG...
# (LABEL names its zoo), the main recipe (W10_RECIPE, seed 0) on it as $OUT/PREFIX_1, eval on the
# "way10c" part's 600 validation episodes into $OUT/PREFIX_eval, the zoo's held-out accuracy, and
# both rows against "way10c"'s seed-0 row episode by episode.
recipe_on_zoo() {
  local tag=$1 prefix=$2 label=$3 w=$OUT/$1
  shift 3
  [ -f "$OUT/w10_eval/results.json" ] || { echo "science: run the 'way10c' part first" >&2; exit 2; }
  remake "$tag" configs/demo.ini "$@"
  (
    cd "$w"
    echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
    RUN_CONFIG=$w/demo.ini run_rows "$prefix" "$label zoo, the main recipe, seed 0|runs/demo/pool|$W10_RECIPE"
    eval_val "${prefix}_eval" "$w/demo.ini" "$label zoo: validation classes, 600 episodes 5-way 1-shot (eval; lora-avg is this zoo's):" \
      "${prefix}_1=$OUT/${prefix}_1"
  )
  zoo_heldout "$label" "$w"
  paired_across w10_eval "${prefix}_eval" "$label zoo - the main job's 10-way zoo" lora-avg=lora-avg "${prefix}_1=w10_1"
}
# The main recipe on a zoo of 20-way tasks (docs/science.md, "Wider zoos"): the main job made again
# from configs/demo.ini with zoo --way 20 (every LoRA covers all 20 classes), 2 drawn surrogates per
# LoRA and class (40 per class, as now) and retrieve-per-class 50 (the anchor's 20,000 slots, as
# now), then the main recipe (W10_RECIPE), seed 0, eval on the same 600 validation episodes as the
# "way10c" part, whose seed-0 row is the comparison. Run "way10c" first. ~15 min to make (bf16), then
# ~6 min for the run and ~3 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = way20c ]; then
  recipe_on_zoo w20c w20 20-way -e "/^\[zoo\]/,/^\[/s/^way *=.*/way = 20/" \
    -e "/^\[invert\]/,/^\[/s/^per-class *=.*/per-class = 2/" -e "s/^retrieve-per-class *=.*/retrieve-per-class = 50/"
fi
# The main recipe on a zoo of 10-way tasks over 40 classes (docs/science.md, "Wider zoos"): the main
# job made again from configs/demo.ini with zoo --classes 40 (5 LoRAs per class; the pool then holds
# 20 surrogates per class, the anchor its 20,000 slots), then the main recipe (W10_RECIPE), seed 0,
# eval on the same 600 validation episodes as the "way10c" part. Run "way10c" first. ~16 min to make
# (bf16), then ~5 min for the run and ~3 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = class40c ]; then
  recipe_on_zoo c40c c40 "10-way, 40 classes" -e "/^\[zoo\]/,/^\[/s/^classes *=.*/classes = 40/"
fi
# The three seeds of the "way10c" part averaged in weight space (docs/science.md, "Wider zoos"): one
# adapter whose delta on every module is the mean of the three meta-LoRAs' (bench/lora_mix.py twice:
# the first two at W 0.5, then that mix with the third at W 2/3; rank 240), eval on the same 600
# validation episodes as the "way10c" rows. No training: ~3 min (bf16, 2 cores, AMD EPYC with
# avx512_bf16). Run "way10c" first.
if [ "$WHAT" = soup ]; then
  [ -f "$OUT/w10_eval/results.json" ] || { echo "science: run the 'way10c' part first" >&2; exit 2; }
  [ -f "$OUT/soup12/adapter_config.json" ] || $PY bench/lora_mix.py "$OUT/soup12" 0.5 "$OUT/w10_1" "$OUT/w10_2"
  [ -f "$OUT/soup123/adapter_config.json" ] || $PY bench/lora_mix.py "$OUT/soup123" 0.6666666666666666 "$OUT/soup12" "$OUT/w10_3"
  (
    cd "$OUT/w10c"
    eval_val soup_eval "$OUT/w10c/demo.ini" "10-way zoo: validation classes, 600 episodes 5-way 1-shot (eval; lora-avg is this zoo's):" \
      "soup=$OUT/soup123"
  )
  paired_across w10_eval soup_eval "the three seeds averaged" soup=w10_1 soup=w10_2 soup=w10_3
fi
# w10_rows PREFIX TITLE "LABEL|FLAGS"...: the main recipe (W10_RECIPE plus FLAGS; seed 0 unless
# FLAGS hold --seed 1 or 2) on the "way10c" part's job as $OUT/PREFIX_1.., each run's validation
# series, eval on that part's 600 validation episodes into $OUT/PREFIX_eval, and each run against
# that part's row of its seed episode by episode under TITLE (lora-avg against itself first: 0 when
# both evals drew the same episodes).
w10_rows() {
  local prefix=$1 title=$2 row seed i=0 rows=() metas=() pairs=(lora-avg=lora-avg)
  shift 2
  for row in "$@"; do
    i=$((i + 1))
    seed=0
    [[ ${row#*|} =~ --seed\ ([12]) ]] && seed=${BASH_REMATCH[1]}
    rows+=("${row%%|*}, seed $seed|runs/demo/pool|$W10_RECIPE ${row#*|}")
    metas+=("${prefix}_$i=$OUT/${prefix}_$i")
    pairs+=("${prefix}_$i=w10_$((seed + 1))")
  done
  (
    cd "$OUT/w10c"
    echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
    RUN_CONFIG=$OUT/w10c/demo.ini run_rows "$prefix" "${rows[@]}"
    eval_val "${prefix}_eval" "$OUT/w10c/demo.ini" "10-way zoo: validation classes, 600 episodes 5-way 1-shot (eval):" \
      "${metas[@]}"
  )
  paired_across w10_eval "${prefix}_eval" "$title" "${pairs[@]}"
}
# w10_vs160 PREFIX TITLE PAIR_TITLE "LABEL|FLAGS"...: w10_rows PREFIX TITLE "LABEL|FLAGS"..., then
# each row against the "anchorn" part's 160 glyphs per episode (an_1) under PAIR_TITLE. Needs "anchorn".
w10_vs160() {
  local prefix=$1 title=$2 pair_title=$3 i pairs=()
  shift 3
  need_anchorn
  w10_rows "$prefix" "$title" "$@"
  for i in $(seq $#); do pairs+=("${prefix}_$i=an_1"); done
  paired_across an_eval "${prefix}_eval" "$pair_title" "${pairs[@]}"
}
# w10_scored PREFIX TITLE "NAME|LABEL|FLAGS"...: w10_rows PREFIX TITLE "LABEL|FLAGS"..., then each
# row's features on the validation images (the "zoo40c" part's $OUT/ceiling_w10c, as NAME) and
# bench/zoo_ensemble.py's numpy episodes beside the recipe's seed-0 row ("meta") and EXTRA's names
# (W10_EXTRA, features already there). Needs the "zoo40c" part.
w10_scored() {
  local prefix=$1 title=$2 row i=0 rows=() feats=() names=()
  shift 2
  need_zoo40c
  for row in "$@"; do
    i=$((i + 1))
    rows+=("${row#*|}")
    feats+=("${row%%|*}|$OUT/${prefix}_$i")
    names+=("${row%%|*}")
  done
  w10_rows "$prefix" "$title" "${rows[@]}"
  (cd "$OUT/w10c" && embed_val "$OUT/ceiling_w10c" data/demo/val.h5 "${feats[@]}")
  # shellcheck disable=SC2086  # W10_EXTRA: names, split on purpose
  $PY bench/zoo_ensemble.py "$OUT/ceiling_w10c" meta ${W10_EXTRA:-} "${names[@]}"
}
# w10_retrieve NAME H5 COUNT [FLAG...]: retrieve_anchor (below) for the "way10c" job, into
# runs/demo/NAME there (its 20,000 slots).
w10_retrieve() {
  need_zoo40c
  (cd "$OUT/w10c" && retrieve_anchor "$OUT/w10c_$1.log" "$OUT/w10c/demo.ini" "runs/demo/$1" "$2" "$3" "${@:4}")
}
# retrieve_anchor LOG CONFIG OUT H5 COUNT [FLAG...]: the anchor's slots retrieved as launch/demo.sh
# retrieves the glyphs (CONFIG's zoo and [invert] retrieve-per-class), but from the COUNT images of H5
# (and with the invert FLAGs), into OUT unless done.
retrieve_anchor() {
  once "$3/index.json" "$1" "${MPI[@]}" "$REPO/$B" invert --config "$2" --precision "${PRECISION:-fp32}" \
    --co-teachers 0 --retrieve "$4" --retrieve-candidates "$5" --out "$3" "${@:6}"
}
# Public glyphs composed as Han characters are built, from components side by side or stacked
# (bench/composite_glyphs.py: 24,048 images of two or three of the VFM's pre-training glyphs each;
# docs/science.md, "Other anchor images"). First where the "way10c" zoo disagrees
# (bench/zoo_agreement.py on 3,600 images of each set, beside the validation images of the "zoo40c"
# part: the ensemble's lead over the average shows where the LoRAs disagree), then the anchor's
# images retrieved from the composites as launch/demo.sh retrieves them from the glyphs (each LoRA's
# 100 most confident per class; COMP_COUNT= sets how many composites, default 24048), and the main
# recipe (W10_RECIPE, seed 0) with them instead of the glyphs, and with both (bench/pool_union.py),
# eval on the "way10c" part's 600 validation episodes, paired against its seed-0 row. Run "zoo40c"
# first. ~2 min for the agreement, ~4 min retrieval, ~7 min per run, ~4 min eval (bf16, 2 cores,
# AMD EPYC with avx512_bf16).
if [ "$WHAT" = composite ]; then
  need_zoo40c
  W=$OUT/w10c CN=${COMP_COUNT:-24048}
  [ -f "$OUT/composite$CN.h5" ] || $PY bench/composite_glyphs.py data/demo/base.h5 "$OUT/composite$CN.h5" --count "$CN"
  # 3,600 images of each set (the public glyphs drawn at random, seed 0), as h5 files embed reads
  $PY - "$OUT" "$CN" <<'PY'
import os, sys, h5py, numpy as np
out, cn = sys.argv[1], sys.argv[2]
for name, src, pick in (("public", "data/demo/base.h5", True), ("composite", f"{out}/composite{cn}.h5", False)):
    dst = f"{out}/agree_{name}.h5"
    if os.path.exists(dst):
        continue
    with h5py.File(src, "r") as f:
        n = f["images"].shape[0]
        rows = np.sort(np.random.default_rng(0).choice(n, 3600, replace=False)) if pick else np.arange(3600)
        images = f["images"][rows]
    with h5py.File(dst + ".tmp", "w") as g:
        g["images"] = images
        g["labels"] = np.zeros(len(images), np.int64)
    os.replace(dst + ".tmp", dst)
PY
  (
    cd "$W"
    mapfile -t zoo < <(zoo_embeds)
    mkdir -p "$OUT/agree_public" "$OUT/agree_composite"
    embed_val "$OUT/agree_public" "$OUT/agree_public.h5" "avg|$OUT/ceiling_w10c/avg" "${zoo[@]}"
    embed_val "$OUT/agree_composite" "$OUT/agree_composite.h5" "avg|$OUT/ceiling_w10c/avg" "${zoo[@]}"
  )
  echo "where the 10-way zoo's LoRAs disagree (3,600 images each; distance gap to the zoo's geometry):"
  $PY bench/zoo_agreement.py validation="$OUT/ceiling_w10c" public="$OUT/agree_public" composite="$OUT/agree_composite"
  (
    cd "$W"
    once "runs/demo/anchor_comp$CN/index.json" "$OUT/w10c_anchor_comp$CN.log" "${MPI[@]}" "$REPO/$B" invert \
      --config "$W/demo.ini" --precision "${PRECISION:-fp32}" --co-teachers 0 --retrieve "$OUT/composite$CN.h5" \
      --retrieve-candidates "$CN" --out "runs/demo/anchor_comp$CN"
    [ -f "runs/demo/anchor_both$CN/index.json" ] ||
      $PY "$REPO/bench/pool_union.py" "runs/demo/anchor_both$CN" runs/demo/anchor_glyphs "runs/demo/anchor_comp$CN"
  )
  w10_rows "cmp$CN" "the anchor's images - the glyphs (the main recipe, seed 0)" \
    "anchor: composites|--distill-pool runs/demo/anchor_comp$CN" \
    "anchor: glyphs and composites|--distill-pool runs/demo/anchor_both$CN"
fi
# The anchor on the public glyphs where the zoo's LoRAs disagree most (docs/science.md, "Other
# anchor images"): every one of the 24,048 glyphs embedded under each LoRA of the "way10c"
# zoo, then bench/disagree_pool.py fills the anchor's 20,000 slots with the 8,928 glyphs of largest
# disagreement (as many distinct images as the main job's anchor holds), or, as the control, 8,928
# drawn at random; the main recipe (W10_RECIPE, seed 0) with each, eval on the "way10c" part's 600
# validation episodes, paired against its seed-0 row. Run "way10c" first. ~6 min for the features,
# ~7 min per run, ~4 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = disagree ]; then
  [ -f "$OUT/w10_eval/results.json" ] || { echo "science: run the 'way10c' part first" >&2; exit 2; }
  W=$OUT/w10c
  (
    cd "$W"
    mapfile -t zoo < <(zoo_embeds)
    mkdir -p "$OUT/base_feats"
    embed_val "$OUT/base_feats" "$REPO/data/demo/base.h5" "${zoo[@]}"
    [ -f runs/demo/anchor_dis_top/index.json ] || $PY "$REPO/bench/disagree_pool.py" runs/demo/anchor_glyphs \
      "$OUT/base_feats" "$REPO/data/demo/base.h5" runs/demo/anchor_dis_top 8928
    [ -f runs/demo/anchor_dis_random/index.json ] || $PY "$REPO/bench/disagree_pool.py" runs/demo/anchor_glyphs \
      "$OUT/base_feats" "$REPO/data/demo/base.h5" runs/demo/anchor_dis_random 8928 random
  )
  w10_rows dis "the anchor's images - the retrieved glyphs (the main recipe, seed 0)" \
    "anchor: the most disagreed glyphs|--distill-pool runs/demo/anchor_dis_top" \
    "anchor: glyphs at random|--distill-pool runs/demo/anchor_dis_random"
fi
# What the main job's zoo holds beyond its average on the test classes (docs/science.md, "Other
# anchor images"), measured after every choice of the log and choosing nothing: the "zoo40c" part's
# measure on data/demo/test.h5 instead of the validation images, with the main job's meta-LoRA
# (runs/demo/meta). The zoo is the main job's (the "way10c" part's zoo is the same, byte for byte),
# lora-avg the "zoo40c" part's. Run the main job and "zoo40c" first. ~3 min (bf16, 2 cores).
if [ "$WHAT" = testceiling ]; then
  [ -d "$OUT/ceiling_w10c/avg" ] && [ -f runs/demo/meta/metatrain.json ] ||
    { echo "science: run the main job (launch/demo.sh) and the 'zoo40c' part first" >&2; exit 2; }
  mkdir -p "$OUT/ceiling_test"
  mapfile -t zoo < <(zoo_embeds)
  embed_val "$OUT/ceiling_test" data/demo/test.h5 "bare|" "avg|$OUT/ceiling_w10c/avg" "meta|runs/demo/meta" "${zoo[@]}"
  echo "== the main job's zoo of 20 LoRAs, on the test classes"
  $PY bench/zoo_ensemble.py "$OUT/ceiling_test" meta --curve --set test
fi
# How much of the 10-way zoo's ensemble the anchor alone passes on (docs/science.md, "Other anchor
# images"): the main recipe (W10_RECIPE, seed 0) under a flat CE (T 1e9: the surrogates' episodes
# give no gradient), eval on the "way10c" part's 600 validation episodes, and its features beside the
# zoo's ensemble on the "zoo40c" part's numpy episodes. Run "zoo40c" first. ~7 min for the run, ~3
# min eval, ~1 min for its features (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = alone10 ]; then
  w10_scored al10 "the anchor alone - the main recipe (seed 0)" "alone|the anchor alone (flat CE)|--temperature 1e9"
fi
# The zoo distilled on views of the anchor's glyphs (docs/science.md, "Other anchor images"): every
# slot of the "way10c" part's anchor under its own random affine map (bench/affine_pool.py, strength
# 1: the ranges of metatrain --affine), so that metatrain computes the zoo's targets on 20,000 views
# no run has seen; the main recipe (W10_RECIPE, seed 0) with the views instead of the glyphs, and with
# both (bench/pool_union.py), eval on the "way10c" part's 600 validation episodes and the features on
# the "zoo40c" part's numpy episodes. Run "zoo40c" first. ~10 min per run, ~5 min eval (bf16, 2
# cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = augview ]; then
  need_zoo40c
  (
    cd "$OUT/w10c"
    [ -f runs/demo/anchor_aug/index.json ] ||
      $PY "$REPO/bench/affine_pool.py" runs/demo/anchor_glyphs runs/demo/anchor_aug
    [ -f runs/demo/anchor_augboth/index.json ] ||
      $PY "$REPO/bench/pool_union.py" runs/demo/anchor_augboth runs/demo/anchor_glyphs runs/demo/anchor_aug
  )
  w10_scored aug "the anchor's images - the glyphs (the main recipe, seed 0)" \
    "views|anchor: views of the glyphs|--distill-pool runs/demo/anchor_aug" \
    "both|anchor: glyphs and views|--distill-pool runs/demo/anchor_augboth"
fi
# How many of the anchor's glyphs each step distils (metatrain --distill-images; default as many as
# an episode holds, 40 here: 5-way, 1 + 7 images a class): the main recipe (W10_RECIPE, seed 0) with
# 160 and with 80 (2 episodes per step: 320 and 160 glyphs a step, not 80), eval on the
# "way10c" part's 600 validation episodes and the features on the "zoo40c" part's numpy episodes
# (docs/science.md, "What limits the anchor"). Run "zoo40c" first. ~8-12 min per run, ~5 min eval
# (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchorn ]; then
  w10_scored an "anchor images per episode - 40 (the main recipe, seed 0)" \
    "n160|anchor: 160 glyphs per episode|--distill-images 160" \
    "n80|anchor: 80 glyphs per episode|--distill-images 80"
fi
# The "anchorn" part's 160 glyphs per episode at seeds 1 and 2, eval on the same 600 validation
# episodes, each paired against the "way10c" part's row of the same seed (docs/science.md, "What
# limits the anchor"). Run "anchorn" first. ~10 min per run, ~4 min eval (bf16, 2 cores, AMD EPYC with
# avx512_bf16).
if [ "$WHAT" = anchorn3 ]; then
  need_anchorn
  w10_rows an3 "160 glyphs per episode - 40 (the main recipe), same seed" \
    "anchor: 160 glyphs per episode|--distill-images 160 --seed 1" \
    "anchor: 160 glyphs per episode|--distill-images 160 --seed 2"
  paired_across w10_eval an_eval "the same, seed 0" an_1=w10_1
fi
# Does the trend go on? The "anchorn" part's rows with 320 glyphs per episode (seed 0), eval on the
# same 600 validation episodes and the features on the "zoo40c" part's numpy episodes
# (docs/science.md, "What limits the anchor"). Run "anchorn" first. ~20 min for the run, ~4 min eval
# (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchorn320 ]; then
  need_anchorn
  W10_EXTRA=n160 w10_scored an320 "320 glyphs per episode - 40 (the main recipe, seed 0)" \
    "n320|anchor: 320 glyphs per episode|--distill-images 320"
  paired_across an_eval an320_eval "320 glyphs per episode - 160" an320_1=an_1
fi
# 160 glyphs per episode at the cost of fewer: the student sees a random part of each glyph's patches
# (metatrain --distill-mask-ratio, drawn per glyph and step; the targets stay the whole glyph's), the
# main recipe (W10_RECIPE, seed 0) with 160 glyphs per episode at mask 0.75 and 0.5, eval on the
# "way10c" part's 600 validation episodes, paired against its seed-0 row and against the "anchorn"
# part's 160 whole glyphs (docs/science.md, "160 glyphs at the cost of 40"). Run "anchorn" first.
# ~7 min per run, ~4 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchormask ]; then
  w10_vs160 am "160 glyphs per episode, masked - 40 whole (the main recipe)" \
    "masked - 160 whole glyphs per episode" \
    "anchor: 160 glyphs per episode, 3/4 of their patches masked|--distill-images 160 --distill-mask-ratio 0.75" \
    "anchor: 160 glyphs per episode, half masked|--distill-images 160 --distill-mask-ratio 0.5"
fi
# 160 glyphs per episode in fewer steps: the main recipe (W10_RECIPE, seed 0) with 160 glyphs per
# episode and 500 steps (its cosine schedule over 500; 1,000 steps with 40 glyphs cost about as
# much, 2,000 added nothing: the "way10x" part), eval on the "way10c" part's 600 validation
# episodes, paired against its seed-0 row and against the "anchorn" part's 160 glyphs over 1,000
# steps (docs/science.md, "160 glyphs at the cost of 40"). Run "anchorn" first. ~6 min per run, ~3
# min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchorsteps ]; then
  w10_vs160 as "160 glyphs per episode in 500 steps - 40 in 1,000 (the main recipe)" \
    "500 steps - 1,000 (160 glyphs per episode)" \
    "anchor: 160 glyphs per episode, 500 steps|--distill-images 160 --steps 500"
fi
# ... and in more: 160 glyphs per episode over 2,000 steps (the cycles' schedule does not depend on the
# run's length, so its validation at 250-1,000 steps repeats the "anchorn" row; at 40 glyphs the
# second 1,000 steps added nothing, the "way10x" part), eval of the end as "anchorsteps" does
# (docs/science.md, "160 glyphs at the cost of 40"). Run "anchorn" first. ~16 min for the run, ~3 min
# eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = anchorsteps2k ]; then
  w10_vs160 a2k "160 glyphs per episode in 2,000 steps - 40 in 1,000 (the main recipe)" \
    "2,000 steps - 1,000 (160 glyphs per episode)" \
    "anchor: 160 glyphs per episode, 2,000 steps|--distill-images 160 --steps 2000"
fi
# The learning-rate schedule: every run so far used the official warm-up + cosine cycles of 100
# steps (lr from 1e-5 to the peak and back ten times in 1,000 steps); here one warm-up + cosine over
# the whole run (metatrain --cycle 0), at the recipe's peak lr 3e-4 and at 1e-3, with the main job's
# 160 anchor glyphs per episode (W10_RECIPE, seed 0), eval on the "way10c" part's 600 validation
# episodes, paired against its seed-0 row and against the "anchorn" part's 160 glyphs with cycles
# (docs/science.md, "The schedule, the precision and the glyphs' confidence"). Run "anchorn" first.
# ~9 min per run, ~4 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = schedule ]; then
  w10_vs160 sc "one cosine over the run, 160 glyphs - cycles of 100, 40 glyphs (the main recipe)" \
    "one cosine - cycles of 100 (160 glyphs per episode)" \
    "anchor: 160 glyphs per episode, one cosine over 1,000 steps|--distill-images 160 --cycle 0" \
    "anchor: 160 glyphs per episode, one cosine, lr 1e-3|--distill-images 160 --cycle 0 --lr 1e-3"
fi
# The cycles' length: 20 cycles of 50 steps and 5 of 200 (warm-up a quarter of each, as the official
# 25 of 100) instead of 10 of 100, otherwise as "schedule" (docs/science.md, "The schedule, the
# precision and the glyphs' confidence"). Run "anchorn" first. ~8 min per run, ~3 min eval (bf16, 2
# cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = cycles ]; then
  w10_vs160 cy "cycles of 50 or 200, 160 glyphs - cycles of 100, 40 glyphs (the main recipe)" \
    "cycles of 50 or 200 - of 100 (160 glyphs per episode)" \
    "anchor: 160 glyphs per episode, cycles of 50 steps|--distill-images 160 --cycle 50 --warmup 12" \
    "anchor: 160 glyphs per episode, cycles of 200 steps|--distill-images 160 --cycle 200 --warmup 50"
fi
# Does bf16 limit how closely the student fits the zoo? The main job's recipe with 160 anchor glyphs
# per episode (W10_RECIPE, seed 0) meta-trained in fp32 (its targets, the zoo's features on the
# glyphs, computed in fp32 too), evaluated like every other row (PRECISION), on the "way10c" part's
# 600 validation episodes, paired against its seed-0 row and against the "anchorn" part's 160 glyphs
# in bf16 (docs/science.md, "The schedule, the precision and the glyphs' confidence"). Run "anchorn"
# first. ~20 min for the run, ~3 min eval (2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = fp32 ]; then
  need_anchorn
  ROW="anchor: 160 glyphs per episode, trained in fp32"
  (cd "$OUT/w10c" && PRECISION=fp32 RUN_CONFIG=$OUT/w10c/demo.ini run_rows fp \
    "$ROW|runs/demo/pool|$W10_RECIPE --distill-images 160")
  w10_rows fp "fp32, 160 glyphs - bf16, 40 glyphs (the main recipe)" "$ROW|--distill-images 160"  # the run is there: eval only
  paired_across an_eval fp_eval "fp32 - bf16 (160 glyphs per episode)" fp_1=an_1
fi
# glyphs_per_class N PREFIX: each zoo LoRA's N most confident public glyphs per class among all
# 24,048 (N x 200 slots) instead of 100 (20,000 slots, 8,928 distinct) retrieved as runs/demo/anchor_rN
# of the "way10c" job, the main job's recipe with 160 of them per episode (W10_RECIPE, seed 0), eval
# on that part's 600 validation episodes as $OUT/PREFIX_eval, paired against its seed-0 row and
# against the "anchorn" part's 160 of the 100 per class (docs/science.md, "The schedule, the
# precision and the glyphs' confidence"). Needs the "anchorn" part.
glyphs_per_class() {
  local n=$1 prefix=$2
  need_anchorn
  w10_retrieve "anchor_r$n" "$REPO/data/demo/base.h5" 24048 --retrieve-per-class "$n"
  w10_vs160 "$prefix" "$n glyphs per LoRA and class, 160 per episode - 100, 40 (the main recipe)" \
    "$n glyphs per LoRA and class - 100 (160 per episode)" \
    "anchor: $n glyphs per LoRA and class, 160 per episode|--distill-images 160 --distill-pool runs/demo/anchor_r$n"
}
# More distinct glyphs, less confident ones among them: 300 per LoRA and class (60,000 slots). Run
# "anchorn" first. ~4 min retrieval, ~12 min for the run, ~3 min eval (bf16, 2 cores, AMD EPYC with
# avx512_bf16).
if [ "$WHAT" = glyphs300 ]; then glyphs_per_class 300 g3; fi
# Fewer, more confident glyphs: 50 per LoRA and class (10,000 slots). Run "anchorn" first. ~4 min
# retrieval, ~9 min for the run, ~3 min eval.
if [ "$WHAT" = glyphs50 ]; then glyphs_per_class 50 g5; fi
# A student with more room (docs/science.md, "A full-rank student"): the main job's meta-training
# (configs/demo.ini as it is, seed 0) at rank 128 with alpha 128 instead of 80 and 80, i.e. full
# rank on every 128-wide projection and on both sides of the MLP's. It starts at the same lora-avg
# (scale 1): on q and v the zoo's rank-80 mean plus 48 components at a fresh A and B = 0
# (metatrain's set_low_rank_start), on the other modules B = 0 at rank 128. Eval on the 600
# validation episodes of eval_val beside the main job's own meta-LoRA (runs/demo/meta, rank 80),
# paired. Needs the main job (bash launch/demo.sh). ~8 min for the run, ~3 min eval (bf16, 2 cores,
# AMD EPYC with avx512_bf16); run with PRECISION=auto, as the main job.
if [ "$WHAT" = rank ]; then
  [ -f runs/demo/meta/metatrain.json ] || { echo "science: run the main job first (bash launch/demo.sh)" >&2; exit 2; }
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  printf '%-48s %s\n' "the main job's meta-LoRA (rank 80)" "$(series runs/demo/meta.work/metrics.jsonl 2)"
  RUN_CONFIG=configs/demo.ini run_rows rk "the main recipe at rank 128, alpha 128|runs/demo/pool|--rank 128 --alpha 128"
  grep -h -m1 "components beyond its rank" "$OUT/rk_1.log"
  eval_val rk_eval configs/demo.ini "validation classes, 600 episodes 5-way 1-shot (eval):" \
    "main=runs/demo/meta" "rk_1=$OUT/rk_1"
  paired_across rk_eval rk_eval "rank 128 - rank 80" rk_1=main
  # CAP=1: the same two ranks with the anchor on the validation images themselves (the "capcheck"
  # part's check of capacity, on the main job: its 100 most confident images per LoRA and class
  # among the 3,600, retrieved as launch/demo.sh retrieves the glyphs; ~2 min): can rank 128 hold
  # more of the zoo's ensemble than rank 80 where the images are the very ones it is scored on?
  # ~8 min per run, ~4 min eval.
  if [ "${CAP:-0}" = 1 ]; then
    retrieve_anchor "$OUT/anchor_val_main.log" configs/demo.ini "$OUT/anchor_val_main" data/demo/val.h5 3600
    RUN_CONFIG=configs/demo.ini run_rows rkc "anchor on the validation images, rank 80|runs/demo/pool|--distill-pool $OUT/anchor_val_main" \
      "the same at rank 128, alpha 128|runs/demo/pool|--distill-pool $OUT/anchor_val_main --rank 128 --alpha 128"
    eval_val rkc_eval configs/demo.ini "validation classes, 600 episodes 5-way 1-shot (eval; a check of capacity):" \
      "rkc_1=$OUT/rkc_1" "rkc_2=$OUT/rkc_2"
    paired_across rkc_eval rkc_eval "anchor on the validation images: rank 128 - rank 80" rkc_2=rkc_1
    paired_across rk_eval rkc_eval "the validation images - the glyphs" rkc_1=main rkc_2=rk_1
  fi
  # QV=1: the claim of docs/science.md's "The zoo's features concatenated as targets" that on q and v
  # no adapter fits the concatenation's targets, "at full rank alike", was measured when rank 128
  # from the rank-80 mean left 48 components of q and v that never trained: the anchor alone (flat
  # CE, T 1e9, 40 glyphs per episode) on q and v only, rank 80 and rank 128 (now training), and the
  # distillation term on the training glyphs. ~4 min per run, ~3 min eval.
  if [ "${QV:-0}" = 1 ]; then
    QVF="--temperature 1e9 --targets q_proj,v_proj --distill-images 40"
    RUN_CONFIG=configs/demo.ini run_rows rkq "the anchor alone on q and v, rank 80|runs/demo/pool|$QVF" \
      "the same at rank 128, alpha 128|runs/demo/pool|$QVF --rank 128 --alpha 128"
    distill_term "20 100 500 1000" rkq_1 rkq_2
    eval_val rkq_eval configs/demo.ini "validation classes, 600 episodes 5-way 1-shot (eval):" \
      "rkq_1=$OUT/rkq_1" "rkq_2=$OUT/rkq_2"
    paired_across rkq_eval rkq_eval "the anchor alone on q and v: rank 128 - rank 80" rkq_2=rkq_1
  fi
fi
# Is it the anchor's images? A control that is not data-free: the anchor's 20,000 slots retrieved as
# launch/demo.sh retrieves the glyphs, but from the 28,800 real images of the meta-training split
# (data/demo/zoo.h5: the script itself, the zoo's classes among them); and, data-free, the surrogate
# pool itself as the anchor's images (800 surrogates). The main recipe (W10_RECIPE, seed 0), eval on
# the "way10c" part's 600 validation episodes and the features on the "zoo40c" part's numpy
# episodes (docs/science.md, "What limits the anchor"). Run "zoo40c" first. ~6 min retrieval, ~10 min
# per run, ~5 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = realanchor ]; then
  w10_retrieve anchor_script "$REPO/data/demo/zoo.h5" 28800
  w10_scored ra "the anchor's images - the glyphs (the main recipe, seed 0)" \
    "script|anchor: real images of the script (control)|--distill-pool runs/demo/anchor_script" \
    "surr|anchor: the surrogates|--distill-pool runs/demo/pool"
fi
# How much of the zoo's ensemble one meta-LoRA can hold at all (a check of capacity, not a method:
# it trains on the validation images): the anchor's 20,000 slots retrieved as launch/demo.sh
# retrieves the glyphs, but from the 3,600 validation images themselves, then the main recipe
# (W10_RECIPE, seed 0) with them, and the same under a flat CE (T 1e9: the anchor alone); eval on
# the "way10c" part's 600 validation episodes and the features on the "zoo40c" part's numpy
# episodes (docs/science.md, "What limits the anchor"). Run "zoo40c" first. ~2 min retrieval, ~8 min
# per run, ~4 min eval (bf16, 2 cores, AMD EPYC with avx512_bf16).
if [ "$WHAT" = capcheck ]; then
  w10_retrieve anchor_val "$REPO/data/demo/val.h5" 3600
  w10_scored cap "the anchor's images - the glyphs (the main recipe, seed 0)" \
    "capval|anchor: the validation images (capacity check)|--distill-pool runs/demo/anchor_val" \
    "capalone|the same, anchor alone (flat CE)|--distill-pool runs/demo/anchor_val --temperature 1e9"
fi
if [ "$WHAT" = mix ]; then
  # The main job's meta-LoRA as it was measured here (the rank-4 recipe on its pool; the main job
  # now starts from lora-avg: the "mainjob" part).
  [ -f runs/demo/pool/index.json ] || { echo "science: run the main job's invert stage first (runs/demo/pool)" >&2; exit 2; }
  lora_avg "$OUT/lora_avg128" 128
  run_rows mixm "main recipe (rank 4), the main job's pool|runs/demo/pool|"
  mix_eval "$OUT/mixm_1"
  real_pool
  run_rows mixr "paper T128, real images (control)|$OUT/pool_real|$P128"
  mix_eval "$OUT/mixr_1"
fi
# Surrogates drawn as line segments (invert --strokes K: Adam on the end points, widths and ink of K
# soft dark segments on white instead of on the pixels, a prior of line drawings that uses no image
# of the data; docs/science.md, "Surrogates drawn as strokes"): the main job's zoo inverted so with
# STROKES segments (default 12; ~6 min in bf16), 300-step runs against the main job's own pool
# under the paper's objective and the main recipe (the controls run once for every K), and the
# surrogate check and the pixel statistics (bench/pool_pixels.py) of the pools. STROKE_FLAGS adds
# invert flags to the drawings (TAG, required with it, names their pools), and then the same flags
# on pixels are the second control (e.g. TAG=_co2 STROKE_FLAGS="--co-teachers 2": ~17 min per
# pool). MIX=1 adds the weight-space mixes of the main recipe's meta-LoRA on the drawings with
# lora-avg (mix_eval above; ~5 min); MASK=1 the main job's mask-0.75 run on the pixels and on the
# drawings (~2 min each).
if [ "$WHAT" = strokes ]; then
  pixel_pool
  # A pool is reused by its name, so other flags need another name.
  [ -z "${STROKE_FLAGS:-}" ] || [ -n "${TAG:-}" ] || { echo "science: STROKE_FLAGS needs a TAG naming its pools" >&2; exit 2; }
  real_pool
  K=${STROKES:-12}
  N="$K${TAG:-}"
  # shellcheck disable=SC2086
  main_pool "strokes$N" --strokes "$K" ${STROKE_FLAGS:-}
  POOLS=("$PIX" "$OUT/pool_strokes$N")
  echo "validation accuracy (%) at 0 / 100 / 200 / 300 steps +- 95% CI at the last:"
  run_rows stc "paper T128 lr 3e-4, pixels (the painted main-job pool)|$PIX|$P128 --lr 3e-4" \
    "main recipe, pixels (the painted main-job pool)|$PIX|"
  run_rows "st$N" "paper T128 lr 3e-4, --strokes $K ${STROKE_FLAGS:-}|$OUT/pool_strokes$N|$P128 --lr 3e-4" \
    "main recipe, --strokes $K ${STROKE_FLAGS:-}|$OUT/pool_strokes$N|"
  if [ -n "${STROKE_FLAGS:-}" ]; then  # the control of the combination: the same flags on pixels
    # shellcheck disable=SC2086
    main_pool "pixels$TAG" $STROKE_FLAGS
    run_rows "stp$TAG" "paper T128 lr 3e-4, pixels $STROKE_FLAGS|$OUT/pool_pixels$TAG|$P128 --lr 3e-4" \
      "main recipe, pixels $STROKE_FLAGS|$OUT/pool_pixels$TAG|"
    POOLS+=("$OUT/pool_pixels$TAG")
  fi
  bash bench/surrogate_check.sh "${POOLS[@]}" "$OUT/pool_real"
  $PY bench/pool_pixels.py data/demo/zoo.h5 "${POOLS[@]}" "$OUT/pool_real"
  if [ "${MIX:-0}" = 1 ]; then
    lora_avg "$OUT/lora_avg128" 128
    mix_eval "$OUT/st${N}_2"
  fi
  if [ "${MASK:-0}" = 1 ]; then  # the main job's masked run (mask 0.75, random quarters) on both pools
    run_rows stcm "main recipe mask 0.75, pixels (the painted main-job pool)|$PIX|--mask-ratio 0.75"
    run_rows "stm$N" "main recipe mask 0.75, --strokes $K ${STROKE_FLAGS:-}|$OUT/pool_strokes$N|--mask-ratio 0.75"
  fi
fi
# The zoo of 100 drawn (docs/science.md, "The zoo of 100 drawn"): the main job's surrogates
# (--strokes 12 --co-teachers 2) at 100 iterations, so that the painted co-teacher pool of the
# "coteach" part (--init-lowres 2 --co-teachers 2 --iterations 100) is its control; ~45 min in bf16
# on 2 cores, then three 1,000-step runs. Before them, two rows that check this binary against the
# earlier rounds' figures of the zoo of 100 (lora-avg 61.31, main recipe on smooth starts 58.95), so
# that the painted rows of those rounds can stand as controls; last, the drawn pool from the zoo's
# average (the painted smooth starts fell there, 58.73, real images rose, 63.67).
if [ "$WHAT" = strokes100 ]; then
  zoo100_pools
  echo "validation accuracy (%) at 0 / 250 / 500 / 750 / 1000 steps +- 95% CI at the last:"
  run_rows s100c "lora-avg, zoo of 100 over 64 classes|$OUT/pool100_lr2|--init zoo-mean --steps 1 --lr 1e-30 --lr-min 0 --rank 128 --alpha 128" \
    "main recipe, --init-lowres 2, zoo of 100 (check)|$OUT/pool100_lr2|$L1K"
  zoo100_variant s100 strokes12_co2 "drawn, co-teachers 2" "--strokes 12 --co-teachers 2 --iterations 100"
  run_rows s100z "zoo-mean + paper T128 lr 3e-4, drawn, co-teachers 2|$OUT/pool100_strokes12_co2|--init zoo-mean $P1K --lr 3e-4"
fi
# Where the surrogates push the meta-LoRA (docs/science.md, "Where the surrogates push the
# meta-LoRA"): from the zoo of 100's average (its rank-4 cut, --init zoo-mean), the paper's
# objective at T 128 and lr 3e-4 on the smooth-start surrogates and on real images of the zoo's
# classes (from there real images rise to 63.67 and surrogates fall to 58.73), each with two seeds,
# for 100 and for 1,000 steps; bench/lora_delta.py then compares, in weight space, where each run
# moved the meta-LoRA from the start. Two seeds on the same images give the cosine's ceiling.
# ~15 min after the zoo of 100's pools.
if [ "$WHAT" = align ]; then
  zoo100_pools
  for steps in 100 1000; do
    echo "from the zoo's average, $steps steps: validation accuracy (%) at 0 / 25 / 50 / 75 / 100 % of the run +- 95% CI at the last:"
    align_runs "$steps"
    $PY bench/lora_delta.py "$START" "${RUNS[@]}"
    if [ "$steps" = 100 ]; then ZM100=$ZM RUNS100=("${RUNS[@]}"); fi
  done
  # DRAWN=1: the same 100-step runs on the zoo of 100 drawn with co-teachers (the "strokes100" part's
  # pool, made when missing: ~40 min), which meta-trains better than the smooth starts (from the
  # zoo's average 60.55 against 58.73 at 1,000 steps): does it also move the meta-LoRA more where
  # real images do?
  if [ "${DRAWN:-0}" = 1 ]; then
    pool100 _strokes12_co2 --strokes 12 --co-teachers 2 --iterations 100
    echo "from the zoo's average, 100 steps, drawn surrogates: validation accuracy (%) as above:"
    run_rows al100d "drawn, co-teachers 2, seed 0|$OUT/pool100_strokes12_co2|$ZM100" \
      "drawn, co-teachers 2, seed 1|$OUT/pool100_strokes12_co2|$ZM100 --seed 1"
    $PY bench/lora_delta.py "$START" "drawn0=$OUT/al100d_1" "drawn1=$OUT/al100d_2" "${RUNS100[@]}"
  fi
fi
