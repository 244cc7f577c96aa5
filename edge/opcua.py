"""OPC UA source: subscribe (not poll) to a machine's variables and feed a Batcher.

The tags say which variable is what (edge/config.py reads them from the mapping
file; the default fits fieldlab's simulated machines: browse names under
Objects/<machine>). A tag's node is a NodeId (``ns=2;s=Press.Count``) or a browse
path below the root (``Counters/Good``; each step in the given namespace unless
it says ``3:Name``). Process values can have a scale, offset and an absolute
deadband (OPC UA Part 4, 7.22.2 DataChangeFilter: the server only reports a
change larger than it). Security policy + mode with the agent's certificate, and
user/password, follow Part 4 / asyncua's ``set_security_string``.

After a server restart or a network drop the client reconnects and re-creates
the subscription by itself (asyncua 2.x supervisor).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from asyncua import Client, ua

from contract.errors import ServiceError

from .batcher import Batcher

log = logging.getLogger("fieldlab.edge.opcua")
for _name in ("asyncua", "asyncua.client"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# role -> browse path below the machine object
DEFAULT_MAPPING = {
    "state": "State", "reason": "StateReason", "good": "GoodCount", "reject": "RejectCount",
    "product": "Product", "ideal_cycle_s": "IdealCycleTime",
    "value:temperature": "Process/Temperature", "value:power": "Process/Power",
    "value:vibration": "Process/Vibration",
}
DEFAULT_UNITS = {"temperature": "degC", "power": "kW", "vibration": "mm/s"}


def _seconds(stamp: dt.datetime | None) -> float | None:
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


async def open_session(client: Client, endpoint: str, security: str | None = None, username: str | None = None,
                       password: str | None = None) -> None:
    """Connect ``client`` with optional security and user; a ServiceError saying what to check if refused."""
    try:
        if security:
            await client.set_security_string(security)
        if username:
            client.set_user(username)
            client.set_password(password or "")
        await client.connect()
    except (OSError, TimeoutError, ua.UaError) as e:
        why = e.__class__.__name__ if not str(e) else str(e)
        if any(code in why for code in ("BadUserAccessDenied", "BadIdentityToken")):
            why += " (check the OPC UA username and password)"
        elif any(code in why for code in ("BadSecurity", "BadCertificate")):
            why += " (check source.security and the certificates; does the server trust ours?)"
        raise ServiceError(f"cannot connect to the OPC UA server at {endpoint}: {why}") from None


@dataclass(frozen=True)
class OpcTag:
    role: str  # a role of edge.batcher.ROLES or "value:<name>"
    node: str  # NodeId string or browse path below the source's root
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    deadband: float = 0.0


def default_tags(namespace_units: dict[str, str] = DEFAULT_UNITS) -> list[OpcTag]:
    """The tags of a fieldlab simulated machine."""
    return [OpcTag(role, path, namespace_units.get(role[6:]) if role.startswith("value:") else None)
            for role, path in DEFAULT_MAPPING.items()]


def _is_nodeid(text: str) -> bool:
    return re.match(r"^(ns=\d+;)?[isgb]=", text) is not None


class OpcUaSource:
    def __init__(self, endpoint: str, object_name: str | None = None, namespace: str | None = "urn:fieldlab:sim",
                 tags: list[OpcTag] | None = None, *, root: str | None = None, publishing_ms: int = 100,
                 sampling_ms: float = 0.0, timeout_s: float = 5.0, security: str | None = None,
                 username: str | None = None, password: str | None = None):
        """``object_name`` alone (the demo): the simulated machine's default tags below Objects/<object_name>."""
        self.endpoint, self.namespace = endpoint, namespace
        self.root = root if root is not None else object_name
        self.tags = list(tags) if tags is not None else default_tags()
        self.publishing_ms, self.sampling_ms = publishing_ms, sampling_ms
        self.security, self.username, self.password = security, username, password
        # asyncua's supervisor reconnects after a server restart or a network drop and re-creates the
        # subscription: data flows again without anyone restarting the agent
        self.client = Client(endpoint, timeout=timeout_s, auto_reconnect=True, reconnect_max_delay=5.0)
        self._tags: dict[str, OpcTag] = {}
        self._batcher: Batcher | None = None
        self.notifications = 0
        self.stats = {"notifications": 0, "bad_values": 0}

    async def _node(self, tag: OpcTag, idx: int | None):
        if _is_nodeid(tag.node):
            return self.client.get_node(tag.node)
        steps = [s for s in (self.root or "").split("/") + tag.node.split("/") if s]
        if idx is None and any(":" not in s for s in steps):
            raise ServiceError(f"OPC UA tag '{tag.role}': browse path {tag.node!r} needs the source's namespace "
                               "(or write each step as index:Name)")
        return await self.client.nodes.objects.get_child([s if ":" in s else f"{idx}:{s}" for s in steps])

    async def start(self, batcher: Batcher) -> None:
        self._batcher = batcher
        batcher.units.update({t.role[6:]: t.unit for t in self.tags if t.unit and t.role.startswith("value:")})
        await open_session(self.client, self.endpoint, self.security, self.username, self.password)
        idx = await self.client.get_namespace_index(self.namespace) if self.namespace else None
        plain, banded = [], []
        for tag in self.tags:
            try:
                node = await self._node(tag, idx)
                await node.read_browse_name()  # a NodeId that does not exist fails here, not silently later
            except ua.UaError:
                where = tag.node if _is_nodeid(tag.node) else f"Objects/{self.root + '/' if self.root else ''}{tag.node}"
                raise ServiceError(f"OPC UA {self.endpoint}: no variable {where} for '{tag.role}' "
                                   "(check the machine name and mapping; 'fieldlab edge discover' lists them)") from None
            self._tags[node.nodeid.to_string()] = tag
            (banded if tag.deadband > 0 else plain).append((node, tag))
        sub = await self.client.create_subscription(self.publishing_ms, self)
        # queuesize > 1: every state change reaches us, even several within one publishing interval
        if plain:
            await sub.subscribe_data_change([n for n, _ in plain], queuesize=10_000,
                                            sampling_interval=self.sampling_ms)
        for node, tag in banded:  # in engineering units: the server sees raw values
            await sub.deadband_monitor(node, tag.deadband / abs(tag.scale or 1.0), queuesize=10_000)
        log.info("subscribed endpoint=%s root=%s variables=%d", self.endpoint, self.root, len(self.tags))

    def datachange_notification(self, node, val, data) -> None:
        b = self._batcher
        self.notifications += 1
        self.stats["notifications"] += 1
        tag = self._tags.get(node.nodeid.to_string())
        dv = data.monitored_item.Value
        if tag is None or val is None:
            return
        ts = _seconds(dv.SourceTimestamp) or _seconds(dv.ServerTimestamp) or dt.datetime.now(dt.timezone.utc).timestamp()
        if tag.role.startswith("value:") or tag.role == "ideal_cycle_s":
            try:
                val = float(val) * tag.scale + tag.offset
            except (TypeError, ValueError):
                self.stats["bad_values"] += 1
                return
        if tag.role.startswith("value:"):
            b.value(ts, tag.role[6:], val)
        else:
            b.record(tag.role, ts, val)

    async def stop(self) -> None:
        try:
            await self.client.disconnect()
        except Exception:  # the server may already be gone; nothing left to release
            pass
