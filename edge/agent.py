"""The edge agent: a source feeds a Batcher; batches go through a disk outbox to MQTT.

Every ``flush_s`` the Batcher's batches are written to the outbox (edge/buffer.py,
on disk before anything is sent). A pump sends them in order with QoS 1, keeps
at most ``window`` in flight, and deletes each one only when the broker has
acknowledged it. After a reconnect everything not yet acknowledged is sent
again, in order; the duplicates this can make are harmless downstream (counters
are monotonic, every sample carries its timestamp, the gateway drops replays).

Status: birth ("online", retained) on start, a graceful death ("offline",
retained) on stop, and the same death as the MQTT last will if the agent
vanishes. Every ``heartbeat_s`` (and on every reconnect) the "online" status is
published again with the agent's health in ``info`` (backlog, dropped, reconnects,
last error, ...: docs/contract.md lists the fields), so a dashboard sees an agent
that is alive but struggling. Status is not buffered: it describes the present.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

import paho.mqtt.client as paho

from contract import QOS, Kind, MachineRef, encode_status
from contract.lockfile import hold
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.tasks import cancel_and_wait

from .batcher import Batcher
from .buffer import DiskQueue

log = logging.getLogger("fieldlab.edge")


class EdgeAgent:
    def __init__(self, machine: MachineRef, broker: BrokerUrl, source, buffer: str | Path, flush_s: float = 0.5,
                 max_buffer_bytes: int = 100 * 2**20, window: int = 100, wait_for_broker: bool = True,
                 heartbeat_s: float = 30.0, batcher: Batcher | None = None, client_id: str | None = None,
                 sparkplug=None, products=None):
        """``sparkplug``: edge/sparkplug.py Settings to publish as a Sparkplug B edge node instead of the
        fieldlab topics (``publish.format: sparkplug``). ``products``: edge/products.py Products, the ideal
        cycle time (and product, switched by a set_product command on the machine's cmd topic) of a machine
        that does not report it."""
        self.machine, self.broker, self.source, self.flush_s = machine, broker, source, flush_s
        self.batcher = batcher if batcher is not None else Batcher()  # (an empty Batcher is falsy)
        self.heartbeat_s = heartbeat_s
        # the agent's identity towards the broker (its ACL entry): stable, so a reconnect is the same client
        self.client_id = client_id or f"fieldlab-edge-{machine.path.replace('/', '-')}"
        self._started = time.monotonic()
        # one process per outbox: a second agent would send the same batches and delete the other's
        self._outbox_lock = hold(buffer, "the edge agent's outbox", "stop the other agent for this machine, or give "
                                 "this one its own outbox (buffer.path in the mapping file, or --buffer)")
        self.queue = DiskQueue(buffer, max_buffer_bytes)
        self.sparkplug = None
        if sparkplug is not None:
            from .sparkplug import SparkplugOut
            self.sparkplug = SparkplugOut(sparkplug, self.batcher.model, Path(f"{buffer}.bdseq"))
        self.products = products
        self.window, self.wait_for_broker = window, wait_for_broker
        self.stats = {"sent": 0, "acknowledged": 0, "reconnects": -1}
        self._client = None
        self._tasks: list[asyncio.Task] = []
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox row id
        self._acked: collections.deque[int] = collections.deque()  # message ids, from paho's thread
        self._connected_again = True  # set by paho's thread on every (re)connect
        self._last_sent = 0

    async def start(self) -> None:
        status = self.machine.topic(Kind.STATUS)
        sp = self.sparkplug
        self._loop = asyncio.get_running_loop()
        subscriptions = list(sp.subscriptions()) if sp else []
        if self.products is not None:
            self.products.start(self.batcher)
            if self.products.switchable:
                subscriptions.append((self.machine.topic(Kind.CMD), QOS[Kind.CMD]))
        try:
            self._client = await asyncio.to_thread(
                connect, self.broker, self.client_id,
                will=sp.will() if sp else (status, encode_status(time.time(), "offline", reason="connection lost")),
                on_connect=self._on_connect, retry=not self.wait_for_broker,
                on_message=self._on_message if subscriptions else None, subscriptions=subscriptions)
        except BaseException:  # the broker refused us: the outbox and its lock are not left open
            self._close_outbox()
            raise
        self._client.on_publish = self._on_publish
        try:
            await self.source.start(self.batcher)
        except BaseException:  # the machine cannot be read: leave nothing running or open behind
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
            self._close_outbox()
            raise
        self._tasks = [asyncio.create_task(self._every(self.flush_s, self.flush)),
                       asyncio.create_task(self._every(0.05, self.pump)),
                       asyncio.create_task(self._every(self.heartbeat_s, self.heartbeat))]
        log.info("edge agent up machine=%s broker=%s backlog=%d", self.machine.path, self.broker, len(self.queue))

    # -- paho's network thread
    def _on_message(self, client, userdata, msg) -> None:
        if self.products is not None and msg.topic == self.machine.topic(Kind.CMD):
            try:  # the switch counts from now, not from when the loop gets to it
                self._loop.call_soon_threadsafe(self._command, bytes(msg.payload), time.time())
            except RuntimeError:  # the loop is closed: the agent is gone
                pass
        elif self.sparkplug is not None:
            self.sparkplug.on_message(client, userdata, msg)

    def _on_connect(self, client) -> None:
        self._connected_again = True  # the pump (on the event loop) says "online" and resends

    def _publish_status(self, client):
        return client.publish(self.machine.topic(Kind.STATUS), encode_status(time.time(), "online", **self.health()),
                              qos=QOS[Kind.STATUS], retain=True)

    def health(self) -> dict:
        """What the heartbeat reports (docs/contract.md, status): numbers a person can act on."""
        client = self._client
        last_error = getattr(client, "fieldlab_last_error", None) or self.stats.get("last_error")
        if client is not None and client.fieldlab_collision and time.monotonic() - client.fieldlab_collision_at < 60:
            last_error = client.fieldlab_collision  # two agents for one machine: say so, it explains the gaps
        source_stats = getattr(self.source, "stats", None)
        if source_stats and source_stats.get("last_error"):
            last_error = last_error or f"source: {source_stats['last_error']}"
        return {
            "agent": "fieldlab-edge",
            "uptime_s": round(time.monotonic() - self._started, 1),
            "backlog": len(self.queue), "backlog_bytes": self.queue.bytes, "dropped": self.queue.dropped,
            "sent": self.stats["sent"], "acknowledged": self.stats["acknowledged"],
            "reconnects": max(self.stats["reconnects"], 0),
            "samples": sum(self.batcher.samples.values()), "rejected": sum(self.batcher.rejected.values()),
            "last_error": last_error,
            **({"product": self.products.current, "ideal_cycle_s": self.products.ideal_cycle_s,
                "commands_refused": self.products.refused} if self.products is not None else {}),
            **({"source": {k: v for k, v in source_stats.items() if isinstance(v, (int, float, str))}}
               if source_stats else {}),
        }

    def _command(self, payload: bytes, ts: float) -> None:
        """A command on the machine's cmd topic (on the loop): a product switch, or one for someone else."""
        try:
            done = self.products.command(payload, ts)
        except ValueError as e:  # an unknown product, a malformed set_product: refused, nothing changes
            self.products.refused += 1
            log.warning("command refused machine=%s: %s", self.machine.path, e)
            return
        if done:
            log.info("command machine=%s: %s", self.machine.path, done)
            self.heartbeat()  # the status says the new product at once (fieldlab edge product waits for it)

    def heartbeat(self) -> None:
        client = self._client
        if client is not None and client.is_connected() and self.sparkplug is None:
            self._publish_status(client)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        self._acked.append(mid)

    # -- the event loop
    async def _every(self, seconds: float, fn) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                fn()
            except Exception:  # a failing flush or pump must not end the agent; the log says why
                log.exception("edge agent step failed machine=%s", self.machine.path)

    def flush(self) -> None:
        """Batches out of the Batcher and onto the disk outbox."""
        batches = self.batcher.drain()
        if self.sparkplug is not None:
            self.queue.put_many(self.sparkplug.to_outbox(batches))
            return
        self.queue.put_many([(self.machine.topic(kind), payload, QOS[kind], False) for kind, payload in batches])

    def pump(self) -> None:
        """Delete what the broker acknowledged; send what is next, in order, within the window."""
        done = []
        while self._acked:
            row = self._inflight.pop(self._acked.popleft(), None)
            if row is not None:
                done.append(row)
        self.queue.delete(done)
        self.stats["acknowledged"] += len(done)
        client = self._client
        if self._connected_again:  # after a reconnect, send everything unacknowledged again, in order
            self._connected_again = False
            self.stats["reconnects"] += 1
            self._inflight.clear()
            self._last_sent = (self.queue.first_id() or 1) - 1
            if self.sparkplug is not None:
                self.sparkplug.connected()
            elif client is not None:
                self._publish_status(client)  # birth first, then the backlog
        if client is None or not client.is_connected():
            return
        if self.sparkplug is not None and not self.sparkplug.ready(client):  # births, a primary host offline
            return
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        for row, topic, payload, qos, retain in self.queue.peek(self._last_sent, room):
            if self.sparkplug is not None:
                payload = self.sparkplug.outgoing(client, payload)
            info = client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self.stats["last_error"] = paho.error_string(info.rc)
                break  # paho's own queue refused it: try again next round
            self._inflight[info.mid] = row
            self._last_sent = row
            self.stats["sent"] += 1
            self.stats.pop("last_error", None)

    @property
    def backlog(self) -> int:
        return len(self.queue)

    async def stop(self, settle_s: float = 0.0, drain_s: float = 10.0) -> None:
        """Flush what is buffered (after ``settle_s`` for late notifications), deliver the outbox
        (up to ``drain_s``; what is left stays on disk for the next start), say goodbye, disconnect."""
        if self._client is None:
            return
        flusher, pump, heartbeat = self._tasks
        flusher.cancel()
        heartbeat.cancel()
        if settle_s:
            await asyncio.sleep(settle_s)
        await self.source.stop()
        self.flush()
        deadline = time.monotonic() + drain_s
        while len(self.queue) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pump.cancel()
        for t in self._tasks:
            await cancel_and_wait(t)
        self.pump()  # the last acknowledgements
        self.stats["left_on_disk"] = len(self.queue)
        if len(self.queue):
            log.warning("edge agent stopping with %d messages kept on disk machine=%s", len(self.queue),
                        self.machine.path)
        if self.sparkplug is not None:  # DDEATH, NDEATH
            infos = self.sparkplug.deaths(self._client)
        else:
            infos = [self._client.publish(self.machine.topic(Kind.STATUS), encode_status(
                time.time(), "offline", reason="stopped"), qos=QOS[Kind.STATUS], retain=True)]
        await asyncio.to_thread(wait_published, infos, 5.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        self._close_outbox()

    def _close_outbox(self) -> None:
        self.queue.close()
        self._outbox_lock.release()
