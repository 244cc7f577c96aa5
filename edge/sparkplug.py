"""The edge agent as a Sparkplug B edge node with one device: its machine (``publish.format: sparkplug``).

Topics (docs/contract.md, "Sparkplug B"): ``spBv1.0/<group>/NBIRTH|NDEATH/<node>`` and
``spBv1.0/<group>/DBIRTH|DDATA|DDEATH/<node>/<device>``; by default group = the machine's area, node = its
line, device = the machine, so a fieldlab gateway reading the group (site file ``sparkplug: {groups: [...],
site: <site>}``) sees the same machine as over the fieldlab topics.

- On every connection: NBIRTH (seq 0, ``bdSeq``, ``Node Control/Rebirth``) and DBIRTH (every metric with its
  name, alias, data type and current value), then the backlog. The last will is the NDEATH with the same
  ``bdSeq`` (QoS 1, not retained); ``bdSeq`` is kept in a file next to the outbox and counts up every start.
- The Batcher's batches go into the disk outbox as DDATA with metric names and each value's own timestamp;
  the pump turns names into aliases and stamps ``seq`` (0-255, wrapping) as it sends (QoS 0, as the
  specification asks), so a backlog sent after a reconnect or a restart fits the new session. A metric not
  in the DBIRTH yet (a new signal) first gets new births.
- An NCMD ``Node Control/Rebirth`` = true: births again. With ``primary_host``: nothing is sent until that
  host's STATE (``spBv1.0/STATE/<host id>``, retained) says online; while it is offline the data waits in
  the outbox; when it comes back, births again, then the backlog.
- A clean stop: DDEATH, then NDEATH.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from contract import ContractError, Kind, MachineRef, decode
from contract import sparkplug as spb

log = logging.getLogger("fieldlab.edge.sparkplug")

KEYS = ("group", "node", "device", "primary_host")
#: The machine model's metrics (aliases 1-7; signals get 8 on, in the order they first appear)
ROLE_METRICS = (("State", spb.INT32), ("Reason", spb.INT32), ("Good", spb.UINT64), ("Reject", spb.UINT64),
                ("IdealCycleTime", spb.DOUBLE), ("Product", spb.STRING), ("StateModel", spb.STRING))


@dataclass
class Settings:
    group: str
    node: str
    device: str
    primary_host: str | None = None


def parse_settings(doc, pub: dict, machine: MachineRef) -> Settings:
    """``publish.sparkplug`` of the mapping file (all keys optional); ConfigError via ``doc.error``."""
    sp = pub.get("sparkplug") or {}
    if not isinstance(sp, dict):
        raise doc.error("publish.sparkplug", "write a mapping, e.g. {group: hall-1, primary_host: scada}")
    unknown = set(sp) - set(KEYS)
    if unknown:
        raise doc.error(f"publish.sparkplug.{sorted(unknown)[0]}", f"unknown key; the keys are {', '.join(KEYS)}")
    s = Settings(str(sp.get("group", machine.area)), str(sp.get("node", machine.line)),
                 str(sp.get("device", machine.machine)), sp.get("primary_host"))
    for key in KEYS:
        value = getattr(s, key)
        if value is not None and (not value or any(c in str(value) for c in "/+#")):
            raise doc.error(f"publish.sparkplug.{key}", f"{value!r}: a Sparkplug id without '/', '+' or '#'")
    return s


def next_bdseq(path: Path) -> int:
    """The bdSeq of this start: one more than the last one kept in ``path`` (0-255), written back."""
    try:
        last = int(path.read_text().strip())
    except (OSError, ValueError):
        last = -1
    bdseq = (last + 1) & 0xFF
    try:
        path.write_text(f"{bdseq}\n")
    except OSError as e:  # a read-only place: the host may take the next start's NDEATH for this one
        log.warning("bdSeq not kept path=%s error=%s", path, e)
    return bdseq


def _ms(ts: float) -> int:
    return int(round(ts * 1000))


class SparkplugOut:
    """The Sparkplug side of one edge agent. The pump (event loop) calls ``ready`` and ``outgoing``; paho's
    thread calls ``on_message`` (commands, the primary host's STATE), which only sets flags."""

    def __init__(self, settings: Settings, state_model: str, bdseq_path: Path):
        self.s, self.state_model = settings, state_model
        g, n, d = settings.group, settings.node, settings.device
        self.topics = {t: spb.topic(g, t, n) for t in ("NBIRTH", "NDEATH", "NCMD")}
        self.topics.update({t: spb.topic(g, t, n, d) for t in ("DBIRTH", "DDATA", "DDEATH")})
        self.bdseq = next_bdseq(bdseq_path)
        self.seq = 0
        self.aliases: dict[str, int] = {}
        self.types: dict[str, int] = {}
        for name, datatype in ROLE_METRICS:
            self._alias(name, datatype)
        self.current: dict[str, tuple[object, int | None]] = {"StateModel": (state_model, None)}  # name -> value, ms
        self._flushed: dict[str, object] = {}  # IdealCycleTime, Product: last put in the outbox
        self.need_birth = True
        self.host_online = settings.primary_host is None
        self.stats = {"births": 0, "rebirth_requests": 0}

    def _alias(self, name: str, datatype: int) -> int:
        if name not in self.aliases:
            self.aliases[name] = len(self.aliases) + 1
            self.types[name] = datatype
        return self.aliases[name]

    # -- connecting
    def will(self) -> tuple[str, bytes, bool]:
        return (self.topics["NDEATH"], spb.encode_payload([spb.Metric(spb.BDSEQ, None, spb.UINT64, self.bdseq)],
                                                           _ms(time.time())), False)

    def subscriptions(self) -> list[tuple[str, int]]:
        subs = [(self.topics["NCMD"], 1)]
        if self.s.primary_host:
            subs.append((spb.state_topic(self.s.primary_host), 1))
        return subs

    def on_message(self, client, userdata, msg) -> None:  # paho's thread
        try:
            if msg.topic == self.topics["NCMD"]:
                if spb.is_rebirth_request(spb.decode_payload(msg.payload)):
                    self.stats["rebirth_requests"] += 1
                    self.need_birth = True
            elif self.s.primary_host and msg.topic == spb.state_topic(self.s.primary_host):
                online = spb.decode_state(msg.payload)
                if online and not self.host_online:
                    self.need_birth = True  # (a host that comes back expects births)
                self.host_online = online
        except ContractError as e:
            log.warning("sparkplug message not understood topic=%s error=%s", msg.topic, e)

    def connected(self) -> None:
        """After every (re)connect: births before anything else."""
        self.need_birth = True

    def ready(self, client) -> bool:
        """Whether data may be sent now; sends the births first where they are due."""
        if not self.host_online:
            return False
        if self.need_birth:
            self.births(client)
        return True

    def _next_seq(self) -> int:
        self.seq = spb.next_seq(self.seq)
        return self.seq

    def births(self, client) -> None:
        self.need_birth = False
        now = _ms(time.time())
        self.seq = 0
        client.publish(self.topics["NBIRTH"], spb.encode_payload(
            [spb.Metric(spb.BDSEQ, None, spb.UINT64, self.bdseq), spb.Metric(spb.REBIRTH, None, spb.BOOLEAN, False)],
            now, 0), qos=0)
        metrics = [spb.Metric(name, alias, self.types[name], *self.current.get(name, (None, None)))
                   for name, alias in self.aliases.items()]
        client.publish(self.topics["DBIRTH"], spb.encode_payload(metrics, now, self._next_seq()), qos=0)
        self.stats["births"] += 1

    # -- data
    def to_outbox(self, batches: list[tuple[Kind, bytes]]) -> list[tuple[str, bytes, int, bool]]:
        """The Batcher's batches of one flush as one DDATA (metric names, no seq yet) for the outbox."""
        metrics = []
        for kind, payload in batches:
            b = decode(kind, payload)
            if kind is Kind.STATE:
                for t, state, reason in zip(b.ts.tolist(), b.state.tolist(), b.reason.tolist()):
                    metrics += [spb.Metric("State", None, spb.INT32, state, _ms(t)),
                                spb.Metric("Reason", None, spb.INT32, reason, _ms(t))]
            elif kind is Kind.COUNTS:
                t0 = _ms(float(b.ts[0]))
                for name, datatype, value in (("IdealCycleTime", spb.DOUBLE, b.ideal_cycle_s),
                                              ("Product", spb.STRING, b.product)):
                    if value is not None and value != self._flushed.get(name):  # by exception, as the rest
                        self._flushed[name] = value
                        metrics.append(spb.Metric(name, None, datatype, value, t0))
                for t, good, reject in zip(b.ts.tolist(), b.good.tolist(), b.reject.tolist()):
                    metrics += [spb.Metric("Good", None, spb.UINT64, good, _ms(t)),
                                spb.Metric("Reject", None, spb.UINT64, reject, _ms(t))]
            elif kind is Kind.TELEMETRY:
                ts = b.ts.tolist()
                for name, values in b.signals.items():
                    metrics += [spb.Metric(name, None, spb.DOUBLE, v, _ms(t)) for t, v in zip(ts, values.tolist())
                                if not math.isnan(v)]
        if not metrics:
            return []
        metrics.sort(key=lambda m: m.ts_ms)  # (stable: equal times keep their order)
        return [(self.topics["DDATA"], spb.encode_payload(metrics, _ms(time.time())), 0, False)]

    def outgoing(self, client, payload: bytes) -> bytes:
        """A DDATA from the outbox as this session sends it: aliases for names, the next seq. A metric the
        DBIRTH did not have yet gets new births first."""
        p = spb.decode_payload(payload)
        new = [m for m in p.metrics if m.name not in self.aliases]
        for m in new:
            self._alias(m.name, m.datatype)
        if new:  # the births carry the new metrics (null: their values follow, in this message)
            self.births(client)
        for m in p.metrics:
            self.current[m.name] = (m.value, m.ts_ms)
        metrics = [spb.Metric(None, self.aliases[m.name], m.datatype, m.value, m.ts_ms) for m in p.metrics]
        return spb.encode_payload(metrics, p.ts_ms, self._next_seq())

    def deaths(self, client) -> list:
        """DDEATH and NDEATH for a clean stop; the paho message infos, to wait for."""
        now = _ms(time.time())
        return [client.publish(self.topics["DDEATH"], spb.encode_payload([], now, self._next_seq()), qos=0),
                client.publish(self.topics["NDEATH"], spb.encode_payload(
                    [spb.Metric(spb.BDSEQ, None, spb.UINT64, self.bdseq)], now), qos=1)]
