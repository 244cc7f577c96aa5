"""Shared fixtures: real servers, private, on free loopback ports, in temp dirs.

A fixture whose server binary is missing fails with the command that installs
it; it never skips (a skipped test is not a passing one).
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract.errors import ServiceError
from fieldlab.broker import PrivateMosquitto, free_port


def _server(kind: str, tmp_path_factory):
    """Start a private server in its own temp dir; a missing binary fails the test with the install line."""
    from fieldlab.influxd import PrivateInfluxDB
    from fieldlab.victoria import PrivateVictoriaMetrics

    make = {"mosquitto": PrivateMosquitto, "influxdb": PrivateInfluxDB, "victoria": PrivateVictoriaMetrics}[kind]
    try:
        return make(workdir=tmp_path_factory.mktemp(kind)).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)


def _serve(kind: str, tmp_path_factory):
    server = _server(kind, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """One private Mosquitto for the session; tests keep apart by using their own site names."""
    yield from _serve("mosquitto", tmp_path_factory)


@pytest.fixture
def own_mosquitto(tmp_path_factory):
    """A private Mosquitto for one test (for tests that stop or restart the broker)."""
    yield from _serve("mosquitto", tmp_path_factory)


@pytest.fixture
def durable_broker(tmp_path):
    """A private Mosquitto that keeps sessions and retained messages on disk (the gateway's queued messages
    survive its restart), like a deployed one; for tests that stop, kill or restart it."""
    (tmp_path / "broker").mkdir()
    broker = PrivateMosquitto(workdir=tmp_path / "broker", persistence=True)
    try:
        broker.start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory):
    """One private InfluxDB 1.x for the session; tests keep apart by using their own database names."""
    yield from _serve("influxdb", tmp_path_factory)


@pytest.fixture
def own_influxdb(tmp_path_factory):
    """A private InfluxDB for one test (for tests that stop or restart it)."""
    yield from _serve("influxdb", tmp_path_factory)


@pytest.fixture
def victoria(tmp_path_factory):
    """A private VictoriaMetrics (it accepts InfluxDB 2.x's /api/v2/write) for one test; it starts in ~0.1 s."""
    yield from _serve("victoria", tmp_path_factory)


@pytest.fixture
def site() -> str:
    """A site name no other test uses, so tests can share one broker."""
    return f"t{uuid.uuid4().hex[:10]}"


class Recorder:
    """A plain paho client that keeps every message it receives (topic, payload, retained), and publishes with
    QoS 1 (``publish``); without topics, a publisher only. It reconnects (and subscribes again) by itself."""

    def __init__(self, url, topics=()):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics]) if topics else self._ready.set()
        c.on_subscribe = lambda *a: self._ready.set()
        c.on_message = self._on_message
        c.connect(url.host, url.port)
        c.loop_start()
        assert self._ready.wait(5), "subscriber did not get SUBACK"
        self.client = c

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5) is None

    def got(self, topic: str) -> list[dict]:
        """The JSON payloads received on exactly this topic, in order."""
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def _on_message(self, c, u, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def json(self, suffix: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder():
    made = []

    def make(url, *topics):
        r = Recorder(url, topics)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def publisher(mosquitto):
    """publish(topic, payload): QoS 1 to the session broker, returns once the broker has it."""
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.connect(mosquitto.url.host, mosquitto.url.port)
    c.loop_start()
    yield lambda topic, payload: c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
