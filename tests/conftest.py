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


def _start_mosquitto(tmp_path_factory) -> PrivateMosquitto:
    try:
        return PrivateMosquitto(workdir=tmp_path_factory.mktemp("mosquitto")).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """One private Mosquitto for the session; tests keep apart by using their own site names."""
    broker = _start_mosquitto(tmp_path_factory)
    yield broker
    broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path_factory):
    """A private Mosquitto for one test (for tests that stop or restart the broker)."""
    broker = _start_mosquitto(tmp_path_factory)
    yield broker
    broker.stop()


def _start_influxdb(tmp_path_factory):
    from fieldlab.influxd import PrivateInfluxDB

    try:
        return PrivateInfluxDB(workdir=tmp_path_factory.mktemp("influxdb")).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory):
    """One private InfluxDB 1.x for the session; tests keep apart by using their own database names."""
    db = _start_influxdb(tmp_path_factory)
    yield db
    db.stop()


@pytest.fixture
def own_influxdb(tmp_path_factory):
    """A private InfluxDB for one test (for tests that stop or restart it)."""
    db = _start_influxdb(tmp_path_factory)
    yield db
    db.stop()


@pytest.fixture
def site() -> str:
    """A site name no other test uses, so tests can share one broker."""
    return f"t{uuid.uuid4().hex[:10]}"


class Recorder:
    """A plain paho subscriber that keeps every message (topic, payload, retained)."""

    def __init__(self, url, topics):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        c.on_subscribe = lambda *a: self._ready.set()
        c.on_message = self._on_message
        c.connect(url.host, url.port)
        c.loop_start()
        assert self._ready.wait(5), "subscriber did not get SUBACK"
        self.client = c

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


def _start_victoria(tmp_path_factory):
    from fieldlab.victoria import PrivateVictoriaMetrics

    try:
        return PrivateVictoriaMetrics(workdir=tmp_path_factory.mktemp("victoria")).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def victoria(tmp_path_factory):
    """A private VictoriaMetrics (it accepts InfluxDB 2.x's /api/v2/write) for one test; it starts in ~0.1 s."""
    vm = _start_victoria(tmp_path_factory)
    yield vm
    vm.stop()
