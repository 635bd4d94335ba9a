#!/usr/bin/env bash
# Faults under mpirun -np 2 (tests/cli/slurm_pipeline.sh does the same under srun). In each of
# zoo, invert, metatrain and eval, rank 1 fails at a fault point (LORAREC_FAULT, see
# include/lorarecycle/util/env.h) with an error, or SIGKILLs itself there. Each time: the job ends
# non-zero within 60 s with a line naming rank 1; what was finished before the fault is intact;
# the re-run (metatrain: --resume) completes the work without redoing the finished parts, and the
# result equals the uninterrupted run's. Then a stuck rank: the collective watchdog of the other
# rank ends the job (and without the watchdog the job hangs, which is what the MPI path does).
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
quick_pipeline eval
B=$LORAREC_BIN
CFG=$REPO/configs/quick.ini
MPI2=("$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2)
ERR='error \[rank 1\]: fault injected'
KILLED='process rank 1 .*exited on signal 9'
source "$REPO/tests/cli/fault_cases.sh"
LAUNCH=("${MPI2[@]}")
all_fault_cases

# ---- a corrupt VFM under a finished zoo: named as a corrupt file, not as "another model" (whose
# remedy, --restart, would discard the zoo). Found by bench/fault_soak.py.
cp -r runs/quick/vfm vfm_bad && cp -r runs/quick/zoo zoo_vfm_bad
"$LORAREC_PYTHON" - vfm_bad/model.safetensors <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(-7, 2); b = f.read(1); f.seek(-7, 2); f.write(bytes([b[0] ^ 0x10]))
PY
expect_status 2 "vfm_bad/model.safetensors: corrupt file: its content digest is" -- \
  "${MPI2[@]}" $B zoo --config "$CFG" --model vfm_bad --out zoo_vfm_bad
expect_status 2 "vfm_bad/model.safetensors: corrupt file: its content digest is" -- \
  "${MPI2[@]}" $B invert --config "$CFG" --model vfm_bad --zoo zoo_vfm_bad --out pool_vfm_bad
[ "$(ls zoo_vfm_bad | grep -c lora_)" = 4 ] || fail "the zoo under a corrupt VFM lost LoRAs"

# ---- eval's partial results whose bytes changed since they were written: a result row is
# recomputed (a warning names it), a lora-ft episode line is re-run; the results equal the first.
"${MPI2[@]}" $B eval --config "$CFG" --methods nn,lora-ft --out ev_rows >rows1.txt 2>&1 || { cat rows1.txt; fail "eval ev_rows"; }
"$LORAREC_PYTHON" - <<'PY'
import json
p = "ev_rows/partial/test__nn__1.json"
t = open(p).read()
j = json.loads(t)
open(p, "w").write(t.replace('"mean":%s' % json.dumps(j["mean"]), '"mean":%s' % json.dumps(j["mean"] + 50)))
assert json.loads(open(p).read())["mean"] == j["mean"] + 50
p = "ev_rows/partial/test__lora-ft__1.r0.txt"
lines = open(p).read().splitlines(True)
f = lines[2].split(" ")  # rank 0's third line: episode 4, re-run and put back in the middle of the list
f[1] = "100" if f[1] != "100" else "0"
lines[2] = " ".join(f)
open(p, "w").write("".join(lines))
PY
rm ev_rows/partial/test__lora-ft__1.json
"${MPI2[@]}" $B eval --config "$CFG" --methods nn,lora-ft --out ev_rows >rows2.txt 2>&1 || { cat rows2.txt; fail "eval ev_rows re-run"; }
grep -q "ev_rows/partial/test__nn__1.json: corrupt (its digest does not match), recomputed" rows2.txt || { cat rows2.txt; fail "corrupt row not named"; }
grep -qE "lora-ft 1-shot: 9 of 10 episodes finished by an earlier run" rows2.txt || { cat rows2.txt; fail "corrupt lora-ft episode line reused"; }
diff <(cut -d, -f1-8 runs/quick/eval/results.csv | grep -E '^dataset,|,(nn|lora-ft),') <(cut -d, -f1-8 ev_rows/results.csv) ||
  fail "eval rows after a corrupt partial result differ from the pipeline's"
# The per-episode accuracies too (what the paired differences pair), in the episode list's order:
# after the resume, where 9 of lora-ft's 10 came from the earlier run's lines and one was run again,
# and whatever the world size (nn and lora-ft on one rank).
$B eval --config "$CFG" --methods nn,lora-ft --shots 1 --out ev_one >rows3.txt 2>&1 || { cat rows3.txt; fail "eval on one rank"; }
"$LORAREC_PYTHON" - <<'PY' || fail "per-episode accuracies differ after a resumed eval or on one rank"
import json
rows = lambda p: {(r["dataset"], r["method"], r["shot"]): r["episode_acc"] for r in json.load(open(p))["rows"]}
pipeline, resumed, one = rows("runs/quick/eval/results.json"), rows("ev_rows/results.json"), rows("ev_one/results.json")
for name, got, want in (("after the resume", resumed, pipeline), ("on one rank against two", one, resumed)):
    assert got and all(v == want[k] for k, v in got.items()), (name, sorted(got))
    print("eval: per-episode accuracies equal", name + ":", sorted(got))
PY
echo "eval: a changed partial row recomputed, a changed lora-ft episode line re-run; results equal"

# ---- NaN losses in pre-training (data parallel) and in a zoo LoRA: a step with a non-finite loss
# or gradient is skipped and counted; --max-bad-steps in a row abort with a message.
# (metatrain's NaN handling is tested by metatrain_mpi with NaN teacher logits.)
nan_case() {  # nan_case NAME -- command...: one NaN step skipped, run completes
  shift 2
  "$@" >nan.txt 2>&1 || { cat nan.txt; fail "$*: a single NaN step ended the run"; }
  grep -qE "non-finite loss or gradient, step skipped \(1 in a row, 1 in all\)" nan.txt || { cat nan.txt; fail "$*: NaN step not reported"; }
  echo "ok: $(grep -m1 -oE 'step [0-9]+: non-finite.*' nan.txt); run completed"
}
nan_case pretrain -- env LORAREC_FAULT=1:pretrain@5:corrupt "${MPI2[@]}" $B pretrain --config "$CFG" --out vfm_nan --steps 12
[ -f vfm_nan/model.safetensors ] || fail "pretrain with one NaN step wrote no model"
expect_crash 'error \[rank [01]\]: pretrain: 3 steps in a row with a non-finite loss or gradient' -- \
  env LORAREC_FAULT=1:pretrain@5+:corrupt "${MPI2[@]}" $B pretrain --config "$CFG" --out vfm_nan3 --steps 12 --max-bad-steps 3
nan_case zoo -- env LORAREC_FAULT=0:zoo-step@3:corrupt $B zoo --config "$CFG" --out zoo_nan --num-loras 1
expect_crash 'error \[rank 0\]: zoo: 2 steps in a row with a non-finite loss or gradient \(--max-bad-steps\) while training lora_000' -- \
  env LORAREC_FAULT=0:zoo-step@3+:corrupt $B zoo --config "$CFG" --out zoo_nan2 --num-loras 1 --max-bad-steps 2

# ---- a stuck rank: rank 1 hangs before the all-reduce of step 5.
expect_crash 'error \[rank 0\]: MPI all_reduce_sum did not complete within 5 s' -- \
  env LORAREC_FAULT=1:metatrain@5:hang "${MPI2[@]}" $B metatrain --config "$CFG" --out meta_hang --collective-timeout 5
# mpirun may still be escalating to SIGKILL when it returns: give the stuck rank up to 5 s to go.
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -n "$(pgrep -f "$B metatrain --config $CFG --out meta_hang")" ] || break; sleep 0.5; done
[ -z "$(pgrep -f "$B metatrain --config $CFG --out meta_hang")" ] || fail "a stuck rank outlived the job by 5 s"
set +e
env LORAREC_FAULT=1:metatrain@5:hang timeout 15 "${MPI2[@]}" $B metatrain --config "$CFG" --out meta_hang0 --collective-timeout 0 >hang0.txt 2>&1
rc=$?
set -e
pkill -9 -f "$B metatrain --config $CFG --out meta_hang0" || true
[ $rc = 124 ] || { cat hang0.txt; fail "without the watchdog the stuck job ended by itself (rc $rc)"; }
echo "stuck rank: --collective-timeout 5 ends the job; with 0 it still hangs after 15 s (timeout killed it)"
echo "faults: all passed"
