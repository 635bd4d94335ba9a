#!/usr/bin/env python3
"""Sums Chrome traces of LORAREC_OP_TRACE (src/util/op_trace.cpp) per op, side by side.

  LORAREC_OP_TRACE=a.json LORAREC_OP_TRACE_STEPS=10 lorarecycle metatrain ...   (one trace per run)
  /usr/bin/python3 bench/op_trace.py --steps 10 a.json b.json [--top 30]

For each trace: per step, the number of ops and autograd nodes, and each op's self time (its time
minus that of the ops it called), the largest first; then the ops' summed self time against the
traced steps' wall time. Self times include the profiler's own cost per op, so read counts and
ratios between the traces, not absolute times.
"""
import argparse
import collections
import json


def load(path):
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    out = []
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            out.append((e.get("tid", 0), float(e["ts"]), float(e["dur"]), e["name"]))
    return out


def summarise(events):
    """(self time per name, count per name, top-level count, wall span) in microseconds."""
    self_t, count = collections.Counter(), collections.Counter()
    top = 0
    by_tid = collections.defaultdict(list)
    for tid, ts, dur, name in events:
        by_tid[tid].append((ts, -dur, name))
    span = 0.0
    for evs in by_tid.values():
        evs.sort()
        stack = []  # [end, name, child time, duration]
        for ts, neg, name in evs:
            dur = -neg
            while stack and ts >= stack[-1][0]:
                end, n, child, d = stack.pop()
                self_t[n] += d - child
            if stack:
                stack[-1][2] += dur
            else:
                top += 1
            count[name] += 1
            stack.append([ts + dur, name, 0.0, dur])
        while stack:
            end, n, child, d = stack.pop()
            self_t[n] += d - child
        if evs:
            span = max(span, max(ts - neg for ts, neg, _ in evs) - evs[0][0])
    return self_t, count, top, span


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--steps", type=int, default=10, help="steps each trace holds (LORAREC_OP_TRACE_STEPS)")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    sums = [summarise(load(p)) for p in a.traces]
    n = a.steps
    names = collections.Counter()
    for self_t, *_ in sums:
        names.update(self_t)
    head = "".join(f" | {p.split('/')[-1][:24]:>24} n      ms" for p in a.traces)
    print(f"{'op (self time per step)':<58}{head}")
    for name, _ in names.most_common(a.top):
        row = "".join(f" | {s[1][name] / n:>26.1f} {s[0][name] / n / 1000:7.3f}" for s in sums)
        print(f"{name[:58]:<58}{row}")
    for label, f in (("ops per step (all, nested included)", lambda s: sum(s[1].values()) / n),
                     ("top-level ops and nodes per step", lambda s: s[2] / n),
                     ("autograd nodes per step", lambda s: sum(c for k, c in s[1].items()
                                                               if k.startswith("autograd::engine::evaluate_function")) / n),
                     ("summed self time per step, ms", lambda s: sum(s[0].values()) / n / 1000),
                     ("traced wall time per step, ms", lambda s: s[3] / n / 1000)):
        print(f"{label:<58}" + "".join(f" | {f(s):>34.2f}" for s in sums))


if __name__ == "__main__":
    main()
