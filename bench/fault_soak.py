#!/usr/bin/python3
"""A random fault soak of the quick pipeline (docs/RELIABILITY.md, "Random fault soak").

Runs `launch/demo.sh --preset quick --until eval` once without faults (the reference), then again
in fresh work directories under a seeded random schedule of faults, re-running after each fault
until the pipeline finishes, and compares every final output with the reference's.

Faults (the schedule is drawn from --seed before the soak starts; a fault's moment is a random
fraction of its stage's duration in the reference run, measured from the stage's processes
appearing):
  kill9      SIGKILL to one rank (a node or process dying)
  term-rank  SIGTERM to one rank only (a stray signal)
  term-job   SIGTERM to mpirun (scancel, a preemption): it forwards the signal to every rank
  diskfull   the work directory's file system filled up (a tmpfs of --disk-mib, filled by a file
             that is removed after the run ends: the user frees space); without the rights to
             mount a tmpfs, a file-size limit (prlimit --fsize) on the running rank instead
  corrupt    before a run, one bit flipped in a finished unit that the run will read: a zoo
             adapter, a pool file, a meta-training checkpoint, a meta-LoRA, the VFM's weights
             (past the file's header: only the content digest can tell). The run must stop with
             exit 2 naming the file; the soak then deletes that unit (the remedy the message
             gives) and goes on. Or one digit of an eval row's accuracy under eval/partial: the
             run must recompute the row (a warning names it) and finish.
Stages: vfm, prior (pretrain), zoo, invert, meta, meta_mask75 (metatrain), eval. A fault whose
stage has already finished, or whose stage ends before its moment, moves on to the next stage
that runs (with a new moment).

Cycles: each cycle runs the pipeline from scratch in a new directory under --per-cycle faults
(drawn from the seeded generator, in pipeline order), re-running after each fault until the
pipeline finishes (faults still planned when it finishes are dropped); cycles go on until
--faults faults have been injected. Every cycle's final outputs are compared.

Checks: every process fault ends the run (non-zero exit, no lorarecycle process left) within
--max-exit-s seconds (60); every corrupt file is refused with exit 2 and named; every re-run
without a fault finishes; the final outputs equal the reference's (VFM and prior weights, zoo
adapters, pool arrays, both meta-LoRAs, eval rows but their timing columns; all exactly), and
`lorarecycle verify` passes on them. Prints one line per run and a summary table; exit 1 on any
failed check.

  /usr/bin/python3 bench/fault_soak.py [--seed 1] [--faults 24] [--per-cycle 8] [--np 2] [--workdir DIR]
"""
import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "build", "lorarecycle")
STAGES = ["vfm", "prior", "zoo", "invert", "meta", "meta_mask75", "eval"]
KINDS = [("kill9", 0.35), ("term-rank", 0.15), ("term-job", 0.2), ("diskfull", 0.15), ("corrupt", 0.15)]
RUNS = "runs/quick"


def log(msg):
    print(msg, flush=True)


# ---- the processes of a run -------------------------------------------------------------------
def stage_of(argv):
    """The pipeline stage of a lorarecycle command line, or None."""
    if len(argv) < 2 or not argv[0].endswith("lorarecycle"):
        return None
    cmd = argv[1]
    if cmd == "pretrain":
        return "prior" if any(a.endswith("_prior.ini") for a in argv) else "vfm"
    if cmd == "metatrain":
        return "meta_mask75" if "0.75" in argv else "meta"
    return cmd if cmd in ("zoo", "invert", "eval") else None


def processes(workdir):
    """{pid: (stage, rank, ppid)} of the lorarecycle ranks running in workdir."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[:-1]
            argv = [a.decode(errors="replace") for a in argv]
            stage = stage_of(argv)
            if stage is None or os.readlink(f"/proc/{d}/cwd") != workdir:
                continue
            env = open(f"/proc/{d}/environ", "rb").read().split(b"\0")
            rank = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"OMPI_COMM_WORLD_RANK=")), 0)
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            out[int(d)] = (stage, rank, ppid)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
    return out


def start_demo(workdir, np_, logfile):
    f = open(logfile, "w")
    p = subprocess.Popen(["bash", os.path.join(REPO, "launch", "demo.sh"), "--preset", "quick", "--np", str(np_),
                          "--workdir", workdir, "--until", "eval"],
                         stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    p.logfile = f
    return p


def reference(workdir, np_, logfile):
    """Runs the pipeline without faults; returns {stage: seconds its processes lived}."""
    os.makedirs(workdir, exist_ok=True)
    p = start_demo(workdir, np_, logfile)
    first, last = {}, {}
    while p.poll() is None:
        now = time.monotonic()
        for stage, _, _ in processes(workdir).values():
            first.setdefault(stage, now)
            last[stage] = now
        time.sleep(0.02)
    if p.returncode != 0:
        sys.exit(f"fault_soak: the reference run failed (exit {p.returncode}); see {logfile}")
    return {s: max(last[s] - first[s], 0.1) for s in first}


# ---- the schedule ------------------------------------------------------------------------------
def schedule(rng, n, np_, only=None):
    kinds = [k for k, _ in KINDS if not only or k in only]
    weights = [w for k, w in KINDS if not only or k in only]
    plan = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind == "corrupt":  # a unit of the stages before it: "stage" = the run it happens before
            stage = rng.choice(STAGES[2:])
        else:
            stage = rng.choice(STAGES)
        plan.append({"kind": kind, "stage": stage, "fraction": rng.uniform(0.05, 0.95), "rank": rng.randrange(np_)})
    plan.sort(key=lambda f: STAGES.index(f["stage"]))  # the pipeline moves forward through the plan
    return plan


# ---- corrupt faults ----------------------------------------------------------------------------
def finished(w, name):
    return {"vfm": os.path.exists(f"{w}/{RUNS}/vfm/pretrain_report.json"),
            "meta": os.path.exists(f"{w}/{RUNS}/meta/metatrain.json"),
            "meta_mask75": os.path.exists(f"{w}/{RUNS}/meta_mask75/metatrain.json"),
            "eval": os.path.exists(f"{w}/{RUNS}/eval/results.csv")}[name]


def corrupt_candidates(w):
    """(file, unit to delete afterwards) of finished units that the next run reads."""
    r = f"{w}/{RUNS}"
    c = []
    if finished(w, "vfm") and not finished(w, "eval"):
        c.append((f"{r}/vfm/model.safetensors", f"{r}/vfm"))
    if os.path.isdir(f"{r}/zoo"):
        for d in sorted(os.listdir(f"{r}/zoo")):
            a = f"{r}/zoo/{d}/adapter_model.safetensors"
            if d.startswith("lora_") and os.path.exists(f"{r}/zoo/{d}/task.json") and os.path.exists(a):
                c.append((a, f"{r}/zoo/{d}"))
    if os.path.isdir(f"{r}/pool"):
        for f in sorted(os.listdir(f"{r}/pool")):
            if f.startswith("lora_") and f.endswith(".h5"):
                c.append((f"{r}/pool/{f}", f"{r}/pool/{f}"))
    for m in ("meta", "meta_mask75"):
        ck = f"{r}/{m}.work/checkpoint.safetensors"
        if not finished(w, m) and os.path.exists(ck):
            c.append((ck, ck))
        if finished(w, m) and not finished(w, "eval"):
            c.append((f"{r}/{m}/adapter_model.safetensors", f"{r}/{m}"))
    if os.path.isdir(f"{r}/eval/partial") and not finished(w, "eval"):
        for f in sorted(os.listdir(f"{r}/eval/partial")):
            if f.endswith(".json") and f != "settings.json":
                c.append((f"{r}/eval/partial/{f}", None))  # recomputed by the next run: nothing to delete
    return c


def unit_kind(path):
    return ("eval row" if path.endswith(".json") else "zoo adapter" if "/zoo/" in path else "pool file" if path.endswith(".h5") else
            "checkpoint" if "checkpoint" in path else "VFM weights" if "/vfm/" in path else "meta-LoRA")


def flip_byte(path, rng):
    """Flips one bit of a byte of the file's data (past any header, so that the file still parses
    and only its content digest can tell)."""
    if path.endswith(".json"):  # an eval row: one digit of its accuracy changed (still valid JSON)
        text = open(path).read()
        start = text.index('"mean":') + len('"mean":')
        digits = [i for i in range(start, start + 12) if text[i].isdigit()]
        at = rng.choice(digits)
        open(path, "w").write(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:])
        return at
    if path.endswith(".h5"):
        with h5py.File(path, "r") as h:
            d = h["images"]
            off = d.id.get_offset() if d.chunks is None else d.id.get_chunk_info(0).byte_offset
            n = d.id.get_storage_size()
        at = off + rng.randrange(n)
    else:
        with open(path, "rb") as f:
            header = 8 + int.from_bytes(f.read(8), "little")
        at = rng.randrange(header, os.path.getsize(path))
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
    return at


# ---- disk full ---------------------------------------------------------------------------------
class Disk:
    def __init__(self, path, mib):
        os.makedirs(path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", path], capture_output=True)
        self.tmpfs = r.returncode == 0
        self.path = path
        self.filler = os.path.join(path, ".filler")

    def fill(self, pid):
        if not self.tmpfs:  # a file-size limit on the rank: its next write over 1 KiB fails
            subprocess.run(["prlimit", f"--pid={pid}", "--fsize=1024"], capture_output=True)
            return "file-size limit 1 KiB (prlimit)"
        try:
            with open(self.filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
                while True:
                    f.write(b"\0" * (1 << 16))
        except OSError:
            pass  # full
        st = os.statvfs(self.path)
        return f"tmpfs full ({st.f_bavail * st.f_frsize} bytes free)"

    def free(self):
        if os.path.exists(self.filler):
            os.remove(self.filler)

    def close(self):
        if self.tmpfs:
            subprocess.run(["umount", "-l", self.path], capture_output=True)


# ---- one run under one fault -------------------------------------------------------------------
def inject(kind, procs, stage, rank, disk):
    """Injects a process fault into the running stage; returns a description."""
    mine = {pid: v for pid, v in procs.items() if v[0] == stage}
    pid = next((p for p, v in mine.items() if v[1] == rank), next(iter(mine)))
    if kind == "kill9":
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL to rank {mine[pid][1]} (pid {pid})"
    if kind == "term-rank":
        os.kill(pid, signal.SIGTERM)
        return f"SIGTERM to rank {mine[pid][1]} (pid {pid})"
    if kind == "term-job":
        ppid = mine[pid][2]
        os.kill(ppid, signal.SIGTERM)
        return f"SIGTERM to mpirun (pid {ppid})"
    return disk.fill(pid)


def run_with_fault(w, np_, logfile, fault, durations, rng, max_exit_s, disk):
    """Runs the pipeline once; a process fault is injected into its stage (or the next one that
    runs long enough). Returns a record of what happened."""
    rec = {"kind": fault["kind"] if fault else "none"}
    p = start_demo(w, np_, logfile)
    t_start = time.monotonic()
    injected_at = None
    seen = {}  # stage -> (first seen, moment to strike)
    min_stage = STAGES.index(fault["stage"]) if fault else None
    fraction = fault["fraction"] if fault else None
    while p.poll() is None:
        if fault and injected_at is None:
            procs = processes(w)
            now = time.monotonic()
            for stage in {v[0] for v in procs.values()}:
                if STAGES.index(stage) < min_stage or stage in seen:
                    continue
                seen[stage] = (now, now + fraction * durations.get(stage, 1.0))
            for stage, (first, strike) in seen.items():
                running = [v for v in procs.values() if v[0] == stage]
                if now >= strike and len(running) == np_:
                    rec.update(stage=stage, after_s=round(now - first, 2),
                               what=inject(fault["kind"], procs, stage, fault["rank"], disk))
                    injected_at = time.monotonic()
                    break
            # a stage that ended before its moment: the fault moves on, at a new moment
            for stage in list(seen):
                if stage not in {v[0] for v in procs.values()} and injected_at is None:
                    min_stage = max(min_stage, STAGES.index(stage) + 1)
                    fraction = rng.uniform(0.05, 0.95)
                    del seen[stage]
                    rec["moved"] = rec.get("moved", 0) + 1
        if injected_at is not None and time.monotonic() - injected_at > max_exit_s + 60:
            os.killpg(p.pid, signal.SIGKILL)  # a hang: the check below fails it
            break
        time.sleep(0.02)
    p.wait()
    p.logfile.close()
    end = time.monotonic()
    rec["exit"] = p.returncode
    rec["run_s"] = round(end - t_start, 1)
    if injected_at is not None:
        rec["exit_s"] = round(end - injected_at, 2)
    time.sleep(0.3)
    rec["leftover"] = sorted(processes(w))
    for pid in rec["leftover"]:
        os.kill(pid, signal.SIGKILL)
    text = open(logfile, errors="replace").read().splitlines()
    rec["error"] = next((x.strip() for x in text if ": error" in x),
                        next((x.strip() for x in text if "exited on signal" in x or "noticed that" in x), ""))
    disk.free()
    return rec


# ---- the comparison ----------------------------------------------------------------------------
def st_tensors(path):
    """name -> (dtype, shape, raw bytes) of a safetensors file."""
    b = open(path, "rb").read()
    n = int.from_bytes(b[:8], "little")
    h = json.loads(b[8:8 + n])
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}


def compare(ref, got):
    """Every final output of got against ref: a list of (what, verdict) and the count of differences."""
    lines, bad = [], 0
    r, g = f"{ref}/{RUNS}", f"{got}/{RUNS}"

    def tensors_equal(what, a, b):
        nonlocal bad
        ta, tb = st_tensors(a), st_tensors(b)
        same = ta == tb
        bad += not same
        lines.append((what, f"{len(ta)} tensors " + ("equal" if same else "DIFFER")))

    for m in ("vfm", "prior"):
        tensors_equal(f"{m} weights", f"{r}/{m}/model.safetensors", f"{g}/{m}/model.safetensors")
    loras = sorted(d for d in os.listdir(f"{r}/zoo") if d.startswith("lora_"))
    same = sorted(d for d in os.listdir(f"{g}/zoo") if d.startswith("lora_")) == loras
    for d in loras:
        a = f"zoo/{d}/adapter_model.safetensors"
        same = same and os.path.exists(f"{g}/{a}") and st_tensors(f"{r}/{a}") == st_tensors(f"{g}/{a}")
    bad += not same
    lines.append(("zoo adapters", f"{len(loras)} LoRAs " + ("equal" if same else "DIFFER")))
    files = sorted(f for f in os.listdir(f"{r}/pool") if f.endswith(".h5"))
    same = sorted(f for f in os.listdir(f"{g}/pool") if f.endswith(".h5")) == files
    for f in files:
        with h5py.File(f"{r}/pool/{f}") as a, h5py.File(f"{g}/pool/{f}") as b:
            same = same and set(a) == set(b) and all(np.array_equal(a[k][...], b[k][...]) for k in a)
    bad += not same
    lines.append(("pool arrays", f"{len(files)} files " + ("equal" if same else "DIFFER")))
    for m in ("meta", "meta_mask75"):
        tensors_equal(f"meta-LoRA {m}", f"{r}/{m}/adapter_model.safetensors", f"{g}/{m}/adapter_model.safetensors")
    key = lambda row: (row["dataset"], row["method"], row["shot"])  # noqa: E731
    ra = {key(x): x for x in csv.DictReader(open(f"{r}/eval/results.csv"))}
    rb = {key(x): x for x in csv.DictReader(open(f"{g}/eval/results.csv"))}
    cols = [c for c in next(iter(ra.values())) if "per_s" not in c and not c.endswith("_s")]
    same = ra.keys() == rb.keys() and all(ra[k][c] == rb[k][c] for k in ra for c in cols)
    bad += not same
    lines.append(("eval rows", f"{len(ra)} rows, columns {','.join(cols)}: " + ("equal" if same else "DIFFER")))
    v = subprocess.run([BIN, "verify", f"{got}/{RUNS}", "--quiet"], capture_output=True, text=True)
    bad += v.returncode != 0
    lines.append(("verify", (v.stdout.strip().splitlines() or ["?"])[-1] + f" (exit {v.returncode})"))
    return lines, bad


# The units a corrupt fault planned at a stage prefers: the stage's own products and inputs.
UNITS_OF = {"zoo": ["zoo adapter"], "invert": ["pool file"], "meta": ["checkpoint", "pool file"],
            "meta_mask75": ["checkpoint", "meta-LoRA"], "eval": ["meta-LoRA", "VFM weights", "eval row"]}


def corrupt_run(soak, np_, logfile, rng, durations, max_exit_s, disk, stage, wait_allowed):
    """A corrupt fault: flips a byte of a finished unit the next run reads, runs, expects exit 2
    naming the file, then deletes the unit. Prefers the units of the planned stage; when there is
    none and wait_allowed, returns (None, None) so that the fault waits behind a process fault."""
    cands = corrupt_candidates(soak)
    preferred = [c for c in cands if unit_kind(c[0]) in UNITS_OF[stage]]
    if not preferred and (wait_allowed or not cands):
        return None, None
    path, unit = rng.choice(preferred or cands)
    at = flip_byte(path, rng)
    rec = run_with_fault(soak, np_, logfile, None, durations, rng, max_exit_s, disk)
    rel = os.path.relpath(path, soak)
    rec.update(kind="corrupt", stage=unit_kind(rel), what=f"byte {at} of {rel}", exit_s=rec["run_s"], after_s="")
    failure = None
    if unit is None:  # an eval row: recomputed, with a warning naming it
        if rec["exit"] != 0 or f"{rel}: corrupt" not in open(logfile).read():
            failure = f"corrupt {rel}: exit {rec['exit']}, and no warning that it was recomputed"
        rec["remedy"] = "none: recomputed by the run"
        return rec, failure
    if rec["exit"] != 2 or rel not in rec["error"]:
        failure = f"corrupt {rel}: exit {rec['exit']}, error line '{rec['error']}'"
    if os.path.isdir(unit):
        shutil.rmtree(unit)
    elif os.path.exists(unit):
        os.remove(unit)
    rec["remedy"] = "deleted " + os.path.relpath(unit, soak)
    return rec, failure


def cycle(c, W, a, rng, durations, records, failures):
    """One pipeline from scratch in W/soak_C under the cycle's schedule, re-run after each fault
    until it finishes; then its outputs against the reference's. Returns the faults injected."""
    soak = f"{W}/soak_{c}"
    plan = schedule(rng, min(a.per_cycle, a.faults - sum(1 for _, _, r in records if "what" in r)), a.np,
                    a.kinds.split(",") if a.kinds else None)
    log(f"cycle {c}: {len(plan)} faults planned: " + ", ".join(f"{f['kind']}@{f['stage']}" for f in plan))
    disk = Disk(soak, a.disk_mib)
    shutil.copytree(f"{W}/ref/data", f"{soak}/data")  # the benchmark data are not under test
    injected = 0
    try:
        for run in range(1, a.max_runs + 1):
            fault = plan[0] if plan else None
            logfile = f"{W}/logs/cycle{c}_run{run:03d}.log"
            rec, failure = None, None
            if fault and fault["kind"] == "corrupt":
                k = next((i for i, f in enumerate(plan) if f["kind"] != "corrupt"), None)
                rec, failure = corrupt_run(soak, a.np, logfile, rng, durations, a.max_exit_s, disk, fault["stage"],
                                           k is not None)
                if rec is None:  # nothing of its stage finished yet to corrupt: after the next process fault
                    if k is None:
                        fault["kind"] = "kill9"
                    else:
                        plan.insert(k, plan.pop(0))
                        fault = plan[0]
            if rec is None:
                rec = run_with_fault(soak, a.np, logfile, fault, durations, rng, a.max_exit_s, disk)
                if "what" in rec:
                    if rec["exit"] == 0:
                        failure = f"{fault['kind']} in {rec['stage']}: the run still exited 0"
                    elif rec.get("exit_s", 1e9) > a.max_exit_s:
                        failure = f"{fault['kind']} in {rec['stage']}: {rec.get('exit_s')} s to exit"
                elif rec["exit"] != 0:
                    failure = f"exit {rec['exit']} without a fault: {rec['error']}"
                if rec["leftover"]:
                    failure = (failure + "; " if failure else "") + f"lorarecycle processes left: {rec['leftover']}"
            if "what" in rec:
                plan.pop(0)
                injected += 1
            records.append((c, run, rec))
            log(f"cycle {c} run {run:3d}: {fmt(rec)}")
            if failure:
                failures.append(f"cycle {c} run {run}: {failure}")
                if "without a fault" in failure:
                    break  # a re-run that fails by itself would fail again
            if rec["exit"] == 0 and "what" not in rec:
                break  # finished; faults of the plan not injected by then are dropped
        else:
            failures.append(f"cycle {c}: not finished after {a.max_runs} runs")
        disk.free()
        if os.path.exists(f"{soak}/{RUNS}/eval/results.csv"):
            lines, bad = compare(f"{W}/ref", soak)
        else:
            lines, bad = [("eval", "missing")], 1
        log(f"cycle {c}: {injected} faults injected, {len(plan)} dropped (the pipeline finished first); "
            "final outputs against the reference run:")
        for what, verdict in lines:
            log(f"  {what:<22} {verdict}")
        if bad:
            failures.append(f"cycle {c}: {bad} final output(s) differ from the reference (or are missing)")
        # the outputs stay for inspection (the tmpfs goes)
        if os.path.isdir(f"{soak}/{RUNS}"):
            shutil.copytree(f"{soak}/{RUNS}", f"{W}/soak_{c}_runs", dirs_exist_ok=True)
    finally:
        disk.free()
        disk.close()
    return injected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    ap.add_argument("--faults", type=int, default=24, help="faults to inject in all (default 24; at least 20 asked)")
    ap.add_argument("--per-cycle", type=int, default=8,
                    help="faults planned per pipeline from scratch (default 8); cycles run until --faults are in")
    ap.add_argument("--np", type=int, default=2, help="ranks per stage (default 2)")
    ap.add_argument("--kinds", help="draw only these kinds of fault (comma list of " + ",".join(k for k, _ in KINDS) +
                    "; default all, with weights " + ", ".join(f"{k} {w}" for k, w in KINDS) + ")")
    ap.add_argument("--workdir", help="where the reference and the soak run (default: a new /tmp/fault_soak_*)")
    ap.add_argument("--max-exit-s", type=float, default=60, help="a fault must end the run within this (default 60)")
    ap.add_argument("--max-runs", type=int, default=60, help="runs per cycle before giving up (default 60)")
    ap.add_argument("--disk-mib", type=int, default=64, help="size of the soak's tmpfs (default 64 MiB)")
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"fault_soak: {BIN} not found: build first (bash launch/setup.sh)")
    W = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="fault_soak_", dir="/tmp"))
    if os.path.exists(f"{W}/soak_1"):
        sys.exit(f"fault_soak: {W}/soak_1 exists: choose a new --workdir")
    os.makedirs(f"{W}/logs", exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    log(f"fault soak: seed {a.seed}, {a.faults} faults, {a.np} ranks, work directory {W}; {os.cpu_count()} cores, {cpu}")
    t0 = time.monotonic()
    durations = reference(f"{W}/ref", a.np, f"{W}/logs/reference.log")
    log(f"reference run (no faults): {time.monotonic() - t0:.0f} s; stage seconds "
        + ", ".join(f"{s} {durations.get(s, 0):.1f}" for s in STAGES))
    probe = Disk(f"{W}/probe", 1)
    probe.close()
    log("disk-full faults: " + (f"a {a.disk_mib} MiB tmpfs filled up" if probe.tmpfs else "prlimit --fsize (no tmpfs mount)"))
    rng = random.Random(a.seed)
    records, failures = [], []
    t1 = time.monotonic()
    injected, c = 0, 0
    while injected < a.faults and c < 3 * a.faults and not failures:  # stops at the first failed cycle
        c += 1
        injected += cycle(c, W, a, rng, durations, records, failures)
    soak_s = time.monotonic() - t1
    faults = [r for _, _, r in records if "what" in r]
    log("")
    log(f"{'cycle':>5} {'run':>4} {'fault':<10} {'stage':<12} {'after s':>7} {'to exit s':>9} {'exit':>4}  what / error")
    for c, run, r in records:
        if "what" in r:
            log(f"{c:>5} {run:>4} {r['kind']:<10} {r.get('stage', ''):<12} {r.get('after_s', ''):>7} "
                f"{r.get('exit_s', ''):>9} {r['exit']:>4}  {r.get('what', '')} / {r['error'][:110]}")
    by_kind = {}
    for r in faults:
        by_kind.setdefault(r["kind"], []).append(r)
    by_stage = {}
    for r in faults:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
    log("")
    log(f"{len(faults)} faults in {len(records)} runs over {c} cycles, {soak_s:.0f} s")
    log("by kind: " + "; ".join(f"{k} {len(v)} (fault -> exit max {max(x['exit_s'] for x in v):.2f} s)"
                                for k, v in sorted(by_kind.items())))
    log("by stage: " + ", ".join(f"{s} {n}" for s, n in sorted(by_stage.items(), key=lambda x: (x[0] not in STAGES, STAGES.index(x[0]) if x[0] in STAGES else 0, x[0]))))
    ex = sorted(x["exit_s"] for x in faults if x["kind"] != "corrupt")
    if ex:
        log(f"process faults: fault -> exit median {ex[len(ex) // 2]:.2f} s, max {ex[-1]:.2f} s (limit {a.max_exit_s:g})")
    if len(faults) < a.faults:
        failures.append(f"only {len(faults)} of {a.faults} faults injected")
    if failures:
        log("")
        for f in failures:
            log("FAIL: " + f)
        sys.exit(1)
    log("fault soak: passed")


def fmt(r):
    s = f"{r['kind']:<10} exit {r['exit']:>3} after {r['run_s']:5.1f} s"
    if "what" in r:
        s += f"; {r.get('stage')}: {r['what']}"
    if "exit_s" in r and r["kind"] != "corrupt":
        s += f" at {r['after_s']} s, exit {r['exit_s']} s later"
    if r.get("moved"):
        s += f" (moved on {r['moved']}x)"
    if r.get("remedy"):
        s += f"; {r['remedy']}"
    if r["error"] and r["exit"] != 0:
        s += f"\n           {r['error'][:160]}"
    return s


if __name__ == "__main__":
    main()
