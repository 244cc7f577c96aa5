"""OEE math: pure functions on NumPy arrays. No I/O, no clock, no globals that change.

Everything is computed for many machines at once: a window's KPIs come from a
small set of additive totals per machine (seconds per category, parts, ideal
seconds, failures), and every ratio is derived from those totals by ``derive``.
Totals add up, ratios do not: a line's KPIs are ``derive`` of its machines'
summed totals, never an average of percentages.

docs/oee.md explains every convention and where sources disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- categories
# What a machine state means for OEE. A state model (PackML, simple) maps its
# codes to these through a table; reason codes can override the state.
RUN = 0  # producing (PackML Execute)
BREAKDOWN = 1  # stopped by its own failure (PackML Held, Aborted): counts for MTBF / MTTR
STOPPED = 2  # other unplanned stop of the machine itself: waiting, idle, material (PackML Idle, Starting ...)
SETUP = 3  # planned stop inside production time: changeover, cleaning, adjustment
NOT_SCHEDULED = 4  # outside planned production time: no shift, break, no orders (PackML Stopped)
SMALL_STOP = 5  # derived: a BREAKDOWN or STOPPED interval shorter than the micro-stop threshold
# stopped by the line: starved or blocked by a neighbour (reasons 202 and 203, under any state; PackML's Suspended
# without a reason stays STOPPED: a stack light's orange does not say it was the line). An availability loss of the
# machine's own OEE, never a small stop, never a failure
EXTERNAL = 6  # (appended: the indices before it, stored in checkpoints, stay)
CATEGORIES = ("run", "breakdown", "stopped", "setup", "not_scheduled", "small_stop", "external")
N_CAT = len(CATEGORIES)

# additive totals per machine and window: the time categories above, then these
(GOOD, REJECT, STARTUP_REJECT, IDEAL, IDEAL_GOOD, IDEAL_STARTUP_REJECT, NO_IDEAL,
 FAILURES) = range(N_CAT, N_CAT + 8)
TOTALS = CATEGORIES + ("good", "reject", "startup_reject", "ideal_s", "ideal_good_s", "ideal_startup_reject_s",
                       "parts_without_ideal", "failures")
N_TOT = len(TOTALS)

PACKML_CATEGORIES = {
    0: NOT_SCHEDULED,  # Stopped
    1: STOPPED, 2: STOPPED, 3: STOPPED,  # Resetting, Idle, Starting
    4: RUN,  # Execute
    5: STOPPED, 6: NOT_SCHEDULED,  # Completing, Complete
    7: BREAKDOWN, 8: BREAKDOWN, 9: STOPPED, 10: BREAKDOWN,  # Aborting, Aborted, Stopping, Clearing
    11: STOPPED, 12: STOPPED, 13: STOPPED,  # Suspending, Suspended, Unsuspending (external with reason 202/203)
    14: BREAKDOWN, 15: BREAKDOWN, 16: BREAKDOWN,  # Holding, Held, Unholding (own reason)
}
SIMPLE_CATEGORIES = {0: NOT_SCHEDULED, 1: RUN, 2: STOPPED, 3: BREAKDOWN, 4: SETUP}
MODELS = ("packml", "simple")


# the contract's reason codes (docs/contract.md): changeover is setup (PackML has no setup state of its own);
# starved and blocked are external under any state; a material shortage (201, entered as Suspended) is the
# machine's own stop: its feeder ran empty, not a neighbour in the line (docs/oee.md)
DEFAULT_REASONS = {301: SETUP, 201: STOPPED, 202: EXTERNAL, 203: EXTERNAL}


@dataclass(frozen=True)
class Conventions:
    """The choices where OEE sources disagree (defaults and reasons in docs/oee.md)."""

    micro_stop_s: float = 120.0  # unplanned stops shorter than this are small stops
    micro_stops_as: str = "performance"  # or "availability"
    setup_as: str = "availability"  # or "excluded": planned setup outside planned production time
    startup_s: float = 600.0  # rejects within this long after a setup ends are start-up rejects
    packml: dict = field(default_factory=dict)  # overrides of PACKML_CATEGORIES: code -> category
    simple: dict = field(default_factory=dict)  # overrides of SIMPLE_CATEGORIES
    # reason code -> category, wins over the state; 301 (changeover, docs/contract.md) is setup by default
    reasons: dict = field(default_factory=lambda: dict(DEFAULT_REASONS))

    def __post_init__(self):
        if self.micro_stops_as not in ("performance", "availability"):
            raise ValueError(f"micro_stops_as: {self.micro_stops_as!r}, choose performance or availability")
        if self.setup_as not in ("availability", "excluded"):
            raise ValueError(f"setup_as: {self.setup_as!r}, choose availability or excluded")
        if self.micro_stop_s < 0 or self.startup_s < 0:
            raise ValueError("micro_stop_s and startup_s must be >= 0")

    def state_tables(self) -> np.ndarray:
        """Array [model index, state code] -> category."""
        t = np.full((len(MODELS), 17), STOPPED, dtype=np.int8)
        for mi, (base, over) in enumerate(((PACKML_CATEGORIES, self.packml), (SIMPLE_CATEGORIES, self.simple))):
            for code, cat in {**base, **over}.items():
                t[mi, code] = cat
        return t

    def categorise(self, model: np.ndarray, code: np.ndarray, reason: np.ndarray) -> np.ndarray:
        cat = self.state_tables()[model, np.minimum(code, 16)]
        for r, c in self.reasons.items():
            cat = np.where(reason == r, np.int8(c), cat)
        return cat.astype(np.int8)


DEFAULT = Conventions()


# ----------------------------------------------------------------------------- stream helpers

def group_bounds(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For an array sorted by machine: masks of the first and last element of each machine's run."""
    first = np.ones(m.size, dtype=bool)
    last = np.ones(m.size, dtype=bool)
    if m.size:
        first[1:] = m[1:] != m[:-1]
        last[:-1] = first[1:]
    return first, last


def sort_by_machine(m: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable order by machine, then time (arrival order kept for equal times)."""
    return np.lexsort((ts, m))


def counter_increase(m, values, last_values):
    """Increase of monotonic counters between samples, sorted by (machine, time).

    ``last_values``: per machine, the previous sample (-1 if none: the first
    sample sets the baseline). A drop is a counter reset: the increase is the new
    value (what was counted since the restart), never negative production.
    """
    first, _ = group_bounds(m)
    prev = np.empty_like(values)
    prev[1:] = values[:-1]
    prev[first] = last_values[m[first]]
    inc = values - prev
    reset = inc < 0
    inc[reset] = values[reset]
    inc[prev < 0] = 0
    return inc


def segment_search(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: np.ndarray,
                   side: str = "right") -> np.ndarray:
    """``np.searchsorted(values[lo_i:hi_i], q_i) + lo_i`` for many segments at once: a vectorised
    binary search (a few dozen NumPy steps for any number of machines), exact for any floats."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        v = values[np.minimum(mid, values.size - 1)]
        go = ((v <= q) if side == "right" else (v < q)) & active
        lo = np.where(go, mid + 1, lo)
        hi = np.where(active & ~go, mid, hi)


# ----------------------------------------------------------------------------- KPIs from totals

def derive(totals: np.ndarray, conv: Conventions = DEFAULT) -> dict[str, np.ndarray]:
    """Every KPI of every row of ``totals`` (shape (n, N_TOT)); NaN = undefined.

    Availability = operating / planned time; performance = Σ(ideal × parts) / operating time;
    quality = Σ(ideal × good) / Σ(ideal × parts) (= good / total with one product);
    OEE = A × P × Q = Σ(ideal × good) / planned time; utilisation = planned / known time;
    TEEP = OEE × utilisation; six big losses and external time (starved, blocked) in seconds and in OEE
    percentage points.
    """
    T = np.asarray(totals, dtype=np.float64).reshape(-1, N_TOT)
    run, brk, stp, setup, nsched, small, ext = (T[:, i] for i in range(N_CAT))
    good, reject = T[:, GOOD], T[:, REJECT]
    # parts made without a known ideal cycle time make every ideal-time ratio undefined, not guessed
    unknown = T[:, NO_IDEAL] > 0
    ideal = np.where(unknown, np.nan, T[:, IDEAL])
    ideal_good = np.where(unknown, np.nan, T[:, IDEAL_GOOD])
    known = run + brk + stp + setup + nsched + small + ext
    setup_loss = setup if conv.setup_as == "availability" else np.zeros_like(setup)
    planned = known - nsched - (setup - setup_loss)
    small_perf = conv.micro_stops_as == "performance"
    operating = run + (small if small_perf else 0.0)
    total = good + reject
    with np.errstate(divide="ignore", invalid="ignore"):
        availability = np.where(planned > 0, operating / planned, np.nan)
        performance = np.where(operating > 0, ideal / operating, np.nan)
        quality = np.where(ideal > 0, ideal_good / ideal, np.where(total > 0, good / total, np.nan))
        simple = np.where(planned > 0, ideal_good / planned, np.nan)
        apq = availability * performance * quality
        oee = np.where(np.isnan(apq), simple, apq)
        utilisation = np.where(known > 0, planned / known, np.nan)
        failures = T[:, FAILURES]
        mtbf = np.where(failures > 0, operating / failures, np.nan)
        mttr = np.where(failures > 0, brk / failures, np.nan)
        losses = {
            "unplanned_stops": brk + stp,
            "external": ext,  # starved / blocked: in planned time (availability), not the machine's own stop
            "planned_stops": setup_loss,
            "small_stops": small,
            "slow_cycles": run - ideal,
            "production_rejects": ideal - ideal_good - T[:, IDEAL_STARTUP_REJECT],
            "startup_rejects": T[:, IDEAL_STARTUP_REJECT],
        }
        out = {
            "known_s": known, "planned_s": planned, "run_s": run, "operating_s": operating,
            "not_scheduled_s": known - planned, "breakdown_s": brk, "stopped_s": stp, "setup_s": setup,
            "small_stop_s": small, "external_s": ext, "good": good, "reject": reject, "total": total,
            "startup_reject": T[:, STARTUP_REJECT], "ideal_s": ideal, "ideal_good_s": ideal_good,
            "parts_without_ideal": T[:, NO_IDEAL],
            "availability": availability, "performance": performance, "quality": quality, "oee": oee,
            "oee_simple": simple, "utilisation": utilisation, "teep": oee * utilisation,
            "failures": failures, "mtbf_s": mtbf, "mttr_s": mttr,
        }
        for name, seconds in losses.items():
            out[f"loss_{name}_s"] = seconds
            out[f"loss_{name}_pp"] = np.where(planned > 0, 100.0 * seconds / planned, np.nan)
    return out


#: KPIs that count things: shown as whole numbers
COUNT_FIELDS = frozenset({"good", "reject", "total", "startup_reject", "parts_without_ideal", "failures"})


def plain(v, whole: bool = False):
    """NumPy scalar -> JSON-friendly Python value; NaN -> None (undefined); counts as whole numbers."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return int(round(v)) if whole and v is not None else v


def bottleneck(totals: np.ndarray, group: np.ndarray, n_groups: int, conv: Conventions = DEFAULT) -> np.ndarray:
    """Per group (line), the position within the group (in machine order) of its bottleneck, -1 if none.

    The active-period method (docs/oee.md): a machine is *active* in its planned time except while the line
    starves or blocks it (external time); the bottleneck is the machine with the highest active share,
    (planned - external) / planned. The first in machine order wins a tie. None (-1) for a group in which
    no machine was starved or blocked at all (nothing coupled them, or one machine), or without planned time.
    """
    group = np.asarray(group, np.int64)
    T = np.asarray(totals, dtype=np.float64).reshape(-1, N_TOT)
    # planned time as ``derive`` has it (without the rest of derive: this runs for every window each tick)
    planned = T[:, :N_CAT].sum(axis=1) - T[:, NOT_SCHEDULED] - (T[:, SETUP] if conv.setup_as == "excluded" else 0.0)
    ext = T[:, EXTERNAL]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(planned > 0, (planned - ext) / planned, -np.inf)
    order = np.lexsort((-share, group))  # by group, then share (highest first); stable: machine order in a tie
    first, _ = group_bounds(group[order])
    best = np.full(n_groups, -1, np.int64)
    best[group[order][first]] = order[first]
    rank = np.empty(group.size, np.int64)  # each machine's position within its group
    by_group = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[by_group], group[by_group])
    rank[by_group] = np.arange(group.size) - starts
    coupled = np.bincount(group, ext, n_groups) > 0
    ok = (best >= 0) & coupled
    ok[ok] &= np.isfinite(share[best[ok]])
    return np.where(ok, rank[np.maximum(best, 0)], -1)


def aggregate(totals: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum machines' totals per group (line, area): the input for ``derive`` of the group."""
    out = np.zeros((n_groups, N_TOT))
    for j in range(N_TOT):
        out[:, j] = np.bincount(group, totals[:, j], n_groups)
    return out
