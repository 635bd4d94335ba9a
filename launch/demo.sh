#!/usr/bin/env bash
# The main job on the embedded benchmark: every stage that exists, each reused when finished.
#   bash launch/demo.sh [--preset demo|quick] [--np N] [--workdir DIR] [--config FILE] [--until STAGE]
# Outputs go to data/<preset> and runs/<preset> under the work directory (default: the repo).
# --config FILE replaces configs/<preset>.ini (e.g. a copy with other settings; its paths are
# relative to the work directory, as the preset's are).
# Stages: (1) benchmark data from Debian's fonts and Fashion-MNIST, (2) pre-train the small VFM
# and (3) the BN-prior CNN on the base classes (skipped where [invert] w-bn is 0), (4) pre-tune the
# LoRA zoo on zoo classes, (5) invert every LoRA into the surrogate pool, (6) meta-train the
# meta-LoRA, dense and with mask ratio 0.75, (7) evaluate nn / lora-avg / lora-ft / meta in- and
# cross-domain, (8) write the report (table beside the paper's, validation curves, surrogate grid).
# Each runs under mpirun -np N (default 2: one rank per core). --until STAGE (data, vfm, prior, zoo,
# invert, metatrain, eval) stops after that stage.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PRESET=demo
NP=2
WORKDIR=$REPO
CONFIG=
UNTIL=
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET=$2; shift 2 ;;
    --np) NP=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --config) CONFIG=$(realpath "$2"); shift 2 ;;
    --until) UNTIL=$2; shift 2 ;;
    -h|--help) sed -n "2,13p" "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
CONFIG=${CONFIG:-$REPO/configs/$PRESET.ini}
[ -f "$CONFIG" ] || { echo "demo.sh: no config $CONFIG" >&2; exit 2; }
source "$REPO/launch/env.sh"
source "$REPO/launch/config_rules.sh"  # ini_value, needs_bn_prior, masked_anchor_flags
B=$REPO/build/lorarecycle
mkdir -p "$WORKDIR" && cd "$WORKDIR"
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe -np "$NP" "${MPIRUN_ENV_FLAGS[@]}")
stage() { echo; echo "=== $(date +%T) $*"; }
done_with() { [ "$UNTIL" = "$1" ] && { echo "demo: stopping after stage '$1' (--until)"; exit 0; }; return 0; }
t0=$(date +%s)

stage "1/8 benchmark data (data/$PRESET)"
/usr/bin/python3 "$REPO/data_tools/build_benchmark.py" --out "data/$PRESET" --preset "$PRESET"
done_with data

stage "2/8 pre-train the VFM"
if [ -f "runs/$PRESET/vfm/pretrain_report.json" ]; then echo "reusing runs/$PRESET/vfm"; else
  "${MPI[@]}" "$B" pretrain --config "$CONFIG"; fi
done_with vfm

stage "3/8 pre-train the BN prior"
# Only where the inversion uses it: a config whose [invert] sets w-bn = 0 has no BN-prior term, and
# the stage is skipped (bench/science.sh trains the prior when a comparison needs it).
if ! needs_bn_prior "$CONFIG"; then
  echo "skipped: [invert] w-bn = $(ini_value "$CONFIG" invert w-bn) in $CONFIG (no BN-prior term)"
elif [ -f "runs/$PRESET/prior/pretrain_report.json" ]; then echo "reusing runs/$PRESET/prior"; else
  "${MPI[@]}" "$B" pretrain --config "$REPO/configs/${PRESET}_prior.ini"; fi
done_with prior

stage "4/8 LoRA zoo"
"${MPI[@]}" "$B" zoo --config "$CONFIG"
done_with zoo

stage "5/8 invert the zoo into the surrogate pool"
"${MPI[@]}" "$B" invert --config "$CONFIG"
# The anchor's images (a config whose [metatrain] names distill-pool): public glyphs that each zoo
# LoRA assigns to its classes (invert --retrieve from the VFM's pre-training data; no inversion), as
# many per class as [invert] retrieve-per-class says (the demo preset: 100 among all 24,048).
ANCHOR=$(ini_value "$CONFIG" metatrain distill-pool)
if [ -n "$ANCHOR" ]; then
  if [ -f "$ANCHOR/index.json" ]; then echo "reusing $ANCHOR"; else
    "${MPI[@]}" "$B" invert --config "$CONFIG" --co-teachers 0 --retrieve "data/$PRESET/base.h5" \
      --out "$ANCHOR"; fi
fi
done_with invert

# Exit status 75 = stopped with a checkpoint (e.g. a signal): re-running this script resumes.
stage "6/8 meta-train the meta-LoRA: dense (runs/$PRESET/meta) and mask ratio 0.75 (runs/$PRESET/meta_mask75)"
read -ra MASK_ANCHOR <<<"$(masked_anchor_flags "$CONFIG")"  # the masked run: an episode's worth of anchor glyphs at most
for variant in "meta 0" "meta_mask75 0.75"; do
  set -- $variant
  extra=()
  [ "$2" != 0 ] && extra=("${MASK_ANCHOR[@]}")
  if [ -f "runs/$PRESET/$1/metatrain.json" ]; then echo "reusing runs/$PRESET/$1"; else
    "${MPI[@]}" "$B" metatrain --config "$CONFIG" --out "runs/$PRESET/$1" --mask-ratio "$2" "${extra[@]}" --resume; fi
done
done_with metatrain

stage "7/8 evaluate: in-domain (test classes) and cross-domain (Hangul, Fashion-MNIST)"
if [ -f "runs/$PRESET/eval/results.csv" ]; then echo "reusing runs/$PRESET/eval"; else
  "${MPI[@]}" "$B" eval --config "$CONFIG"; fi
done_with eval

stage "8/8 report (runs/$PRESET/report)"
/usr/bin/python3 "$REPO/data_tools/report.py" --runs "runs/$PRESET" --out "runs/$PRESET/report"

stage "summary"
/usr/bin/python3 - "$PRESET" <<'PY'
import json, sys
p = sys.argv[1]
m = json.load(open(f"data/{p}/manifest.json"))
print("data:", {k: (v["classes"], v["images"]) for k, v in m["splits"].items()}, "(classes, images)")
v = json.load(open(f"runs/{p}/vfm/pretrain_report.json"))
e, h = v.get("eval_proto_5w1s", {}), v.get("heldout_proto_5w1s", {})
print(f"VFM: test 5-way 1-shot prototypes {e.get('mean', 0):.2f} +- {e.get('ci95', 0):.2f} (chance 20); "
      f"held-out base {h.get('mean', 0):.2f} +- {h.get('ci95', 0):.2f}; held-out base head accuracy {v['heldout_head_acc']:.2f}")
try:
    r = json.load(open(f"runs/{p}/prior/pretrain_report.json"))
    print(f"BN prior: held-out base accuracy {r['heldout_head_acc']:.2f}")
except FileNotFoundError:
    print("BN prior: not trained (the inversion has no BN-prior term)")
z = json.load(open(f"runs/{p}/zoo/manifest.json"))
accs = [e["heldout_accuracy"] for e in z["loras"]]
print(f"zoo: {len(accs)} LoRAs, held-out accuracy mean {sum(accs)/len(accs):.2f}, min {min(accs):.2f}, max {max(accs):.2f}")
s = json.load(open(f"runs/{p}/pool/summary.json"))
ta = [e["teacher_accuracy"] for e in s["loras"]]
secs = sum(e["seconds"] for e in s["loras"])
print(f"pool: {len(ta)} LoRAs inverted; teacher accuracy on own surrogates mean {sum(ta)/len(ta):.2f}, min {min(ta):.2f}; "
      f"inversion {secs:.0f} s over all LoRAs (rank-seconds, summed when each file was made)")
for name in ("meta", "meta_mask75"):
    m = json.load(open(f"runs/{p}/{name}/metatrain.json"))
    a, b = m["val_initial"], m["val_final"]
    di = m.get("fingerprint", {}).get("distill_images")  # 0: as many as an episode holds
    print(f"{name}: mask ratio {m['mask_ratio']}, {m['steps']} steps x {m['episodes_per_step']} episodes"
          + ("" if di is None else f" (anchor: {di or 'as many glyphs as an episode holds'} per episode)") + ", "
          f"{m['timing']['episodes_per_s']:.1f} episodes/s; val 5-way 1-shot {a['val_mean']:.2f} +- {a['val_ci95']:.2f} "
          f"(step 0) -> {b['val_mean']:.2f} +- {b['val_ci95']:.2f}"
          + (f"; kept step {m['kept_step']} ({m['val_kept']['val_mean']:.2f})" if m.get("keep") == "best" else ""))
PY
echo "demo: done in $(( $(date +%s) - t0 )) s; outputs under runs/$PRESET"
