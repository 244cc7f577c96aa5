"""What a simulation says about itself, and the faults it takes: shared by the simulators (which publish and obey)
and the gateway's presenter page (which shows and sends), neither importing the other.

Faults are ``cmd`` messages on a machine's cmd topic (docs/contract.md, kind ``cmd``):
``{"v": 1, "cmd": "breakdown", "args": {"minutes": 5}}``; ``FAULT_NAMES`` are the faults a simulated machine
knows (simulators/faults.py ``FAULTS`` defines them and their parameters; a test keeps the two equal).

A running simulation publishes its **scenario message**, retained, on ``scenario_topic(site)``
(``fieldlab/v1/_sys/sim/<site>/scenario``), about once a second:

    {"v": 1, "ts": 1800003600.0, "speed": 60.0, "running": true,
     "site": "demo", "area": "hall-1", "line": "line-1", "machines": ["cnc-01", "press-01"],
     "name": "bearing-wear", "description": "…", "start": 1800000000.0, "end": 1800028800.0,
     "next": [{"ts": 1800010800.0, "machine": "cnc-01", "fault": "breakdown", "args": {"minutes": 18}}]}

``ts`` is the simulated time when it was sent (a page moves it on with ``speed`` until the next one), ``name``,
``description`` and ``end`` are null without a scenario, ``next`` lists the scripted faults still to come (at
most ``MAX_NEXT``, soonest first). ``running`` false: the simulation has stopped (its last message). Times lie
from ``TS_MIN`` to before ``TS_MAX``, as in every message. Optional ``scenarios``: the scenarios this simulator
can start on command (``[{"name", "description"}]``, at most ``MAX_SCENARIOS``), absent or empty if it cannot.

**Starting another scenario** (presenter mode): a ``cmd`` message on ``sim_command_topic(site)``
(``fieldlab/v1/_sys/sim/<site>/cmd``): ``{"v": 1, "cmd": "start", "args": {"scenario": "bottleneck-line",
"by": "anna"}}`` (``encode_start``). The simulator restarts with that scenario, one of its ``scenarios``.
Schema: contract/schemas/scenario.json (the command: cmd.json); docs/contract.md, "Simulator scenario".
"""
from __future__ import annotations

import math
import re

import orjson

from .errors import ContractError
from .payloads import TS_MAX, TS_MIN, VERSION, encode_command
from .topics import ROOT, MachineRef

FAULT_NAMES = ("breakdown", "microstops", "slow", "quality", "material", "reset")
MAX_NEXT = 10
MAX_SCENARIOS = 50
START = "start"  # the command that starts another scenario (on sim_command_topic)
SIM_PREFIX = f"{ROOT}/_sys/sim"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a scenario's name (simulators/scenario.py)


def scenario_topic(site: str) -> str:
    MachineRef(site, "a", "l", "m")  # a site name as the contract allows it
    return f"{SIM_PREFIX}/{site}/scenario"


def sim_command_topic(site: str) -> str:
    """Where a simulator of ``site`` takes commands meant for it as a whole (``START``)."""
    return scenario_topic(site).removesuffix("/scenario") + "/cmd"


def encode_start(scenario: str, by: str) -> bytes:
    """The command that makes the simulator start ``scenario`` afresh (asked by ``by``)."""
    return encode_command(START, scenario=scenario, by=by)


def _num(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def encode_scenario(*, ts: float, speed: float, site: str, area: str, line: str, machines: list[str],
                    name: str | None = None, description: str | None = None, start: float | None = None,
                    end: float | None = None, next: list[dict] = (), running: bool = True,
                    scenarios: list[dict] | None = None) -> bytes:
    """The scenario message; ``next``: [{ts, machine, fault, args}] (the soonest ``MAX_NEXT`` are kept);
    ``scenarios``: [{name, description}] it can start (None: the field is left out)."""
    upcoming = sorted(({"ts": float(e["ts"]), "machine": e["machine"], "fault": e["fault"],
                        "args": dict(e.get("args") or {})} for e in next), key=lambda e: e["ts"])[:MAX_NEXT]
    body = {"v": VERSION, "ts": float(ts), "speed": float(speed), "running": bool(running), "site": site,
            "area": area, "line": line, "machines": list(machines), "name": name, "description": description,
            "start": None if start is None else float(start), "end": None if end is None else float(end),
            "next": upcoming}
    if scenarios is not None:
        body["scenarios"] = [{"name": s["name"], "description": s["description"]} for s in scenarios]
    decode_scenario(orjson.dumps(body))  # never send what a reader would refuse
    return orjson.dumps(body)


def decode_scenario(data: bytes | str) -> dict:
    """The scenario message as a dict; ContractError naming the field if it breaks the rules above."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ContractError(f"scenario: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ContractError("scenario: payload must be a JSON object")
    if obj.get("v") != VERSION or obj.get("v") is True:
        raise ContractError(f"scenario.v: expected schema version {VERSION}, got {obj.get('v')!r}")
    for key in ("ts", "speed"):
        if not _num(obj.get(key)):
            raise ContractError(f"scenario.{key}: required number")
    if not TS_MIN <= obj["ts"] < TS_MAX:
        raise ContractError(f"scenario.ts: {obj['ts']!r} is not a time from 2000 to 2099 in seconds")
    if obj["speed"] <= 0:
        raise ContractError("scenario.speed: must be greater than 0")
    if not isinstance(obj.get("running"), bool):
        raise ContractError("scenario.running: required true or false")
    try:
        MachineRef(obj.get("site"), obj.get("area"), obj.get("line"), "m")
        for m in obj.get("machines") if isinstance(obj.get("machines"), list) else [None]:
            MachineRef(obj["site"], obj["area"], obj["line"], m)
    except ContractError as e:
        raise ContractError(f"scenario: {e}") from None
    for key in ("name", "description"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ContractError(f"scenario.{key}: a string or null")
    for key in ("start", "end"):
        if obj.get(key) is not None and not (_num(obj[key]) and TS_MIN <= obj[key] < TS_MAX):
            raise ContractError(f"scenario.{key}: a time (seconds, 2000 to 2099) or null")
    upcoming = obj.get("next")
    if not isinstance(upcoming, list) or len(upcoming) > MAX_NEXT:
        raise ContractError(f"scenario.next: a list of at most {MAX_NEXT} events")
    for i, e in enumerate(upcoming):
        if not (isinstance(e, dict) and _num(e.get("ts")) and TS_MIN <= e["ts"] < TS_MAX
                and isinstance(e.get("machine"), str) and e["machine"] in obj["machines"]
                and e.get("fault") in FAULT_NAMES and isinstance(e.get("args"), dict)):
            raise ContractError(f"scenario.next[{i}]: expected {{ts, machine (one of machines), fault (one of "
                                f"{', '.join(FAULT_NAMES)}), args}}")
    offered = obj.get("scenarios", [])
    if not isinstance(offered, list) or len(offered) > MAX_SCENARIOS:
        raise ContractError(f"scenario.scenarios: a list of at most {MAX_SCENARIOS} scenarios")
    for i, s in enumerate(offered):
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _NAME.fullmatch(s["name"])
                and isinstance(s.get("description"), str)):
            raise ContractError(f"scenario.scenarios[{i}]: expected {{name (letters, digits, _ . -), description}}")
    return obj
