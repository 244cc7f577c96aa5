"""Scenarios for courses: a YAML file scripts a timeline of faults and says what the KPIs will be.

A scenario (docs/simulators.md, "Scenarios for courses") names demo machines (with optional
``MachineSpec`` overrides), a seed, a simulated duration and a list of events (faults of
``simulators.faults`` at a simulated time from the start), and writes down the expected KPIs so a
trainer knows the answer before the course.

``load(name_or_path)`` reads and validates a file (ConfigError naming file:line: key and the fix);
``Scenario.machines(t0)`` builds ``ScriptedMachine``s, which inject each event at its exact simulated
time from inside ``advance``, so the same machines serve a headless run (``run_headless``) and a live
``simulators.opcua.Simulation`` at any ``--speed`` and tick, with identical events.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from contract.yamlfile import ConfigError, YamlFile

from . import faults as _faults
from .machine import DEMO_MACHINES, Ledger, Machine, MachineSpec

SCENARIO_DIR = Path(__file__).with_name("scenarios")
SPECS = {s.name: s for s in DEMO_MACHINES}
RATIOS = ("oee", "availability", "performance", "quality")
COUNTS = ("good", "reject")
TOP_KEYS = ("name", "description", "seed", "duration", "machines", "events", "expected", "line")
OPTIONAL_KEYS = ("events", "line")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_OVERRIDABLE = {f.name: f for f in dataclasses.fields(MachineSpec) if f.name not in ("name", "kind", "product")}


def parse_time(value) -> float | None:
    """Seconds from "1h30m", "8h", "90s", "2h 15m 30s" or a plain number of seconds; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    parts = _PART.findall(text)
    if not parts or _PART.sub("", text).strip():
        return None
    units = [u for _, u in parts]
    if len(set(units)) != len(units) or units != sorted(units, key="hms".index):
        return None
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def format_time(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


@dataclass(frozen=True)
class Event:
    at_s: float  # simulated seconds from the start
    machine: str
    fault: str
    params: dict


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    seed: int
    duration_s: float
    specs: tuple[MachineSpec, ...]
    events: tuple[Event, ...]  # sorted by time (stable: same time keeps file order)
    expected: dict  # {machine or "line": {kpi: value}}
    tolerance: float  # absolute, for the ratios
    count_tolerance: int  # +- parts
    line: dict | None = None  # {"buffers": [...], "fill": [...]}: the machines are a line in this order

    def machines(self, t0: float) -> list[Machine]:
        """The scenario's machines starting at ``t0``, machine i with seed ``seed + i``, events scripted.
        With ``line`` they are the ``LineMachine``s of one ``simulators.line.Line``, which injects the events."""
        if self.line:
            from .line import Line

            scripts = {spec.name: [(t0 + e.at_s, e.fault, e.params) for e in self.events if e.machine == spec.name]
                       for spec in self.specs}
            return Line(list(self.specs), t0, [self.seed + i for i in range(len(self.specs))], self.line["buffers"],
                        self.line.get("fill"), name=self.name, scripts=scripts).machines
        return [ScriptedMachine(spec, t0, self.seed + i,
                                [(t0 + e.at_s, e.fault, e.params) for e in self.events if e.machine == spec.name])
                for i, spec in enumerate(self.specs)]

    def check(self, actual: dict) -> list[str]:
        """Compare KPIs ``{machine or "line": {kpi: value}}`` with ``expected``; one line per miss."""
        misses = []
        for who, want in self.expected.items():
            got = actual.get(who, {})
            for kpi, value in want.items():
                tol = self.tolerance if kpi in RATIOS else self.count_tolerance
                if kpi not in got or abs(got[kpi] - value) > tol + 1e-9:
                    misses.append(f"{who} {kpi}: expected {value} +- {tol:g}, got {got.get(kpi)}")
        return misses


class ScriptedMachine(Machine):
    """A machine that injects its scenario's events itself, each at its exact simulated time.

    ``advance(t)`` runs to each due event's time, injects it (``Machine.inject``) and runs on, so the
    result does not depend on how often the driver ticks. A scripted ``reset`` acts like a trainer's reset
    at that moment: it ends every fault in effect or waiting then (everything scripted before it, and at
    the same time earlier in the file); faults scripted after it have not happened yet and run in full.
    """

    def __init__(self, spec: MachineSpec, t0: float, seed: int, script: list[tuple[float, str, dict]], **kw):
        super().__init__(spec, t0, seed, **kw)
        self.script = deque(sorted(script, key=lambda e: e[0]))

    def advance(self, t: float) -> list[tuple]:
        events: list[tuple] = []
        while self.script and self.script[0][0] <= t:
            at, fault, params = self.script.popleft()
            events += super().advance(at)
            self.inject(fault, at, **params)
        events += super().advance(t)
        return events


def run_headless(scenario: Scenario, t0: float = 0.0, step_s: float | None = None) -> dict[str, Ledger]:
    """Run the scenario to its end without servers; {machine: ledger}. ``step_s``: advance in steps
    (the result is the same; tests use it to feed an engine); None = in one go."""
    machines = scenario.machines(t0)
    end = t0 + scenario.duration_s
    for m in machines:
        t = t0
        while t < end:
            t = end if step_s is None else min(end, t + step_s)
            m.advance(t)
    return {m.spec.name: m.ledger_now() for m in machines}


# ---------------------------------------------------------------------------------------- files
def available() -> list[str]:
    """Names of the shipped scenarios (simulators/scenarios/*.yaml)."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    raise ConfigError(f"{name_or_path}: no such scenario file, and no shipped scenario of that name "
                      f"(shipped: {', '.join(available())}; or give the path of a .yaml file)")


def load(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario: a shipped name (``normal-shift``) or a file path."""
    return parse(YamlFile.load(resolve(str(name_or_path))))


def parse(doc: YamlFile) -> Scenario:
    d = doc.data
    if not isinstance(d, dict):
        raise doc.error("", "a scenario is a mapping with name, description, seed, duration, machines, events "
                            "and expected (docs/simulators.md, \"Scenarios for courses\")")
    for k in d:
        if k not in TOP_KEYS:
            raise doc.error(str(k), f"unknown key; a scenario has {', '.join(TOP_KEYS)}")
    for k in TOP_KEYS:
        if k not in d and k not in OPTIONAL_KEYS:
            raise doc.error(k, "missing; add it (docs/simulators.md, \"Scenarios for courses\")")
    name, description = d["name"], d["description"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise doc.error("name", "write a short name of letters, digits, - and _, e.g. normal-shift")
    if not isinstance(description, str) or not description.strip():
        raise doc.error("description", "write what happens, for the trainer")
    seed = d["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise doc.error("seed", f"write a whole number, e.g. 7 (got {seed!r})")
    duration = parse_time(d["duration"])
    if not duration:
        raise doc.error("duration", f"write a simulated time like 8h or 1h30m (got {d['duration']!r})")
    specs = _machines(doc, d["machines"])
    names = [s.name for s in specs]
    events = _events(doc, d.get("events") or [], names, duration, specs)
    expected, tol, ctol = _expected(doc, d["expected"], names)
    line = _line(doc, d["line"], len(specs)) if "line" in d else None
    return Scenario(name, description.strip(), doc.path, seed, duration, specs, events, expected, tol, ctol, line)


def _line(doc: YamlFile, line, n: int) -> dict:
    hint = "line: {buffers: [20, 10], fill: [10, 5]}: parts between machine 1 and 2, 2 and 3, ...; fill optional"
    if n < 2:
        raise doc.error("line", "a line needs at least two machines")
    if not isinstance(line, dict) or "buffers" not in line:
        raise doc.error("line", hint)
    for k in line:
        if k not in ("buffers", "fill"):
            raise doc.error(f"line.{k}", f"unknown key; {hint}")
    out = {}
    for k in ("buffers", "fill"):
        v = line.get(k)
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v] * (n - 1)
        ok = (isinstance(v, list) and len(v) == n - 1
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= (1 if k == "buffers" else 0) for x in v))
        if not ok:
            raise doc.error(f"line.{k}", f"write {n - 1} whole numbers of parts (one per buffer; or one for all), "
                                         f"{'at least 1' if k == 'buffers' else '0 or more'}: {hint}")
        out[k] = v
    if "fill" in out and any(f > c for f, c in zip(out["fill"], out["buffers"])):
        raise doc.error("line.fill", "a buffer cannot start fuller than its capacity")
    return out


def _machines(doc: YamlFile, machines) -> tuple[MachineSpec, ...]:
    if not isinstance(machines, dict) or not machines:
        raise doc.error("machines", f"a mapping of demo machine names to spec overrides ({{}} for none), "
                                    f"e.g. cnc-01: {{}}; names: {', '.join(SPECS)}")
    out = []
    for name, over in machines.items():
        key = f"machines.{name}"
        if name not in SPECS:
            raise doc.error(key, f"not a demo machine; use one of {', '.join(SPECS)}")
        over = over or {}
        if not isinstance(over, dict):
            raise doc.error(key, "a mapping of MachineSpec fields to values, e.g. {mtbf_s: 3600}, or {}")
        changes = {}
        for field, value in over.items():
            if field not in _OVERRIDABLE:
                raise doc.error(f"{key}.{field}", f"not a machine parameter; use one of {', '.join(_OVERRIDABLE)}")
            default = getattr(SPECS[name], field)
            if isinstance(default, tuple):
                ok = (isinstance(value, list) and len(value) == 2
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                      and value[0] <= value[1])
                if not ok:
                    raise doc.error(f"{key}.{field}", "write two numbers [low, high], low <= high, e.g. [20, 120]")
                value = (float(value[0]), float(value[1]))
            elif value is None and field in ("startup_reject_rate", "idle_temp_c"):
                pass
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise doc.error(f"{key}.{field}", f"write a number (got {value!r})")
            changes[field] = value
        try:
            out.append(dataclasses.replace(SPECS[name], **changes))
        except ValueError as e:
            raise doc.error(key, str(e)) from None
    return tuple(out)


def _events(doc: YamlFile, events, names: list[str], duration: float, specs) -> tuple[Event, ...]:
    if not isinstance(events, list):
        raise doc.error("events", "a list of events: - {at: 1h30m, machine: cnc-01, fault: breakdown, minutes: 20}")
    out = []
    for i, ev in enumerate(events):
        key = f"events[{i}]"
        if not isinstance(ev, dict):
            raise doc.error(key, "an event is a mapping: {at: 1h30m, machine: cnc-01, fault: breakdown, minutes: 20}")
        for k in ("at", "machine", "fault"):
            if k not in ev:
                raise doc.error(key, f"{k}: missing (an event has at, machine, fault and the fault's parameters)")
        at = parse_time(ev["at"])
        if at is None or at >= duration:
            raise doc.error(f"{key}.at", f"write a simulated time from the start before the end "
                                         f"({format_time(duration)}), like 1h30m (got {ev['at']!r})")
        if ev["machine"] not in names:
            raise doc.error(f"{key}.machine", f"not one of this scenario's machines ({', '.join(names)})")
        params = {k: v for k, v in ev.items() if k not in ("at", "machine", "fault")}
        try:
            fault, params = _faults.check(ev["fault"], params)
            spec = specs[names.index(ev["machine"])]
            if fault == "microstops" and params["seconds"] < 2 * spec.acting_s:
                raise ValueError(f"microstops: seconds must be at least {2 * spec.acting_s:g} (Holding and Unholding)")
        except ValueError as e:
            bad = next((k for k in params if f" {k}" in str(e) or f"'{k}'" in str(e)), None)
            where = f"{key}.{bad}" if bad else (f"{key}.fault" if "unknown fault" in str(e) else key)
            raise doc.error(where, str(e)) from None
        out.append(Event(at, ev["machine"], fault, params))
    return tuple(sorted(out, key=lambda e: e.at_s))


def _expected(doc: YamlFile, exp, names: list[str]) -> tuple[dict, float, int]:
    hint = "expected: {tolerance: 0.02, count_tolerance: 10, machines: {cnc-01: {oee: 0.61, good: 650, ...}}, line: {...}}"
    if not isinstance(exp, dict):
        raise doc.error("expected", f"a mapping: {hint}")
    for k in exp:
        if k not in ("tolerance", "count_tolerance", "machines", "line"):
            raise doc.error(f"expected.{k}", "unknown key; expected has tolerance, count_tolerance, machines, line")
    tol, ctol = exp.get("tolerance"), exp.get("count_tolerance", 0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise doc.error("expected.tolerance", "write the absolute tolerance of the ratios (0-1), e.g. 0.02")
    if isinstance(ctol, bool) or not isinstance(ctol, int) or ctol < 0:
        raise doc.error("expected.count_tolerance", "write a whole number of parts, +- (0 = exact)")
    machines = exp.get("machines")
    if not isinstance(machines, dict) or not machines:
        raise doc.error("expected.machines", f"the expected KPIs per machine: {hint}")
    out = {}
    for who, kpis, key in ([(m, k, f"expected.machines.{m}") for m, k in machines.items()]
                           + ([("line", exp["line"], "expected.line")] if "line" in exp else [])):
        if who != "line" and who not in names:
            raise doc.error(key, f"not one of this scenario's machines ({', '.join(names)})")
        if not isinstance(kpis, dict) or not kpis:
            raise doc.error(key, f"a mapping of KPIs: {', '.join(RATIOS + COUNTS)}")
        for kpi, value in kpis.items():
            if kpi in RATIOS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise doc.error(f"{key}.{kpi}", f"write a ratio between 0 and 1 (got {value!r})")
            elif kpi in COUNTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise doc.error(f"{key}.{kpi}", f"write a whole number of parts (got {value!r})")
            else:
                raise doc.error(f"{key}.{kpi}", f"unknown KPI; use {', '.join(RATIOS + COUNTS)}")
        out[who] = dict(kpis)
    return out, float(tol), ctol


def describe(s: Scenario) -> str:
    """What a trainer reads at the start: name, description, machines, timeline."""
    lines = [f"scenario {s.name} ({format_time(s.duration_s)} simulated, seed {s.seed}): {s.path}"]
    lines += [f"  {line}" for line in s.description.splitlines()]
    lines.append(f"  machines: {', '.join(sp.name for sp in s.specs)}")
    for e in s.events:
        what = ", ".join(f"{k} {v:g}" for k, v in e.params.items())
        lines.append(f"  at {format_time(e.at_s):>8}  {e.machine}: {e.fault}{' (' + what + ')' if what else ''}")
    return "\n".join(lines)


def describe_expected(s: Scenario) -> str:
    lines = [f"expected (scenario {s.name}, ratios +- {s.tolerance:g}, parts +- {s.count_tolerance}):"]
    for who, kpis in s.expected.items():
        lines.append(f"  {who}: " + ", ".join(f"{k} {v}" for k, v in kpis.items()))
    return "\n".join(lines)


__all__ = ["Event", "Scenario", "ScriptedMachine", "available", "describe", "describe_expected", "load",
           "parse", "parse_time", "run_headless"]
