"""Windows of OEE totals over recorded history: pure functions on NumPy arrays.

``build`` turns raw state changes and counter samples of many machines into a
``Timeline``: state intervals (classified, split at the shift calendar) and
count increments, each with prefix sums. ``totals`` then gives the additive
totals of any window for every machine with a vectorised binary search, so a
window costs O(machines × log(history)), not a pass over the history. The
KPIs are ``oee.derive(totals)``.

Intervals: a state lasts from its change until the machine's next change, or
until the end of its data (``end``). Counter samples report what was made up to
their timestamp, so a window (a, b] counts the increments of samples in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import oee
from .oee import BREAKDOWN, N_CAT, N_TOT, NOT_SCHEDULED, SETUP, SMALL_STOP, STOPPED, Conventions

POINT_COLUMNS = (oee.GOOD, oee.REJECT, oee.STARTUP_REJECT, oee.IDEAL, oee.IDEAL_GOOD,
                 oee.IDEAL_STARTUP_REJECT, oee.NO_IDEAL)


@dataclass
class Timeline:
    n: int  # machines
    # state intervals, sorted by (machine, start), tiling each machine's time without gaps
    im: np.ndarray
    start: np.ndarray
    end: np.ndarray
    cat: np.ndarray
    reason: np.ndarray
    ioff: np.ndarray  # machine m's intervals are [ioff[m], ioff[m+1])
    itime: np.ndarray  # exclusive prefix sums of seconds per category, shape (len+1, N_CAT)
    # count increments, sorted by (machine, ts)
    pm: np.ndarray
    pts: np.ndarray
    poff: np.ndarray
    ptot: np.ndarray  # exclusive prefix sums of POINT_COLUMNS, shape (len+1, 7)
    # failures (start of each breakdown episode that is not a small stop), sorted by (machine, ts)
    fm: np.ndarray
    fts: np.ndarray
    foff: np.ndarray


def _offsets(m: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(m, minlength=n))]).astype(np.int64)


def merge_calendar(start, end) -> np.ndarray:
    """Planned-downtime periods -> sorted, non-overlapping boundaries [s0, e0, s1, e1, ...]."""
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    keep = e > s
    s, e = s[keep], e[keep]
    if not s.size:
        return np.zeros(0)
    order = np.argsort(s, kind="stable")
    s, e = s[order], np.maximum.accumulate(e[order])
    new = np.ones(s.size, bool)
    new[1:] = s[1:] > e[:-1]  # a period that starts after everything before it has ended
    group = np.cumsum(new) - 1
    gs = s[new]
    ge = np.zeros(gs.size)
    np.maximum.at(ge, group, e)
    return np.column_stack([gs, ge]).ravel()


def _split_at(bounds: np.ndarray, s, e, *cols):
    """Split intervals [s, e) at the calendar boundaries inside them; flag the parts inside the calendar."""
    if not bounds.size:
        return s, e, np.zeros(s.size, bool), cols
    i0 = np.searchsorted(bounds, s, "right")
    i1 = np.searchsorted(bounds, e, "left")
    k = np.maximum(i1 - i0, 0)
    rep = np.repeat(np.arange(s.size), k + 1)
    first = np.concatenate([[0], np.cumsum(k + 1)[:-1]])
    j = np.arange(rep.size) - first[rep]
    b = lambda idx: bounds[np.clip(idx, 0, bounds.size - 1)]  # noqa: E731
    ns = np.where(j == 0, s[rep], b(i0[rep] + j - 1))
    ne = np.where(j == k[rep], e[rep], b(i0[rep] + j))
    inside = np.searchsorted(bounds, (ns + ne) / 2, "right") % 2 == 1
    return ns, ne, inside, tuple(c[rep] for c in cols)


def build(n: int, states, counts, end, calendar=np.zeros(0), conv: Conventions = oee.DEFAULT) -> Timeline:
    """Build the timeline of ``n`` machines.

    states: (m, ts, model, code, reason) arrays, any order; model 0 = packml, 1 = simple.
    counts: (m, ts, good, reject, ideal_cycle_s) arrays, any order; counters monotonic, NaN ideal = unknown.
    end: per machine, where its last state ends (its data end or the end of the report).
    calendar: merged boundaries from ``merge_calendar``: time in them is not scheduled.
    """
    sm, sts, smodel, scode, sreason = (np.asarray(a) for a in states)
    end = np.asarray(end, dtype=np.float64)
    o = oee.sort_by_machine(sm, sts)
    sm, sts, smodel, scode, sreason = sm[o].astype(np.int64), sts[o].astype(np.float64), smodel[o], scode[o], sreason[o]
    first, last = oee.group_bounds(sm)
    nxt = np.empty_like(sts)
    nxt[:-1] = sts[1:]
    nxt[last] = end[sm[last]]
    nxt = np.maximum(nxt, sts)
    cat = conv.categorise(smodel.astype(np.int64), scode.astype(np.int64), sreason)

    # episodes: runs of consecutive intervals in the same category (Holding -> Held is one stop)
    new_ep = first.copy()
    new_ep[1:] |= cat[1:] != cat[:-1]
    ep = np.cumsum(new_ep) - 1
    ep_dur = np.bincount(ep, nxt - sts) if ep.size else np.zeros(0)
    ep_start = sts[new_ep]
    ep_end = np.zeros(ep_dur.size)
    if ep.size:
        np.maximum.at(ep_end, ep, nxt)
    ep_cat = cat[new_ep]
    ep_m = sm[new_ep]
    small = np.isin(ep_cat, (BREAKDOWN, STOPPED)) & (ep_dur < conv.micro_stop_s)
    cat = np.where(small[ep], np.int8(SMALL_STOP), cat)
    fail = (ep_cat == BREAKDOWN) & ~small
    fm, fts = ep_m[fail], ep_start[fail]
    setup_m, setup_end = ep_m[ep_cat == SETUP], ep_end[ep_cat == SETUP]

    # the shift calendar wins: time inside planned downtime is not scheduled, whatever the state
    s, e, inside, (im, cat, reason) = _split_at(np.asarray(calendar, dtype=np.float64), sts, nxt, sm, cat, sreason)
    cat = np.where(inside, np.int8(NOT_SCHEDULED), cat)
    itime = np.zeros((s.size + 1, N_CAT))
    np.add.at(itime, (np.arange(1, s.size + 1), cat.astype(np.int64)), e - s)
    itime = np.cumsum(itime, axis=0)

    # counts: increments (Prometheus-style resets), start-up rejects after a setup
    cm, cts, good, reject, ideal = (np.asarray(a) for a in counts)
    o = oee.sort_by_machine(cm, cts)
    cm, cts = cm[o].astype(np.int64), cts[o].astype(np.float64)
    good, reject, ideal = good[o].astype(np.int64), reject[o].astype(np.int64), ideal[o].astype(np.float64)
    none = np.full(n, -1, np.int64)
    dg = oee.counter_increase(cm, good, none).astype(np.float64)
    dr = oee.counter_increase(cm, reject, none).astype(np.float64)
    since_setup = cts - oee.ffill_last(cm, cts, setup_m, setup_end)
    dsr = np.where(since_setup <= conv.startup_s, dr, 0.0)  # NaN (no setup yet) compares False
    known = ~np.isnan(ideal)
    ict = np.where(known, ideal, 0.0)
    cols = np.column_stack([dg, dr, dsr, (dg + dr) * ict, dg * ict, dsr * ict, np.where(known, 0.0, dg + dr)])
    ptot = np.vstack([np.zeros((1, cols.shape[1])), np.cumsum(cols, axis=0)])

    return Timeline(n, im, s, e, cat, reason, _offsets(im, n), itime,
                    cm, cts, _offsets(cm, n), ptot, fm, fts, _offsets(fm, n))


def _time_upto(tl: Timeline, m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Seconds per category of machine m from its first interval up to time t (prefix, offset by a constant)."""
    j = oee.segment_search(tl.start, tl.ioff, m, t, "right") - 1
    has = j >= tl.ioff[m]
    j = np.where(has, j, tl.ioff[m])
    out = tl.itime[j].copy()
    if tl.start.size:
        jj = np.minimum(j, tl.start.size - 1)
        part = np.clip(t - tl.start[jj], 0.0, tl.end[jj] - tl.start[jj])
        part = np.where(has & (j < tl.ioff[m + 1]), part, 0.0)
        out[np.arange(m.size), tl.cat[jj].astype(np.int64)] += part
    return out


def totals(tl: Timeline, a, b) -> np.ndarray:
    """Additive totals of every machine for the window [a, b) (counts: samples in (a, b]).

    ``a`` and ``b`` are scalars or per-machine arrays. Shape (n, N_TOT).
    """
    m = np.arange(tl.n)
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), (tl.n,))
    b = np.maximum(np.broadcast_to(np.asarray(b, dtype=np.float64), (tl.n,)), a)
    out = np.zeros((tl.n, N_TOT))
    out[:, :N_CAT] = _time_upto(tl, m, b) - _time_upto(tl, m, a)
    ib = oee.segment_search(tl.pts, tl.poff, m, b, "right")
    ia = oee.segment_search(tl.pts, tl.poff, m, a, "right")
    out[:, POINT_COLUMNS] = tl.ptot[ib] - tl.ptot[ia]
    out[:, oee.FAILURES] = (oee.segment_search(tl.fts, tl.foff, m, b, "left")
                            - oee.segment_search(tl.fts, tl.foff, m, a, "left"))
    return out


def stop_reasons(tl: Timeline, a: float, b: float) -> list[dict]:
    """Stop time inside planned production time per machine, category and reason code in [a, b),
    largest first (a Pareto)."""
    s = np.maximum(tl.start, a)
    e = np.minimum(tl.end, b)
    d = np.maximum(e - s, 0.0)
    sel = (d > 0) & (tl.cat != oee.RUN) & (tl.cat != NOT_SCHEDULED)  # losses inside planned time only
    if not sel.any():
        return []
    key = np.column_stack([tl.im[sel], tl.cat[sel], tl.reason[sel]])
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    secs = np.bincount(inv.ravel(), d[sel])
    order = np.argsort(-secs, kind="stable")
    return [{"machine": int(uniq[i, 0]), "category": oee.CATEGORIES[uniq[i, 1]], "reason": int(uniq[i, 2]),
             "seconds": float(secs[i])} for i in order]
