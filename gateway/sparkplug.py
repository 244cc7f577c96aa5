"""Sparkplug B devices as machines: a thin adapter in front of the gateway's ingest.

An edge node's births tell which metric (name, alias, datatype) is what; its DATA messages may send aliases
only. This adapter keeps those alias tables per node and device, checks every message's ``seq``, asks for a
rebirth (NCMD ``Node Control/Rebirth``) on a gap or an alias it does not know, and turns each device
message into the contract's batches (state, counts, telemetry, status) for the device's machine
``<site>/<group>/<edge node>/<device>``. Those go through the gateway's ordinary ingest (``Gateway._ingest``:
the same decoding and checks, journal, machine limit and dead letters as any contract message), so a
Sparkplug device appears in KPIs, storage and dashboards like any other machine. docs/contract.md,
"Sparkplug B", has the mapping and what is not supported.

Runs on paho's network thread only (one thread: no locks).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from contract import (
    STATE_MODELS, ContractError, Kind, MachineRef, encode_counts, encode_state, encode_status, encode_telemetry,
)
from contract import sparkplug as spb
from contract.yamlfile import ConfigError, duration

log = logging.getLogger("fieldlab.gateway.sparkplug")

#: Metric roles and the names they are found by (case-insensitive; a name matches its last ``/`` part too,
#: so ``Line1/Press/Good`` is a good counter). The site file's ``sparkplug.metrics`` replaces a role's names.
DEFAULT_NAMES = {
    "state": ("State", "MachineState", "PackMLState"),
    "reason": ("Reason", "StopReason", "ReasonCode"),
    "good": ("Good", "GoodCount", "GoodParts"),
    "reject": ("Reject", "Rejects", "RejectCount", "Bad", "BadCount", "Scrap"),
    "ideal_cycle": ("IdealCycleTime", "IdealCycle", "IdealCycleS"),
    "product": ("Product", "ProductId"),
    "state_model": ("StateModel",),
}
KEYS = ("groups", "site", "state_model", "metrics", "rebirth_every")
REBIRTH_EVERY_S = 5.0  # at most one rebirth request per edge node this often
LOG_EVERY_S = 10.0  # problems of one edge node are logged at most this often


@dataclass
class Settings:
    """The site file's ``sparkplug:`` section."""

    groups: list[str]
    site: str | None = None  # the machines' site level; default: the group id
    state_model: str = "simple"  # how the State metric's numbers read, unless a device's StateModel says
    names: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    rebirth_every_s: float = REBIRTH_EVERY_S


def parse_settings(data, path="config") -> Settings:
    """The ``sparkplug:`` section of the site file; ConfigError naming the key and the fix."""
    where = f"{path}: sparkplug"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: write a mapping, e.g. {{groups: [plant1]}}")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key; the keys are {', '.join(KEYS)}")
    groups = data.get("groups")
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not groups or not all(_name_ok(g) for g in groups):
        raise ConfigError(f"{where}.groups: list the Sparkplug group ids to read, e.g. [plant1] (no '/', '+', "
                          f"'#'; the machines' area is the group id, so letters, digits, '_', '.', '-')")
    s = Settings([str(g) for g in groups])
    if "site" in data:
        if not _name_ok(data["site"]):
            raise ConfigError(f"{where}.site = {data['site']!r}: a site name of letters, digits, '_', '.' or '-'")
        s.site = str(data["site"])
    if "state_model" in data:
        if data["state_model"] not in STATE_MODELS:
            raise ConfigError(f"{where}.state_model = {data['state_model']!r}: use one of {', '.join(STATE_MODELS)}")
        s.state_model = data["state_model"]
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ConfigError(f"{where}.metrics: write role: metric name(s), e.g. {{good: Counters/GoodParts}}")
    for role, names in metrics.items():
        if role not in DEFAULT_NAMES:
            raise ConfigError(f"{where}.metrics.{role}: unknown role; the roles are {', '.join(DEFAULT_NAMES)}")
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{where}.metrics.{role}: write a metric name or a list of names")
        s.names[role] = tuple(names)
    if "rebirth_every" in data:
        seconds = duration(data["rebirth_every"])
        if seconds is None:
            raise ConfigError(f"{where}.rebirth_every = {data['rebirth_every']!r}: write a duration like 5s")
        s.rebirth_every_s = seconds
    return s


def _name_ok(value) -> bool:
    try:
        MachineRef(str(value), "a", "l", "m")
        return isinstance(value, str)
    except ContractError:
        return False


@dataclass
class Device:
    ref: MachineRef
    roles: dict = field(default_factory=dict)  # alias or name -> role (None: telemetry)
    names: dict = field(default_factory=dict)  # alias -> metric name
    model: str = "simple"
    state: int | None = None
    reason: int = 0
    good: int | None = None
    reject: int = 0
    ideal: float | None = None
    product: str | None = None


@dataclass
class Node:
    bdseq: int | None
    seq: int
    born: bool = True  # False: known only from our rebirth request, until its NBIRTH
    devices: dict = field(default_factory=dict)  # device id -> Device
    rebirth_at: float = -float("inf")  # monotonic time of our last rebirth request
    logged_at: float = -float("inf")


class SparkplugIn:
    """Reads Sparkplug B groups into the gateway. ``ingest(topic, payload)`` takes a contract message (the
    gateway's ``_ingest``), ``publish(topic, payload)`` sends a rebirth request, ``stats`` is the gateway's
    counters (sparkplug_errors, sparkplug_rebirths)."""

    def __init__(self, settings: Settings, ingest, publish, stats: dict):
        self.settings, self.ingest, self.publish, self.stats = settings, ingest, publish, stats
        self.nodes: dict[tuple[str, str], Node] = {}
        self._lookup = {role: {n.lower() for n in names} for role, names in settings.names.items()}

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{spb.NAMESPACE}/{g}/#", 1) for g in self.settings.groups]

    def _role(self, name: str | None) -> str | None:
        if not name:
            return None
        low = name.lower()
        short = low.rsplit("/", 1)[-1]
        for role, names in self._lookup.items():
            if low in names or short in names:
                return role
        return None

    def on_message(self, topic: str, payload: bytes) -> None:
        """One Sparkplug message (paho's thread). ContractError for what cannot be used: the gateway
        dead-letters and counts it. The parts of a message that can be used are (a bad state does not
        cost the same message's counters); nothing of it reaches another machine."""
        try:
            self._on_message(topic, payload)
        except ContractError:
            self.stats["sparkplug_errors"] += 1
            raise

    def _on_message(self, topic: str, payload: bytes) -> None:
        t = spb.parse_topic(topic)
        if t.type == spb.STATE or t.group not in self.settings.groups or t.type in ("NCMD", "DCMD"):
            return  # (commands are ours or another host's)
        p = spb.decode_payload(payload)
        key = (t.group, t.node)
        node = self.nodes.get(key)
        if t.type == "NBIRTH":
            bd = p.metric(spb.BDSEQ)
            old = node.devices if node else {}
            self.nodes[key] = Node(None if bd is None else bd.value, p.seq or 0,
                                   rebirth_at=node.rebirth_at if node else -float("inf"))
            for dev in old.values():  # a new session: every device must be born again (DBIRTH)
                self._status(dev.ref, "offline", "NBIRTH without this device's DBIRTH yet")
            return
        if t.type == "NDEATH":
            bd = p.metric(spb.BDSEQ)
            if node is None or not node.born:
                return  # (dead, and never seen alive)
            if node.bdseq is not None and (bd is None or bd.value != node.bdseq):
                log.info("stale NDEATH ignored node=%s bdSeq=%s current=%s", t.node, bd and bd.value, node.bdseq)
                return  # the will of an earlier session: this node is alive
            del self.nodes[key]
            for dev in node.devices.values():
                self._status(dev.ref, "offline", "NDEATH")
            return
        if node is None or not node.born:
            self._rebirth(t, node, f"{t.type} from edge node {t.node!r} before its NBIRTH (the gateway started "
                                   f"after it, or the NBIRTH was lost)")
            return
        if p.seq is None or p.seq != spb.next_seq(node.seq):
            self._rebirth(t, node, f"seq {p.seq} after {node.seq} (messages lost or out of order)")
        if p.seq is not None:
            node.seq = p.seq
        if t.type == "NDATA":
            return  # node-level metrics are not read (docs/contract.md, Sparkplug B)
        if t.type == "DBIRTH":
            dev = node.devices[t.device] = self._birth(t, p)
            self._status(dev.ref, "online", "DBIRTH")
            self._data(dev, p, t)
            return
        dev = node.devices.get(t.device)
        if dev is None and t.type == "DDEATH":
            return  # (never born in this session)
        if dev is None:
            self._rebirth(t, node, f"{t.type} of device {t.device!r} before its DBIRTH")
            return
        if t.type == "DDEATH":
            self._status(dev.ref, "offline", "DDEATH")
        else:
            self._data(dev, p, t)

    def _ref(self, t: spb.Topic) -> MachineRef:
        try:
            return MachineRef(self.settings.site or t.group, t.group, t.node, t.device)
        except ContractError as e:
            raise ContractError(f"Sparkplug device {t.group}/{t.node}/{t.device}: {e}; fieldlab reads it as "
                                f"machine <site>/<group>/<edge node>/<device>, so rename the node or device") from None

    def _birth(self, t: spb.Topic, p: spb.Payload) -> Device:
        dev = Device(self._ref(t), model=self.settings.state_model)
        for m in p.metrics:
            if m.name is None:
                raise ContractError(f"Sparkplug DBIRTH of {t.device!r}: a metric without a name (a birth names "
                                    f"every metric)")
            role = self._role(m.name)
            dev.roles[m.name] = role
            if m.alias is not None:
                dev.roles[m.alias], dev.names[m.alias] = role, m.name
            if role == "state_model":
                if m.value not in STATE_MODELS:
                    raise ContractError(f"Sparkplug DBIRTH of {t.device!r}: {m.name} = {m.value!r}; use one of "
                                        f"{', '.join(STATE_MODELS)}")
                dev.model = m.value
        return dev

    def _data(self, dev: Device, p: spb.Payload, t: spb.Topic) -> None:
        """Turn one message's metrics into state, counts and telemetry rows, as of each metric's time."""
        now_ms = p.ts_ms if p.ts_ms is not None else int(time.time() * 1000)
        rows = []  # (ts in ms, role, name, value)
        for m in p.metrics:
            if m.name is not None:
                role, name = dev.roles.get(m.name, self._role(m.name)), m.name
            elif m.alias in dev.names:
                role, name = dev.roles[m.alias], dev.names[m.alias]
            else:
                self._rebirth(t, self.nodes[(t.group, t.node)], f"alias {m.alias} of device {t.device!r} is not "
                                                                f"in its DBIRTH")
                return
            if m.value is not None and role != "state_model":
                rows.append((m.ts_ms if m.ts_ms is not None else now_ms, role, name, m.value))
        rows.sort(key=lambda r: r[0])  # (stable: the order within one time is kept)
        states, counts, signals, times, first = {}, {}, {}, [], None
        for ts, role, name, value in rows:
            whole = isinstance(value, int) and not isinstance(value, bool)
            if role in ("state", "reason", "good", "reject") and not whole:
                first = first or ContractError(f"{name} = {value!r}: a {role} is a whole number, not read")
                continue
            if role in ("state", "reason"):
                setattr(dev, role, value)
                if dev.state is not None:
                    states[ts] = (dev.state, dev.reason)
            elif role in ("good", "reject"):
                setattr(dev, role, value)
                if dev.good is not None:
                    counts[ts] = (dev.good, dev.reject)
            elif role == "ideal_cycle":
                dev.ideal = float(value)
            elif role == "product":
                dev.product = str(value)
            elif isinstance(value, (int, float)):  # (bool too: 1/0) the rest is telemetry; strings are not
                if not times or times[-1] != ts:
                    times.append(ts)
                signals.setdefault(name, {})[ts] = float(value)
        ref = dev.ref
        for kind, body in (
                (Kind.STATE, states and (lambda: encode_state(
                    [ts / 1000 for ts in states], [s for s, _ in states.values()],
                    [r for _, r in states.values()], dev.model))),
                (Kind.COUNTS, counts and (lambda: encode_counts(
                    [ts / 1000 for ts in counts], [g for g, _ in counts.values()], [r for _, r in counts.values()],
                    dev.product, dev.ideal if dev.ideal and dev.ideal > 0 else None))),
                (Kind.TELEMETRY, signals and (lambda: encode_telemetry(
                    [ts / 1000 for ts in times], {n: [v.get(ts, float("nan")) for ts in times]
                                                  for n, v in signals.items()})))):
            if not body:
                continue
            try:  # each batch on its own: a bad state does not cost the counters
                self.ingest(ref.topic(kind), body())
            except ContractError as e:
                first = first or e
        if first is not None:
            raise ContractError(f"Sparkplug {t.type} of {t.group}/{t.node}/{t.device}: {first}")

    def _status(self, ref: MachineRef, status: str, why: str) -> None:
        self.ingest(ref.topic(Kind.STATUS), encode_status(time.time(), status, source=f"sparkplug {why}"))

    def _rebirth(self, t: spb.Topic, node: Node | None, why: str) -> None:
        """Ask the edge node for its births again (at most once per rebirth_every_s), and say why."""
        now = time.monotonic()
        key = (t.group, t.node)
        if node is None:
            node = self.nodes[key] = Node(None, 0, born=False)  # remembers when we asked, until its NBIRTH
        if now - node.logged_at >= LOG_EVERY_S:
            node.logged_at = now
            log.warning("sparkplug node=%s/%s: %s; rebirth requested", t.group, t.node, why)
        if now - node.rebirth_at < self.settings.rebirth_every_s:
            return
        node.rebirth_at = now
        self.stats["sparkplug_rebirths"] += 1
        self.publish(spb.topic(t.group, "NCMD", t.node), spb.rebirth_request(int(time.time() * 1000)))
