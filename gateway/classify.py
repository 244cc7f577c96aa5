"""What people enter afterwards about a machine's history (contract kind ``operator``): pure NumPy on a
gateway/timeline.py ``Timeline``, no I/O, no clock.

- ``stops``: a machine's unclassified stops in a window (what the operator terminal lists).
- ``classify``: the stop at a time gets a reason code. A *stop* is a run of consecutive state pieces of one
  category, breakdown or stopped (setup and external too), that contains the time (closed, or still open). Every piece of
  it gets the reason; its category follows the reason where the site maps reasons to categories
  (``Conventions.reasons``), else it keeps its category. So its seconds move from "unclassified" (reason 0)
  to the reason in the Pareto (``Timeline.stop_reasons``), and between loss categories only if the category
  changes; planned time, run time and counts stay as they are.
- ``add_rejects``: parts found bad by hand move from good to reject (the total stays).

Each returns None when done, else why not in one sentence (the gateway dead-letters the entry with it);
``classify`` also returns the start times of the pieces it gave the reason (storage rewrites their ``reason``).
docs/oee.md (Stops classified afterwards) has the rules.
"""
from __future__ import annotations

import numpy as np

from .oee import BREAKDOWN, CATEGORIES, EXTERNAL, GOOD, NOT_SCHEDULED, RUN, SETUP, SMALL_STOP, STOPPED, Conventions
from .timeline import C_GOOD, C_IDEAL, C_IDEAL_GOOD, C_REJECT, Timeline, _Rows

LISTED = (BREAKDOWN, STOPPED)  # the stops the operator terminal lists when they have no reason yet: the machine's own
CLASSIFIABLE = (BREAKDOWN, STOPPED, SETUP, EXTERNAL)  # (external: starved or blocked by the line)


def _pieces(tl: Timeline, m: int):
    """Machine m's pieces, the open one last: (start, end, category, reason, open), closed pieces' rows first."""
    rows = tl.p
    n, o = int(rows.fill[m]), int(rows.off[m])
    s, c, r = rows.t[o:o + n], rows.cat[o:o + n].astype(np.int64), rows.reason[o:o + n]
    e = np.append(s[1:], tl.last_t[m]) if n else s
    if not np.isnan(tl.last_t[m]) and tl.now[m] > tl.last_t[m]:
        s, e = np.append(s, tl.last_t[m]), np.append(e, tl.now[m])
        c, r = np.append(c, int(tl.last_cat[m])), np.append(r, tl.last_reason[m])
    is_open = np.zeros(s.size, bool)
    if s.size > n:
        is_open[-1] = True
    return s, e, c, r, is_open


def _runs(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of equal categories."""
    if not c.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.ones(c.size, bool)
    new[1:] = c[1:] != c[:-1]
    starts = np.flatnonzero(new)
    return starts, np.append(starts[1:], c.size)


def stops(tl: Timeline, conv: Conventions, m: int, a: float, b: float, min_s: float | None = None) -> list[dict]:
    """Machine m's stops (breakdown, stopped) overlapping [a, b) that have a piece without a reason and last at
    least ``min_s`` (and never less than the micro-stop threshold: shorter ones are small stops), oldest first:
    [{"start", "end", "seconds", "category", "open"}]."""
    s, e, c, r, is_open = _pieces(tl, m)
    j0, j1 = _runs(c)
    if not j0.size:
        return []
    start, end, cat = s[j0], e[j1 - 1], c[j0]
    unclassified = np.add.reduceat((r == 0).astype(np.int64), j0) > 0
    least = max(conv.micro_stop_s, min_s or 0.0)
    keep = (np.isin(cat, LISTED) & unclassified & (end - start >= least) & (end > a) & (start < b)
            & (start >= tl.kept_from[m]))
    return [{"start": float(x), "end": float(y), "seconds": float(y - x), "category": CATEGORIES[int(k)],
             "open": bool(o)} for x, y, k, o in zip(start[keep], end[keep], cat[keep], is_open[j1 - 1][keep])]


def _set_point(rows: _Rows, m: int, t: float, present: bool) -> None:
    """Add (present) or remove the point t in machine m's sorted point rows (failures, setup ends)."""
    n, o = int(rows.fill[m]), int(rows.off[m])
    pts = rows.t[o:o + n]
    has = np.flatnonzero(pts == t)
    if present == bool(has.size):
        return
    new = np.insert(pts, np.searchsorted(pts, t, "right"), t) if present else np.delete(pts, has[:1])
    rows.reserve(np.array([m]), np.array([new.size + 2]))
    o = int(rows.off[m])
    rows.t[o:o + new.size] = new
    rows.t[o + new.size:o + n + 1] = np.inf  # a removed point's old slot reads as empty again
    rows.fill[m] = new.size


def classify(tl: Timeline, conv: Conventions, m: int, ts: float, reason: int) -> tuple[str | None, np.ndarray]:
    """The stop of machine m that contains ``ts`` gets ``reason`` (module docstring): (None, the start times of
    its pieces), or (why not, nothing)."""
    why = _classify(tl, conv, m, ts, reason)
    return (why, np.zeros(0)) if isinstance(why, str) else (None, why)


def _classify(tl: Timeline, conv: Conventions, m: int, ts: float, reason: int) -> str | np.ndarray:
    if np.isnan(tl.last_t[m]):
        return "the gateway has no state data of this machine yet"
    if ts < tl.kept_from[m]:
        return (f"{ts:.3f} is before the history the gateway keeps (from {tl.kept_from[m]:.3f}); "
                "a stop that old can no longer be classified")
    if ts >= tl.now[m]:
        return (f"{ts:.3f} is after the machine's latest data ({tl.now[m]:.3f}): send it once the stop shows "
                "in the gateway")
    s, e, c, r, is_open = _pieces(tl, m)
    k = int(np.searchsorted(s, ts, "right")) - 1
    if k < 0:
        return f"{ts:.3f} is before the machine's first state"
    if c[k] == RUN:
        return f"the machine ran at {ts:.3f}: there is no stop to classify"
    if c[k] == NOT_SCHEDULED:
        return f"{ts:.3f} is in planned downtime (no shift, a break): there is no stop to classify"
    j0s, j1s = _runs(c)
    run = int(np.searchsorted(j0s, k, "right")) - 1
    j0, j1 = int(j0s[run]), int(j1s[run])
    cat, start, end, still = int(c[k]), float(s[j0]), float(e[j1 - 1]), bool(is_open[j1 - 1])
    if cat == SMALL_STOP or (still and cat in (BREAKDOWN, STOPPED) and end - start < conv.micro_stop_s):
        return (f"the stop at {start:.3f} is a small stop (shorter than {conv.micro_stop_s:g} s): small stops "
                "are not classified one by one")
    if cat not in CLASSIFIABLE or start < tl.kept_from[m]:
        return f"no stop to classify at {ts:.3f}"
    new = int(conv.reasons.get(reason, cat)) if reason else cat
    if new not in CLASSIFIABLE:
        new = cat
    rows = tl.p
    closed = np.arange(j0, min(j1, int(rows.fill[m])))
    starts = s[j0:j1].copy()
    i = rows.at(m, closed)
    rows.reason[i] = reason
    if still:
        tl.last_reason[m] = reason
    if new != cat:
        rows.cat[i] = new
        if closed.size:
            tl._reprefix(np.array([m]), np.array([j0]))
        if still:
            tl.last_cat[m] = tl.ep_cat[m] = new
        else:  # what a closed episode recorded when it closed (timeline.append_states)
            _set_point(tl.f, m, start, new == BREAKDOWN)
            _set_point(tl.u, m, end, new == SETUP)
    return starts


def add_rejects(tl: Timeline, m: int, ts: float, n: int, latest: float) -> str | None:
    """``n`` parts of machine m found bad by hand: from good to reject, at ``ts`` held between its latest
    stored counter row and ``latest`` (its latest counter sample: later samples are appended after it). The
    ideal seconds of the good parts shrink by the ideal cycle time of its latest parts. None, or why not."""
    rows = tl.c
    fill, o = int(rows.fill[m]), int(rows.off[m])
    if not fill:
        return "the gateway has no counted parts of this machine (since its history was cut)"
    pre = rows.pre[o:o + fill]
    good = pre[-1, C_GOOD] + tl.base[m, GOOD]
    if n > good:
        return f"only {good:.0f} good parts were counted: {n} cannot be rejects"
    made = np.diff(np.vstack([np.zeros((1, pre.shape[1])), pre]), axis=0)
    parts = made[:, C_GOOD] + made[:, C_REJECT]
    real = np.flatnonzero(parts > 0)
    ict = made[real[-1], C_IDEAL] / parts[real[-1]] if real.size else 0.0
    t = float(np.clip(ts, rows.t[o + fill - 1], max(latest, rows.t[o + fill - 1])))
    vals = np.zeros(pre.shape[1])
    vals[C_GOOD], vals[C_REJECT] = -n, n
    vals[C_IDEAL_GOOD] = -n * ict  # the ideal seconds of good parts (the total's ideal seconds stay)
    rows.reserve(np.array([m]), np.array([fill + 2]))
    i = int(rows.at(m, fill))
    rows.t[i] = t
    rows.pre[i] = rows.pre[i - 1] + vals
    rows.fill[m] = fill + 1
    return None
