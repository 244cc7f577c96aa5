"""Incremental KPI state for all machines, folded from decoded batches with NumPy.

Batches are collected as they arrive and folded together (``fold``), so one set
of array operations serves every machine; the cost is proportional to the new
data, not to the history. The window is "since the gateway first heard of the
machine"; rolling, shift and day windows come with the OEE-engine issue.

Time is the machines' own: a machine's "now" is the latest timestamp it sent.
Replayed or duplicated data (older than what was already folded) is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract import PACKML, SIMPLE, CountsBatch, StateBatch, TelemetryBatch

from . import oee

MODELS = ("packml", "simple")
MODEL_NAMES = {"packml": PACKML, "simple": SIMPLE}


@dataclass
class Pending:
    states: list  # (machine index, StateBatch)
    counts: list  # (machine index, CountsBatch)
    seen: list  # (machine index, latest ts)


class KpiEngine:
    def __init__(self, capacity: int = 16):
        self.n = 0
        self._alloc(capacity)
        self._pending = Pending([], [], [])

    def _alloc(self, cap: int) -> None:
        def grow(name, fill, dtype, shape=()):
            new = np.full((cap, *shape), fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: old.shape[0]] = old
            setattr(self, name, new)

        grow("first_ts", np.nan, np.float64)
        grow("now_ts", np.nan, np.float64)
        grow("state_ts", np.nan, np.float64)  # when the current state began
        grow("state_cat", -1, np.int8)
        grow("state_code", -1, np.int16)
        grow("state_model", 0, np.int8)
        grow("time_s", 0.0, np.float64, (oee.N_CAT,))
        grow("count_ts", -np.inf, np.float64)
        grow("last_good", -1, np.int64)
        grow("last_reject", -1, np.int64)
        grow("good", 0, np.int64)
        grow("reject", 0, np.int64)
        grow("ideal_s", 0.0, np.float64)
        grow("ideal_good_s", 0.0, np.float64)
        self.capacity = cap

    def add_machine(self) -> int:
        if self.n == self.capacity:
            self._alloc(self.capacity * 2)
        self.n += 1
        return self.n - 1

    # -- collecting (cheap, called per message)
    def add_state(self, m: int, batch: StateBatch) -> None:
        self._pending.states.append((m, batch))
        self._pending.seen.append((m, batch.ts[-1]))

    def add_counts(self, m: int, batch: CountsBatch) -> None:
        self._pending.counts.append((m, batch))
        self._pending.seen.append((m, batch.ts[-1]))

    def add_telemetry(self, m: int, batch: TelemetryBatch) -> None:
        self._pending.seen.append((m, batch.ts[-1]))

    # -- folding (vectorised over everything collected since the last fold)
    def fold(self) -> None:
        p, self._pending = self._pending, Pending([], [], [])
        if p.seen:
            ms, ts = (np.array(x) for x in zip(*p.seen))
            np.fmax.at(self.now_ts, ms, ts)
            np.fmin.at(self.first_ts, ms, ts)
        if p.states:
            self._fold_states(p.states)
        if p.counts:
            self._fold_counts(p.counts)

    def _fold_states(self, items) -> None:
        m = np.concatenate([np.full(b.ts.size, i, np.int64) for i, b in items])
        ts = np.concatenate([b.ts for _, b in items])
        code = np.concatenate([b.state for _, b in items])
        model = np.concatenate([np.full(b.ts.size, MODELS.index(b.model), np.int8) for _, b in items])
        cat = np.where(model == 0, oee.PACKML_CATEGORIES[np.minimum(code, 16)],
                       oee.SIMPLE_CATEGORIES[np.minimum(code, 16)]).astype(np.int8)
        # Drop what was already folded (a replay after a reconnect): older than the current state,
        # or the very same change again.
        since = self.state_ts[m]
        keep = ~((ts < since) | ((ts == since) & (code == self.state_code[m])))
        m, ts, code, model, cat = m[keep], ts[keep], code[keep], model[keep], cat[keep]
        if not m.size:
            return
        order = oee.sort_by_machine(m, ts)
        m, ts, code, model, cat = m[order], ts[order], code[order], model[order], cat[order]
        im, icat, dur = oee.closed_intervals(m, ts, cat, self.state_ts, self.state_cat)
        np.add.at(self.time_s, (im, icat), dur)
        _, last = oee.group_bounds(m)
        lm = m[last]
        self.state_ts[lm], self.state_cat[lm] = ts[last], cat[last]
        self.state_code[lm], self.state_model[lm] = code[last], model[last]

    def _fold_counts(self, items) -> None:
        m = np.concatenate([np.full(b.ts.size, i, np.int64) for i, b in items])
        ts = np.concatenate([b.ts for _, b in items])
        good = np.concatenate([b.good for _, b in items])
        reject = np.concatenate([b.reject for _, b in items])
        ideal = np.concatenate([np.full(b.ts.size, np.nan if b.ideal_cycle_s is None else b.ideal_cycle_s)
                                for _, b in items])
        keep = ts >= self.count_ts[m]  # older samples were folded already (replay)
        m, ts, good, reject, ideal = m[keep], ts[keep], good[keep], reject[keep], ideal[keep]
        if not m.size:
            return
        order = oee.sort_by_machine(m, ts)
        m, ts, good, reject, ideal = m[order], ts[order], good[order], reject[order], ideal[order]
        dg = oee.counter_increase(m, good, self.last_good)
        dr = oee.counter_increase(m, reject, self.last_reject)
        cap = self.capacity
        self.good += np.bincount(m, dg, cap).astype(np.int64)
        self.reject += np.bincount(m, dr, cap).astype(np.int64)
        # parts made with an unknown ideal cycle time make performance undefined (NaN), not invented
        produced = (dg + dr) > 0
        self.ideal_s += np.bincount(m[produced], ((dg + dr) * ideal)[produced], cap)
        self.ideal_good_s += np.bincount(m[dg > 0], (dg * ideal)[dg > 0], cap)
        _, last = oee.group_bounds(m)
        lm = m[last]
        self.last_good[lm], self.last_reject[lm], self.count_ts[lm] = good[last], reject[last], ts[last]

    # -- reading
    def snapshot(self) -> dict[str, np.ndarray]:
        """KPIs of every machine as arrays (index = machine index), including the open state interval."""
        n = self.n
        time_s = self.time_s[:n].copy()
        open_s = np.maximum(self.now_ts[:n] - self.state_ts[:n], 0.0)
        has = (self.state_cat[:n] >= 0) & np.isfinite(open_s)
        time_s[np.flatnonzero(has), self.state_cat[:n][has]] += open_s[has]
        run_s, down_s = time_s[:, oee.RUN], time_s[:, oee.DOWN]
        planned_s = run_s + down_s
        good, reject = self.good[:n], self.reject[:n]
        a, p, q, o, simple = oee.ratios(planned_s, run_s, self.ideal_s[:n], good, reject, self.ideal_good_s[:n])
        return {
            "start": self.first_ts[:n].copy(), "end": self.now_ts[:n].copy(),
            "state": self.state_code[:n].copy(), "model": self.state_model[:n].copy(),
            "planned_s": planned_s, "run_s": run_s, "stop_s": down_s, "planned_stop_s": time_s[:, oee.PLANNED],
            "good": good.copy(), "reject": reject.copy(), "total": good + reject, "ideal_s": self.ideal_s[:n].copy(),
            "availability": a, "performance": p, "quality": q, "oee": o, "oee_simple": simple,
        }


def state_name(model: int, code: int) -> str | None:
    if code < 0:
        return None
    return MODEL_NAMES[MODELS[model]].get(int(code))
