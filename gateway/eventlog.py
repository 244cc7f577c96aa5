"""Read an event log (JSON Lines or CSV) into the arrays of gateway.timeline.

The format is documented field by field in docs/oee.md. Each bad row is an
EventLogError naming the file, the line and the field, with what to write instead.

For spreadsheet users: a CSV with ``;`` between the fields and decimal commas (what Excel writes with
Dutch settings) is recognised by its header; times without an offset are local times of ``tz`` (``--tz``
or the site's time zone; UTC if neither is given, and the report says so); ``count_warnings`` finds the
windows whose counter readings do not reach their end, where performance above 100 % means "parts booked
in the wrong window", not a fast machine.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    naive: int = 0  # times read without an offset (local times of the zone given, or UTC)
    dialect: str = "json"  # "json", "csv" or "csv;" (semicolons and decimal commas)
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


#: a Dutch spreadsheet date: day-month-year, then the time (1-12-2026 06:00 or 01-12-2026 06:00:00)
_DMY = re.compile(r"(\d{1,2})-(\d{1,2})-(\d{4})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?")


def zone(name: str | None) -> dt.tzinfo | None:
    """The time zone for times without an offset (None: UTC); EventLogError naming a good one."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise EventLogError(f"--tz {name}: not a time zone; write an IANA name like Europe/Amsterdam or UTC") from None


def parse_time(value, where: str, tz: dt.tzinfo | None = None, log: EventLog | None = None) -> float:
    """Unix seconds, ISO 8601 text, or a Dutch spreadsheet date (1-12-2026 06:00). Without an offset the
    time is a local time of ``tz`` (default UTC; an hour that occurs twice when the clocks go back is read
    as the first, summer time, one); ``log`` counts such times."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        m = _DMY.fullmatch(text)
        try:
            t = (dt.datetime(int(m[3]), int(m[2]), int(m[1]), int(m[4]), int(m[5]), int(m[6] or 0)) if m
                 else dt.datetime.fromisoformat(text))
        except ValueError:
            pass
        else:
            if t.tzinfo is None:
                t = t.replace(tzinfo=tz or dt.timezone.utc)
                if log is not None:
                    log.naive += 1
            return t.timestamp()
    raise EventLogError(f"{where}: {value!r} is not a time; write Unix seconds (1764576000), "
                        "ISO 8601 (2026-12-01T06:00:00Z) or day-month-year (1-12-2026 06:00)")


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


def _row(log: EventLog, row: dict, where: str, ideal: dict[int, float], tz: dt.tzinfo | None = None) -> None:
    def parse_time(value, where):
        return _parse_time(value, where, tz, log)

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


_parse_time = parse_time
_NUMBERS = ("ts", "state", "reason", "good", "reject", "ideal_cycle_s", "start", "end")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")


def read(path: str | Path, tz: dt.tzinfo | None = None) -> EventLog:
    """Read an event log; ``tz``: the zone of times without an offset (None: UTC)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise EventLogError(f"{path}: cannot read it ({e.strerror})") from None
    log = EventLog()
    ideal: dict[int, float] = {}
    is_csv = path.suffix.lower() == ".csv" or (text.lstrip()[:5].lower() == "type," and path.suffix != ".jsonl")
    if not is_csv and text.lstrip()[:5].lower() == "type;" and path.suffix != ".jsonl":
        is_csv = True
    if is_csv:
        # Excel with Dutch (and most European) settings writes ; between fields and a decimal comma
        header = text.lstrip().split("\n", 1)[0]
        semicolons = header.count(";") > header.count(",")
        log.dialect = "csv;" if semicolons else "csv"
        reader = csv.DictReader(text.splitlines(), delimiter=";" if semicolons else ",")
        unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
        if not reader.fieldnames or "type" not in reader.fieldnames or unknown:
            raise EventLogError(f"{path}:1: the header must name columns from: {', '.join(CSV_COLUMNS)}, separated "
                                "by , (or ; as Excel writes with Dutch settings)"
                                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        for row in reader:
            row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
            if semicolons:
                row = {k: (v.replace(",", ".") if k in _NUMBERS and isinstance(v, str) and _DECIMAL_COMMA.fullmatch(v)
                           else v) for k, v in row.items()}
            _row(log, row, f"{path}:{reader.line_num}", ideal, tz)
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
            _row(log, row, f"{path}:{n}", ideal, tz)
    if not log.machines:
        raise EventLogError(f"{path}: no state or count rows, so no machine to report on")
    return log


def _clock(t: float, tz: dt.tzinfo | None) -> str:
    return dt.datetime.fromtimestamp(t, tz or dt.timezone.utc).strftime("%Y-%m-%d %H:%M") + ("" if tz else " UTC")


def count_warnings(log: EventLog, edges: list[float], tz: dt.tzinfo | None = None,
                   slack: float = 0.05) -> dict[tuple[int, int], list[dict]]:
    """{(window, machine): [{"en": ..., "nl": ...}]} for every window end without a counter reading near it
    (within ``slack`` of the window's length). Counters are read, not sampled: the parts made between two
    readings are booked at the second one, so such a window's performance and OEE are too low, and the
    window of the next reading's too high (performance above 100 % then means this, not a fast machine)."""
    out: dict[tuple[int, int], list[dict]] = {}
    if not log.counts:
        return out
    c = np.array([(m, t) for m, t, *_ in log.counts], dtype=np.float64)
    for m in range(len(log.machines)):
        ts = np.sort(c[c[:, 0] == m, 1])
        for i, (a, e) in enumerate(zip(edges[:-1], edges[1:])):
            k = np.searchsorted(ts, e, side="right")  # ts[k-1] <= e < ts[k]
            if k == 0 or e - ts[k - 1] <= slack * (e - a):
                continue  # no reading yet (nothing counted), or one close enough before the end
            prev = ts[k - 1]
            if k == len(ts):
                out.setdefault((i, m), []).append({
                    "en": f"no counter reading at the end of this window: the last one is at {_clock(prev, tz)}, so "
                          "the parts made after it are not counted; performance and OEE here are too low",
                    "nl": f"geen tellerstand aan het eind van dit venster: de laatste is van {_clock(prev, tz)}, dus "
                          "de delen die daarna gemaakt zijn tellen niet mee; prestatie en OEE zijn hier te laag"})
                continue
            nxt = ts[k]
            j = int(np.searchsorted(edges, nxt, side="left")) - 1  # edges[j] < nxt <= edges[j + 1]
            where = ((f"the window of {_clock(edges[j], tz)}", f"het venster van {_clock(edges[j], tz)}")
                     if j < len(edges) - 1 else ("after this report's end", "na het eind van dit rapport"))
            out.setdefault((i, m), []).append({
                "en": f"no counter reading at the end of this window (the nearest are at {_clock(prev, tz)} and "
                      f"{_clock(nxt, tz)}): the parts made in between are all counted at {_clock(nxt, tz)}, in "
                      f"{where[0]}; performance and OEE here are too low, there too high (above 100 % means "
                      "exactly this). Read the counter at every window end, or choose longer windows (--every)",
                "nl": f"geen tellerstand aan het eind van dit venster (de dichtstbijzijnde zijn van {_clock(prev, tz)} "
                      f"en {_clock(nxt, tz)}): de delen daartussen tellen allemaal mee op {_clock(nxt, tz)}, in "
                      f"{where[1]}; prestatie en OEE zijn hier te laag, daar te hoog (boven 100 % betekent precies "
                      "dit). Lees de teller af aan het eind van elk venster, of kies langere vensters (--every)"})
            if i < j < len(edges) - 1 and not any(w.get("prev") == prev for w in out.get((j, m), ())):
                out.setdefault((j, m), []).append({"prev": prev,
                    "en": f"parts made before this window are counted in it: the counter reading at {_clock(nxt, tz)} "
                          f"is the first after {_clock(prev, tz)}; performance and OEE here are too high",
                    "nl": f"delen van voor dit venster tellen hierin mee: de tellerstand van {_clock(nxt, tz)} is de "
                          f"eerste na {_clock(prev, tz)}; prestatie en OEE zijn hier te hoog"})
    for ws in out.values():
        for w in ws:
            w.pop("prev", None)
    return out


def report(log: EventLog, start: float, end: float, every: float | None, conv: oee.Conventions,
           tz: dt.tzinfo | None = None) -> list[dict]:
    """KPIs per window, per machine and per line (a line's from its machines' summed totals). A machine's row
    has ``warnings`` (English and Dutch) where its counter readings do not reach the window's end."""
    tl = log.timeline(end, conv)
    lines = sorted({ln for ln in log.lines if ln})
    group = np.array([lines.index(ln) if ln else -1 for ln in log.lines], dtype=np.int64)
    edges = [start]
    while every and edges[-1] + every < end:
        edges.append(edges[-1] + every)
    edges.append(end)
    warnings = count_warnings(log, edges, tz)
    out = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        tot = tl.totals(a, b)
        k = oee.derive(tot, conv)
        reasons = tl.stop_reasons(a, b)
        for m, name in enumerate(log.machines):
            out.append({"window": {"start": a, "end": b}, "machine": name, "line": log.lines[m],
                        **{key: oee.plain(v[m], key in oee.COUNT_FIELDS) for key, v in k.items()},
                        "stop_reasons": [{k2: v2 for k2, v2 in r.items() if k2 != "machine"}
                                         for r in reasons if r["machine"] == m],
                        "warnings": warnings.get((i, m), [])})
        if lines:
            sel = group >= 0
            kl = oee.derive(oee.aggregate(tot[sel], group[sel], len(lines)), conv)
            for j, ln in enumerate(lines):
                out.append({"window": {"start": a, "end": b}, "machine": None, "line": ln,
                            **{key: oee.plain(v[j], key in oee.COUNT_FIELDS) for key, v in kl.items()}})
    return out


def notes(log: EventLog, rows: list[dict], tz: dt.tzinfo | None) -> str:
    """What the reader of the tables must know, in English and Dutch: how times without an offset were read,
    and the windows whose counter readings do not reach their end (``count_warnings``)."""
    out = []
    if log.naive:
        name = getattr(tz, "key", None) or "UTC"
        out.append(f"note: {log.naive} times without an offset were read as {name} local time"
                   + ("" if tz else "; if they are local times, give --tz Europe/Amsterdam (or your zone)"))
        out.append(f"let op: {log.naive} tijden zonder tijdzone zijn gelezen als lokale tijd {name}"
                   + ("" if tz else "; zijn het lokale tijden, geef dan --tz Europe/Amsterdam (of uw zone)"))
    for r in rows:
        for w in r.get("warnings") or ():
            when = f"{_clock(r['window']['start'], tz)} -> {_clock(r['window']['end'], tz)}"
            out.append(f"warning: {r['machine']}, window {when}: {w['en']}")
            out.append(f"waarschuwing: {r['machine']}, venster {when}: {w['nl']}")
    return "\n".join(out) + "\n" if out else ""
