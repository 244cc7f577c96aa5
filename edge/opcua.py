"""OPC UA source: subscribe (not poll) to a machine's variables and feed a Batcher.

The tags say which variable is what (edge/config.py reads them from the mapping
file; the default fits fieldlab's simulated machines: browse names under
Objects/<machine>). A tag's node is a NodeId (``ns=2;s=Press.Count``) or a browse
path below the root (``Counters/Good``; each step in the given namespace unless
it says ``3:Name``). Process values can have a scale, offset and an absolute
deadband (OPC UA Part 4, 7.22.2 DataChangeFilter: the server only reports a
change larger than it). Security policy + mode with the agent's certificate, and
user/password, follow Part 4 / asyncua's ``set_security_string``.

After a server restart or a network drop the source rebuilds its session itself:
asyncua's supervisor only reports the loss (``auto_reconnect`` is off), and a
watchdog task then drops the client, connects a new one with backoff, resolves
the tags again and creates a new subscription. The same happens when the
subscription falls silent (no data and no keep-alive for ``stale_s``). asyncua's
own restore was not used: when restoring failed once (the server went away again
mid-restore) it left an empty subscription behind and never tried again
(docs/RELIABILITY.md).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
from dataclasses import dataclass

from asyncua import Client, ua

from contract.errors import ServiceError
from contract.yamlfile import ConfigError

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
        elif "No matching endpoints" in why:  # the server does not offer the security mode we asked for
            why += (" (check source.security: the server offers other security modes; "
                    "'fieldlab edge discover' or UaExpert lists them)")
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


class MappingError(ConfigError):
    """A tag's node does not exist on the server: a mistake in the mapping file (exit 78 at start)."""


def _is_nodeid(text: str) -> bool:
    return re.match(r"^(ns=\d+;)?[isgb]=", text) is not None


class OpcUaSource:
    def __init__(self, endpoint: str, object_name: str | None = None, namespace: str | None = "urn:fieldlab:sim",
                 tags: list[OpcTag] | None = None, *, root: str | None = None, publishing_ms: int = 100,
                 sampling_ms: float = 0.0, timeout_s: float = 5.0, security: str | None = None,
                 username: str | None = None, password: str | None = None, keepalive_s: float = 1.0,
                 stale_s: float | None = None, reconnect_max_s: float = 5.0):
        """``object_name`` alone (the demo): the simulated machine's default tags below Objects/<object_name>."""
        self.endpoint, self.namespace = endpoint, namespace
        self.root = root if root is not None else object_name
        self.tags = list(tags) if tags is not None else default_tags()
        self.publishing_ms, self.sampling_ms = publishing_ms, sampling_ms
        self.security, self.username, self.password = security, username, password
        self.timeout_s, self.reconnect_max_s = timeout_s, reconnect_max_s
        # the server sends a keep-alive when it has nothing to report, so silence longer than a few of
        # them means the subscription is gone even if the connection still answers
        self.keepalive_s = keepalive_s
        self.stale_s = stale_s if stale_s is not None else max(4 * keepalive_s, 3.0)
        self.client = self._new_client()
        self._sub = None
        self._opened_at = 0.0
        self._lost: asyncio.Event | None = None
        self._watch_task: asyncio.Task | None = None
        self._tags: dict[str, OpcTag] = {}
        self._batcher: Batcher | None = None
        self.notifications = 0
        self.stats = {"notifications": 0, "bad_values": 0, "reconnects": 0}

    def _new_client(self) -> Client:
        # asyncua's supervisor detects a lost connection and calls us back; rebuilding is ours (_watch)
        client = Client(self.endpoint, timeout=self.timeout_s, auto_reconnect=False)

        async def lost(exc, client=client):
            if client is self.client and self._lost is not None:
                log.warning("OPC UA connection lost endpoint=%s error=%r", self.endpoint, exc)
                self._lost.set()

        client.connection_lost_callback = lost
        return client

    async def _node(self, tag: OpcTag, idx: int | None):
        if _is_nodeid(tag.node):
            return self.client.get_node(tag.node)
        steps = [s for s in (self.root or "").split("/") + tag.node.split("/") if s]
        if idx is None and any(":" not in s for s in steps):
            raise ServiceError(f"OPC UA tag '{tag.role}': browse path {tag.node!r} needs the source's namespace "
                               "(or write each step as index:Name)")
        return await self.client.nodes.objects.get_child([s if ":" in s else f"{idx}:{s}" for s in steps])

    async def start(self, batcher: Batcher) -> None:
        """Connect and subscribe; a MappingError (exit 78) for a tag whose node does not exist."""
        self._batcher = batcher
        batcher.units.update({t.role[6:]: t.unit for t in self.tags if t.unit and t.role.startswith("value:")})
        self._lost = asyncio.Event()
        try:
            await self._open()
        except BaseException:
            await self._close(self.client)
            raise
        self._watch_task = asyncio.create_task(self._watch(), name="opcua-watchdog")

    async def _open(self) -> None:
        await open_session(self.client, self.endpoint, self.security, self.username, self.password)
        idx = await self.client.get_namespace_index(self.namespace) if self.namespace else None
        plain, banded = [], []
        for tag in self.tags:
            try:
                node = await self._node(tag, idx)
                await node.read_browse_name()  # a NodeId that does not exist fails here, not silently later
            except ua.UaError:
                where = tag.node if _is_nodeid(tag.node) else f"Objects/{self.root + '/' if self.root else ''}{tag.node}"
                raise MappingError(f"OPC UA {self.endpoint}: no variable {where} for '{tag.role}' "
                                   "(check the machine name and mapping; 'fieldlab edge discover' lists them)") from None
            self._tags[node.nodeid.to_string()] = tag
            (banded if tag.deadband > 0 else plain).append((node, tag))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.publishing_ms
        params.RequestedMaxKeepAliveCount = max(1, math.ceil(self.keepalive_s * 1000 / self.publishing_ms))
        params.RequestedLifetimeCount = 10 * params.RequestedMaxKeepAliveCount  # Part 4: at least 3× keep-alive
        params.MaxNotificationsPerPublish = 10_000
        params.Priority = 0
        params.PublishingEnabled = True
        self._sub = await self.client.create_subscription(params, self)
        self._opened_at = time.monotonic()
        # queuesize > 1: every state change reaches us, even several within one publishing interval
        if plain:
            await self._sub.subscribe_data_change([n for n, _ in plain], queuesize=10_000,
                                                  sampling_interval=self.sampling_ms)
        for node, tag in banded:  # in engineering units: the server sees raw values
            await self._sub.deadband_monitor(node, tag.deadband / abs(tag.scale or 1.0), queuesize=10_000)
        log.info("subscribed endpoint=%s root=%s variables=%d", self.endpoint, self.root, len(self.tags))

    def _silent_s(self) -> float:
        last = getattr(self._sub, "last_publish_at", None) or 0.0
        return time.monotonic() - max(last, self._opened_at)

    def status_change_notification(self, status) -> None:
        """The server ended the subscription (e.g. it timed out while we were away)."""
        log.warning("OPC UA subscription status endpoint=%s status=%s", self.endpoint, status)
        if self._lost is not None:
            self._lost.set()

    async def _watch(self) -> None:
        """Rebuild the session when the connection is lost or the subscription falls silent."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=min(1.0, self.stale_s / 2))
            except TimeoutError:
                if self._silent_s() < self.stale_s:
                    continue
                log.warning("OPC UA subscription silent endpoint=%s silent_s=%.1f: reconnecting",
                            self.endpoint, self._silent_s())
            await self._rebuild()

    async def _rebuild(self) -> None:
        delay = 0.5
        while True:
            self._lost.clear()
            old, self.client = self.client, self._new_client()
            await self._close(old)
            try:
                await self._open()
            except Exception as e:  # never let the watchdog die: a dead watchdog is a frozen agent
                # a missing node now is most likely a server still building its address space
                log.warning("OPC UA reconnect failed endpoint=%s error=%s; retrying in %.1f s", self.endpoint, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            self.stats["reconnects"] += 1
            log.info("OPC UA resubscribed endpoint=%s reconnects=%d", self.endpoint, self.stats["reconnects"])
            return

    async def _close(self, client: Client) -> None:
        try:  # a dead server cannot answer CloseSession: do not wait long for it
            await asyncio.wait_for(client.disconnect(), timeout=2.0)
        except Exception:  # the server may already be gone; nothing left to release
            pass

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
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        await self._close(self.client)
