"""OPC UA source: subscribe (not poll) to a machine's variables and feed a Batcher.

The mapping says which variable is what; the default fits fieldlab's simulated
machines (browse names under Objects/<machine>). After a server restart or a
network drop the client reconnects and re-creates the subscription by itself.
A mapping file for real machines and security come with the edge-agent issue.
"""
from __future__ import annotations

import datetime as dt
import logging

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


class OpcUaSource:
    def __init__(self, endpoint: str, object_name: str, namespace: str = "urn:fieldlab:sim",
                 mapping: dict[str, str] | None = None, publishing_ms: int = 100):
        self.endpoint, self.object_name, self.namespace = endpoint, object_name, namespace
        self.mapping = dict(mapping or DEFAULT_MAPPING)
        self.publishing_ms = publishing_ms
        # asyncua's supervisor reconnects after a server restart or a network drop and re-creates the
        # subscription: data flows again without anyone restarting the agent
        self.client = Client(endpoint, timeout=5, auto_reconnect=True, reconnect_max_delay=5.0)
        self._roles: dict[str, str] = {}
        self._batcher: Batcher | None = None
        self.notifications = 0

    async def start(self, batcher: Batcher) -> None:
        self._batcher = batcher
        batcher.units.update(DEFAULT_UNITS)
        try:
            await self.client.connect()
        except (OSError, TimeoutError, ua.UaError) as e:
            raise ServiceError(f"cannot connect to the OPC UA server at {self.endpoint}: {e or type(e).__name__}") from None
        idx = await self.client.get_namespace_index(self.namespace)
        nodes = []
        for role, path in self.mapping.items():
            parts = [f"{idx}:{self.object_name}"] + [f"{idx}:{p}" for p in path.split("/")]
            try:
                node = await self.client.nodes.objects.get_child(parts)
            except ua.UaError:
                raise ServiceError(f"OPC UA {self.endpoint}: no variable Objects/{self.object_name}/{path} "
                                   f"for '{role}' (check the machine name and mapping)") from None
            self._roles[node.nodeid.to_string()] = role
            nodes.append(node)
        sub = await self.client.create_subscription(self.publishing_ms, self)
        # queuesize > 1: every state change reaches us, even several within one publishing interval
        await sub.subscribe_data_change(nodes, queuesize=10_000, sampling_interval=0)
        log.info("subscribed endpoint=%s object=%s variables=%d", self.endpoint, self.object_name, len(nodes))

    def datachange_notification(self, node, val, data) -> None:
        b = self._batcher
        self.notifications += 1
        role = self._roles.get(node.nodeid.to_string())
        dv = data.monitored_item.Value
        ts = _seconds(dv.SourceTimestamp) or _seconds(dv.ServerTimestamp) or dt.datetime.now(dt.timezone.utc).timestamp()
        if role is None:
            return
        if role.startswith("value:"):
            b.value(ts, role[6:], val)
        else:
            b.record(role, ts, val)

    async def stop(self) -> None:
        try:
            await self.client.disconnect()
        except Exception:  # the server may already be gone; nothing left to release
            pass
