"""Boundary cases of the timeline, each pinning a mutant the other tests let through (bench/mutants.py;
docs/RELIABILITY.md, "Mutation testing")."""
import numpy as np

from gateway import oee, timeline
from gateway.config import Period, SiteConfig

EXECUTE, HELD = 4, 15


def one_machine(changes, end):
    """A timeline of one PackML machine from [(ts, code)], its state lasting until ``end``."""
    ts = np.array([t for t, _ in changes], float)
    n = ts.size
    codes = np.array([c for _, c in changes])
    states = (np.zeros(n, np.int64), ts, np.zeros(n, np.int64), codes, np.zeros(n, np.int64))
    counts = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return timeline.build(1, states, counts, [end])


def test_pieces_from_a_state_change_do_not_include_the_piece_ending_there():
    """Pins gateway/timeline.py:208 (``e > a`` -> ``e >= a``): the run that ends at 100 s is not shown as an
    empty piece in a window that starts at 100 s."""
    tl = one_machine([(0, EXECUTE), (100, HELD), (300, EXECUTE)], 400)
    s, e, cat, _ = tl.pieces(0, 100.0, 400.0)
    assert s.tolist() == [100, 300] and e.tolist() == [300, 400]
    assert cat.tolist() == [oee.BREAKDOWN, oee.RUN]


def test_a_counter_sample_that_adds_nothing_takes_no_row():
    """Pins gateway/timeline.py:346 (``(dg + dr) > 0`` -> ``>= 0``): a stopped machine that repeats its counters
    every second stores a row only for the sample that made a part."""
    tl = timeline.Timeline(machines=1)
    ts = np.arange(100.0)
    good = np.where(ts < 50, 7, 8)
    tl.append_counts(np.zeros(100, np.int64), ts, good, np.zeros(100, np.int64), np.ones(100))
    tl.set_now(np.array([0]), np.array([100.0]))
    assert tl.c.fill[0] == 1
    assert tl.totals(0.0, 100.0)[0, oee.GOOD] == 1


def test_stop_reasons_of_a_window_from_before_the_cut_read_only_the_kept_pieces():
    """Pins gateway/timeline.py:514 (``np.maximum(... - 1, 0)`` -> ``np.minimum``): a window that starts before
    a machine's first kept piece (after ``prune``) reads from that piece, not the row before it (index -1,
    the array's last row: after prune gave memory back, a stale piece from long before the cut)."""
    tl = timeline.Timeline(machines=1)
    n = 1000  # 200 s each, run and breakdown in turn
    ts = 200.0 * np.arange(n)
    cat = np.where(np.arange(n) % 2, oee.BREAKDOWN, oee.RUN).astype(np.int8)
    tl.append_states(np.zeros(n, np.int64), ts, cat, np.zeros(n, np.int64))
    tl.set_now(np.array([0]), np.array([n * 200.0]))
    cut = ts[-10]
    tl.prune(np.array([cut]), np.array([0.0]))
    assert tl.p.cap[0] < 256 and tl.p.pool <= 256  # memory given back: its last row is a piece from before the cut
    kept = tl.stop_reasons(cut, n * 200.0)
    assert kept == [{"machine": 0, "category": "breakdown", "reason": 0, "seconds": 1000.0}]
    assert tl.stop_reasons(0.0, n * 200.0) == kept


def test_a_break_that_falls_in_the_clock_change_does_not_cut_a_piece():
    """Pins gateway/timeline.py:47 (``keep = e > s`` -> ``e >= s``): on 29 March 2026 a Dutch site's night break
    02:00-03:00 does not exist (the clock jumps from 02:00 to 03:00): its period starts and ends at 01:00 UTC. A
    period of no length is no period: the run from 00:00 to 02:00 UTC stays one piece, not [0, 1 h) and [1 h, 2 h)
    with an empty piece between them."""
    t0 = 1774742400.0  # 2026-03-29 00:00 UTC (01:00 CET)
    site = SiteConfig(timezone="Europe/Amsterdam", breaks=[Period("night break", 2 * 60, 3 * 60)])
    cal = site.calendar(t0, t0 + 3 * 3600)
    # the breaks of 28 March (02:00 CET = 01:00 UTC) and 30 March (02:00 CEST = 00:00 UTC), none on the 29th
    assert (cal - t0).tolist() == [-82800.0, -79200.0, 86400.0, 90000.0]
    states = (np.zeros(2, np.int64), t0 + np.array([0.0, 7200.0]), np.zeros(2, np.int64), np.array([EXECUTE, HELD]),
              np.zeros(2, np.int64))
    counts = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    tl = timeline.build(1, states, counts, [t0 + 9000.0], cal)
    s, e, cat, _ = tl.pieces(0, t0, t0 + 9000.0)
    assert (s - t0).tolist() == [0.0, 7200.0] and (e - t0).tolist() == [7200.0, 9000.0]
    assert cat.tolist() == [oee.RUN, oee.BREAKDOWN]
    assert tl.p.fill[0] == 1
    tot = tl.totals(t0, t0 + 9000.0)[0]
    assert tot[oee.RUN] == 7200.0 and tot[oee.BREAKDOWN] == 1800.0 and tot[oee.NOT_SCHEDULED] == 0.0
