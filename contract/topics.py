"""Topic scheme of the fieldlab contract.

    fieldlab/v1/<site>/<area>/<line>/<machine>/<kind>

In the spirit of a Unified Namespace (ISA-95 levels enterprise-site-area-line-
cell): a fixed prefix with the contract's major version, the four levels of the
machine's place in the plant, then the kind of message. System topics (not
tied to one machine) live under ``fieldlab/v1/_sys/...``; a level name never
starts with ``_`` so the two can never collide.

Line-level KPIs (the gateway's, from its machines' summed totals) use the
reserved machine name ``_line``: ``fieldlab/v1/<site>/<area>/<line>/_line/kpi``
(``LineRef``). No machine can be called ``_line`` (a level starts with a letter
or digit), so a line's topic never collides with a machine's, and
``parse_topic`` still refuses it as a machine topic.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

from .errors import ContractError

PREFIX = "fieldlab"
MAJOR = 1
ROOT = f"{PREFIX}/v{MAJOR}"

_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LEVELS = ("site", "area", "line", "machine")


class Kind(str, Enum):
    TELEMETRY = "telemetry"  # process values, columnar batch
    STATE = "state"  # machine state changes, columnar batch
    COUNTS = "counts"  # monotonic good/reject counters, columnar batch
    STATUS = "status"  # birth/death of the publisher, retained, MQTT last will
    KPI = "kpi"  # gateway output, retained
    CMD = "cmd"  # commands to simulators / edge agents
    OPERATOR = "operator"  # what people enter about a machine: a stop's reason, rejects counted by hand


#: Which kinds carry data that must not be lost (published with QoS 1).
QOS = {Kind.TELEMETRY: 1, Kind.STATE: 1, Kind.COUNTS: 1, Kind.STATUS: 1, Kind.KPI: 1, Kind.CMD: 1,
       Kind.OPERATOR: 1}
#: Which kinds are retained by the broker (a late subscriber sees the last one).
RETAINED = frozenset({Kind.STATUS, Kind.KPI})

#: The reserved machine-level name of a line's own topics (so far only its KPIs).
LINE = "_line"
#: What a line publishes under ``LINE``: the gateway's line KPIs.
LINE_KINDS = frozenset({Kind.KPI})

#: Dead letters: the gateway republishes what it rejected here, with the reason.
DEADLETTER_TOPIC = f"{ROOT}/_sys/deadletter"
#: Every gateway's own retained status (its last will says "offline"): ``.../_sys/gateway/<client id>/status``.
GATEWAY_STATUS_PREFIX = f"{ROOT}/_sys/gateway"


def gateway_status_topic(client_id: str) -> str:
    """The retained status topic of the gateway with this MQTT client id (docs/contract.md, gateway status)."""
    return f"{GATEWAY_STATUS_PREFIX}/{client_id}/status"


def sim_machines_topic(site: str, area: str, line: str) -> str:
    """Where a simulator that takes ``cmd`` messages for a line says which machines it has, retained
    (``fieldlab/v1/_sys/sim/<site>/<area>/<line>/machines``; docs/contract.md, simulator machines)."""
    MachineRef(site, area, line, "m")  # the names as the contract allows them
    return f"{ROOT}/_sys/sim/{site}/{area}/{line}/machines"


@dataclass(frozen=True, order=True)
class MachineRef:
    """Where a machine sits in the plant: site/area/line/machine."""

    site: str
    area: str
    line: str
    machine: str

    def __post_init__(self) -> None:
        for name in LEVELS:
            value = getattr(self, name)
            if not isinstance(value, str) or not _LEVEL.match(value):
                raise ContractError(
                    f"{name} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit (no '/', '+', '#' or spaces)"
                )

    @property
    def path(self) -> str:
        return f"{self.site}/{self.area}/{self.line}/{self.machine}"

    def topic(self, kind: Kind | str) -> str:
        return f"{ROOT}/{self.path}/{Kind(kind).value}"

    @classmethod
    def parse(cls, path: str) -> "MachineRef":
        """Parse ``site/area/line/machine``."""
        parts = path.split("/")
        if len(parts) != 4:
            raise ContractError(f"machine path {path!r}: expected site/area/line/machine")
        return cls(*parts)


@dataclass(frozen=True, order=True)
class LineRef:
    """A line of machines: site/area/line. Its topics sit at the machine level under ``LINE``."""

    site: str
    area: str
    line: str

    def __post_init__(self) -> None:
        for name in LEVELS[:3]:
            value = getattr(self, name)
            if not isinstance(value, str) or not _LEVEL.match(value):
                raise ContractError(
                    f"{name} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit (no '/', '+', '#' or spaces)"
                )

    @classmethod
    def of(cls, machine: MachineRef) -> "LineRef":
        return cls(machine.site, machine.area, machine.line)

    @property
    def path(self) -> str:
        return f"{self.site}/{self.area}/{self.line}"

    def topic(self, kind: Kind | str = Kind.KPI) -> str:
        k = Kind(kind)
        if k not in LINE_KINDS:
            raise ContractError(f"line {self.path}: a line has no {k.value!r} topic (only kpi)")
        return f"{ROOT}/{self.path}/{LINE}/{k.value}"


def line_subscription(site: str = "+") -> str:
    """MQTT filter for the KPIs of every line of a site (or all sites)."""
    return f"{ROOT}/{site}/+/+/{LINE}/{Kind.KPI.value}"


def parse_line_topic(topic: str) -> LineRef:
    """The line of a line KPI topic (``…/<line>/_line/kpi``); ContractError if it is not one."""
    parts = topic.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != ROOT or parts[5] != LINE or parts[6] != Kind.KPI.value:
        raise ContractError(f"topic {topic!r}: expected {ROOT}/<site>/<area>/<line>/{LINE}/kpi")
    return LineRef(*parts[2:5])


def subscription(kind: Kind | str | None = None, site: str = "+") -> str:
    """MQTT filter for one kind (or all kinds) of every machine of a site (or all sites).

    ``subscription(Kind.KPI)`` also matches the line KPIs (machine level ``_line``)."""
    k = "+" if kind is None else Kind(kind).value
    return f"{ROOT}/{site}/+/+/+/{k}"


@functools.lru_cache(maxsize=65536)  # a plant has a bounded set of topics; errors are not cached
def parse_topic(topic: str) -> tuple[MachineRef, Kind]:
    """Split a machine topic into its machine and kind; ContractError if it is not one."""
    parts = topic.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ContractError(f"topic {topic!r}: expected {ROOT}/<site>/<area>/<line>/<machine>/<kind>")
    try:
        kind = Kind(parts[6])
    except ValueError:
        kinds = ", ".join(k.value for k in Kind)
        raise ContractError(f"topic {topic!r}: unknown kind {parts[6]!r} (one of {kinds})") from None
    if parts[5] == LINE:
        raise ContractError(f"topic {topic!r}: machine {LINE!r} is reserved for line KPIs, not a machine")
    return MachineRef(*parts[2:6]), kind
