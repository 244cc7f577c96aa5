"""OEE math: pure functions on NumPy arrays. No I/O, no clock, no globals that change.

Conventions (docs/oee.md says why):
- Availability = run time / planned production time; planned time excludes
  states mapped to PLANNED (e.g. PackML Stopped).
- Performance = Σ(ideal cycle time × parts) / run time, so mixed products are
  weighted by their own ideal cycle times. Not capped: above 1 means the ideal
  cycle time is wrong, and we show it.
- Quality = good / (good + reject).
- An undefined ratio (0 / 0) is NaN ("undefined"), never 0 or 1. OEE is
  A × P × Q when all three are defined, otherwise it follows from the simple
  formula Σ(ideal × good) / planned time (0 when nothing good was made).
- Counters are monotonic; a drop means the machine restarted its counter and
  is read like Prometheus ``increase()``: the new value is the increase.

All functions take a machine index array so one call serves every machine.
"""
from __future__ import annotations

import numpy as np

# OEE categories a machine state is mapped to.
RUN, DOWN, PLANNED = 0, 1, 2
CATEGORIES = ("run", "down", "planned")
N_CAT = len(CATEGORIES)


def category_table(mapping: dict[int, int], default: int = DOWN, size: int = 17) -> np.ndarray:
    """A lookup array state code -> category (codes not named get ``default``)."""
    table = np.full(size, default, dtype=np.int8)
    for code, cat in mapping.items():
        table[code] = cat
    return table


# Default mapping (configurable later): PackML Execute is run time; Stopped and
# Complete are outside planned production; every other state is an
# availability loss (Held, Suspended, Aborted, Idle, the transitional states).
PACKML_CATEGORIES = category_table({4: RUN, 0: PLANNED, 6: PLANNED})
SIMPLE_CATEGORIES = category_table({1: RUN, 0: PLANNED})  # idle, down, setup: availability loss
MODEL_CATEGORIES = {"packml": PACKML_CATEGORIES, "simple": SIMPLE_CATEGORIES}


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


def closed_intervals(m, ts, cat, last_ts, last_cat):
    """Durations closed by a sorted stream of state changes.

    ``m, ts, cat``: changes sorted by (machine, time); ``last_ts, last_cat``: per
    machine, when the current state began and its category (NaN / -1 if none).
    Returns ``(m, cat, seconds)`` for each interval that ended, i.e. the state
    each change ends, with its duration.
    """
    first, _ = group_bounds(m)
    prev_ts = np.empty_like(ts)
    prev_cat = np.empty_like(cat)
    prev_ts[1:], prev_cat[1:] = ts[:-1], cat[:-1]
    prev_ts[first], prev_cat[first] = last_ts[m[first]], last_cat[m[first]]
    known = (prev_cat >= 0) & np.isfinite(prev_ts)
    return m[known], prev_cat[known], ts[known] - prev_ts[known]


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


def ratios(planned_s, run_s, ideal_s, good, reject, ideal_good_s):
    """Availability, performance, quality and OEE for arrays of machines (NaN = undefined)."""
    planned_s, run_s, ideal_s = (np.asarray(x, dtype=np.float64) for x in (planned_s, run_s, ideal_s))
    good = np.asarray(good, dtype=np.float64)
    total = good + np.asarray(reject, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        availability = np.where(planned_s > 0, run_s / planned_s, np.nan)
        performance = np.where(run_s > 0, ideal_s / run_s, np.nan)
        quality = np.where(total > 0, good / total, np.nan)
        simple = np.where(planned_s > 0, np.asarray(ideal_good_s, dtype=np.float64) / planned_s, np.nan)
    apq = availability * performance * quality
    oee = np.where(np.isnan(apq), simple, apq)
    return availability, performance, quality, oee, simple
