"""Read an event log (JSON Lines or CSV) into the arrays of gateway.timeline.

The format is documented field by field in docs/oee.md. Each bad row is an
EventLogError naming the file, the line and the field, with what to write instead.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import PACKML, SIMPLE

from . import oee, timeline

TYPES = ("state", "count", "planned", "end")
CSV_COLUMNS = ("type", "ts", "machine", "line", "state", "model", "reason", "good", "reject", "product",
               "ideal_cycle_s", "start", "end", "label")
_NAMES = {model: {name.lower(): code for code, name in table.items()}
          for model, table in (("packml", PACKML), ("simple", SIMPLE))}


class EventLogError(ValueError):
    pass


@dataclass
class EventLog:
    machines: list[str] = field(default_factory=list)
    lines: list[str | None] = field(default_factory=list)
    states: list[tuple] = field(default_factory=list)  # (m, ts, model, code, reason)
    counts: list[tuple] = field(default_factory=list)  # (m, ts, good, reject, ideal)
    planned: list[tuple] = field(default_factory=list)  # (start, end, label)
    ends: dict[int | None, float] = field(default_factory=dict)  # machine (None = all) -> end
    _index: dict[str, int] = field(default_factory=dict)

    def machine(self, name: str, line: str | None) -> int:
        m = self._index.get(name)
        if m is None:
            m = self._index[name] = len(self.machines)
            self.machines.append(name)
            self.lines.append(line)
            return m
        if line and not self.lines[m]:
            self.lines[m] = line
        return m

    @property
    def first(self) -> float:
        ts = [s[1] for s in self.states] + [c[1] for c in self.counts] + [p[0] for p in self.planned]
        return min(ts) if ts else 0.0

    @property
    def last(self) -> float:
        ts = [s[1] for s in self.states] + [c[1] for c in self.counts] + [p[1] for p in self.planned]
        return max([*ts, *self.ends.values()]) if ts or self.ends else 0.0

    def timeline(self, report_end: float, conv: oee.Conventions) -> timeline.Timeline:
        n = len(self.machines)
        end = np.array([self.ends.get(m, self.ends.get(None, report_end)) for m in range(n)], dtype=np.float64)
        s = np.array(self.states, dtype=np.float64).reshape(-1, 5)
        c = np.array(self.counts, dtype=np.float64).reshape(-1, 5)
        states = (s[:, 0].astype(np.int64), s[:, 1], s[:, 2].astype(np.int64), s[:, 3].astype(np.int64),
                  s[:, 4].astype(np.int64))
        counts = (c[:, 0].astype(np.int64), c[:, 1], c[:, 2].astype(np.int64), c[:, 3].astype(np.int64), c[:, 4])
        cal = timeline.merge_calendar([p[0] for p in self.planned], [p[1] for p in self.planned])
        return timeline.build(n, states, counts, end, cal, conv)


def parse_time(value, where: str) -> float:
    """Unix seconds, or ISO 8601 text (no offset = UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if t.tzinfo is None:
                t = t.replace(tzinfo=dt.timezone.utc)
            return t.timestamp()
    raise EventLogError(f"{where}: {value!r} is not a time; write Unix seconds (1764576000) or "
                        "ISO 8601 (2026-12-01T06:00:00Z)")


def _int(row: dict, key: str, where: str, default=None, minimum: int = 0) -> int:
    v = row.get(key)
    if v is None or v == "":
        if default is not None:
            return default
        raise EventLogError(f"{where}: field '{key}' is missing; write a whole number >= {minimum}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f != int(f) or f < minimum or isinstance(v, bool):
        raise EventLogError(f"{where}: field '{key}' = {v!r}; write a whole number >= {minimum}")
    return int(f)


def _row(log: EventLog, row: dict, where: str, ideal: dict[int, float]) -> None:
    kind = row.get("type")
    if kind not in TYPES:
        raise EventLogError(f"{where}: field 'type' = {kind!r}; write one of {', '.join(TYPES)}")
    if kind == "planned":
        start = parse_time(row.get("start"), f"{where}: field 'start'")
        end = parse_time(row.get("end"), f"{where}: field 'end'")
        if end <= start:
            raise EventLogError(f"{where}: field 'end' is not after 'start'; a planned stop needs a length")
        log.planned.append((start, end, row.get("label") or "planned"))
        return
    name = row.get("machine")
    if kind == "end":
        t = parse_time(row.get("ts"), f"{where}: field 'ts'")
        log.ends[log.machine(str(name), row.get("line") or None) if name else None] = t
        return
    if not isinstance(name, str) or not name.strip():
        raise EventLogError(f"{where}: field 'machine' is missing; name the machine, e.g. \"cnc-01\"")
    m = log.machine(name.strip(), (row.get("line") or None))
    t = parse_time(row.get("ts"), f"{where}: field 'ts'")
    if kind == "state":
        model = row.get("model") or "packml"
        if model not in _NAMES:
            raise EventLogError(f"{where}: field 'model' = {model!r}; write packml or simple")
        state = row.get("state")
        table = PACKML if model == "packml" else SIMPLE
        if isinstance(state, str) and state.strip().lower() in _NAMES[model]:
            code = _NAMES[model][state.strip().lower()]
        else:
            try:
                code = _int(row, "state", where)
            except EventLogError:
                code = -1
            if code not in table:
                names = ", ".join(f"{c} {n}" for c, n in table.items())
                raise EventLogError(f"{where}: field 'state' = {state!r} is not a {model} state; write one of: "
                                    f"{names}")
        log.states.append((m, t, oee.MODELS.index(model), code, _int(row, "reason", where, default=0)))
    else:  # count
        good = _int(row, "good", where)
        reject = _int(row, "reject", where)
        if row.get("ideal_cycle_s") not in (None, ""):
            try:
                value = float(row["ideal_cycle_s"])
            except (TypeError, ValueError):
                value = math.nan
            if not value > 0 or not math.isfinite(value):
                raise EventLogError(f"{where}: field 'ideal_cycle_s' = {row['ideal_cycle_s']!r}; write the seconds "
                                    "per part at nameplate speed, a number > 0")
            ideal[m] = value
        log.counts.append((m, t, good, reject, ideal.get(m, math.nan)))


def read(path: str | Path) -> EventLog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise EventLogError(f"{path}: cannot read it ({e.strerror})") from None
    log = EventLog()
    ideal: dict[int, float] = {}
    is_csv = path.suffix.lower() == ".csv" or (text.lstrip()[:5].lower() == "type," and path.suffix != ".jsonl")
    if is_csv:
        reader = csv.DictReader(text.splitlines())
        unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
        if not reader.fieldnames or "type" not in reader.fieldnames or unknown:
            raise EventLogError(f"{path}:1: the header must name columns from: {', '.join(CSV_COLUMNS)}"
                                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        for row in reader:
            _row(log, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()},
                 f"{path}:{reader.line_num}", ideal)
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EventLogError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise EventLogError(f"{path}:{n}: each line must be a JSON object {{\"type\": ...}}")
            _row(log, row, f"{path}:{n}", ideal)
    if not log.machines:
        raise EventLogError(f"{path}: no state or count rows, so no machine to report on")
    return log


def report(log: EventLog, start: float, end: float, every: float | None, conv: oee.Conventions) -> list[dict]:
    """KPIs per window, per machine and per line (a line's from its machines' summed totals)."""
    tl = log.timeline(end, conv)
    lines = sorted({ln for ln in log.lines if ln})
    group = np.array([lines.index(ln) if ln else -1 for ln in log.lines], dtype=np.int64)
    edges = [start]
    while every and edges[-1] + every < end:
        edges.append(edges[-1] + every)
    edges.append(end)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        tot = tl.totals(a, b)
        k = oee.derive(tot, conv)
        reasons = tl.stop_reasons(a, b)
        for m, name in enumerate(log.machines):
            out.append({"window": {"start": a, "end": b}, "machine": name, "line": log.lines[m],
                        **{key: oee.plain(v[m], key in oee.COUNT_FIELDS) for key, v in k.items()},
                        "stop_reasons": [{k2: v2 for k2, v2 in r.items() if k2 != "machine"}
                                         for r in reasons if r["machine"] == m]})
        if lines:
            sel = group >= 0
            kl = oee.derive(oee.aggregate(tot[sel], group[sel], len(lines)), conv)
            for j, ln in enumerate(lines):
                out.append({"window": {"start": a, "end": b}, "machine": None, "line": ln,
                            **{key: oee.plain(v[j], key in oee.COUNT_FIELDS) for key, v in kl.items()}})
    return out
