#!/usr/bin/env bash
# Submits the whole pipeline as a chain of Slurm jobs, each starting after the previous one
# succeeded (--dependency=afterok): data, VFM, BN prior, zoo, inversion, meta-training (dense and
# mask 0.75), evaluation, report.
#   bash cluster/pipeline.sh [--preset demo|quick|paper] [--ntasks N] [--gpus] [--time HH:MM:SS]
#                            [--partition P] [--account A] [--workdir DIR] [--from STAGE]
# --preset paper uses configs/paper.ini (your ViT-B/16 and data: edit its paths) and skips the
#   benchmark's data/VFM/prior stages unless their configs exist.
# --gpus: one task per GPU (--gpus-per-task=1); ranks then use CUDA and NCCL.
# --from STAGE: start the chain at that stage (earlier outputs exist).
# Prints the job ids; `squeue -u $USER` shows them, slurm-lorarecycle-<id>.out their logs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PRESET=demo; NTASKS=2; GPUS=0; TIME=""; WORKDIR=$PWD; FROM=data; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET=$2; shift 2 ;;
    --ntasks) NTASKS=$2; shift 2 ;;
    --gpus) GPUS=1; shift ;;
    --time) TIME=$2; shift 2 ;;
    --partition) EXTRA+=(--partition "$2"); shift 2 ;;
    --account) EXTRA+=(--account "$2"); shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    -h|--help) sed -n "2,13p" "$0"; exit 0 ;;
    *) echo "pipeline.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
CFG=$REPO/configs/$PRESET.ini
[ -f "$CFG" ] || { echo "pipeline.sh: no $CFG" >&2; exit 2; }
mkdir -p "$WORKDIR"
COMMON=(--parsable --chdir "$WORKDIR" --export "ALL,LORAREC_REPO=$REPO" --ntasks "$NTASKS" "${EXTRA[@]}")
[ -n "$TIME" ] && COMMON+=(--time "$TIME")
[ $GPUS = 1 ] && COMMON+=(--gpus-per-task 1)
prev=""; started=0
submit() {  # submit NAME STAGE CONFIG [args]
  local name=$1; shift
  [ "$name" = "$FROM" ] && started=1
  [ $started = 1 ] || return 0
  local dep=(); [ -n "$prev" ] && dep=(--dependency "afterok:$prev")
  prev=$(sbatch "${COMMON[@]}" "${dep[@]}" --job-name "lr-$name" "$REPO/cluster/stage.sbatch" "$@")
  echo "$name: job $prev"
}
if [ "$PRESET" != paper ]; then
  submit data data "$PRESET"
  submit vfm pretrain "$CFG"
  submit prior prior "$REPO/configs/${PRESET}_prior.ini"
else
  started=1
fi
submit zoo zoo "$CFG"
submit invert invert "$CFG"
submit meta metatrain "$CFG" --out "runs/$PRESET/meta" --mask-ratio 0
submit meta_mask75 metatrain "$CFG" --out "runs/$PRESET/meta_mask75" --mask-ratio 0.75
submit eval eval "$CFG"
submit report report "$PRESET" --runs "runs/$PRESET" --out "runs/$PRESET/report"
