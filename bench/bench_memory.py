"""Gateway memory over a week: the KPI engine with and without pruning (KpiEngine.prune).

100 machines send a week of 1-second data (runs of Execute, Held, Suspended, Stopped with a mean
length of 10 minutes; a part in 45 % of the running seconds, 3 % rejects), as the edge agents do:
state changes and counter changes, one batch of each per machine every 5 simulated minutes. The
engine folds every batch, computes every window each simulated hour and, in the pruned run, calls
``prune()`` every tick (it decides itself when to cut). Each run is its own process; each prints
its RSS (VmRSS) and the bytes of the engine's arrays at every simulated hour, and the since_start
totals at the end, which must agree between the two runs (1e-9 relative) before a number is shown.

    .venv/bin/python bench/bench_memory.py                      # 100 machines x 7 days, both runs
    .venv/bin/python bench/bench_memory.py --machines 10 --days 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from contract import CountsBatch, StateBatch
from gateway.engine import KpiEngine

EXECUTE, HELD, SUSPENDED, STOPPED = 4, 15, 12, 0
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
TICK = 300  # seconds of data per batch


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def array_mb(e: KpiEngine) -> float:
    tl = e.timeline
    rows = sum(getattr(r, c).nbytes for r in (tl.p, tl.c, tl.f, tl.u) for c in r.spec)
    return (rows + sum(getattr(tl, name).nbytes for name, _, _ in tl.PER_MACHINE)) / 2**20


def run(machines: int, days: int, prune: bool) -> None:
    rng = np.random.default_rng(1)
    seconds = days * 86400
    # per machine: the starts and codes of its runs of one state (a week of them is small)
    runs = []
    for _ in range(machines):
        lengths = rng.exponential(600, seconds // 300).astype(np.int64) + 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        codes = rng.choice(np.array([EXECUTE, EXECUTE, EXECUTE, HELD, SUSPENDED, STOPPED]), lengths.size)
        keep = np.concatenate([[True], codes[1:] != codes[:-1]])
        runs.append((starts[keep & (starts < seconds)], codes[keep & (starts < seconds)]))
    good, reject = np.zeros(machines, np.int64), np.zeros(machines, np.int64)
    e = KpiEngine()
    for _ in range(machines):
        e.add_machine()
    print(json.dumps({"hour": 0, "rss_mb": rss_mb(), "array_mb": array_mb(e)}), flush=True)
    t_fold = t_prune = t_longest = 0.0
    for lo in range(0, seconds, TICK):
        sec = np.arange(lo, lo + TICK)
        state = np.stack([c[np.searchsorted(s, sec, "right") - 1] for s, c in runs])
        made = (state == EXECUTE) & (rng.random(state.shape) < 0.45)
        bad = made & (rng.random(state.shape) < 0.03)
        g = good[:, None] + np.cumsum(made & ~bad, axis=1)
        r = reject[:, None] + np.cumsum(bad, axis=1)
        good, reject = g[:, -1], r[:, -1]
        for m, (s, c) in enumerate(runs):
            i = np.flatnonzero((s >= lo) & (s < lo + TICK))
            if i.size:
                e.add_state(m, StateBatch(T0 + s[i].astype(float), c[i].astype(np.int64), np.zeros(i.size, np.int64)))
            j = np.flatnonzero(made[m] | (sec == lo))  # counter changes (and one sample a tick)
            e.add_counts(m, CountsBatch(T0 + sec[j].astype(float), g[m, j], r[m, j], "p", 2.0))
        t = time.perf_counter()
        e.fold()
        t_fold += time.perf_counter() - t
        if prune:
            t = time.perf_counter()
            e.prune()
            t_prune += time.perf_counter() - t
            t_longest = max(t_longest, time.perf_counter() - t)
        if (lo + TICK) % 3600 == 0:
            e.snapshot()
            print(json.dumps({"hour": (lo + TICK) // 3600, "rss_mb": rss_mb(), "array_mb": array_mb(e)}), flush=True)
    k = e.snapshot()["since_start"]
    print(json.dumps({"end": True, "fold_s": t_fold, "prune_s": t_prune, "longest_prune_s": t_longest,
                      "rows": int(e.timeline.c.fill.sum() + e.timeline.p.fill.sum()),
                      "since_start": {key: k[key].tolist() for key in ("run_s", "planned_s", "good", "reject",
                                                                         "failures", "small_stop_s", "oee")}}),
          flush=True)


def child(machines: int, days: int, prune: bool) -> tuple[list[dict], dict]:
    cmd = [sys.executable, __file__, "--machines", str(machines), "--days", str(days), "--child",
           "prune" if prune else "keep"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = [json.loads(x) for x in out.splitlines()]
    return [x for x in lines if "hour" in x], lines[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--child", choices=("prune", "keep"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return run(a.machines, a.days, a.child == "prune")
    t = time.perf_counter()
    keep, keep_end = child(a.machines, a.days, False)
    pruned, pruned_end = child(a.machines, a.days, True)
    for key, want in keep_end["since_start"].items():
        np.testing.assert_allclose(pruned_end["since_start"][key], want, rtol=1e-9, err_msg=key)
    md = a.machines * a.days
    print(f"{a.machines} machines x {a.days} days of 1-second data; since_start agrees between the runs; "
          f"{time.perf_counter() - t:.0f} s")
    print(f"{'':<10}{'RSS MiB':>24}{'engine arrays MiB':>24}")
    print(f"{'end of day':<10}{'no pruning':>12}{'pruning':>12}{'no pruning':>12}{'pruning':>12}")
    for day in range(a.days + 1):
        k, p = keep[day * 24], pruned[day * 24]
        print(f"{day:<10}{k['rss_mb']:>12.0f}{p['rss_mb']:>12.0f}{k['array_mb']:>12.0f}{p['array_mb']:>12.0f}")
    grown = keep[-1]["rss_mb"] - keep[0]["rss_mb"]
    print(f"no pruning: RSS grew {grown:.0f} MiB in {a.days} days = {grown / md:.2f} MiB per machine-day "
          f"(arrays {keep[-1]['array_mb'] / md:.2f}); rows kept {keep_end['rows']:,}; fold {keep_end['fold_s']:.1f} s")
    late = [x["rss_mb"] for x in pruned if x["hour"] >= 48]
    print(f"pruning: RSS from day 2 on {min(late):.0f}-{max(late):.0f} MiB (hourly samples), "
          f"{(max(late) - pruned[0]['rss_mb']) / a.machines:.2f} MiB per machine above the start; "
          f"rows kept {pruned_end['rows']:,}; fold {pruned_end['fold_s']:.1f} s, prune {pruned_end['prune_s']:.2f} s "
          f"(longest call {pruned_end['longest_prune_s']:.3f} s)")

if __name__ == "__main__":
    main()
