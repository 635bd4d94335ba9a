#!/usr/bin/env bash
# Submits the whole pipeline as a chain of Slurm jobs, each starting after the previous one
# succeeded (--dependency=afterok): data, VFM, BN prior, zoo, inversion, the meta-training anchor's
# glyphs, meta-training (dense and mask 0.75), evaluation, report, as launch/demo.sh runs them.
#   bash cluster/pipeline.sh [--preset demo|quick|paper | --config FILE] [--ntasks N] [--gpus]
#        [--cpus-per-gpu C] [--time HH:MM:SS] [--partition P] [--account A] [--workdir DIR] [--from STAGE]
# --preset NAME: configs/NAME.ini of this checkout (default demo); demo and quick run every stage
#   (the benchmark's data, VFM and BN prior first; the prior only where [invert] w-bn is not 0; the
#   anchor's glyphs, invert --retrieve from the VFM's pre-training set, where [metatrain] names a
#   distill-pool; the masked run with 40 anchor glyphs per episode where the config names more),
#   paper starts at the zoo (your CLIP and data).
# --config FILE: your own INI file anywhere (e.g. a copy of configs/paper.ini with your paths;
#   relative paths in it resolve against --workdir); the chain starts at the zoo, with a VFM stage
#   first when FILE has a [pretrain] section and a prior stage when FILE's directory holds
#   <name>_prior.ini. Meta-LoRAs go to FILE's [metatrain] out and <its dir>/meta_mask75, the report
#   to <that dir>/report. Convert HF pytorch_model.bin / torchvision .pth weights first:
#   data_tools/convert_weights.py.
# --gpus: one task per GPU (--gpus-per-task=1); ranks then use CUDA and NCCL.
# --cpus-per-gpu C: CPUs of each GPU task (default 8): meta-training prepares the next batches on
#   them (its prefetch and data threads); on one CPU an H200 ran mask 0.75 at 64 episodes/s
#   against 103 on 16 (docs/metatrain.md).
# --from STAGE: start the chain at that stage (earlier outputs exist): data, vfm, prior, zoo,
#   invert, anchor, meta, meta_mask75, eval or report.
# Prints the job ids; `squeue -u $USER` shows them, slurm-lr-<stage>-<id>.out their logs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PRESET=""; CONFIG=""; NTASKS=2; GPUS=0; GPU_CPUS=8; TIME=""; WORKDIR=$PWD; FROM=data; EXTRA=()
die() { echo "pipeline.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --preset|--config|--ntasks|--cpus-per-gpu|--time|--partition|--account|--workdir|--from)
      [ $# -ge 2 ] || die "$1 needs a value" ;;&
    --preset) PRESET=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --ntasks) NTASKS=$2; shift 2 ;;
    --gpus) GPUS=1; shift ;;
    --cpus-per-gpu) GPU_CPUS=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --partition) EXTRA+=(--partition "$2"); shift 2 ;;
    --account) EXTRA+=(--account "$2"); shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    -h|--help) sed -n "2,/^[^#]/{/^#/s/^# \{0,1\}//p}" "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
case "$FROM" in
  data|vfm|prior|zoo|invert|anchor|meta|meta_mask75|eval|report) ;;
  *) die "unknown --from stage '$FROM' (data, vfm, prior, zoo, invert, anchor, meta, meta_mask75, eval, report)" ;;
esac
source "$REPO/launch/config_rules.sh"  # ini_value, needs_bn_prior, masked_anchor_flags
if [ -n "$CONFIG" ]; then
  [ -z "$PRESET" ] || die "give --preset or --config, not both"
  [ -f "$CONFIG" ] || die "no such config file: $CONFIG"
  [ -r "$CONFIG" ] || die "cannot read config file: $CONFIG"
  CFG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"  # absolute: the jobs run in --workdir
  NAME=$(basename "$CFG" .ini)
  PRIOR_CFG="$(dirname "$CFG")/${NAME}_prior.ini"
  BENCHMARK=0
  HAS_PRETRAIN=$(grep -c '^[[:space:]]*\[[[:space:]]*pretrain[[:space:]]*\]' "$CFG" || true)
else
  NAME=${PRESET:-demo}
  CFG=$REPO/configs/$NAME.ini
  if [ ! -f "$CFG" ]; then
    presets=""; for f in "$REPO"/configs/*.ini; do case "$f" in *_prior.ini) ;; *) presets+=" $(basename "$f" .ini)" ;; esac; done
    die "no preset '$NAME' ($CFG missing; presets:$presets); for your own file use --config FILE"
  fi
  PRIOR_CFG=$REPO/configs/${NAME}_prior.ini
  if [ "$NAME" = paper ]; then BENCHMARK=0; HAS_PRETRAIN=0; else BENCHMARK=1; HAS_PRETRAIN=1; fi
fi
META=$(ini_value "$CFG" metatrain out)
META=${META:-runs/$NAME/meta}
RUNS=$(dirname "$META")
mkdir -p "$WORKDIR"
COMMON=(--parsable --chdir "$WORKDIR" --export "ALL,LORAREC_REPO=$REPO" --ntasks "$NTASKS" "${EXTRA[@]}")
[ -n "$TIME" ] && COMMON+=(--time "$TIME")
[ $GPUS = 1 ] && COMMON+=(--gpus-per-task 1 --cpus-per-task "$GPU_CPUS")
prev=""; started=0
submit() {  # submit NAME STAGE CONFIG [args]
  local name=$1; shift
  [ "$name" = "$FROM" ] && started=1
  [ $started = 1 ] || return 0
  local dep=(); [ -n "$prev" ] && dep=(--dependency "afterok:$prev")
  prev=$(sbatch "${COMMON[@]}" "${dep[@]}" --job-name "lr-$name" "$REPO/cluster/stage.sbatch" "$@")
  echo "$name: job $prev"
}
skip() { [ "$1" = "$FROM" ] && started=1; return 0; }  # a stage not run: --from it starts at the next
if [ $BENCHMARK = 1 ]; then submit data data "$NAME"; else skip data; fi
if [ "$HAS_PRETRAIN" -ge 1 ]; then submit vfm pretrain "$CFG"; else skip vfm; fi
# The benchmark's BN prior only where its inversion uses it (as launch/demo.sh).
if { [ $BENCHMARK = 1 ] && needs_bn_prior "$CFG"; } || { [ -n "$CONFIG" ] && [ -f "$PRIOR_CFG" ]; }; then
  submit prior prior "$PRIOR_CFG"
else skip prior; fi
submit zoo zoo "$CFG"
submit invert invert "$CFG"
# The benchmark's meta-training anchor (a config whose [metatrain] names distill-pool): public glyphs
# that each zoo LoRA assigns to its classes, retrieved from the VFM's pre-training set as
# launch/demo.sh retrieves them. With --config the anchor's pool is yours to make (invert --retrieve).
ANCHOR=$(ini_value "$CFG" metatrain distill-pool)
if [ $BENCHMARK = 1 ] && [ -n "$ANCHOR" ]; then
  submit anchor invert "$CFG" --co-teachers 0 --retrieve "data/$NAME/base.h5" --out "$ANCHOR"
else skip anchor; fi
read -ra MASK_ANCHOR <<<"$(masked_anchor_flags "$CFG")"  # as launch/demo.sh
submit meta metatrain "$CFG" --out "$META" --mask-ratio 0
submit meta_mask75 metatrain "$CFG" --out "$RUNS/meta_mask75" --mask-ratio 0.75 "${MASK_ANCHOR[@]}"
submit eval eval "$CFG"
submit report report "$NAME" --runs "$RUNS" --out "$RUNS/report"
