"""The history of many machines as an append-only timeline with prefix sums: pure NumPy.

State changes and counter samples are appended as they arrive (``append_states``,
``append_counts``: cost proportional to the new data); ``totals(a, b)`` gives the
additive totals of any window for every machine with a vectorised binary search
(cost O(machines × log history)); ``oee.derive`` turns them into KPIs. The same
class serves the gateway (appending every tick) and ``fieldlab oee`` (``build``:
everything at once), so both compute the same numbers.

Each machine has rows per log, in a segment of its own (``_Rows``: one machine's long history
costs only that machine's memory):
- pieces: closed state intervals (start, category, reason) tiling the machine's
  time up to the open piece, split at the shift calendar, with prefix seconds per
  category. The open piece (the current state) runs from ``last_t`` to ``now``.
- counts: counter samples with prefix sums of parts and ideal seconds.
- failures: start times of breakdown episodes that were not small stops.
- setup ends: when each setup episode ended (start-up rejects follow them).

An episode is a run of consecutive states of one category (Holding -> Held ->
Unholding is one breakdown). Its category is final when it closes: a breakdown
or stop episode shorter than the micro-stop threshold becomes a small stop, and
its pieces are rewritten. While it is open it is judged by its length so far.

Memory stays bounded with ``prune(cut, start)``: each machine's rows before its cut
are dropped, after the totals from ``start`` up to the cut were added to a
per-machine ``base``. A window starting at or after the cut reads the kept rows
exactly as before (prefix sums are not rebased); one starting before it (since
start) is ``base`` + the window [cut, end). History before the cut must be final
by then: the caller appends nothing at or before the cut, and a cut never falls
inside the first ``micro_stop_s`` of the open episode (a stop could still become small).
"""
from __future__ import annotations

import numpy as np

from . import oee
from .oee import BREAKDOWN, N_CAT, N_TOT, NOT_SCHEDULED, SETUP, SMALL_STOP, STOPPED, Conventions

# prefix columns of the counts log
C_GOOD, C_REJECT, C_IDEAL, C_IDEAL_GOOD, C_NO_IDEAL = range(5)


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
    ge = np.zeros(int(group[-1]) + 1)
    np.maximum.at(ge, group, e)
    return np.column_stack([s[new], ge]).ravel()


def _split_at(bounds: np.ndarray, s, e, *cols):
    """Split intervals [s, e) at the calendar boundaries inside them; flag the parts inside the calendar."""
    if not bounds.size:
        return s, e, np.zeros(s.size, bool), cols
    i0 = np.searchsorted(bounds, s, "right")
    i1 = np.searchsorted(bounds, e, "left")
    k = np.maximum(i1 - i0, 0)
    rep = np.repeat(np.arange(s.size), k + 1)
    first = np.concatenate([[0], np.cumsum(k + 1)[:-1]]).astype(np.int64)
    j = np.arange(rep.size) - first[rep]
    b = lambda idx: bounds[np.clip(idx, 0, bounds.size - 1)]  # noqa: E731
    ns = np.where(j == 0, s[rep], b(i0[rep] + j - 1))
    ne = np.where(j == k[rep], e[rep], b(i0[rep] + j))
    inside = np.searchsorted(bounds, (ns + ne) / 2, "right") % 2 == 1
    return ns, ne, inside, tuple(c[rep] for c in cols)


def _calendar_before(bounds: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Seconds of planned downtime before time t (a piecewise-linear function)."""
    if not bounds.size:
        return np.zeros_like(t)
    starts, ends = bounds[0::2], bounds[1::2]
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])
    i = np.searchsorted(starts, t, "right")  # periods that started at or before t
    prev = np.maximum(i - 1, 0)
    partial = np.where(i > 0, np.clip(t - starts[prev], 0.0, ends[prev] - starts[prev]), 0.0)
    return cum[prev] * (i > 0) + partial


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated aranges [lo_i, hi_i) (hi_i >= lo_i)."""
    n = np.maximum(hi - lo, 0)
    if not n.sum():
        return np.zeros(0, np.int64)
    rep = np.repeat(np.arange(lo.size), n)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    return lo[rep] + np.arange(rep.size) - start[rep]


class _Rows:
    """Per-machine append-only rows, each machine in a segment of its own in flat pools (one per column).

    A machine's segment holds ``cap[m]`` rows from ``off[m]``; when it needs more, it moves to the end of the
    pool with twice the room (the pool itself grows by doubling), so one machine's long history costs only
    that machine's memory. Space left behind by moves and by shrinking is reclaimed by compacting the pool
    once it is more than half the pool. Address rows with ``at(m, j)``: row j of machine m.
    """

    MIN_CAP = 4

    def __init__(self, n: int, cap: int, **cols):
        self.min_cap = max(cap, self.MIN_CAP)
        self.spec = cols  # name -> (extra shape, dtype, fill value)
        self.fill = np.zeros(0, np.int64)
        self.cap = np.zeros(0, np.int64)
        self.off = np.zeros(0, np.int64)
        self.top = 0  # pool rows in use (live segments and garbage)
        self.garbage = 0
        for name, (shape, dtype, fill) in cols.items():
            setattr(self, name, np.full((self.min_cap * max(n, 1), *shape), fill, dtype=dtype))
        self.machines(n)

    @property
    def pool(self) -> int:
        return len(getattr(self, next(iter(self.spec))))

    def at(self, m, j):
        """Flat pool index of row j of machine m."""
        return self.off[m] + j

    def _grow_pool(self, need: int) -> None:
        """Room for ``need`` rows in the pool (compacting first when more than half of it is garbage)."""
        if self.garbage > self.top // 2:
            self._compact()
        if need <= self.pool:
            return
        size = self.pool
        while size < need:
            size *= 2
        for name, (shape, dtype, fill) in self.spec.items():
            a = getattr(self, name)
            b = np.full((size, *shape), fill, dtype=dtype)  # beyond a machine's ``fill`` is never read
            b[: self.top] = a[: self.top]
            setattr(self, name, b)

    def _compact(self) -> None:
        """Move every segment to the front, in machine order; give memory back when the pool is 4x too big."""
        live = int(self.cap.sum())
        size = self.pool
        while size >= 4 * max(live, self.min_cap) and size > self.min_cap:
            size //= 2
        off = np.concatenate([[0], np.cumsum(self.cap)[:-1]]).astype(np.int64) if self.cap.size else self.off
        src = _ranges(self.off, self.off + self.cap)
        for name, (shape, dtype, fill) in self.spec.items():
            a = getattr(self, name)
            b = np.full((max(size, live), *shape), fill, dtype=dtype)
            b[:live] = a[src]
            setattr(self, name, b)
        self.off, self.top, self.garbage = off, live, 0

    def machines(self, n: int) -> None:
        old = self.fill.size
        if n <= old:
            return
        k = n - old
        self._grow_pool(self.top + k * self.min_cap)
        self.off = np.concatenate([self.off, self.top + self.min_cap * np.arange(k, dtype=np.int64)])
        self.cap = np.concatenate([self.cap, np.full(k, self.min_cap, np.int64)])
        self.fill = np.concatenate([self.fill, np.zeros(k, np.int64)])
        self.top += k * self.min_cap

    def reserve(self, m: np.ndarray, need: np.ndarray) -> None:
        """At least ``need[i]`` rows for machine ``m[i]`` (indices ``0..need-1``); others are untouched."""
        m, need = np.asarray(m, np.int64), np.asarray(need, np.int64)
        short = need > self.cap[m]
        if not short.any():
            return
        m, need = m[short], need[short]
        m, i = np.unique(m, return_inverse=True)  # a machine may be asked more than once: the most it needs
        want = np.zeros(m.size, np.int64)
        np.maximum.at(want, i, need)
        cap = self.cap[m]
        new = cap.copy()
        while (new < want).any():
            new = np.where(new < want, new * 2, new)
        self._grow_pool(self.top + int(new.sum()))  # may compact: offsets are read after it
        off = self.top + np.concatenate([[0], np.cumsum(new)[:-1]]).astype(np.int64)
        src = _ranges(self.off[m], self.off[m] + cap)
        dst = _ranges(off, off + cap)
        for name in self.spec:
            a = getattr(self, name)
            a[dst] = a[src]
        self.garbage += int(cap.sum())
        self.off[m], self.cap[m] = off, new
        self.top += int(new.sum())

    def forget(self, m: int) -> None:
        """Machine m has no rows any more; its segment keeps the smallest room (the rest is reclaimed)."""
        self.fill[m] = 0
        for name, (_, _, fill) in self.spec.items():  # row 0 of the pieces' prefix must read 0 again
            getattr(self, name)[self.off[m]] = fill
        keep = min(int(self.cap[m]), self.min_cap)
        self.garbage += int(self.cap[m]) - keep
        self.cap[m] = keep

    MOVE_ROWS = 1 << 18  # rows moved per step of ``drop``: bounds its temporary copies (about 20 MB)

    def drop(self, m: np.ndarray, k: np.ndarray) -> int:
        """Forget the first k rows of machines m (distinct): the rest move to the front of each segment, machines
        in groups of about MOVE_ROWS rows; a segment gives room back when a sixteenth of it is enough. Rows
        dropped."""
        m, k = m[k > 0], k[k > 0]
        n = self.fill[m] - k
        move = n + 1  # and the row at ``fill``: the pieces' prefix of the next piece
        group = np.cumsum(move) // self.MOVE_ROWS
        for g in np.split(np.arange(m.size), np.flatnonzero(np.diff(group)) + 1):
            dst = _ranges(self.off[m[g]], self.off[m[g]] + move[g])
            src = dst + np.repeat(k[g], move[g])
            for name in self.spec:
                a = getattr(self, name)
                a[dst] = a[src]
        self.fill[m] = n
        cap, need = self.cap[m].copy(), n + 2
        shrink = (cap >= 16 * need) & (cap >= 8)  # not for the daily swing (about 6x): the room is needed again
        while shrink.any():
            cap = np.where(shrink, cap // 2, cap)
            shrink = (cap >= 16 * need) & (cap >= 8)
        self.garbage += int((self.cap[m] - cap).sum())  # the tail of a shrunk segment: reclaimed by compacting
        self.cap[m] = cap
        if self.garbage > self.top // 2:
            self._compact()
        return int(k.sum())

    def search(self, values: np.ndarray, m: np.ndarray, q: np.ndarray, side: str) -> np.ndarray:
        """Per (machine, query): like np.searchsorted within the machine's filled rows (0..fill)."""
        m = np.asarray(m, np.int64)
        lo = self.off[m]
        hi = lo + self.fill[m]
        return oee.segment_search(values, lo, hi, np.asarray(q, np.float64), side) - lo

    def export(self) -> dict:
        """Compact copies for a checkpoint: ``fill`` and, per column, each machine's rows 0..fill (inclusive)."""
        idx = _ranges(self.off, self.off + self.fill + 1)
        return {"fill": self.fill.copy(), **{name: getattr(self, name)[idx] for name in self.spec}}

    def load(self, fill: np.ndarray, cols: dict) -> None:
        """The inverse of ``export`` (the arrays checked by the caller): each machine gets room for twice its rows."""
        fill = np.asarray(fill, np.int64)
        cap = np.maximum(self.min_cap, 2 ** np.ceil(np.log2(fill + 2)).astype(np.int64))
        off = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64) if cap.size else np.zeros(0, np.int64)
        top = int(cap.sum())
        dst = _ranges(off, off + fill + 1)
        for name, (shape, dtype, fillv) in self.spec.items():
            a = np.full((max(top, self.min_cap), *shape), fillv, dtype=dtype)
            a[dst] = cols[name]
            setattr(self, name, a)
        self.fill, self.cap, self.off, self.top, self.garbage = fill, cap, off, top, 0

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.spec)


class Timeline:
    # per-machine state: name, initial value (its shape is the row's), dtype
    PER_MACHINE = (("now", -np.inf, np.float64), ("last_t", np.nan, np.float64), ("last_cat", -1, np.int8),
                   ("last_reason", 0, np.int64), ("ep_t", np.nan, np.float64), ("ep_cat", -1, np.int8),
                   ("last_good", -1, np.int64), ("last_reject", -1, np.int64),
                   ("kept_from", -np.inf, np.float64),  # the cut of ``prune``: rows before it are gone
                   ("base", (0.0,) * N_TOT, np.float64))  # totals from the start up to the cut

    def __init__(self, conv: Conventions = oee.DEFAULT, calendar=np.zeros(0), machines: int = 0, capacity: int = 64):
        self.conv = conv
        self.cal = np.asarray(calendar, dtype=np.float64)
        self.n = 0
        self.p = _Rows(0, capacity, t=((), np.float64, np.inf), cat=((), np.int8, 0), reason=((), np.int64, 0),
                       pre=((N_CAT,), np.float64, 0.0))  # pre[m, j] = seconds per category before piece j
        self.c = _Rows(0, capacity, t=((), np.float64, np.inf), pre=((5,), np.float64, 0.0))  # inclusive prefix
        self.f = _Rows(0, 4, t=((), np.float64, np.inf))
        self.u = _Rows(0, 4, t=((), np.float64, np.inf))
        for name, fill, dtype in self.PER_MACHINE:  # present (empty) before the first machine comes
            setattr(self, name, np.zeros((0, *np.shape(fill)), dtype))
        self.add_machines(machines)

    # -- per-machine state
    def add_machines(self, n: int) -> None:
        if n <= self.n:
            return
        grow = n - self.n
        for name, fill, dtype in self.PER_MACHINE:
            setattr(self, name, np.concatenate([getattr(self, name), np.full((grow, *np.shape(fill)), fill, dtype)]))
        for rows in (self.p, self.c, self.f, self.u):
            rows.machines(n)
        self.n = n

    def reset(self, m: int) -> None:
        """Machine ``m`` starts afresh, as if it had never sent anything (``KpiEngine.forget``)."""
        for name, fill, _ in self.PER_MACHINE:
            getattr(self, name)[m] = fill
        for rows in (self.p, self.c, self.f, self.u):
            rows.forget(m)

    def pieces(self, m: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The state timeline of machine ``m`` between a and b: (start, end, category, reason) arrays,
        including the open piece up to the machine's now (for display: the built-in dashboard)."""
        n = int(self.p.fill[m])
        o = int(self.p.off[m])
        s, c, r = self.p.t[o:o + n], self.p.cat[o:o + n].astype(np.int64), self.p.reason[o:o + n]
        e = np.append(s[1:], self.last_t[m]) if n else s
        if not np.isnan(self.last_t[m]) and self.now[m] > self.last_t[m]:
            s, e = np.append(s, self.last_t[m]), np.append(e, self.now[m])
            c, r = np.append(c, self.last_cat[m]), np.append(r, self.last_reason[m])
        keep = (e > a) & (s < b) & (e > s)
        return np.maximum(s[keep], a), np.minimum(e[keep], b), c[keep], r[keep]

    def set_now(self, m: np.ndarray, t: np.ndarray) -> None:
        """The machines' own "now" (latest timestamp seen): the open state lasts until then."""
        np.maximum.at(self.now, np.asarray(m, np.int64), np.asarray(t, np.float64))

    # -- appending
    def append_states(self, m, ts, cat, reason) -> None:
        """State changes sorted by (machine, time), newer than what each machine has (the caller drops replays)."""
        m, ts = np.asarray(m, np.int64), np.asarray(ts, np.float64)
        cat, reason = np.asarray(cat, np.int8), np.asarray(reason, np.int64)
        # a repeated state (same category and reason) only continues the piece: keep changes only
        first, _ = oee.group_bounds(m)
        pc, pr = np.empty_like(cat), np.empty_like(reason)
        pc[1:], pr[1:] = cat[:-1], reason[:-1]
        pc[first], pr[first] = self.last_cat[m[first]], self.last_reason[m[first]]
        keep = (cat != pc) | (reason != pr)
        if not keep.all():
            np.maximum.at(self.now, m, ts)
            m, ts, cat, reason = m[keep], ts[keep], cat[keep], reason[keep]
        if not m.size:
            return
        first, last = oee.group_bounds(m)
        # the piece each change closes: from the previous change (or the open piece) to this one
        prev_t = np.empty_like(ts)
        prev_cat = np.empty_like(cat)
        prev_reason = np.empty_like(reason)
        prev_t[1:], prev_cat[1:], prev_reason[1:] = ts[:-1], cat[:-1], reason[:-1]
        mf = m[first]
        prev_t[first], prev_cat[first], prev_reason[first] = self.last_t[mf], self.last_cat[mf], self.last_reason[mf]
        closes = ~np.isnan(prev_t)
        # episodes: a change of category closes the episode the previous piece belonged to
        brk = cat != prev_cat
        ep_start = np.where(brk, ts, np.nan)  # the episode each change opens (if it opens one)
        # start of the episode being closed at each break: the previous break of the machine, or the open one
        bidx = np.where(brk, np.arange(m.size), -1)
        prev_b = np.maximum.accumulate(np.concatenate([[-1], bidx[:-1]]))
        same = (prev_b >= 0) & (m[np.maximum(prev_b, 0)] == m)
        closing_start = np.where(same, ts[np.maximum(prev_b, 0)], self.ep_t[m])
        closed_ep = brk & closes
        # 1. append the closed pieces (base categories), split at the calendar
        self.last_t[m[last]] = ts[last]
        self.last_cat[m[last]], self.last_reason[m[last]] = cat[last], reason[last]
        sel = closes
        self._append_pieces(m[sel], prev_t[sel], ts[sel], prev_cat[sel], prev_reason[sel])
        # 2. classify the episodes that closed; rewrite small ones; record failures and setup ends
        em, es, ee, ec = m[closed_ep], closing_start[closed_ep], ts[closed_ep], prev_cat[closed_ep]
        small = np.isin(ec, (BREAKDOWN, STOPPED)) & (ee - es < self.conv.micro_stop_s)
        if small.any():
            self._make_small(em[small], es[small], ee[small], ec[small])
        fail = (ec == BREAKDOWN) & ~small
        self._append_points(self.f, em[fail], es[fail])
        setup = ec == SETUP
        self._append_points(self.u, em[setup], ee[setup])
        # 3. the open episode of each machine
        lo = np.maximum.accumulate(bidx)[last]  # the latest break up to each machine's last change
        ok = (lo >= 0) & (m[np.maximum(lo, 0)] == m[last])
        ml = m[last]
        self.ep_t[ml] = np.where(ok, ep_start[np.maximum(lo, 0)], self.ep_t[ml])
        self.ep_cat[ml] = cat[last]
        np.maximum.at(self.now, m, ts)

    def _append_pieces(self, m, s, e, cat, reason) -> None:
        s, e, inside, (m, cat, reason) = _split_at(self.cal, s, e, m, cat, reason)
        cat = np.where(inside, np.int8(NOT_SCHEDULED), cat).astype(np.int8)
        if not m.size:
            return
        rows = self.p
        pos = self._positions(rows, m)
        i = rows.at(m, pos)
        rows.t[i], rows.cat[i], rows.reason[i] = s, cat, reason
        rows.fill += np.bincount(m, minlength=self.n)
        first, _ = oee.group_bounds(m)
        self._reprefix(m[first], pos[first])

    def _positions(self, rows: _Rows, m: np.ndarray) -> np.ndarray:
        """Row positions for appending elements of machines ``m`` (sorted by machine)."""
        first, _ = oee.group_bounds(m)
        start = np.flatnonzero(first)
        rank = np.arange(m.size) - np.repeat(start, np.diff(np.append(start, m.size)))
        pos = rows.fill[m] + rank
        rows.reserve(m, pos + 2)
        return pos

    def _reprefix(self, m: np.ndarray, r0: np.ndarray) -> None:
        """Recompute the prefix seconds of machines m from row r0 on (cost: the rows touched)."""
        rows = self.p
        fill = rows.fill[m]
        idx = _ranges(r0, fill)
        mm = np.repeat(m, np.maximum(fill - r0, 0))
        if not mm.size:
            return
        rows.reserve(m, fill + 2)  # the row at ``fill`` holds the prefix of the next piece
        ii = rows.at(mm, idx)
        nxt = np.where(idx + 1 < rows.fill[mm], rows.t[np.minimum(ii + 1, rows.at(mm, rows.cap[mm] - 1))],
                       self.last_t[mm])
        dur = nxt - rows.t[ii]
        vals = np.zeros((mm.size, N_CAT))
        vals[np.arange(mm.size), rows.cat[ii].astype(np.int64)] = dur
        cs = np.cumsum(vals, axis=0)
        first, _ = oee.group_bounds(mm)
        seg = np.cumsum(first) - 1
        base = rows.pre[ii[first]] - (cs[np.flatnonzero(first)] - vals[first])
        rows.pre[ii + 1] = cs + base[seg]

    def _make_small(self, m, s, e, cat) -> None:
        """Episodes [s, e) of machines m closed as small stops: their pieces become SMALL_STOP."""
        rows = self.p
        r0 = rows.search(rows.t, m, s, "left")
        r1 = rows.search(rows.t, m, e, "left")
        idx = _ranges(r0, r1)
        mm = np.repeat(m, np.maximum(r1 - r0, 0))
        cc = np.repeat(cat, np.maximum(r1 - r0, 0))
        ii = rows.at(mm, idx)
        hit = rows.cat[ii] == cc  # calendar parts stay not scheduled
        rows.cat[ii[hit]] = SMALL_STOP
        order = np.argsort(m, kind="stable")
        m, r0 = m[order], r0[order]
        first, _ = oee.group_bounds(m)
        self._reprefix(m[first], r0[first])  # first episode per machine: earliest row touched

    def _append_points(self, rows: _Rows, m, t) -> None:
        if not m.size:
            return
        order = oee.sort_by_machine(m, t)
        m, t = m[order], t[order]
        pos = self._positions(rows, m)
        rows.t[rows.at(m, pos)] = t
        rows.fill += np.bincount(m, minlength=self.n)

    def append_counts(self, m, ts, good, reject, ideal) -> None:
        """Counter samples sorted by (machine, time), not older than each machine's last (replays dropped)."""
        m, ts = np.asarray(m, np.int64), np.asarray(ts, np.float64)
        if not m.size:
            return
        good, reject = np.asarray(good, np.int64), np.asarray(reject, np.int64)
        ideal = np.asarray(ideal, np.float64)
        dg = oee.counter_increase(m, good, self.last_good).astype(np.float64)
        dr = oee.counter_increase(m, reject, self.last_reject).astype(np.float64)
        _, last = oee.group_bounds(m)
        self.last_good[m[last]], self.last_reject[m[last]] = good[last], reject[last]
        made = (dg + dr) > 0  # a sample that adds nothing changes no window: not stored
        m, ts, dg, dr, ideal = m[made], ts[made], dg[made], dr[made], ideal[made]
        if not m.size:
            return
        known = ~np.isnan(ideal)
        ict = np.where(known, ideal, 0.0)
        vals = np.column_stack([dg, dr, (dg + dr) * ict, dg * ict, np.where(known, 0.0, dg + dr)])
        rows = self.c
        pos = self._positions(rows, m)
        first, _ = oee.group_bounds(m)
        cs = np.cumsum(vals, axis=0)
        seg = np.cumsum(first) - 1
        mf, pf = m[first], pos[first]
        before = np.where((pf > 0)[:, None], rows.pre[rows.at(mf, np.maximum(pf - 1, 0))], 0.0)
        base = before - (cs[np.flatnonzero(first)] - vals[first])
        i = rows.at(m, pos)
        rows.t[i] = ts
        rows.pre[i] = cs + base[seg]
        rows.fill += np.bincount(m, minlength=self.n)

    # -- reading
    def _time_upto(self, m: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Seconds per category of machine m before time t (closed pieces, then the open piece)."""
        rows = self.p
        out = np.zeros((m.size, N_CAT))
        has = rows.fill[m] > 0
        tc = np.minimum(t, np.where(np.isnan(self.last_t[m]), -np.inf, self.last_t[m]))
        j = rows.search(rows.t, m, tc, "right") - 1  # the closed piece containing tc
        inpiece = has & (j >= 0)
        jj = np.maximum(j, 0)
        ij = rows.at(m, jj)
        out[inpiece] = rows.pre[ij[inpiece]]
        nxt = np.where(jj + 1 < rows.fill[m], rows.t[rows.at(m, np.minimum(jj + 1, rows.cap[m] - 1))], self.last_t[m])
        part = np.where(inpiece, np.clip(tc - rows.t[ij], 0.0, nxt - rows.t[ij]), 0.0)
        np.add.at(out, (np.arange(m.size), rows.cat[ij].astype(np.int64)), part)
        # the open piece, from last_t to t, split by the calendar
        lt = self.last_t[m]
        open_ = ~np.isnan(lt) & (t > lt)
        lt0 = np.where(open_, lt, 0.0)
        t0 = np.where(open_, t, 0.0)
        cal = _calendar_before(self.cal, t0) - _calendar_before(self.cal, lt0)
        out[:, NOT_SCHEDULED] += np.where(open_, cal, 0.0)
        lc = np.maximum(self.last_cat[m], 0).astype(np.int64)
        np.add.at(out, (np.arange(m.size), lc), np.where(open_, (t0 - lt0) - cal, 0.0))
        return out

    def totals(self, a, b) -> np.ndarray:
        """Additive totals of every machine for the window [a, b) (counts: samples in (a, b]).

        ``a`` and ``b`` are scalars or per-machine arrays. State time after a machine's "now" is
        unknown and not counted. Shape (n, N_TOT).
        """
        n = self.n
        return self.query(np.arange(n), np.broadcast_to(np.asarray(a, np.float64), (n,)),
                          np.broadcast_to(np.asarray(b, np.float64), (n,)))

    def windows(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Several windows of every machine in one vectorised pass: starts/ends shape (k, n) -> (k, n, N_TOT)."""
        k, n = np.shape(starts)
        out = self.query(np.tile(np.arange(n), k), np.ravel(starts), np.ravel(ends))
        return out.reshape(k, n, N_TOT)

    def query(self, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Totals for any list of (machine, window start, window end) queries. Shape (len(m), N_TOT).
        A window that starts before a machine's cut (``prune``) is its base + the window from the cut."""
        m = np.asarray(m, np.int64)
        a = np.asarray(a, np.float64)
        cut = self.kept_from[m]
        early = a < cut
        out = self._query(m, np.where(early, cut, a), b)
        out[early] += self.base[m[early]]
        return out

    def _query(self, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        q = np.arange(m.size)
        now = self.now[m]
        b = np.asarray(b, np.float64)
        a = np.minimum(np.asarray(a, np.float64), b)
        bt = np.minimum(b, now)  # a machine's state after its "now" is unknown: no time is counted there
        at = np.minimum(a, bt)
        out = np.zeros((m.size, N_TOT))
        out[:, :N_CAT] = self._time_upto(m, bt) - self._time_upto(m, at)
        # the open episode is judged by its length so far
        ep_t, ep_cat = self.ep_t[m], self.ep_cat[m]
        ep_open = ~np.isnan(ep_t) & (ep_cat >= 0)
        small = ep_open & np.isin(ep_cat, (BREAKDOWN, STOPPED)) & (now - ep_t < self.conv.micro_stop_s)
        if small.any():
            k = np.flatnonzero(small)
            c = ep_cat[k].astype(np.int64)
            from_ = np.maximum(at[k], ep_t[k])
            both = self._time_upto(np.concatenate([m[k], m[k]]), np.concatenate([bt[k], from_]))
            moved = both[: k.size][np.arange(k.size), c] - both[k.size:][np.arange(k.size), c]
            moved = np.where(bt[k] > from_, moved, 0.0)
            out[k, c] -= moved
            out[k, SMALL_STOP] += moved
        # counts (a, b]: one search for both ends
        cab = self.c.search(self.c.t, np.concatenate([m, m]), np.concatenate([b, a]), "right")
        mm = np.concatenate([m, m])
        pre = np.where((cab > 0)[:, None], self.c.pre[self.c.at(mm, np.maximum(cab - 1, 0))], 0.0)
        d = pre[: m.size] - pre[m.size:]
        out[:, oee.GOOD], out[:, oee.REJECT] = d[:, C_GOOD], d[:, C_REJECT]
        out[:, oee.IDEAL], out[:, oee.IDEAL_GOOD], out[:, oee.NO_IDEAL] = d[:, C_IDEAL], d[:, C_IDEAL_GOOD], d[:, C_NO_IDEAL]
        self._startup(out, m, a, b)
        # failures starting in [a, b): closed ones, and the open episode if it is already long
        fab = self.f.search(self.f.t, mm, np.concatenate([b, a]), "left")
        out[:, oee.FAILURES] = fab[: m.size] - fab[m.size:]
        out[q, oee.FAILURES] += ep_open & (ep_cat == BREAKDOWN) & ~small & (ep_t >= a) & (ep_t < b)
        return out

    def _startup(self, out: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Rejects in [e, e + startup_s] after each setup end e, within (a, b], for each query."""
        u = self.u
        cnt = u.fill[m]
        if not cnt.any():
            return
        qi = np.repeat(np.arange(m.size), cnt)  # one row per (query, setup end of its machine)
        um = m[qi]
        idx = _ranges(np.zeros(m.size, np.int64), cnt)
        e = u.t[u.at(um, idx)]
        hi = e + self.conv.startup_s
        prev_hi = np.concatenate([[-np.inf], hi[:-1]])
        first, _ = oee.group_bounds(qi)
        prev_hi[first] = -np.inf
        # merged, non-overlapping ranges: [e, hi] or, where it continues the previous one, (prev_hi, hi]
        cont = e <= prev_hi
        lo = np.where(cont, prev_hi, e)
        hi = np.maximum(hi, lo)
        top = np.minimum(hi, b[qi])
        # lower end: after a (window is (a, b]); closed at e unless it continues a previous range
        lo_excl = np.maximum(lo, a[qi])
        use_left = ~cont & (e > a[qi])  # the range starts inside the window, at e itself: include e
        c = self.c
        iu = c.search(c.t, um, top, "right")
        il = np.where(use_left, c.search(c.t, um, lo_excl, "left"), c.search(c.t, um, lo_excl, "right"))
        ok = top >= lo_excl
        pre = lambda i: np.where((i > 0)[:, None], c.pre[c.at(um, np.maximum(i - 1, 0))], 0.0)  # noqa: E731
        d = np.where(ok[:, None], pre(iu) - pre(np.minimum(il, iu)), 0.0)
        out[:, oee.STARTUP_REJECT] += np.bincount(qi, d[:, C_REJECT], m.size)
        out[:, oee.IDEAL_STARTUP_REJECT] += np.bincount(qi, d[:, C_IDEAL] - d[:, C_IDEAL_GOOD], m.size)

    def prune(self, cut, start) -> int:
        """Drop each machine's rows before ``cut`` (per machine, at most its now; NaN: keep all), after adding
        the totals of [start, cut) to its base, so windows from ``start`` (since start) and from the cut on stay
        exact. Kept: the state piece at the cut, the last counter sample at or before it, failures from it on
        and setup ends from ``startup_s`` before it. A cut less than ``micro_stop_s`` after the start of the
        open episode moves back to that start (a stop may still end up small). Returns the rows dropped."""
        cut = np.asarray(cut, np.float64)
        young = (self.ep_t < cut) & (cut < self.ep_t + self.conv.micro_stop_s)
        cut = np.where(young, self.ep_t, cut)
        m = np.flatnonzero(cut > self.kept_from)
        if not m.size:
            return 0
        cut = cut[m]
        self.base[m] = self.query(m, np.broadcast_to(np.asarray(start, np.float64), (self.n,))[m], cut)
        self.kept_from[m] = cut
        dropped = 0
        for rows, t, side, back in ((self.p, cut, "right", 1), (self.c, cut, "right", 1),
                                    (self.f, cut, "left", 0), (self.u, cut - self.conv.startup_s, "left", 0)):
            dropped += rows.drop(m, np.maximum(rows.search(rows.t, m, t, side) - back, 0))
        return dropped

    def stop_reasons(self, a, b) -> list[dict]:
        """Stop time inside planned production time per machine, category and reason code in [a, b),
        largest first (a Pareto). ``a``, ``b``: scalars or per-machine arrays. Reads only the pieces
        that overlap the window."""
        n = self.n
        rows = self.p
        a = np.broadcast_to(np.asarray(a, np.float64), (n,))
        b = np.minimum(np.broadcast_to(np.asarray(b, np.float64), (n,)), self.now)
        mach = np.arange(n)
        j0 = np.maximum(rows.search(rows.t, mach, a, "right") - 1, 0)
        j1 = rows.search(rows.t, mach, b, "left")
        m = np.repeat(mach, np.maximum(j1 - j0, 0))
        idx = _ranges(j0, np.maximum(j1, j0))
        ii = rows.at(m, idx)
        s = rows.t[ii]
        e = np.where(idx + 1 < rows.fill[m], rows.t[rows.at(m, np.minimum(idx + 1, rows.cap[m] - 1))], self.last_t[m])
        cat, reason = rows.cat[ii], rows.reason[ii]
        openm = np.flatnonzero(~np.isnan(self.last_t) & (self.now > self.last_t))
        os_, oe_, inside, (om, oc, orr) = _split_at(self.cal, self.last_t[openm], self.now[openm], openm,
                                                    self.last_cat[openm], self.last_reason[openm])
        oc = np.where(inside, np.int8(NOT_SCHEDULED), oc)
        m, s, e = np.concatenate([m, om]), np.concatenate([s, os_]), np.concatenate([e, oe_])
        cat, reason = np.concatenate([cat, oc]), np.concatenate([reason, orr])
        # the open episode, judged by its length so far (as in ``query``)
        short = np.isin(self.ep_cat, (BREAKDOWN, STOPPED)) & (self.now - self.ep_t < self.conv.micro_stop_s)
        cat = np.where(short[m] & (s >= self.ep_t[m]) & (cat == self.ep_cat[m]), np.int8(SMALL_STOP), cat)
        d = np.maximum(np.minimum(e, b[m]) - np.maximum(s, a[m]), 0.0)
        sel = (d > 0) & (cat != oee.RUN) & (cat != NOT_SCHEDULED)
        if not sel.any():
            return []
        key = np.column_stack([m[sel], cat[sel], reason[sel]])
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        secs = np.bincount(inv.ravel(), d[sel])
        order = np.argsort(-secs, kind="stable")
        return [{"machine": int(uniq[i, 0]), "category": oee.CATEGORIES[uniq[i, 1]], "reason": int(uniq[i, 2]),
                 "seconds": float(secs[i])} for i in order]


def build(n: int, states, counts, end, calendar=np.zeros(0), conv: Conventions = oee.DEFAULT) -> Timeline:
    """A timeline of ``n`` machines from all their data at once (any order).

    states: (m, ts, model, code, reason); model 0 = packml, 1 = simple.
    counts: (m, ts, good, reject, ideal_cycle_s); counters monotonic, NaN ideal = unknown.
    end: per machine, until when its last state lasts.
    """
    tl = Timeline(conv, calendar, n)
    sm, sts, smodel, scode, sreason = (np.asarray(x) for x in states)
    o = oee.sort_by_machine(sm, sts)
    cat = conv.categorise(smodel[o].astype(np.int64), scode[o].astype(np.int64), sreason[o])
    tl.append_states(sm[o], sts[o], cat, sreason[o])
    cm, cts, good, reject, ideal = (np.asarray(x) for x in counts)
    o = oee.sort_by_machine(cm, cts)
    tl.append_counts(cm[o], cts[o], good[o], reject[o], ideal[o])
    end = np.asarray(end, np.float64)
    tl.set_now(np.arange(n), np.where(np.isnan(end), -np.inf, end))
    return tl
