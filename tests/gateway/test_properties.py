"""The vectorised timeline against a slow, obviously-correct pure-Python reference, on random
event streams (hypothesis), plus the invariants every OEE must satisfy."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import oee, timeline

CONVS = [oee.DEFAULT,
         oee.Conventions(micro_stop_s=5, micro_stops_as="availability", setup_as="excluded", startup_s=3,
                         reasons={7: oee.SETUP})]


# ----------------------------------------------------------------------------- the reference

def ref_category(conv, model, code, reason):
    if reason in conv.reasons:
        return conv.reasons[reason]
    base, over = ((oee.PACKML_CATEGORIES, conv.packml), (oee.SIMPLE_CATEGORIES, conv.simple))[model]
    return {**base, **over}.get(code, oee.STOPPED)


def overlap(s, e, a, b):
    return max(0.0, min(e, b) - max(s, a))


def ref_calendar(periods):
    """Merge overlapping planned-downtime periods, one by one."""
    merged = []
    for s, e in sorted(p for p in periods if p[1] > p[0]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def ref_totals(changes, counts, end, periods, a, b, conv):
    """Totals of one machine in [a, b): loops over every interval and every sample."""
    out = [0.0] * oee.N_TOT
    cal = ref_calendar(periods)
    changes = sorted(changes, key=lambda c: c[0])  # stable: equal times keep their order
    ivs = []
    for i, (t, model, code, reason) in enumerate(changes):
        nxt = changes[i + 1][0] if i + 1 < len(changes) else max(end, t)
        ivs.append([t, nxt, ref_category(conv, model, code, reason)])
    # episodes: consecutive intervals of one category
    episodes = []
    for iv in ivs:
        if episodes and episodes[-1][0][2] == iv[2]:
            episodes[-1].append(iv)
        else:
            episodes.append([iv])
    setup_ends = []
    for ep in episodes:
        cat = ep[0][2]
        dur = sum(iv[1] - iv[0] for iv in ep)
        small = cat in (oee.BREAKDOWN, oee.STOPPED) and dur < conv.micro_stop_s
        if small:
            for iv in ep:
                iv[2] = oee.SMALL_STOP
        if cat == oee.BREAKDOWN and not small and a <= ep[0][0] < b:
            out[oee.FAILURES] += 1
        if cat == oee.SETUP and ep is not episodes[-1]:  # a setup ends when the machine leaves it
            setup_ends.append(ep[-1][1])
    for s, e, cat in ivs:
        inside = overlap(s, e, a, b)
        in_cal = sum(overlap(max(s, a), min(e, b), cs, ce) for cs, ce in cal) if inside else 0.0
        out[cat] += inside - in_cal
        out[oee.NOT_SCHEDULED] += in_cal
    prev = None
    for ts, good, reject, ideal in sorted(counts, key=lambda c: c[0]):
        if prev is not None:
            dg = good - prev[0] if good >= prev[0] else good
            dr = reject - prev[1] if reject >= prev[1] else reject
            if a < ts <= b:
                before = [x for x in setup_ends if x <= ts]
                startup = bool(before) and ts - max(before) <= conv.startup_s
                out[oee.GOOD] += dg
                out[oee.REJECT] += dr
                out[oee.STARTUP_REJECT] += dr if startup else 0
                if math.isnan(ideal):
                    out[oee.NO_IDEAL] += dg + dr
                else:
                    out[oee.IDEAL] += (dg + dr) * ideal
                    out[oee.IDEAL_GOOD] += dg * ideal
                    out[oee.IDEAL_STARTUP_REJECT] += (dr if startup else 0) * ideal
        prev = (good, reject)
    return out


# ----------------------------------------------------------------------------- random streams

times = st.integers(0, 60).map(float)  # a small range: equal times and boundary durations happen


@st.composite
def machine_stream(draw):
    n_changes = draw(st.integers(0, 12))
    changes = sorted(((draw(times), draw(st.integers(0, 1)), draw(st.integers(0, 16)), draw(st.sampled_from([0, 7])))
                      for _ in range(n_changes)), key=lambda c: c[0])
    changes = [(t, mdl, code if mdl == 0 else code % 5, r) for t, mdl, code, r in changes]
    n_counts = draw(st.integers(0, 12))
    ts = sorted(draw(times) for _ in range(n_counts))
    good = reject = 0
    counts = []
    for t in ts:
        if draw(st.integers(0, 9)) == 0:
            good, reject = draw(st.integers(0, 3)), 0  # counter reset: the machine restarted
        else:
            good += draw(st.integers(0, 20))
            reject += draw(st.integers(0, 3))
        counts.append((t, good, reject, draw(st.sampled_from([1.0, 2.5, float("nan")]))))
    end = draw(times)
    return changes, counts, end


@st.composite
def scenario(draw):
    machines = draw(st.lists(machine_stream(), min_size=1, max_size=3))
    periods = draw(st.lists(st.tuples(times, times), max_size=3))
    a = draw(times)
    b = draw(times)
    return machines, periods, min(a, b), max(a, b), draw(st.sampled_from(CONVS))


def build(machines, periods, conv):
    rows = [(m, *c) for m, (changes, _, _) in enumerate(machines) for c in changes]
    crow = [(m, *c) for m, (_, counts, _) in enumerate(machines) for c in counts]
    s = np.array(rows, float).reshape(-1, 5)
    c = np.array(crow, float).reshape(-1, 5)
    states = (s[:, 0].astype(np.int64), s[:, 1], s[:, 2].astype(np.int64), s[:, 3].astype(np.int64),
              s[:, 4].astype(np.int64))
    counts = (c[:, 0].astype(np.int64), c[:, 1], c[:, 2].astype(np.int64), c[:, 3].astype(np.int64), c[:, 4])
    cal = timeline.merge_calendar([p[0] for p in periods], [p[1] for p in periods])
    return timeline.build(len(machines), states, counts, [m[2] for m in machines], cal, conv)


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_timeline_equals_the_reference(sc):
    machines, periods, a, b, conv = sc
    got = build(machines, periods, conv).totals(a, b)
    for m, (changes, counts, end) in enumerate(machines):
        want = ref_totals(changes, counts, end, periods, a, b, conv)
        assert got[m] == pytest.approx(want, abs=1e-9), (m, oee.TOTALS)


@settings(max_examples=150, deadline=None)
@given(scenario(), times)
def test_windows_add_up_and_ratios_stay_sane(sc, mid):
    machines, periods, a, b, conv = sc
    tl = build(machines, periods, conv)
    mid = min(max(mid, a), b)
    whole = tl.totals(a, b)
    np.testing.assert_allclose(whole, tl.totals(a, mid) + tl.totals(mid, b), atol=1e-9)
    k = oee.derive(whole, conv)
    for name in ("availability", "quality", "utilisation"):
        v = k[name][~np.isnan(k[name])]
        assert ((v >= -1e-12) & (v <= 1 + 1e-12)).all(), name
    both = ~np.isnan(k["availability"] * k["performance"] * k["quality"])
    np.testing.assert_allclose(k["oee"][both], k["oee_simple"][both], rtol=1e-9)
    # a line is the sum of its machines' totals: its OEE is not an average of percentages
    line = oee.derive(oee.aggregate(whole, np.zeros(tl.n, np.int64), 1), conv)
    planned = k["planned_s"].sum()
    if planned > 0 and not np.isnan(k["ideal_good_s"]).any():
        assert line["oee_simple"][0] == pytest.approx(k["ideal_good_s"].sum() / planned)


@settings(max_examples=200, deadline=None)
@given(scenario(), st.lists(times, max_size=4))
def test_appending_piece_by_piece_equals_building_at_once(sc, cuts):
    """The gateway appends every tick: the result must not depend on where the ticks fell."""
    machines, periods, a, b, conv = sc
    whole = build(machines, periods, conv)
    cal = timeline.merge_calendar([p[0] for p in periods], [p[1] for p in periods])
    tl = timeline.Timeline(conv, cal, len(machines))
    edges = sorted(set(cuts)) + [math.inf]
    lo = -math.inf
    for hi in edges:  # each tick appends what happened in (lo, hi], for all machines together
        rows = [(m, t, mdl, code, r) for m, (changes, _, _) in enumerate(machines)
                for t, mdl, code, r in changes if lo < t <= hi]
        if rows:
            s = np.array(rows, float)
            o = np.lexsort((s[:, 1], s[:, 0]))
            s = s[o]
            cat = conv.categorise(s[:, 2].astype(np.int64), s[:, 3].astype(np.int64), s[:, 4].astype(np.int64))
            tl.append_states(s[:, 0].astype(np.int64), s[:, 1], cat, s[:, 4].astype(np.int64))
        crows = [(m, *c) for m, (_, counts, _) in enumerate(machines) for c in counts if lo < c[0] <= hi]
        if crows:
            c = np.array(crows, float)
            c = c[np.lexsort((c[:, 1], c[:, 0]))]
            tl.append_counts(c[:, 0].astype(np.int64), c[:, 1], c[:, 2].astype(np.int64), c[:, 3].astype(np.int64),
                             c[:, 4])
        if hi != math.inf:
            tl.totals(a, b)  # reading in between must not disturb anything
        lo = hi
    tl.set_now(np.arange(len(machines)), [m[2] for m in machines])
    np.testing.assert_allclose(tl.totals(a, b), whole.totals(a, b), atol=1e-9)


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_stop_reasons_add_up_to_the_stop_time(sc):
    """The Pareto of stop reasons covers exactly the planned stop time of the window, per category."""
    machines, periods, a, b, conv = sc
    tl = build(machines, periods, conv)
    tot = tl.totals(a, b)
    got = np.zeros_like(tot)
    for r in tl.stop_reasons(a, b):
        got[r["machine"], oee.CATEGORIES.index(r["category"])] += r["seconds"]
    for c in (oee.BREAKDOWN, oee.STOPPED, oee.SETUP, oee.SMALL_STOP):
        np.testing.assert_allclose(got[:, c], tot[:, c], atol=1e-9)
