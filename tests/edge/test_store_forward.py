"""Store-and-forward against a real Mosquitto that goes away: nothing produced meanwhile is lost.

The broker keeps its sessions on disk (persistence), as a deployed broker does, so
the subscriber's queued messages survive the broker restart like the data does.
"""
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import Kind, MachineRef, decode
from contract.errors import ServiceError
from edge.agent import EdgeAgent
from edge.opcua import OpcUaSource
from tests.helpers import terminate
from fieldlab.broker import PrivateMosquitto, free_port
from gateway.engine import KpiEngine
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation


class DurableSubscriber:
    """A subscriber with a persistent session (clean_session=False): the broker keeps its messages."""

    def __init__(self, port: int, topic: str):
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"durable-{uuid.uuid4().hex[:8]}", clean_session=False)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert ready.wait(5)
        self.client = c

    def _on_message(self, c, u, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def decoded(self, ref: MachineRef, kind: Kind) -> list:
        with self._lock:
            return [decode(kind, p) for t, p in self.messages if t == ref.topic(kind)]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def start_broker(broker: PrivateMosquitto) -> None:
    try:
        broker.start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)


async def test_broker_outage_loses_nothing_and_counts_nothing_twice(durable_broker, tmp_path):
    site = f"t{uuid.uuid4().hex[:8]}"
    ref = MachineRef(site, "a", "l", "filler-01")
    sub = DurableSubscriber(durable_broker.port, f"fieldlab/v1/{site}/#")
    clock = SimClock(1_800_000_000.0, speed=120.0)
    sim = Simulation([Machine(DEMO_MACHINES[2], clock.t0, seed=4)], clock, base_port=free_port(), tick_s=0.05)
    await sim.start()
    agent = EdgeAgent(ref, durable_broker.url, OpcUaSource(sim.servers[0].endpoint, "filler-01"),
                      buffer=tmp_path / "outbox.db", flush_s=0.1)
    try:
        await agent.start()
        sim.run()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(durable_broker.stop)  # the Wi-Fi drops for 30 s: at 120x, an hour of production
        backlog = []
        for _ in range(300):
            await asyncio.sleep(0.1)
            backlog.append(agent.backlog)
        assert max(backlog) > 10, "the agent should have kept batches on disk while the broker was away"
        await asyncio.to_thread(start_broker, durable_broker)
        for _ in range(300):  # the outage's backlog drains once the agent has reconnected
            if agent.backlog < 5:  # (new batches keep coming: a few are always on their way)
                break
            await asyncio.sleep(0.1)
        assert agent.backlog < 5
        await sim.freeze()
        await agent.stop(settle_s=0.3)
        assert agent.stats["left_on_disk"] == 0
    finally:
        await sim.stop()
    led = sim.ledgers()["filler-01"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not sub.decoded(ref, Kind.COUNTS):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    counts = sub.decoded(ref, Kind.COUNTS)
    states = sub.decoded(ref, Kind.STATE)
    telemetry = sub.decoded(ref, Kind.TELEMETRY)
    sub.close()
    assert agent.stats["reconnects"] >= 1
    # the newest counter reading is what the machine really made
    newest = max(((float(b.ts[-1]), int(b.good[-1]), int(b.reject[-1])) for b in counts))
    assert newest[1:] == (led["good"], led["reject"])
    # every sample the agent produced arrived (some perhaps twice: that is allowed) ...
    tel_ts = np.unique(np.concatenate([b.ts for b in telemetry]))
    assert tel_ts.size == agent.batcher.samples[Kind.TELEMETRY]
    # ... and in order: leaving out repeats of batches already seen, each batch starts after the last one ended
    seen, last_end = set(), -np.inf
    for b in telemetry:
        key = (float(b.ts[0]), float(b.ts[-1]))
        if key in seen:
            continue
        seen.add(key)
        assert b.ts[0] > last_end, "telemetry arrived out of order"
        last_end = float(b.ts[-1])
    got_states = {(float(t), int(s)) for b in states for t, s in zip(b.ts, b.state)}
    assert len(got_states) == agent.batcher.samples[Kind.STATE]
    # and the gateway's engine, fed the stream as it arrived, duplicates included, counts each part once
    engine = KpiEngine()
    m = engine.add_machine()
    add = {Kind.STATE: engine.add_state, Kind.COUNTS: engine.add_counts, Kind.TELEMETRY: engine.add_telemetry}
    for topic, payload in list(sub.messages):
        kind = Kind(topic.rsplit("/", 1)[1])
        if kind in add:
            add[kind](m, decode(kind, payload))
            if kind is Kind.COUNTS:
                engine.fold()  # fold often, as the live gateway does, so replays meet folded data
    engine.fold()
    k = engine.snapshot()["since_start"]
    assert (int(k["good"][0]), int(k["reject"][0])) == (led["good"], led["reject"])
    assert k["run_s"][0] == pytest.approx(led["run_s"], abs=1e-3)


def test_killed_agent_delivers_what_it_had_on_disk(durable_broker, tmp_path):
    """kill -9 while the broker is away; after a restart the persisted outbox is delivered."""
    site = f"t{uuid.uuid4().hex[:8]}"
    opc = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outbox = tmp_path / "outbox.db"
    sub = DurableSubscriber(durable_broker.port, f"fieldlab/v1/{site}/#")
    sim = subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--speed", "60",
                            "--opcua-port", str(opc)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    edge_cmd = [sys.executable, "-m", "fieldlab", "edge", "--opcua", f"opc.tcp://127.0.0.1:{opc}/fieldlab/",
                "--object", "cnc-01", "--broker", f"mqtt://127.0.0.1:{durable_broker.port}", "--site", site,
                "--area", "a", "--line", "l", "--buffer", str(outbox)]
    edge = None
    try:
        assert b"opc.tcp://" in sim.stdout.readline()
        edge = subprocess.Popen(edge_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(t.endswith("/telemetry") for t, _ in sub.messages):
            time.sleep(0.1)
        durable_broker.stop()
        time.sleep(3)  # the agent buffers on disk
        edge.send_signal(signal.SIGKILL)
        edge.wait(5)
        with sqlite3.connect(outbox) as db:
            kept = db.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
        assert len(kept) >= 3, "three seconds of data should have been waiting on disk"
        start_broker(durable_broker)
        edge = subprocess.Popen(edge_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        wanted = {(t, bytes(p)) for t, p in kept}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= set(sub.messages):
            time.sleep(0.2)
        missing = wanted - set(sub.messages)
        assert not missing, f"{len(missing)} of {len(wanted)} persisted messages never arrived"
        assert all(json.loads(p)["v"] == 1 for _, p in kept)
    finally:
        sub.close()
        terminate(edge, sim)
