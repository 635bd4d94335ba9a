#!/usr/bin/env bash
# glibc malloc as the CLI tunes it (blocks up to 1 GiB from the heap, no trimming; src/cli/main.cpp)
# against glibc's defaults (LORAREC_MALLOC=system), side by side (A/B/A/B), one rank, one thread:
#   (1) meta-training: CPU seconds per step (user and system) = (24-step run - 4-step run) / 20,
#       the report's step_seconds, peak RSS; 5-way 1-shot 15-query, --no-prefetch;
#   (2) inversion of one zoo LoRA (30 iterations): wall, user, system seconds;
#   (3) eval of nn and the meta-LoRA, 100 episodes per shot on the test classes (REPS_EVAL, default 1).
# Results must be bit-identical either way (checked). Needs the main job's outputs (launch/demo.sh;
# WORKDIR= its --workdir, default the repo). JEMALLOC=1 adds a third variant (A/B/C): jemalloc
# preloaded (Debian's libjemalloc2, installed here if missing; its decay off, so that it keeps freed
# pages as the tuned glibc does).
#   [WORKDIR=DIR] [JEMALLOC=1] bash bench/malloc_ab.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
REPS=${1:-2}; REPS_EVAL=${REPS_EVAL:-1}
REPO=$PWD; CFG=$REPO/configs/demo.ini
B=$REPO/build/lorarecycle
cd "${WORKDIR:-.}"
R=runs/demo
W=$(mktemp -d /tmp/malloc_ab_XXXXXX); trap 'rm -rf "$W"' EXIT
# The meta-training recipe this benchmark was measured with (bench/rank4_ini.sh).
source "$REPO/bench/rank4_ini.sh"
(cd "$REPO" && rank4_ini "$W/demo_rank4.ini")
CFG=$W/demo_rank4.ini
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
/usr/bin/python3 "$REPO/bench/sub_zoo.py" "$R/zoo" "$W/zoo1" 1
VARIANTS="A B"
JE=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ "${JEMALLOC:-0}" = 1 ]; then
  [ -f "$JE" ] || apt-get install -y --no-install-recommends libjemalloc2 >/dev/null
  VARIANTS="A B C"
fi
envof() {  # envof VARIANT: ENVV = the environment of the variant's command (env's arguments)
  case $1 in
    A) ENVV=(LORAREC_MALLOC=system) ;;
    B) ENVV=(LORAREC_MALLOC=tuned) ;;
    C) ENVV=("LD_PRELOAD=$JE" "MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1") ;;
  esac
}
name() { case $1 in A) echo "glibc defaults" ;; B) echo "tuned (default)" ;; C) echo "jemalloc" ;; esac; }
meta() {  # meta VARIANT STEPS -> "user sys maxrss_kb"
  rm -rf "$W/m_$1" "$W/m_$1.work"
  envof "$1"
  env "${ENVV[@]}" /usr/bin/time -f "%U %S %M" "$B" metatrain --config "$CFG" --pool "$R/pool" --model "$R/vfm" \
    --query 15 --out "$W/m_$1" --steps "$2" --episodes-per-step 1 --no-prefetch \
    --log-level warn --hash-every 0 2>&1 >/dev/null | tail -1
}
echo; echo "(1) meta-training step, CPU seconds (24-step run minus 4-step run) / 20"
printf '%-16s %4s %9s %9s %12s %12s\n' variant rep user_s sys_s step_seconds peak_rss_MB
for rep in $(seq 1 "$REPS"); do for v in $VARIANTS; do
  read -r u4 s4 _ <<<"$(meta $v 4)"; read -r u24 s24 rss <<<"$(meta $v 24)"
  step=$(/usr/bin/python3 -c "import json;print(json.load(open('$W/m_$v/metatrain.json'))['timing']['step_seconds'])")
  /usr/bin/python3 -c "print('%-16s %4d %9.3f %9.3f %12.3f %12.0f' % ('$(name $v)', $rep, ($u24-$u4)/20, ($s24-$s4)/20, $step, $rss/1024))"
done; done
for v in ${VARIANTS#A }; do cmp "$W/m_A/adapter_model.safetensors" "$W/m_$v/adapter_model.safetensors"; done
echo "meta-LoRAs: identical"
echo; echo "(2) inversion of one LoRA"
printf '%-16s %4s %8s %8s %8s\n' variant rep wall_s user_s sys_s
for rep in $(seq 1 "$REPS"); do for v in $VARIANTS; do
  rm -rf "$W/p_$v"
  read -r e u s <<<"$(envof $v; env "${ENVV[@]}" /usr/bin/time -f "%e %U %S" "$B" invert --config "$CFG" --zoo "$W/zoo1" \
    --out "$W/p_$v" --iterations 30 --strokes 0 --co-teachers 0 --log-level warn 2>&1 | tail -1)"
  printf '%-16s %4d %8s %8s %8s\n' "$(name $v)" "$rep" "$e" "$u" "$s"
done; done
/usr/bin/python3 - "$W/p_A/lora_000.h5" "$W"/p_[BC]/lora_000.h5 <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1]) as a:
    for other in sys.argv[2:]:
        with h5py.File(other) as b:
            assert all(np.array_equal(a[k][...], b[k][...]) for k in a), "pool files differ"
print("pool files: equal arrays")
PY
echo; echo "(3) eval nn + meta, 100 episodes per shot, test classes"
printf '%-16s %4s %8s %8s %8s\n' variant rep wall_s user_s sys_s
for rep in $(seq 1 "$REPS_EVAL"); do for v in $VARIANTS; do
  rm -rf "$W/e_$v"
  read -r e u s <<<"$(envof $v; env "${ENVV[@]}" /usr/bin/time -f "%e %U %S" "$B" eval --config "$CFG" --model "$R/vfm" \
    --meta "meta=$R/meta" --methods nn,meta --data test=data/demo/test.h5 \
    --episodes 100 --out "$W/e_$v" --log-level warn 2>&1 | tail -1)"
  printf '%-16s %4d %8s %8s %8s\n' "$(name $v)" "$rep" "$e" "$u" "$s"
done; done
for v in ${VARIANTS#A }; do diff <(cut -d, -f1-8 "$W/e_A/results.csv") <(cut -d, -f1-8 "$W/e_$v/results.csv"); done
echo "eval rows: equal"
