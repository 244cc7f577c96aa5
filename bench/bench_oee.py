"""OEE engine: a day of 1-second data for many machines, side by side in one run:

- ours: the incremental timeline (gateway/timeline.py): ingest the day, recompute every window for
  every machine, and the one-second update (append one second for all machines + every window);
- a straightforward NumPy version on the same data as 2-D arrays (machines x seconds);
- the pure-Python reference: a loop over every second of every machine.

All three must agree on run time, planned time, good and rejects before any time is printed.
Small stops are switched off here (micro_stop_s = 0) because the simple versions do not know them.

    .venv/bin/python bench/bench_oee.py                     # 1,000 machines x 86,400 s
    .venv/bin/python bench/bench_oee.py --machines 100      # smaller
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from gateway import oee
from gateway.timeline import Timeline

EXECUTE, HELD, SUSPENDED, STOPPED_ = 4, 15, 12, 0
CONV = oee.Conventions(micro_stop_s=0.0)
T0 = 1_800_000_000.0
WINDOWS = {"since_start": None, "last_15min": 900.0, "last_1h": 3600.0}


def make_day(machines: int, seconds: int, seed: int = 1):
    """States per second (runs of Execute, Held, Suspended, Stopped) and monotonic counters."""
    rng = np.random.default_rng(seed)
    state = np.empty((machines, seconds), np.int8)
    for m in range(machines):  # per machine, a few hundred runs: generating data is not what we measure
        lengths = rng.exponential(600, seconds // 60 + 10).astype(np.int64) + 1
        codes = rng.choice(np.array([EXECUTE, EXECUTE, EXECUTE, HELD, SUSPENDED, STOPPED_], np.int8), lengths.size)
        state[m] = np.repeat(codes, lengths)[:seconds]
    running = state == EXECUTE
    made = running & (rng.random((machines, seconds)) < 0.45)
    made[:, 0] = False  # counters start at 0: the first sample is the baseline
    bad = made & (rng.random((machines, seconds)) < 0.03)
    good = np.cumsum(made & ~bad, axis=1, dtype=np.int32)
    reject = np.cumsum(bad, axis=1, dtype=np.int32)
    return state, good, reject


def naive_numpy(state, good, reject, start: int):
    """Straightforward NumPy on the 2-D arrays, window [start, end) of whole seconds."""
    s = state[:, start:]
    run = (s == EXECUTE).sum(axis=1)
    planned = (s != STOPPED_).sum(axis=1)
    g0 = good[:, start - 1] if start > 0 else 0
    r0 = reject[:, start - 1] if start > 0 else 0
    return run, planned, good[:, -1] - g0, reject[:, -1] - r0


def pure_python(state, good, reject, start: int, machines: int):
    out = []
    for m in range(machines):
        st, gd, rj = state[m].tolist(), good[m].tolist(), reject[m].tolist()
        run = planned = 0
        for t in range(start, len(st)):
            if st[t] == EXECUTE:
                run += 1
            if st[t] != STOPPED_:
                planned += 1
        prev_g = gd[start - 1] if start > 0 else 0
        prev_r = rj[start - 1] if start > 0 else 0
        g = r = 0
        for t in range(start, len(gd)):
            g += gd[t] - prev_g
            r += rj[t] - prev_r
            prev_g, prev_r = gd[t], rj[t]
        out.append((run, planned, g, r))
    return np.array(out)


def events(state, good, reject, t_from: int, t_to: int):
    """The edge agents' view of seconds [t_from, t_to): state changes and counter changes."""
    s = state[:, t_from:t_to]
    prev = state[:, t_from - 1: t_to - 1] if t_from > 0 else np.concatenate(
        [np.full((state.shape[0], 1), -1, np.int8), s[:, :-1]], axis=1)
    sm, st = np.nonzero(s != prev)
    g, r = good[:, t_from:t_to], reject[:, t_from:t_to]
    gp = good[:, t_from - 1: t_to - 1] if t_from > 0 else np.concatenate([np.zeros((g.shape[0], 1), g.dtype), g[:, :-1]], 1)
    rp = reject[:, t_from - 1: t_to - 1] if t_from > 0 else np.concatenate([np.zeros((r.shape[0], 1), r.dtype), r[:, :-1]], 1)
    cm, ct = np.nonzero((g != gp) | (r != rp) | (np.arange(t_from, t_to) == 0))
    return ((sm, T0 + t_from + st, s[sm, st]), (cm, T0 + t_from + ct, g[cm, ct], r[cm, ct]))


def append(tl: Timeline, ev) -> None:
    (sm, sts, code), (cm, cts, g, r) = ev
    cat = CONV.categorise(np.zeros(sm.size, np.int64), code.astype(np.int64), np.zeros(sm.size, np.int64))
    tl.append_states(sm, sts, cat, np.zeros(sm.size, np.int64))
    tl.append_counts(cm, cts, g, r, np.full(cm.size, 2.0))


def all_windows(tl: Timeline, now: float) -> dict:
    n = tl.n
    tl.set_now(np.arange(n), np.full(n, now))
    starts = np.array([[T0 if w is None else now - w] * n for w in WINDOWS.values()])
    tot = tl.windows(starts, np.full(starts.shape, now))
    return {name: oee.derive(t, CONV) for name, t in zip(WINDOWS, tot)}


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=86400)
    ap.add_argument("--ref-machines", type=int, default=20,
                    help="machines the pure-Python reference runs on (its time is scaled to all machines)")
    a = ap.parse_args()
    n, secs = a.machines, a.seconds
    t = time.perf_counter()
    state, good, reject = make_day(n, secs)
    print(f"{n} machines x {secs} s of 1 Hz data ({n * secs:,} samples per signal); "
          f"generated in {time.perf_counter() - t:.1f} s")

    # ours: ingest the day as the gateway would, an hour at a time
    live = 30  # the last seconds of the day arrive one by one, as they would live
    tl = Timeline(CONV, machines=n)
    t = time.perf_counter()
    for h in range(0, secs - live, 3600):
        append(tl, events(state, good, reject, h, min(h + 3600, secs - live)))
    t_ingest = time.perf_counter() - t
    t_windows = median_time(lambda: all_windows(tl, T0 + secs - live), 5)
    seconds = [events(state, good, reject, s, s + 1) for s in range(secs - live, secs)]
    updates = []
    for s, ev in zip(range(secs - live, secs), seconds):  # one-second update: append + every window
        t = time.perf_counter()
        append(tl, ev)
        all_windows(tl, T0 + s + 1)
        updates.append(time.perf_counter() - t)
    t_update = statistics.median(updates)
    k = all_windows(tl, T0 + secs)

    # the others, on the whole day
    t = time.perf_counter()
    run, planned, g, r = naive_numpy(state, good, reject, 0)
    t_naive = time.perf_counter() - t
    t = time.perf_counter()
    ref = pure_python(state, good, reject, 0, min(a.ref_machines, n))
    t_ref = (time.perf_counter() - t) * n / min(a.ref_machines, n)

    day = k["since_start"]
    assert np.array_equal(day["run_s"], run) and np.array_equal(day["planned_s"], planned), "run/planned differ"
    assert np.array_equal(day["good"], g) and np.array_equal(day["reject"], r), "counts differ"
    assert np.array_equal(ref, np.column_stack([run, planned, g, r])[: len(ref)]), "reference differs"

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'what':<62}{'seconds':>10}")
    print(f"{'ours: ingest the day (hourly appends, all machines)':<62}{t_ingest:>10.3f}")
    print(f"{'ours: recompute all 3 windows x all KPIs, all machines':<62}{t_windows:>10.4f}")
    print(f"{f'ours: one-second update (append 1 s + all windows), median of {live}':<62}{t_update:>10.4f}")
    print(f"{'straightforward NumPy, whole day, one window, 4 numbers':<62}{t_naive:>10.3f}")
    print(f"{f'pure-Python reference, one window (x{n / min(a.ref_machines, n):g} from {min(a.ref_machines, n)} machines)':<62}{t_ref:>10.1f}")
    print(f"ratios: pure Python / our window recompute = {t_ref / t_windows:,.0f}x; "
          f"pure Python / our full ingest = {t_ref / t_ingest:,.0f}x; "
          f"straightforward NumPy / our window recompute = {t_naive / t_windows:,.0f}x")
    print(f"peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
