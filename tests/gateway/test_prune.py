"""Bounded memory (KpiEngine.prune): an engine that forgets old history gives the same KPIs, stop reasons and
state pieces for every window, since_start included, as one that keeps everything, over several days."""
import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from contract import CountsBatch, MachineRef, StateBatch, TelemetryBatch
from gateway import checkpoint, config, timeline
from gateway.engine import PRUNE_MARGIN, KpiEngine

EXECUTE, HOLDING, HELD, UNHOLDING, SUSPENDED, COMPLETE, IDLE, STOPPED = 4, 14, 15, 16, 12, 6, 2, 0
TZ = "Europe/Amsterdam"
T0 = dt.datetime(2024, 3, 28, 17, 0, tzinfo=ZoneInfo(TZ)).timestamp()  # summer time starts on the 31st
HOUR, DAY = 3600.0, 86400.0


def site() -> config.SiteConfig:
    return config.parse({"timezone": TZ,
                         "shifts": [{"name": "early", "start": "06:00", "end": "14:00"},
                                    {"name": "late", "start": "14:00", "end": "22:00"},
                                    {"name": "night", "start": "22:00", "end": "02:00"}],  # 02:00-06:00 off
                         "breaks": [{"start": "12:00", "end": "12:30"}, {"start": "19:00", "end": "19:20"}]})


def machine_days(rng, days: float, always_running: bool = False):
    """One machine's state changes (ts, code, reason) and counter samples (ts, good, reject, ideal or NaN):
    runs, breakdowns (some for hours, across shifts and midnight), small stops, shortages, changeovers
    (a new ideal cycle time, more rejects just after), planned stops, counter resets."""
    end = T0 + days * DAY
    t = T0 + rng.uniform(0, 600)
    states, samples = [(t, EXECUTE, 0)], []
    good = reject = 0
    ideal, setup_end = 2.0, -np.inf
    while t < end:
        run = end - t if always_running else rng.exponential(1800)
        ts = t + np.cumsum(rng.exponential(20.0, int(run / 20) + 1))
        ts = ts[ts < t + run]
        for s in ts:
            made = int(rng.integers(0, 20))
            bad = int(rng.binomial(made, 0.3 if s - setup_end < 600 else 0.03))
            if rng.random() < 0.002:
                good, reject = 0, 0  # the machine restarted: its counters begin again
            good, reject = good + made - bad, reject + bad
            samples.append((s, good, reject, ideal))
        t += run
        if always_running:
            break
        kind = rng.choice(["breakdown", "long", "small", "shortage", "changeover", "off"],
                          p=[0.25, 0.1, 0.25, 0.2, 0.1, 0.1])
        if kind in ("breakdown", "long", "small"):
            d = {"breakdown": rng.exponential(900), "long": rng.uniform(3, 9) * HOUR,
                 "small": rng.uniform(10, 100)}[kind]
            reason = 102 if kind == "small" else 101
            states += [(t, HOLDING, reason), (t + 2, HELD, reason), (t + 2 + d, UNHOLDING, reason)]
            t += 4 + d
        elif kind == "shortage":
            states.append((t, SUSPENDED, 201))
            t += rng.uniform(20, 400)
        elif kind == "changeover":
            d = rng.uniform(600, 1800)
            states += [(t, COMPLETE, 301), (t + d / 2, IDLE, 301)]
            t += d
            setup_end = t
            ideal = [1.5, 2.0, 3.0, np.nan][rng.integers(0, 4)]  # the next order; NaN: not known
        else:
            states.append((t, STOPPED, 0))
            t += rng.uniform(1, 4) * HOUR
        states.append((t, EXECUTE, 0))
        samples.append((t, good, reject, ideal))  # a sample that adds nothing
    return np.array(states), np.array(samples)


def changes(rows) -> StateBatch:
    """State changes from rows of (ts, code, reason)."""
    s = np.array(rows, float).reshape(-1, 3)
    return StateBatch(s[:, 0], s[:, 1].astype(np.int64), s[:, 2].astype(np.int64))


def feed(engines, data, lo: float, hi: float, rng) -> None:
    """What the machines sent in (lo, hi], as batches, into each engine; then fold."""
    for m, (states, samples) in enumerate(data):
        s = states[(states[:, 0] > lo) & (states[:, 0] <= hi)]
        c = samples[(samples[:, 0] > lo) & (samples[:, 0] <= hi)]
        batches = []
        if len(s):
            batches.append(changes(s))
        ideal = c[:, 3]
        split = np.flatnonzero(~((ideal[1:] == ideal[:-1]) | (np.isnan(ideal[1:]) & np.isnan(ideal[:-1])))) + 1
        for part in np.split(c, split) if len(c) else []:  # a batch per product: one ideal cycle time each
            ict = None if np.isnan(part[0, 3]) else float(part[0, 3])
            batches.append(CountsBatch(part[:, 0], part[:, 1].astype(np.int64), part[:, 2].astype(np.int64), "p", ict))
        if rng.random() < 0.9:  # now and then a machine is quiet for a while
            batches.append(TelemetryBatch(np.array([hi]), {"temp": np.array([60.0])}))
        for e in engines:
            for b in batches:
                {StateBatch: e.add_state, CountsBatch: e.add_counts, TelemetryBatch: e.add_telemetry}[type(b)](m, b)
    for e in engines:
        e.fold()


def assert_same(pruned: KpiEngine, full: KpiEngine, where: str) -> None:
    a, b = pruned.snapshot(), full.snapshot()
    for window in b:
        for kpi, want in b[window].items():
            if kpi == "stop_reasons":
                for got_m, want_m in zip(a[window][kpi], want):
                    assert [(r["category"], r["reason"]) for r in got_m] == [(r["category"], r["reason"])
                                                                            for r in want_m], where
                    np.testing.assert_allclose([r["seconds"] for r in got_m], [r["seconds"] for r in want_m],
                                               rtol=1e-9, err_msg=where)
            else:  # the additive totals to 1e-9 relative; KPIs made of differences (losses) also to 1 µs
                atol = 0.0 if kpi == "totals" else 1e-6
                np.testing.assert_allclose(a[window][kpi], want, rtol=1e-9, atol=atol,
                                           err_msg=f"{where}: {window} {kpi}")
    for window in ("last_1h", "shift", "today"):
        for m in range(full.n):
            ab = (b[window]["start"][m], b[window]["end"][m])
            for got, want in zip(pruned.timeline.pieces(m, *ab), full.timeline.pieces(m, *ab)):
                np.testing.assert_array_equal(got, want, err_msg=f"{where}: pieces {window} machine {m}")


@pytest.mark.parametrize("seed, move_rows", [(11, 1 << 18), (12, 300)])
def test_pruned_engine_equals_the_unpruned_one_over_five_days(seed, move_rows, monkeypatch):
    print(f"seed {seed}")
    monkeypatch.setattr(timeline._Rows, "MOVE_ROWS", move_rows)  # 300: rows move in several groups
    rng = np.random.default_rng(seed)
    days = 5
    data = [machine_days(rng, days, always_running=m == 0) for m in range(4)]
    pruned, full = KpiEngine(site()), KpiEngine(site())
    for e in (pruned, full):
        for _ in data:
            e.add_machine()
    lo, dropped = -np.inf, 0
    t = T0
    while t < T0 + days * DAY + HOUR:
        hi = t + rng.uniform(300, 5400)
        feed((pruned, full), data, lo, hi, rng)
        dropped += pruned.prune()
        assert_same(pruned, full, f"seed {seed}, up to {dt.datetime.fromtimestamp(hi, ZoneInfo(TZ))}")
        lo = t = hi
    c_pruned, c_full = pruned.timeline.c, full.timeline.c
    assert dropped > 0.6 * c_full.fill.sum()  # most of five days is gone ...
    assert c_pruned.fill.max() < 0.45 * c_full.fill.max() and c_pruned.pool < c_full.pool  # ... memory too
    assert (pruned.timeline.kept_from > T0 + (days - 2) * DAY).all()


def engine_with(states, counts=(), now=None) -> KpiEngine:
    """One machine, the default site (UTC, planned around the clock, shifts at 6, 14 and 22 h)."""
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, changes(states))
    if counts:
        c = np.array(counts, float)
        e.add_counts(m, CountsBatch(c[:, 0], c[:, 1].astype(np.int64), c[:, 2].astype(np.int64), "p", 2.0))
    if now is not None:
        e.add_telemetry(m, TelemetryBatch(np.array([now]), {}))
    e.fold()
    return e


def tell(e: KpiEngine, states=(), now=None) -> None:
    if states:
        e.add_state(0, changes(states))
    if now is not None:
        e.add_telemetry(0, TelemetryBatch(np.array([now]), {}))
    e.fold()


def test_a_breakdown_open_across_the_cut_is_one_failure_before_and_after_it_ends():
    t = T0 + DAY  # 16:00 UTC
    e = engine_with([(T0, EXECUTE, 0), (t, HOLDING, 101), (t + 2, HELD, 101)],
                    [(T0 + i * 60, i, 0) for i in range(24 * 60)], now=t + 12 * HOUR)
    assert e.prune() > 0 and e.timeline.kept_from[0] > t  # the cut is inside the breakdown
    assert e.snapshot()["since_start"]["failures"][0] == 1
    tell(e, [(t + 13 * HOUR, EXECUTE, 0)], now=t + 14 * HOUR)
    k = e.snapshot()["since_start"]
    assert (k["failures"][0], k["breakdown_s"][0], k["run_s"][0], k["good"][0]) == (1, 13 * HOUR, DAY + HOUR,
                                                                                   24 * 60 - 1)


def test_a_cut_just_after_a_stop_began_moves_back_to_its_start():
    """The machine stopped 60 s before the cut would be; a late Execute 70 s after the stop began makes it
    a small stop, so that stretch before the cut was not final yet."""
    cut = T0 + 6 * HOUR  # with data up to T0 + 30 h: 2024-03-28 22:00 UTC, midnight less the margin
    e = engine_with([(T0, EXECUTE, 0), (cut - 60, HOLDING, 101)], now=T0 + 30 * HOUR)
    e.prune()
    assert e.timeline.kept_from[0] == cut - 60
    tell(e, [(cut + 10, EXECUTE, 0)])
    k = e.snapshot()["since_start"]
    assert (k["small_stop_s"][0], k["breakdown_s"][0], k["failures"][0]) == (70.0, 0.0, 0)


def test_a_breakdown_from_exactly_the_cut_is_counted_once():
    """Machine 0 breaks down at the cut and is still down; machine 1 broke down at the cut for 10 minutes."""
    cut = T0 + 6 * HOUR  # with data up to T0 + 30 h: 2024-03-28 22:00 UTC, midnight less the margin
    e = KpiEngine()
    for m, states in enumerate([[(T0, EXECUTE, 0), (cut, HELD, 101)],
                                [(T0, EXECUTE, 0), (cut, HELD, 101), (cut + 600, EXECUTE, 0)]]):
        e.add_machine()
        e.add_state(m, changes(states))
        e.add_telemetry(m, TelemetryBatch(np.array([T0 + 30 * HOUR]), {}))
    e.fold()
    e.prune()
    assert (e.timeline.kept_from == cut).all()
    k = e.snapshot()["since_start"]
    assert list(k["failures"]) == [1, 1] and list(k["breakdown_s"]) == [24 * HOUR, 600.0]


def test_data_at_or_before_the_cut_is_too_late_and_changes_nothing():
    e = engine_with([(T0, EXECUTE, 0)], [(T0 + i * 60, i, 0) for i in range(60 * 5)], now=T0 + 30 * HOUR)
    e.prune()
    cut = e.timeline.kept_from[0]
    assert cut > T0 + 5 * HOUR  # after the last state change and the last counter sample
    before = e.snapshot()
    tell(e, [(cut - HOUR, STOPPED, 0), (cut, HELD, 101)])
    e.add_counts(0, CountsBatch(np.array([cut]), np.array([10 ** 6]), np.array([0]), "p", 2.0))
    e.fold()
    after = e.snapshot()
    for window in before:
        np.testing.assert_array_equal(after[window]["totals"], before[window]["totals"], err_msg=window)
    # the next sample in time counts what the late one had (the counters are cumulative)
    e.add_counts(0, CountsBatch(np.array([T0 + 30 * HOUR]), np.array([10 ** 6 + 5]), np.array([0]), "p", 2.0))
    e.fold()
    assert e.snapshot()["since_start"]["good"][0] == 10 ** 6 + 5


def test_prune_keeps_what_the_windows_need_and_a_margin():
    e, full = (engine_with([(T0, EXECUTE, 0), (T0 + 46 * HOUR, HELD, 101)], [(T0 + i * 60, i, i // 7)
                                                                          for i in range(60 * 50)],
                           now=T0 + 50 * HOUR) for _ in range(2))
    assert e.prune() > 0
    now = e.now_ts[0]  # 2024-03-30 18:00 UTC: today began at midnight, the longest window
    cut = e.config.day_start(np.array([now]))[0] - PRUNE_MARGIN
    assert e.timeline.kept_from[0] == cut
    assert e.prune() == 0
    full.snapshot()  # passes the machines' now on to the timeline, as prune does
    for a in (cut, cut + 1.0, T0 + 46 * HOUR):  # windows from the cut on read the kept rows
        np.testing.assert_array_equal(e.timeline.query([0], [a], [now]), full.timeline.query([0], [a], [now]))


def test_a_rolling_cut_moves_on_by_the_hour():
    """With a 2-day rolling window the cut moves with every sample: the rows move once an hour, not every tick."""
    e = KpiEngine(windows=(("last_2d", 2 * DAY),))
    e.add_machine()
    c = np.arange(T0, T0 + 3 * DAY, 60.0)
    e.add_counts(0, CountsBatch(c, np.arange(c.size), np.zeros(c.size, np.int64), "p", 2.0))
    e.fold()
    assert e.prune() > 0 and e.timeline.kept_from[0] == c[-1] - 2 * DAY - PRUNE_MARGIN
    for minutes, dropped in ((30, 0), (29, 0), (2, 61)):  # 30, 59, 61 minutes on
        t = c[-1] + 60.0 * np.arange(1, minutes + 1)
        e.add_counts(0, CountsBatch(t, np.arange(c.size, c.size + minutes), np.zeros(minutes, np.int64), "p", 2.0))
        e.fold()
        assert e.prune() == dropped, minutes
        c = np.concatenate([c, t])


def test_memory_is_given_back_after_a_long_unpruned_history():
    """Five days never pruned (an older gateway's checkpoint, say), then pruned at 00:30: 4.5 hours are kept,
    and the rows' capacity shrinks with them."""
    c = np.arange(T0, T0 + 5 * DAY + 8.5 * HOUR + 1, 10.0)
    e = engine_with([(T0, EXECUTE, 0)], [(t, i, i // 50) for i, t in enumerate(c)])
    before, cap = e.snapshot(), e.timeline.c.pool
    assert e.prune() > 0
    assert e.timeline.c.fill[0] == 4.5 * 360 + 1 and e.timeline.c.pool <= cap // 4
    after = e.snapshot()
    for window in before:
        np.testing.assert_allclose(after[window]["totals"], before[window]["totals"], rtol=1e-12, err_msg=window)


def test_a_pruned_engine_survives_a_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    data = [machine_days(rng, 3) for _ in range(2)]
    pruned, full = KpiEngine(site()), KpiEngine(site())
    for e in (pruned, full):
        for _ in data:
            e.add_machine()
    feed((pruned, full), data, -np.inf, T0 + 2 * DAY, rng)
    assert pruned.prune() > 0
    refs = [MachineRef("s", "a", "l", f"m{i}") for i in range(2)]
    path = tmp_path / "gw.checkpoint.npz"
    checkpoint.save(path, pruned, refs, {})
    restored = KpiEngine(site())
    checkpoint.read(path, restored)
    feed((restored, full), data, T0 + 2 * DAY, T0 + 3 * DAY, rng)
    restored.prune()
    assert_same(restored, full, "after a restart")
