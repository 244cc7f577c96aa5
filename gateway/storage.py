"""What the gateway stores, as InfluxDB line protocol (scheme: docs/storage.md).

Measurements, each tagged ``site``, ``area``, ``line``, ``machine``:

- ``telemetry``: one field per process value (float), at the sample's time;
- ``state``: ``state`` and ``reason`` (integers) and ``state_name`` (string), at each change;
- ``counts``: ``good`` and ``reject`` (integer running totals) and ``ideal_cycle_s``, tag ``product``;
- ``agent``: ``online`` (1/0) and the edge agent's numeric health fields, at each status message;
- ``operator``: ``reason`` (a stop classified afterwards, at the stop's start) or ``reject`` (parts found
  bad by hand), and ``by`` (string), at each operator entry the gateway applied; a classified stop's ``state``
  points get its ``reason`` again (a point of the same series and time replaces that field);
- ``kpi``: tag ``window`` (since_start, last_15min, last_1h, shift, today): A, P, Q, OEE, times,
  counts, failures, MTBF/MTTR, at the machine's own latest time.

And ``line_kpi``, tagged ``site``, ``area``, ``line`` and ``window`` (no ``machine``): the same fields
for a line, from its machines' summed totals, plus ``machines`` (how many) and ``bottleneck`` (a machine's
name, string; absent while there is none), at the line's latest time.

Pure functions from decoded contract batches and engine snapshots to lines; no I/O.
"""
from __future__ import annotations

import numpy as np

from contract import Kind, LineRef, MachineRef, PACKML, STATE_MODELS

from .lineproto import lines, series, string_field

KPI_FIELDS = ("availability", "performance", "quality", "oee", "planned_s", "run_s", "good", "reject",
              "failures", "mtbf_s", "mttr_s", "breakdown_s", "setup_s", "small_stop_s", "utilisation", "teep",
              "external_s")
KPI_INTEGERS = frozenset({"good", "reject", "failures"})
LINE_KPI_FIELDS = KPI_FIELDS + ("machines",)
LINE_KPI_INTEGERS = KPI_INTEGERS | {"machines"}


def tags(ref: MachineRef) -> dict[str, str]:
    return {"site": ref.site, "area": ref.area, "line": ref.line, "machine": ref.machine}


def batch_lines(ref: MachineRef, kind: Kind, batch) -> list[str]:
    """The lines of one decoded message (contract.decode's result)."""
    t = tags(ref)
    if kind is Kind.TELEMETRY:
        return lines(series("telemetry", t), batch.ts, batch.signals)
    if kind is Kind.STATE:
        names = STATE_MODELS.get(batch.model, PACKML)
        out = []
        for code in np.unique(batch.state):  # one group per state: state_name is a constant string there
            rows = batch.state == code
            out += lines(series("state", t), batch.ts[rows], {"state": batch.state[rows], "reason": batch.reason[rows]},
                         frozenset({"state", "reason"}), {"state_name": names.get(int(code), str(code))})
        return out
    if kind is Kind.COUNTS:
        fields = {"good": batch.good, "reject": batch.reject}
        if batch.ideal_cycle_s is not None:
            fields["ideal_cycle_s"] = np.full(batch.ts.size, batch.ideal_cycle_s)
        return lines(series("counts", {**t, "product": batch.product or ""}), batch.ts, fields,
                     frozenset({"good", "reject"}))
    if kind is Kind.STATUS:
        fields = {"online": np.array([1 if batch.status == "online" else 0])}
        for k, v in batch.info.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                fields[k] = np.array([v])
        ints = frozenset(k for k, v in fields.items() if v.dtype.kind in "iu")
        return lines(series("agent", t), np.array([batch.ts]), fields, ints)
    if kind is Kind.OPERATOR:  # (entry, starts): an entry the engine applied (gateway/engine.py ``applied``)
        entry, starts = batch
        name = "reason" if entry.reason is not None else "reject"
        out = lines(series("operator", t), np.array([entry.ts]), {name: np.array([getattr(entry, name)])},
                    frozenset({name}), {"by": entry.by})
        if starts is not None and len(starts):  # the classified stop's state points get its reason (same series
            # and time: InfluxDB replaces that field), so a Pareto over ``state`` moves the seconds too
            out += lines(series("state", t), np.asarray(starts), {"reason": np.full(len(starts), entry.reason)},
                         frozenset({"reason"}))
        return out
    return []


def _window_lines(measurement: str, tag_sets: list[dict], end, snapshot: dict, fields, integers) -> list[str]:
    """One line per row (a machine or a line) and window of a KPI snapshot, stamped with that row's end
    time; rows without data yet (end not finite) are left out."""
    end = np.asarray(end, np.float64)[: len(tag_sets)]
    ok = np.flatnonzero(np.isfinite(end))
    out = []
    for window, kpis in snapshot.items():
        prefixes = [series(measurement, {**tag_sets[i], "window": window}) for i in ok]
        out += lines(prefixes, end[ok], {k: np.asarray(kpis[k])[ok] for k in fields if k in kpis}, integers)
    return out


def kpi_lines(machines: list[MachineRef], snapshot: dict, now: np.ndarray,
              line_refs: list[LineRef] | None = None, line_snapshot: dict | None = None,
              line_names: list[list[str]] | None = None) -> list[str]:
    """One line per machine and window from KpiEngine.snapshot(), stamped with each machine's own now;
    with ``line_refs`` and ``line_snapshot`` (engine.group_snapshot) also the lines' (``line_kpi_lines``)."""
    out = _window_lines("kpi", [tags(m) for m in machines], now, snapshot, KPI_FIELDS, KPI_INTEGERS)
    if line_refs:
        out += line_kpi_lines(line_refs, line_snapshot, line_names)
    return out


def line_tags(ref: LineRef) -> dict[str, str]:
    return {"site": ref.site, "area": ref.area, "line": ref.line}


def line_kpi_lines(line_refs: list[LineRef], line_snapshot: dict, names: list[list[str]] | None = None) -> list[str]:
    """One ``line_kpi`` line per line and window from engine.group_snapshot(), stamped with the line's
    latest time (the latest of its machines'); lines without any data yet are left out. With ``names`` (each
    line's machine names, in machine order) also its bottleneck."""
    out = _window_lines("line_kpi", [line_tags(r) for r in line_refs], line_snapshot["since_start"]["end"],
                        line_snapshot, LINE_KPI_FIELDS, LINE_KPI_INTEGERS)
    return out + _bottleneck_lines(line_refs, line_snapshot, names)


def _bottleneck_lines(line_refs: list[LineRef], line_snapshot: dict, names: list[list[str]] | None) -> list[str]:
    """The ``bottleneck`` string field of ``line_kpi`` (a machine's name; absent while there is none), one
    point per line and window with the same series and time as its numbers (InfluxDB merges them)."""
    if names is None:
        return []
    end = np.asarray(line_snapshot["since_start"]["end"], np.float64)
    out = []
    for window, kpis in line_snapshot.items():
        for j in np.flatnonzero(np.isfinite(end[: len(line_refs)]) & (np.asarray(kpis["bottleneck"])[: len(line_refs)] >= 0)):
            name = names[j][int(kpis["bottleneck"][j])]
            out.append(f"{series('line_kpi', {**line_tags(line_refs[j]), 'window': window})} "
                       f"bottleneck={string_field(name)} {round(float(end[j]) * 1000.0)}")
    return out
