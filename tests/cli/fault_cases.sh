# Fault cases shared by faults.sh (mpirun) and slurm_pipeline.sh (srun): sourced after common.sh,
# in a directory holding the quick pipeline's outputs (runs/quick/...: the uninterrupted reference).
# Needs: B (the binary), CFG (configs/quick.ini), LAUNCH (the launcher command for 2 ranks, an
# array), ERR and KILLED (regexes of the launcher's line naming the failed rank 1).
no_temporaries() { [ -z "$(find "$1" -name '.*.tmp.*')" ] || fail "temporary files left in $1: $(find "$1" -name '.*.tmp.*')"; }
# A peer killed by the launcher while it writes (the job ends because rank 1 failed) can leave its
# in-flight temporary: nothing trusts it, and the re-run must remove it, saying so. partials DIR:
# the temporaries at the top of DIR; temporaries_removed DIR BEFORE RERUN_LOG: none is left, and
# every one of BEFORE is named in the re-run's log. Such a kill is a race, so plant_partial DIR NAME
# also leaves one as that kill would, so that the re-run's removal and its message are checked on
# every run, not only when the race is lost.
plant_partial() { mkdir -p "$1/.$2.tmp.99999" && echo half >"$1/.$2.tmp.99999/part"; }
partials() { find "$1" -maxdepth 1 -name '.*.tmp.*' -printf '%f\n' | sort; }
temporaries_removed() {
  no_temporaries "$1"
  local t
  for t in $2; do grep -qF "removed the partial output of an interrupted run: $1/$t" "$3" ||
    { cat "$3"; fail "$1/$t: not named as removed by the re-run"; }; done
  echo "$1: the re-run removed and named $(echo $2 | wc -w) temporaries (one planted; others left by the peer killed mid-write)"
}

# ---- zoo: 4 LoRAs, rank 1 trains 1 and 3; the fault comes after its first (lora 1) is saved.
zoo_case() {  # zoo_case ACTION NEEDLE
  local out=zoo_$1
  expect_crash "$2" -- env LORAREC_FAULT="1:zoo:$1" "${LAUNCH[@]}" $B zoo --config "$CFG" --out $out
  [ -d $out/lora_001 ] || fail "zoo $1: rank 1's finished LoRA is missing"
  compare_adapters runs/quick/zoo/lora_001 $out/lora_001 0
  plant_partial $out lora_002
  local tmps; tmps=$(partials $out)
  local before; before=$(tree_state $out | grep -v '/\.[^/]*\.tmp\.' || true)
  "${LAUNCH[@]}" $B zoo --config "$CFG" --out $out >rerun.txt 2>&1 || { cat rerun.txt; fail "zoo re-run"; }
  temporaries_removed $out "$tmps" rerun.txt
  grep -qE "all ranks: [0-9]+ to train, [1-9] finished earlier" rerun.txt || { cat rerun.txt; fail "zoo re-run did not skip the finished LoRAs"; }
  local after; after=$(tree_state $out)
  while read -r f t; do grep -qxF "$f $t" <<<"$after" || fail "zoo $1: finished file $f was rewritten"; done <<<"$before"
  for k in 0 1 2 3; do compare_adapters runs/quick/zoo/lora_00$k $out/lora_00$k 0 >/dev/null; done
  echo "zoo $1: re-run finished, $(grep -oE "[0-9]+ to train, [0-9]+ finished earlier" rerun.txt), all 4 LoRAs equal the uninterrupted run"
}

# ---- invert: rank 1 inverts LoRAs 1 and 3; the fault comes after its first pool file.
invert_case() {
  local out=pool_$1
  expect_crash "$2" -- env LORAREC_FAULT="1:invert:$1" "${LAUNCH[@]}" $B invert --config "$CFG" --out $out
  [ -f $out/lora_001.h5 ] || fail "invert $1: rank 1's finished pool file is missing"
  plant_partial $out lora_002.h5
  local tmps; tmps=$(partials $out)
  local before; before=$(tree_state $out | grep 'lora_.*\.h5' | grep -v '/\.[^/]*\.tmp\.' || true)
  "${LAUNCH[@]}" $B invert --config "$CFG" --out $out >rerun.txt 2>&1 || { cat rerun.txt; fail "invert re-run"; }
  temporaries_removed $out "$tmps" rerun.txt
  local after; after=$(tree_state $out)
  while read -r f t; do grep -qxF "$f $t" <<<"$after" || fail "invert $1: finished file $f was rewritten"; done <<<"$before"
  "$LORAREC_PYTHON" - runs/quick/pool $out <<'PY'
import sys, h5py, numpy as np
ref, got = sys.argv[1:]
for k in range(4):
    with h5py.File(f"{ref}/lora_{k:03d}.h5") as a, h5py.File(f"{got}/lora_{k:03d}.h5") as b:
        assert b.attrs["complete"] == 1
        for d in ("images", "labels", "teacher_logits", "patch_scores"):
            assert np.array_equal(a[d][...], b[d][...]), (k, d)
print(f"{got}: 4 pool files equal the uninterrupted run's")
PY
  echo "invert $1: re-run finished; $(echo "$before" | wc -l) file(s) finished before the fault kept"
}

# ---- metatrain: 20 steps, checkpoint every 10; the fault comes at step 15 (1-based pass 15).
meta_case() {
  local out=meta_$1
  expect_crash "$2" -- env LORAREC_FAULT="1:metatrain@15:$1" "${LAUNCH[@]}" $B metatrain --config "$CFG" --out $out
  [ -f $out.work/checkpoint.safetensors ] || fail "metatrain $1: no checkpoint after the fault"
  [ ! -e $out/adapter_model.safetensors ] || fail "metatrain $1: a final adapter was written"
  "${LAUNCH[@]}" $B metatrain --config "$CFG" --out $out --resume >rerun.txt 2>&1 || { cat rerun.txt; fail "metatrain --resume"; }
  grep -q "at step 10" rerun.txt || { cat rerun.txt; fail "metatrain $1: did not resume from the step-10 checkpoint"; }
  compare_adapters runs/quick/meta $out 0
  echo "metatrain $1: resumed at step 10, final weights equal the uninterrupted run's"
}

# ---- eval: per dataset (nn, lora-avg, 2 meta) x 2 shots = 8 rows, then lora-ft, 10 episodes per
# shot (5 on each rank). The fault comes at rank 1's pass N: 3 = the third row; 11 = its third
# lora-ft episode of the first dataset, 1-shot.
eval_case() {  # eval_case ACTION NEEDLE PASS
  local out=eval_${1}_$3
  expect_crash "$2" -- env LORAREC_FAULT="1:eval@$3:$1" "${LAUNCH[@]}" $B eval --config "$CFG" --out $out
  local done_rows; done_rows=$(ls $out/partial | grep -c '__.*\.json$' || true)
  [ "$done_rows" -ge 1 ] || fail "eval $1: no finished row recorded"
  [ ! -e $out/results.csv ] || fail "eval $1: results written despite the fault"
  local before; before=$(tree_state $out/partial | grep '\.json')
  "${LAUNCH[@]}" $B eval --config "$CFG" --out $out >rerun.txt 2>&1 || { cat rerun.txt; fail "eval re-run"; }
  grep -qE "[0-9]+ result rows reused" rerun.txt || { cat rerun.txt; fail "eval $1: no rows reused"; }
  local after; after=$(tree_state $out/partial)
  while read -r f t; do grep -qxF "$f $t" <<<"$after" || fail "eval $1: finished row $f was recomputed"; done <<<"$before"
  "$LORAREC_PYTHON" - runs/quick/eval/results.csv $out/results.csv <<'PY'
import csv, sys
key = lambda r: (r["dataset"], r["method"], r["shot"])
a = {key(r): r for r in csv.DictReader(open(sys.argv[1]))}
b = {key(r): r for r in csv.DictReader(open(sys.argv[2]))}
assert a.keys() == b.keys(), (a.keys() ^ b.keys())
for k in a:
    for c in ("episodes", "mean", "ci95"):
        assert a[k][c] == b[k][c], (k, c, a[k][c], b[k][c])
print(f"{sys.argv[2]}: {len(b)} rows, accuracies equal the uninterrupted run's")
PY
  if [ "$3" = 11 ]; then
    grep -qE "lora-ft 1-shot: [1-9] of 10 episodes finished by an earlier run" rerun.txt || { cat rerun.txt; fail "eval $1: lora-ft episodes not reused"; }
  fi
  echo "eval $1 at pass $3: re-run finished, $(grep -oE '[0-9]+ result rows reused' rerun.txt), $done_rows row file(s) kept; $(grep -oE '[0-9]+ of [0-9]+ episodes finished by an earlier run' rerun.txt || echo 'no lora-ft episode in flight')"
}

# all_fault_cases: every stage, rank 1 throwing and killed (eval also killed inside lora-ft).
all_fault_cases() {
  zoo_case throw "$ERR"
  zoo_case kill "$KILLED"
  invert_case throw "$ERR"
  invert_case kill "$KILLED"
  meta_case throw "$ERR"
  meta_case kill "$KILLED"
  eval_case throw "$ERR" 3
  eval_case kill "$KILLED" 3
  eval_case kill "$KILLED" 11
}
