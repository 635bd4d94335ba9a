#!/usr/bin/env bash
# A real single-node Slurm (munge, slurmctld, slurmd started by cluster/local_slurm.sh under a
# temporary directory): the quick pipeline submitted by cluster/pipeline.sh as a chain of
# dependent sbatch jobs with 2 tasks each (ranks started by srun --mpi=pmix); every stage's
# outputs checked; the srun-trained meta-LoRA equals mpirun -np 2 and a plain run of the same
# stage; SIGUSR1 to a meta-training job leaves a checkpoint, the job requeues itself and resumes;
# faults (a rank throwing or SIGKILLed in each stage) end the srun step within 60 s naming the
# task and the re-run finishes the work; a step srun cannot launch fails its job; everything torn
# down, no daemon left. Installs the Slurm packages when missing.
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
t0=$(date +%s)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurmctld slurmd slurm-client munge"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
S=$WORK/slurm
bash "$REPO/cluster/local_slurm.sh" start "$S" >/dev/null || { cat "$S"/log/*.log; fail "slurm did not start"; }
export SLURM_CONF=$S/slurm.conf
trap 'bash "$REPO/cluster/local_slurm.sh" stop "$S" >/dev/null 2>&1; cd /; rm -rf "$WORK"' EXIT
echo "slurm up after $(( $(date +%s) - t0 )) s: $(sinfo -h -o '%P %t %c CPUs')"
wait_jobs() {  # wait_jobs SECONDS: until no job is queued or running
  local q  # a failed squeue (a busy slurmctld times out) prints nothing: that is not "no jobs"
  for _ in $(seq 1 "$1"); do q=$(squeue -h) && [ -z "$q" ] && return 0; sleep 1; done
  squeue; fail "jobs still queued after $1 s"
}

# 1. The quick pipeline as a chain of jobs.
bash "$REPO/cluster/pipeline.sh" --preset quick --ntasks 2 --workdir "$WORK/w" | tee jobs.txt
[ "$(wc -l <jobs.txt)" = 9 ] || fail "expected 9 jobs"
grep -q "^meta: job" jobs.txt || fail "no meta-training job"
wait_jobs 900
cd "$WORK/w"
for f in data/quick/manifest.json runs/quick/vfm/model.safetensors runs/quick/prior/model.safetensors \
         runs/quick/zoo/manifest.json runs/quick/pool/index.json runs/quick/meta/metatrain.json \
         runs/quick/meta_mask75/metatrain.json runs/quick/eval/results.csv runs/quick/report/report.md; do
  [ -f "$f" ] || { tail -n 20 slurm-*.out; fail "missing $f"; }
done
for log in slurm-lr-*.out; do
  if grep -q "error" "$log"; then cat "$log"; fail "$log has an error"; fi
done
for stage in vfm prior zoo invert meta meta_mask75 eval; do
  grep -q "launcher: srun (Slurm, PMIx); rank 0 of 2" slurm-lr-$stage-*.out || { cat slurm-lr-$stage-*.out; fail "$stage: no srun launcher line"; }
done
echo "pipeline: 9 jobs done after $(( $(date +%s) - t0 )) s; every stage's output present; ranks started by srun --mpi=pmix"

# 2. The same meta-training stage under srun (above), mpirun -np 2 and alone.
CFG=$REPO/configs/quick.ini
"$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 $LORAREC_BIN metatrain --config "$CFG" --out m_mpirun --restart >m1.txt 2>&1 || { cat m1.txt; fail mpirun; }
$LORAREC_BIN metatrain --config "$CFG" --out m_plain --restart >m2.txt 2>&1 || { cat m2.txt; fail plain; }
grep -q "launcher: mpirun (Open MPI); rank 0 of 2" m1.txt || fail "mpirun launcher line"
grep -q "launcher: none (single process); rank 0 of 1" m2.txt || { head -3 m2.txt; fail "plain launcher line"; }
compare_adapters runs/quick/meta m_mpirun 1e-4
# One rank against two: the all-reduce's rounding in fp32, more in bf16 (--precision auto).
TOL=$("$LORAREC_PYTHON" -c 'import json; print("5e-3" if json.load(open("m_plain/metatrain.json"))["precision"] == "bf16" else "1e-4")')
compare_adapters runs/quick/meta m_plain "$TOL"
"$LORAREC_PYTHON" - <<'PY'
import json
v = [json.load(open(f"{d}/metatrain.json"))["val_final"]["val_mean"] for d in ("runs/quick/meta", "m_mpirun", "m_plain")]
print("final validation accuracy (srun, mpirun, plain):", v)
assert max(v) - min(v) < 0.5
PY

# 3. SIGUSR1 to a meta-training job: checkpoint, requeue, resume.
j=$(sbatch --parsable --chdir "$WORK/w" --export "ALL,LORAREC_REPO=$REPO" --ntasks 2 --job-name lr-sig \
      "$REPO/cluster/stage.sbatch" metatrain "$CFG" --out runs/quick/meta_sig --steps 6000 --log-every 10 --val-every 0)
M=runs/quick/meta_sig.work/metrics.jsonl
for _ in $(seq 1 600); do [ -f "$M" ] && [ "$(wc -l <"$M")" -ge 3 ] && break; sleep 0.2; done
if ! [ -f "$M" ]; then
  squeue; scontrol show job "$j" | grep -E "JobState|Restarts" || true
  cat slurm-lr-sig-"$j".out; tail -n 20 "$S"/log/slurmd.log; fail "the signal job never trained"
fi
scancel --signal=USR1 "$j"
echo "sent SIGUSR1 to job $j at metrics line $(wc -l <"$M")"
for _ in $(seq 1 120); do
  st=$(squeue -h -j "$j" -o %T 2>/dev/null || true)
  if [ "$st" = PENDING ] && grep -q "Restarts=1" <<<"$(scontrol show job "$j")"; then
    # Slurm holds a requeued job ~2 min; start it sooner, once the old step is gone from the node.
    sleep 5
    scontrol update JobId="$j" StartTime=now
    break
  fi
  sleep 0.5
done
wait_jobs 600
LOG=$(ls slurm-lr-sig-"$j".out)
grep -q "stop signal received: checkpoint at step" "$LOG" || { cat "$LOG"; fail "no checkpoint on SIGUSR1"; }
grep -q "requeueing job $j" "$LOG" || { cat "$LOG"; fail "not requeued"; }
grep -q "resumed from .* at step" "$LOG" || { cat "$LOG"; fail "not resumed"; }
"$LORAREC_PYTHON" -c "import json; r = json.load(open('runs/quick/meta_sig/metatrain.json')); assert r['steps'] == 6000; print('signal job finished after requeue:', r['steps'], 'steps')"
echo "$(grep -m1 -o 'checkpoint at step [0-9]*' "$LOG"); $(grep -m1 -o 'resumed from .* at step [0-9]*' "$LOG")"

# 4. Faults under srun: rank 1 throwing or SIGKILLed in zoo, invert, metatrain and eval (the cases
# of tests/cli/fault_cases.sh, as tests/cli/faults.sh runs them under mpirun). srun ends every
# task when one fails (--kill-on-bad-exit, as cluster/site.sh launches) and names the task.
B=$LORAREC_BIN
LAUNCH=(srun --mpi=pmix -n 2 --kill-on-bad-exit=1)
ERR='error \[rank 1\]: fault injected'
KILLED='srun: error: .*: task 1: Killed'
source "$REPO/tests/cli/fault_cases.sh"
all_fault_cases
echo "faults under srun: all passed after $(( $(date +%s) - t0 )) s"

# A step that srun cannot launch fails the stage's job (srun itself exits 0 then). Slurm's PMIx
# plugin refuses to start a step whose client directory exists already: make one for the job.
j=$(sbatch --parsable --hold --chdir "$WORK/w" --export "ALL,LORAREC_REPO=$REPO" --ntasks 2 --job-name lr-nolaunch \
      "$REPO/cluster/stage.sbatch" eval "$CFG" --out runs/quick/eval_nolaunch)
mkdir -p "$S/tmp/spmix_appdir_$(id -u)_$j.0"
scontrol release "$j"
wait_jobs 120
st=$(scontrol show job "$j" | grep -o "JobState=[A-Z]*")
[ "$st" = JobState=FAILED ] || { cat slurm-lr-nolaunch-"$j".out; fail "a step srun could not launch left the job $st"; }
grep -q "srun could not launch the tasks" slurm-lr-nolaunch-"$j".out || { cat slurm-lr-nolaunch-"$j".out; fail "no message for the step that was not launched"; }
echo "a step srun could not launch: job $st, named in its log"

# 5. Tear down: no daemon left.
bash "$REPO/cluster/local_slurm.sh" stop "$S"
if pgrep -f "$S/" >/dev/null; then pgrep -fa "$S/"; fail "daemons left running"; fi
echo "slurm_pipeline: passed in $(( $(date +%s) - t0 )) s; daemons stopped"
