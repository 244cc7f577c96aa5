"""Live KPI state for all machines: decoded batches in, KPIs per window out.

Batches are collected as they arrive (``add_*``, cheap) and appended to the
timeline of all machines once per tick (``fold``, cost proportional to the new
data); ``snapshot`` reads every window from the timeline's prefix sums
(gateway/timeline.py). The windows: ``since_start`` (since the gateway first
heard of the machine), rolling ones (default the last 15 minutes and the last
hour), the current ``shift`` and ``today`` (from the site configuration, in its
time zone). Breaks and time outside the shifts are planned downtime.

Time is the machines' own: a machine's "now" is the latest timestamp it sent.
Replayed or duplicated data (older than what was already folded) is dropped, so
a store-and-forward replay never counts twice.

Memory is bounded by ``prune``: history older than every live window but
since_start (and a margin) is folded into per-machine totals and dropped
(gateway/timeline.py). Data at or before a machine's cut arrives too late and
is dropped like a replay.
"""
from __future__ import annotations

import numpy as np

from contract import REASONS, STATE_MODELS, CountsBatch, OperatorEntry, StateBatch, TelemetryBatch

from . import classify, oee, timeline
from .config import SiteConfig

MODELS = oee.MODELS
DEFAULT_WINDOWS = (("last_15min", 900.0), ("last_1h", 3600.0))
#: Every window a snapshot has, by name, with the default rolling windows (the gateway's).
WINDOW_NAMES = ("since_start", *(name for name, _ in DEFAULT_WINDOWS), "shift", "today")
CALENDAR_AHEAD = 2 * 86400.0  # the shift calendar is laid out this far past the newest data
PRUNE_MARGIN = 2 * 3600.0  # history kept before the earliest live window (shift, today, rolling) starts
PRUNE_STEP = 3600.0  # a machine's history is cut when its cut has moved on by this much


# per-machine arrays: name, value before the machine has any data, dtype
ENGINE_ARRAYS = (("first_ts", np.nan, np.float64), ("now_ts", np.nan, np.float64),
                 ("state_ts", -np.inf, np.float64),  # time of the last folded state change
                 ("state_code", -1, np.int64), ("state_model", 0, np.int64),
                 ("count_ts", -np.inf, np.float64))  # time of the last folded counter sample


class KpiEngine:
    def __init__(self, config: SiteConfig | None = None, windows=DEFAULT_WINDOWS, capacity: int = 16):
        self.config = config or SiteConfig()
        self.conv = self.config.conventions
        self.windows = tuple(windows)
        self._calendar_span: tuple[float, float] | None = None
        self.n = 0
        self.capacity = 0
        self._grow(capacity)
        self._pending: list = []
        self._entries: list = []  # (machine, OperatorEntry): folded after the state data of the same fold
        self.refused: list = []  # (machine, OperatorEntry, why): entries ``fold`` could not apply
        # machine -> (ts, level, capacity or None) of its input buffer, from the telemetry signals buffer_in and
        # buffer_in_capacity (a machine in a line, docs/simulators.md); the latest only, not kept in checkpoints
        self.buffers: dict[int, tuple[float, float, float | None]] = {}
        self.applied: list = []  # (machine, OperatorEntry, start times of the pieces it classified, or None)
        self._rejects_seen: dict = {}  # recent reject entries (with ``at``): a repeated delivery counts once
        self.timeline = timeline.Timeline(self.conv)

    def _grow(self, cap: int) -> None:
        def grow(name, fill, dtype):
            new = np.full(cap, fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: old.size] = old
            setattr(self, name, new)

        for name, fill, dtype in ENGINE_ARRAYS:
            grow(name, fill, dtype)
        self.capacity = cap

    def add_machine(self) -> int:
        if self.n == self.capacity:
            self._grow(self.capacity * 2)
        self.n += 1
        self.timeline.add_machines(self.n)
        return self.n - 1

    def forget(self, m: int) -> None:
        """Machine m starts afresh (a test machine removed): its history and KPIs are gone, and what it sent
        before and is not folded yet is dropped. Its slot stays (the gateway keeps its index)."""
        self._pending = [(i, b) for i, b in self._pending if i != m]
        self._entries = [(i, b) for i, b in self._entries if i != m]
        for name, fill, _ in ENGINE_ARRAYS:
            getattr(self, name)[m] = fill
        self.buffers.pop(m, None)
        self.timeline.reset(m)

    # -- collecting (cheap, called per message)
    def add_state(self, m: int, batch: StateBatch) -> None:
        self._pending.append((m, batch))

    def add_counts(self, m: int, batch: CountsBatch) -> None:
        self._pending.append((m, batch))

    def add_telemetry(self, m: int, batch: TelemetryBatch) -> None:
        self._pending.append((m, batch))

    def add_operator(self, m: int, entry: OperatorEntry) -> None:
        """A stop's reason or rejects counted by hand (contract kind operator), applied after the data."""
        self._entries.append((m, entry))

    def known_reasons(self) -> frozenset[int]:
        """Reason codes an operator entry may give: the contract's, the site's named and mapped ones."""
        return frozenset(REASONS) | frozenset(self.config.reason_names) | frozenset(self.conv.reasons)

    # -- folding (vectorised over everything collected since the last fold)
    def fold(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._fold_data(pending)
        entries, self._entries = self._entries, []
        for m, entry in entries:  # a few a shift, entered by people: one at a time (gateway/classify.py)
            if self._repeated(m, entry):
                continue
            why, starts = self._apply(m, entry)
            if why is not None:
                self.refused.append((m, entry, why))
            else:
                self.applied.append((m, entry, starts))

    def _repeated(self, m: int, entry: OperatorEntry) -> bool:
        """Whether a reject entry was applied before (QoS 1 may deliver a message twice; a reason given twice
        changes nothing, rejects would count twice). Only entries that say when they were made (``at``, as the
        operator terminal's do): two equal entries without it may be two real ones. Kept for this process's
        last 10,000 such entries (the journal's replay and a redelivery after a restart meet here too)."""
        if entry.reject is None or entry.at is None:
            return False
        key = (m, entry.ts, entry.at, entry.by, entry.reject)
        if key in self._rejects_seen:
            return True
        if len(self._rejects_seen) >= 10_000:
            del self._rejects_seen[next(iter(self._rejects_seen))]
        self._rejects_seen[key] = True
        return False

    def _apply(self, m: int, entry: OperatorEntry) -> tuple[str | None, np.ndarray | None]:
        tl = self.timeline
        tl.set_now(np.array([m]), np.array([-np.inf if np.isnan(self.now_ts[m]) else self.now_ts[m]]))
        if entry.reject is not None:
            return classify.add_rejects(tl, m, entry.ts, entry.reject, float(self.count_ts[m])), None
        return classify.classify(tl, self.conv, m, entry.ts, entry.reason)

    def stops(self, m: int, a: float, b: float, min_s: float | None = None) -> list[dict]:
        """Machine m's unclassified stops in [a, b) (gateway/classify.py ``stops``)."""
        return classify.stops(self.timeline, self.conv, m, a, b, min_s)

    def _fold_data(self, pending: list) -> None:
        ms = np.fromiter((m for m, _ in pending), np.int64, len(pending))
        last = np.fromiter((b.ts[-1] for _, b in pending), np.float64, len(pending))
        firsts = np.fromiter((b.ts[0] for _, b in pending), np.float64, len(pending))
        np.fmax.at(self.now_ts, ms, last)
        np.fmin.at(self.first_ts, ms, firsts)
        self._extend_calendar(float(firsts.min()), float(last.max()))
        for m, b in pending:  # per message, not per sample: the latest buffer level of each machine
            if isinstance(b, TelemetryBatch) and "buffer_in" in b.signals:
                self._buffer(m, b)
        states = [(m, b) for m, b in pending if isinstance(b, StateBatch)]
        counts = [(m, b) for m, b in pending if isinstance(b, CountsBatch)]
        if states:
            self._fold_states(states)
        if counts:
            self._fold_counts(counts)

    def _buffer(self, m: int, b: TelemetryBatch) -> None:
        level = b.signals["buffer_in"]
        ok = np.flatnonzero(~np.isnan(level))
        if not ok.size or b.ts[ok[-1]] < self.buffers.get(m, (-np.inf,))[0]:  # none, or older than what we have
            return
        i = ok[-1]
        cap = b.signals.get("buffer_in_capacity")
        cap = None if cap is None or np.isnan(cap[i]) else float(cap[i])
        self.buffers[m] = (float(b.ts[i]), float(level[i]), cap)

    def _extend_calendar(self, t0: float, t1: float) -> None:
        """Lay out breaks and off-shift time (planned downtime) past the newest data, before appending it."""
        span = self._calendar_span
        if span is not None and span[0] <= t0 and t1 + 6 * 3600 <= span[1]:
            return
        lo = t0 - 86400.0 if span is None else min(span[0], t0 - 86400.0)
        self._calendar_span = (lo, t1 + CALENDAR_AHEAD)
        self.timeline.cal = self.config.calendar(*self._calendar_span)

    @staticmethod
    def _stack(items, *fields):
        m = np.concatenate([np.full(b.ts.size, i, np.int64) for i, b in items])
        return (m, *(np.concatenate([f(b) for _, b in items]) for f in fields))

    def _fold_states(self, items) -> None:
        m, ts, code, reason, model = self._stack(
            items, lambda b: b.ts, lambda b: b.state, lambda b: b.reason,
            lambda b: np.full(b.ts.size, MODELS.index(b.model), np.int64))
        # drop what was already folded (a replay): older than the last change, or that same change again;
        # and what comes too late, at or before the machine's cut (``prune``)
        since = self.state_ts[m]
        keep = ~((ts < since) | ((ts == since) & (code == self.state_code[m]))) & (ts > self.timeline.kept_from[m])
        m, ts, code, reason, model = m[keep], ts[keep], code[keep], reason[keep], model[keep]
        if not m.size:
            return
        order = oee.sort_by_machine(m, ts)
        m, ts, code, reason, model = m[order], ts[order], code[order], reason[order], model[order]
        self.timeline.append_states(m, ts, self.conv.categorise(model, code, reason), reason)
        _, last = oee.group_bounds(m)
        lm = m[last]
        self.state_ts[lm], self.state_code[lm], self.state_model[lm] = ts[last], code[last], model[last]

    def _fold_counts(self, items) -> None:
        m, ts, good, reject, ideal = self._stack(
            items, lambda b: b.ts, lambda b: b.good, lambda b: b.reject,
            lambda b: np.full(b.ts.size, np.nan if b.ideal_cycle_s is None else b.ideal_cycle_s))
        keep = (ts >= self.count_ts[m]) & (ts > self.timeline.kept_from[m])  # older ones: folded already or late
        m, ts, good, reject, ideal = m[keep], ts[keep], good[keep], reject[keep], ideal[keep]
        if not m.size:
            return
        order = oee.sort_by_machine(m, ts)
        m, ts, good, reject, ideal = m[order], ts[order], good[order], reject[order], ideal[order]
        self.timeline.append_counts(m, ts, good, reject, ideal)
        _, last = oee.group_bounds(m)
        self.count_ts[m[last]] = ts[last]

    def prune(self) -> int:
        """Forget history no live window needs: per machine, rows older than the earliest start of its
        rolling windows, shift and today, less PRUNE_MARGIN; since_start stays exact (the timeline keeps
        its totals up to the cut). Works only for machines whose cut moved on by PRUNE_STEP, so it is
        cheap to call often. Uses the machines' own time, no clock. Returns the number of rows dropped."""
        now = self._now()
        cut = np.min([s for name, s in self._spans(now) if name != "since_start"], axis=0) - PRUNE_MARGIN
        cut = np.where(cut >= self.timeline.kept_from + PRUNE_STEP, cut, np.nan)
        return self.timeline.prune(cut, self.first_ts[: self.n])

    # -- reading
    def snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """KPIs of every machine per window: {window name: {kpi: array indexed by machine}}."""
        tl = self.timeline
        now = self._now()
        first = self.first_ts[: self.n]
        spans = self._spans(now)
        starts = np.fmax(np.stack([s for _, s in spans]), first)  # no history before the first message
        ends = np.broadcast_to(now, starts.shape)
        out = {}
        for (name, _), start, tot in zip(spans, starts, tl.windows(starts, ends)):
            k = oee.derive(tot, self.conv)
            k["start"], k["end"] = start, now.copy()
            k["totals"] = tot  # the additive totals (n, N_TOT): lines and areas add these up (group_snapshot)
            out[name] = k
        per_machine = [[] for _ in range(self.n)]
        for r in tl.stop_reasons(out["shift"]["start"], now):  # the Pareto of the current shift
            per_machine[r.pop("machine")].append(r)
        out["shift"]["stop_reasons"] = per_machine
        out["since_start"]["state"] = self.state_code[: self.n].copy()
        out["since_start"]["model"] = self.state_model[: self.n].copy()
        return out

    def _now(self) -> np.ndarray:
        """The machines' now, passed on to the timeline (the open states last until then)."""
        now = self.now_ts[: self.n]
        self.timeline.set_now(np.arange(self.n), np.where(np.isnan(now), -np.inf, now))
        return now

    def _spans(self, now: np.ndarray) -> list[tuple[str, np.ndarray]]:
        first = self.first_ts[: self.n]
        return ([("since_start", first)] + [(name, now - seconds) for name, seconds in self.windows]
                + [("shift", self.config.shift_start(now)), ("today", self.config.day_start(now))])

    def line_snapshot(self, group: np.ndarray, n_groups: int) -> dict:
        """KPIs of groups of machines (lines) per window, after ``snapshot()``. A group's windows end at
        its latest machine's time (a machine that went quiet adds only what falls inside them, not its
        own older last hour); each machine's totals in those windows are summed by ``group_snapshot``."""
        group = np.asarray(group, np.int64)[: self.n]
        now = self.now_ts[: self.n]
        line_now = np.full(n_groups, np.nan)
        np.fmax.at(line_now, group, now)
        at = line_now[group]  # each machine's line's now
        first = self.first_ts[: self.n]
        spans = self._spans(at)
        starts = np.fmax(np.stack([s for _, s in spans]), first)
        ends = np.broadcast_to(at, starts.shape)
        per_machine = {name: {"totals": tot, "start": start, "end": at}
                       for (name, _), start, tot in zip(spans, starts, self.timeline.windows(starts, ends))}
        return group_snapshot(per_machine, group, n_groups, self.conv)


def group_snapshot(snap: dict, group: np.ndarray, n_groups: int, conv: oee.Conventions = oee.DEFAULT) -> dict:
    """KPIs of groups of machines (lines) per window from a ``snapshot``: {window: {kpi: array by group}}.

    ``group``: per machine, its group's index (0..n_groups-1). Each window's totals are the sums of the
    machines' totals for that window (``oee.aggregate``), and every ratio is ``oee.derive`` of those sums,
    never an average of percentages. ``start``/``end``: the earliest start and latest end of the group's
    machines (machines without data yet add nothing). Vectorised over machines and groups.
    """
    group = np.asarray(group, np.int64)
    out = {}
    for name, w in snap.items():
        tot = oee.aggregate(np.asarray(w["totals"])[: group.size], group, n_groups)
        k = oee.derive(tot, conv)
        start, end = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
        np.fmin.at(start, group, np.asarray(w["start"], np.float64)[: group.size])
        np.fmax.at(end, group, np.asarray(w["end"], np.float64)[: group.size])
        k["start"], k["end"] = start, end
        k["totals"] = tot
        k["machines"] = np.bincount(group, minlength=n_groups)  # how many machines each group adds up
        # the bottleneck (oee.bottleneck): its position among the group's machines (in machine order), -1: none
        k["bottleneck"] = oee.bottleneck(np.asarray(w["totals"])[: group.size], group, n_groups, conv)
        out[name] = k
    return out


def state_name(model: int, code: int) -> str | None:
    if code < 0:
        return None
    return STATE_MODELS[MODELS[model]].get(int(code))
