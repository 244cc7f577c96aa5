"""Scenarios for courses: a YAML file scripts a timeline of faults and says what the KPIs will be.

A scenario (docs/simulators.md, "Scenarios for courses") names demo machines (with optional
``MachineSpec`` overrides), a seed, a simulated duration and a list of events (faults of
``simulators.faults`` at a simulated time from the start), and writes down the expected KPIs so a
trainer knows the answer before the course.

``load(name_or_path)`` reads and validates a file (ConfigError naming file:line: key and the fix);
``Scenario.machines(t0)`` builds the machines with every event already in its machine's fault queue
(``Machine.inject`` with a future time), received and applied at its exact simulated time inside
``advance``, so the same machines serve a headless run (``run_headless``) and a live
``simulators.opcua.Simulation`` at any ``--speed`` and tick, with identical events; live injections join
the same queue. ``expected_block`` computes the ``expected:`` block of a new scenario. ``Announcer``
publishes a running simulation's scenario message and takes presenter mode's command to start another
scenario (contract/sim.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from contract.yamlfile import ConfigError, YamlFile

from . import faults as _faults
from .machine import DEMO_MACHINES, Ledger, Machine, MachineSpec

_log = logging.getLogger("fieldlab.sim")
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
        """The scenario's machines starting at ``t0``, machine i with seed ``seed + i``, every event in its
        machine's fault queue (file order at the same time). With ``line`` they are the ``LineMachine``s of
        one ``simulators.line.Line``."""
        seeds = [self.seed + i for i in range(len(self.specs))]
        if self.line:
            from .line import Line

            machines = Line(list(self.specs), t0, seeds, self.line["buffers"], self.line.get("fill"),
                            name=self.name).machines
        else:
            machines = [Machine(spec, t0, seed) for spec, seed in zip(self.specs, seeds)]
        by_name = {m.spec.name: m for m in machines}
        for e in self.events:
            by_name[e.machine].inject(e.fault, t0 + e.at_s, **e.params)
        return machines

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


def load(name_or_path: str | Path, *, need_expected: bool = True) -> Scenario:
    """Read and validate a scenario: a shipped name (``normal-shift``) or a file path. ``need_expected=False``:
    the ``expected:`` block may be missing (a new scenario whose KPIs ``fieldlab sim expected`` computes)."""
    return parse(YamlFile.load(resolve(str(name_or_path))), need_expected=need_expected)


def parse(doc: YamlFile, *, need_expected: bool = True) -> Scenario:
    d = doc.data
    if not isinstance(d, dict):
        raise doc.error("", "a scenario is a mapping with name, description, seed, duration, machines, events "
                            "and expected (docs/simulators.md, \"Scenarios for courses\")")
    for k in d:
        if k not in TOP_KEYS:
            raise doc.error(str(k), f"unknown key; a scenario has {', '.join(TOP_KEYS)}")
    for k in TOP_KEYS:
        if k not in d and k not in OPTIONAL_KEYS and (need_expected or k != "expected"):
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
    expected, tol, ctol = _expected(doc, d["expected"], names) if "expected" in d else ({}, 0.02, 0)
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


def listing(width: int = 100) -> str:
    """The shipped scenarios for ``--list-scenarios``: name, duration, machines, and the whole description
    wrapped to ``width`` (never cut off)."""
    import textwrap

    out = []
    for name in available():
        s = load(name)
        out.append(f"{name}  ({format_time(s.duration_s)} simulated; {', '.join(sp.name for sp in s.specs)}"
                   f"{', a line' if s.line else ''})")
        text = " ".join(s.description.split())
        out += textwrap.wrap(text, width=width, initial_indent="    ", subsequent_indent="    ")
        out.append("")
    out.append("run one: --scenario NAME; your own: --scenario FILE.yaml (docs/simulators.md, Scenarios)")
    return "\n".join(out)


def describe_expected(s: Scenario, live: int = 0) -> str:
    """The expected KPIs after a run; after ``live`` injections they no longer apply, and it says so instead."""
    if live:
        n = f"{live} live injection{'s' if live != 1 else ''}"
        return (f"expected (scenario {s.name}): no longer applies: {n} changed the run; the numbers above are "
                f"this run's own\nverwacht (scenario {s.name}): geldt niet meer: {live} live ingevoerde "
                f"storing{'en' if live != 1 else ''} veranderde{'n' if live != 1 else ''} de run; de cijfers "
                "hierboven zijn van deze run")
    lines = [f"expected (scenario {s.name}, ratios +- {s.tolerance:g}, parts +- {s.count_tolerance}):"]
    for who, kpis in s.expected.items():
        lines.append(f"  {who}: " + ", ".join(f"{k} {v}" for k, v in kpis.items()))
    return "\n".join(lines)


def offered() -> list[dict]:
    """The shipped scenarios a simulator starts on command: [{name, description}] (the scenario message's
    ``scenarios``, contract/sim.py), the name being what ``load`` takes."""
    return [{"name": name, "description": " ".join(load(name).description.split())} for name in available()]


class Announcer:
    """A running simulation's scenario message (contract/sim.py), retained, about once a second, on one MQTT
    connection; with ``on_start(name, by)`` also the command to start another scenario
    (contract ``sim_command_topic``): only a name of ``offered()`` is taken, and ``on_start`` is called on the
    asyncio loop that called ``start``. A bad command is logged and ignored. ``show`` says what runs
    (``show(None)`` pauses the messages while the simulation restarts); ``forget`` asks the gateway to drop
    machines' history (docs/contract.md, cmd ``forget``); ``stop(t)`` sends the last message (running false)."""

    def __init__(self, url, site: str, area: str, line: str, speed: float, on_start=None):
        self.url, self.site, self.area, self.line, self.speed = url, site, area, line, speed
        self.on_start = on_start
        self.offered = offered() if on_start else None
        self._run: tuple | None = None  # (scenario or None, t0, machine names)
        self._client = self._task = self._loop = None

    def show(self, scenario: Scenario | None, t0: float | None = None, machines: list[str] = ()) -> None:
        self._run = None if t0 is None else (scenario, t0, list(machines))

    def message(self, now: float, running: bool = True) -> bytes | None:
        from contract.sim import encode_scenario

        if self._run is None:
            return None
        s, t0, machines = self._run
        upcoming = [{"ts": t0 + e.at_s, "machine": e.machine, "fault": e.fault, "args": e.params}
                    for e in (s.events if s else ()) if t0 + e.at_s > now]
        return encode_scenario(ts=now, speed=self.speed, running=running, site=self.site, area=self.area,
                               line=self.line, machines=machines, name=s.name if s else None,
                               description=s.description if s else None, start=t0,
                               end=t0 + s.duration_s if s else None, next=upcoming, scenarios=self.offered)

    async def start(self, now) -> None:
        """Connect and announce every second; ``now()`` gives the simulated time."""
        import asyncio

        from contract.mqtt import connect
        from contract.sim import sim_command_topic

        self._loop = asyncio.get_running_loop()
        subs = [(sim_command_topic(self.site), 1)] if self.on_start else []
        self._client = await asyncio.to_thread(connect, self.url, retry=True, subscriptions=subs,
                                               on_message=self._on_message if subs else None)
        self._task = asyncio.create_task(self._announce(now))

    async def _announce(self, now) -> None:
        import asyncio

        from contract.sim import scenario_topic

        while True:
            payload = self.message(now())
            if payload is not None:
                self._client.publish(scenario_topic(self.site), payload, qos=1, retain=True)
            await asyncio.sleep(1.0)

    def _on_message(self, client, userdata, msg) -> None:  # paho's thread
        from contract.errors import ContractError
        from contract.payloads import decode_command
        from contract.sim import START

        try:
            cmd = decode_command(bytes(msg.payload))
        except ContractError as e:
            _log.warning("simulator command ignored: %s", e)
            return
        name = cmd.args.get("scenario")
        by = "".join(c for c in str(cmd.args.get("by", "?"))[:128] if c.isprintable()) or "?"  # printed as it is
        names = [o["name"] for o in self.offered]
        if cmd.cmd != START or name not in names:
            _log.warning("simulator command ignored: %s %r: send start with a scenario of %s", cmd.cmd, name,
                         ", ".join(names))
            return
        try:
            self._loop.call_soon_threadsafe(self.on_start, name, by)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    async def forget(self, machines: list[str], by: str) -> bool:
        """The gateway's ``forget`` for each machine of this line (QoS 1); whether the broker took them all."""
        import asyncio

        from contract import Kind, MachineRef, encode_command
        from contract.mqtt import wait_published

        infos = [self._client.publish(MachineRef(self.site, self.area, self.line, m).topic(Kind.CMD),
                                      encode_command("forget", by=by), qos=1) for m in machines]
        return await asyncio.to_thread(wait_published, infos, 5.0)

    async def stop(self, t_end: float | None = None) -> None:
        """Stop announcing; with ``t_end`` send the last message first (running false, at that time)."""
        import asyncio

        from contract.mqtt import wait_published
        from contract.sim import scenario_topic

        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        client, self._client = self._client, None
        if client is None:
            return
        payload = None if t_end is None else self.message(t_end, running=False)
        if payload is not None:
            await asyncio.to_thread(wait_published, [client.publish(scenario_topic(self.site), payload, qos=1,
                                                                    retain=True)], 5.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)


__all__ = ["Announcer", "Event", "Scenario", "available", "describe", "describe_expected", "listing", "load",
           "offered", "parse", "parse_time", "run_headless"]
