#!/usr/bin/env bash
# Inversion performance on this machine, measured side by side (A/B/A/B, medians):
#   (1) throughput (image x iterations per second) at 1 rank vs mpirun -np 2 on the same LoRAs;
#   (2) token pruning: the official full last layer vs our CLS-only last layer (dense), pruning a
#       middle layer at 0.75, pruning the last layer at 0.75 (pruning from 25% of the iterations);
#   (3) the HDF5 writing share of the inversion time.
# Needs a VFM, a zoo and a prior (default: those of launch/demo.sh).
#   bash bench/invert_bench.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
REPS=${1:-2}
MODEL=${MODEL:-runs/demo/vfm}; ZOO=${ZOO:-runs/demo/zoo}; PRIOR=${PRIOR-runs/demo/prior}  # PRIOR= : no BN prior
B=$PWD/build/lorarecycle
W=$(mktemp -d /tmp/invert_bench_XXXXXX); trap 'rm -rf "$W"' EXIT
# A 4-LoRA sub-zoo so runs are short.
/usr/bin/python3 bench/sub_zoo.py "$ZOO" "$W/zoo" 4
LAYERS=$(/usr/bin/python3 -c "import json;c=json.load(open('$MODEL/config.json'));print(c.get('vision_config',c)['num_hidden_layers'])")
MID=$(( LAYERS / 2 - 1 )); LAST=$(( LAYERS - 1 ))
PER=8; IT=${IT:-40}
MPI=(mpirun "${MPIRUN_ROOT_FLAGS[@]}" --oversubscribe "${MPIRUN_ENV_FLAGS[@]}")
# run NAME NP ARGS... -> prints "seconds hdf5_seconds image_iterations"
run() {
  local name=$1 np=$2; shift 2
  rm -rf "$W/pool_$name"
  local prior=(); [ -n "$PRIOR" ] && prior=(--prior "$PRIOR")
  "${MPI[@]}" -np "$np" "$B" invert --model "$MODEL" --zoo "$W/zoo" "${prior[@]}" --out "$W/pool_$name" \
    --per-class $PER --iterations $IT --log-level warn "$@" >/dev/null
  /usr/bin/python3 - "$W/pool_$name" $PER $IT <<'PY'
import json, sys
d, per, it = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = json.load(open(d + "/summary.json")); i = json.load(open(d + "/index.json"))
print(max(s["rank_finish_seconds"]), sum(s["rank_hdf5_seconds"]) / len(s["rank_hdf5_seconds"]), i["images"] * it)
PY
}
declare -A T H
for rep in $(seq 1 "$REPS"); do
  for v in np1 np2 full cls mid last; do
    case $v in
      np1) r=$(run $v 1) ;;
      np2) r=$(run $v 2) ;;
      full) r=$(run $v 1 --full-last-layer) ;;
      cls) r=$(run $v 1) ;;
      mid) r=$(run $v 1 --prune $MID:0.75) ;;
      last) r=$(run $v 1 --prune $LAST:0.75 --full-last-layer) ;;
    esac
    T[$v]="${T[$v]:-} $(echo $r | cut -d' ' -f1)"; H[$v]="${H[$v]:-} $(echo $r | cut -d' ' -f2)"; N=$(echo $r | cut -d' ' -f3)
  done
done
med() { printf '%s\n' $@ | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "work: 4 LoRAs x 5 classes x $PER images x $IT iterations = $N image-iterations; VFM $MODEL ($LAYERS layers); BN prior: ${PRIOR:-none}; $REPS reps, medians"
printf '\n| variant | seconds | image-it/s | vs reference |\n|---|---|---|---|\n'
t1=$(med ${T[np1]}); t2=$(med ${T[np2]})
printf '| 1 rank | %.1f | %.0f | 1.00 |\n' $t1 $(echo "$N/$t1" | bc -l)
printf '| mpirun -np 2 | %.1f | %.0f | %.2fx |\n' $t2 $(echo "$N/$t2" | bc -l) $(echo "$t1/$t2" | bc -l)
tf=$(med ${T[full]})
for v in full cls mid last; do
  t=$(med ${T[$v]})
  case $v in full) l="dense, full last layer (official)";; cls) l="dense, CLS-only last layer (ours)";;
    mid) l="prune layer $MID at 0.75 (+ CLS-only last)";; last) l="prune last layer $LAST at 0.75 (full last layer)";; esac
  printf '| %s | %.1f | %.0f | %+.0f%% |\n' "$l" $t $(echo "$N/$t" | bc -l) $(echo "($tf/$t-1)*100" | bc -l)
done
h=$(med ${H[np1]}); printf '\nHDF5 writing: %.3f s of %.1f s = %.2f%% of the inversion time (1 rank)\n' $h $t1 $(echo "100*$h/$t1" | bc -l)
