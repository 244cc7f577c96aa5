"""The edge agent: a source feeds a Batcher; batches go to MQTT per the contract.

Status: birth ("online", retained) on start, a graceful death ("offline",
retained) on stop, and the same death as the MQTT last will if the agent
vanishes. Batches are flushed every ``flush_s`` with QoS 1.
"""
from __future__ import annotations

import asyncio
import logging
import time

from contract import QOS, Kind, MachineRef, encode_status
from contract.mqtt import BrokerUrl, connect, wait_published

from .batcher import Batcher

log = logging.getLogger("fieldlab.edge")


class EdgeAgent:
    def __init__(self, machine: MachineRef, broker: BrokerUrl, source, flush_s: float = 0.5):
        self.machine, self.broker, self.source, self.flush_s = machine, broker, source, flush_s
        self.batcher = Batcher()
        self.published = 0
        self._client = None
        self._task: asyncio.Task | None = None
        self._pending: list = []

    async def start(self) -> None:
        status = self.machine.topic(Kind.STATUS)
        self._client = await asyncio.to_thread(
            connect, self.broker, f"fieldlab-edge-{self.machine.machine}",
            will=(status, encode_status(time.time(), "offline", reason="connection lost")))
        await self.source.start(self.batcher)
        self._publish(Kind.STATUS, encode_status(time.time(), "online", agent="fieldlab-edge"))
        self._task = asyncio.create_task(self._loop())
        log.info("edge agent up machine=%s broker=%s", self.machine.path, self.broker)

    def _publish(self, kind: Kind, payload: bytes) -> None:
        info = self._client.publish(self.machine.topic(kind), payload, qos=QOS[kind], retain=kind == Kind.STATUS)
        self._pending.append(info)
        self._pending = [i for i in self._pending if not i.is_published()]
        self.published += 1

    def flush(self) -> None:
        for kind, payload in self.batcher.drain():
            self._publish(kind, payload)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.flush()

    async def stop(self, settle_s: float = 0.0) -> None:
        """Flush what is buffered (after ``settle_s`` for late notifications), say goodbye, disconnect."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if settle_s:
            await asyncio.sleep(settle_s)
        if self._client is None:
            return
        await self.source.stop()
        self.flush()
        self._publish(Kind.STATUS, encode_status(time.time(), "offline", reason="stopped"))
        if not await asyncio.to_thread(wait_published, list(self._pending), 10.0):
            log.warning("edge agent stopping with unacknowledged messages machine=%s", self.machine.path)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
