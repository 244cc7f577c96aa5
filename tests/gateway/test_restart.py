"""Restart safety: a gateway killed (kill -9) and started again continues its KPIs, counting nothing twice."""
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import Kind, MachineRef, decode, encode_counts, encode_state, encode_status
from contract.errors import ServiceError
from fieldlab.broker import PrivateMosquitto, free_port
from gateway import checkpoint
from gateway.config import load
from gateway.engine import KpiEngine
from gateway.service import Gateway, default_client_id
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0
EXECUTE, HELD = 4, 15


def publisher(port: int):
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(c, topic: str, payload: bytes) -> None:
    c.publish(topic, payload, qos=1).wait_for_publish(5)


def start_gateway(cmd) -> tuple[subprocess.Popen, list[str]]:
    """Start a gateway process; return once it is subscribed, with its output (collected as it comes)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True)
    out, up = [], threading.Event()

    def read():
        for line in proc.stdout:
            out.append(line)
            if line.startswith("gateway reading"):
                up.set()

    threading.Thread(target=read, daemon=True).start()
    if not up.wait(15):
        terminate(proc)
        pytest.fail("gateway did not start:\n" + "".join(out))
    return proc, out


def stop_cleanly(gw, out) -> None:
    terminate(gw)  # SIGTERM: a clean stop publishes the final KPIs
    assert gw.returncode == 0, "".join(out)


def close(gw, pub) -> None:
    terminate(gw)
    pub.disconnect()
    pub.loop_stop()


def saved_totals(path: Path) -> tuple[int, int] | None:
    """good, reject of machine 0 in the checkpoint on disk (None while there is none)."""
    try:
        engine = KpiEngine()
        checkpoint.read(path, engine)
    except checkpoint.CheckpointError:
        return None
    if engine.n == 0:
        return None
    k = engine.snapshot()["since_start"]
    return int(k["good"][0]), int(k["reject"][0])


def retained_kpi(port: int, topic: str, timeout: float = 5.0) -> dict | None:
    got = []
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    c.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return got[-1] if got else None


def test_killed_gateway_continues_its_kpis_without_counting_twice(durable_broker, tmp_path):
    site = f"t{uuid.uuid4().hex[:8]}"
    ref = MachineRef(site, "a", "l", "m1")
    state_dir = tmp_path / "state"
    cmd = [sys.executable, "-m", "fieldlab", "gateway", "--broker", f"mqtt://127.0.0.1:{durable_broker.port}",
           "--site", site, "--state-dir", str(state_dir), "--http-port", str(free_port()),
           "--checkpoint-every", "0.2"]
    ckpt = checkpoint.path_for(state_dir, default_client_id([f"{site}/+/+"], site))
    # before the crash: run 0..150, held 150..180, run from 180; 60 good and 2 rejects by t=200
    before = [(Kind.STATE, encode_state([T0, T0 + 150, T0 + 180], [EXECUTE, HELD, EXECUTE])),
              (Kind.COUNTS, encode_counts([T0, T0 + 100], [0, 30], [0, 1], "p", 2.0)),
              (Kind.COUNTS, encode_counts([T0 + 200], [60], [2], "p", 2.0))]
    # while it is down: held 350..380, 120 good and 4 rejects by t=400
    during = [(Kind.STATE, encode_state([T0 + 350, T0 + 380], [HELD, EXECUTE])),
              (Kind.COUNTS, encode_counts([T0 + 300, T0 + 400], [90, 120], [3, 4], "p", 2.0))]
    pub = publisher(durable_broker.port)
    gw = None
    try:
        gw, out = start_gateway(cmd)  # subscribed: its session exists from now on
        publish(pub, ref.topic(Kind.STATUS), encode_status(T0, "online"))
        for kind, payload in before:
            publish(pub, ref.topic(kind), payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and saved_totals(ckpt) != (60, 2):
            time.sleep(0.05)
        assert saved_totals(ckpt) == (60, 2), "no checkpoint with the data came"
        gw.send_signal(signal.SIGKILL)
        gw.wait(5)
        for kind, payload in during + before:  # new data, and the old again (a QoS 1 / store-and-forward replay)
            publish(pub, ref.topic(kind), payload)
        gw, out = start_gateway(cmd)
        assert "restored checkpoint" in "".join(out)
        publish(pub, ref.topic(Kind.COUNTS), before[2][1])  # and once more after the restart
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and saved_totals(ckpt) != (120, 4):
            time.sleep(0.05)
        stop_cleanly(gw, out)
    finally:
        close(gw, pub)
    kpi = retained_kpi(durable_broker.port, ref.topic(Kind.KPI))
    assert kpi is not None
    # every part once; run: 0..150, 180..350, 380..400
    assert (kpi["good"], kpi["reject"], kpi["run_s"]) == (120, 4, 340.0)
    assert kpi["window"]["start"] == T0  # since the first message, before the crash
    assert kpi["status"] == "online"


def test_what_came_after_the_last_checkpoint_is_not_lost(durable_broker, tmp_path):
    """Killed between two checkpoints: the messages it had acknowledged since are replayed from its journal."""
    site = f"t{uuid.uuid4().hex[:8]}"
    ref = MachineRef(site, "a", "l", "m1")
    cmd = [sys.executable, "-m", "fieldlab", "gateway", "--broker", f"mqtt://127.0.0.1:{durable_broker.port}",
           "--site", site, "--state-dir", str(tmp_path / "state"), "--http-port", str(free_port()),
           "--checkpoint-every", "3600"]  # no checkpoint before the kill
    pub = publisher(durable_broker.port)
    gw = None
    try:
        gw, out = start_gateway(cmd)
        publish(pub, ref.topic(Kind.STATE), encode_state([T0, T0 + 100, T0 + 300], [EXECUTE, HELD, EXECUTE]))
        publish(pub, ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 350], [0, 50], [0, 5], "p", 2.0))
        deadline = time.monotonic() + 10  # it has them (and told the broker so) once its KPIs show them
        while time.monotonic() < deadline and (retained_kpi(durable_broker.port, ref.topic(Kind.KPI), 0.3)
                                               or {}).get("good") != 50:
            pass
        gw.send_signal(signal.SIGKILL)
        gw.wait(5)
        publish(pub, ref.topic(Kind.COUNTS), encode_counts([T0 + 400], [70], [5], "p", 2.0))
        gw, out = start_gateway(cmd)
        assert "replayed=2" in "".join(out)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (retained_kpi(durable_broker.port, ref.topic(Kind.KPI), 0.3)
                                               or {}).get("good") != 70:
            pass
        stop_cleanly(gw, out)
    finally:
        close(gw, pub)
    kpi = retained_kpi(durable_broker.port, ref.topic(Kind.KPI))
    # the state changes from before the kill are there: run 0..100 and 300..400, held (a breakdown) 100..300
    assert (kpi["good"], kpi["reject"], kpi["run_s"], kpi["breakdown_s"]) == (70, 5, 200.0, 200.0)
    assert kpi["window"]["start"] == T0


def engine_with_data(config):
    e = KpiEngine(config)
    a, b = e.add_machine(), e.add_machine()
    t = 1_799_990_000.0  # a weekday morning in Europe: shifts and breaks (the calendar) are in play
    e.add_state(a, decode(Kind.STATE, encode_state([t, t + 600, t + 640, t + 3000], [4, 15, 4, 2])))
    e.add_counts(a, decode(Kind.COUNTS, encode_counts([t, t + 500, t + 2900], [0, 50, 300], [0, 2, 9], "p", 4.0)))
    e.add_state(b, decode(Kind.STATE, encode_state([t + 10, t + 4000], [1, 3], [0, 42], model="simple")))
    e.add_counts(b, decode(Kind.COUNTS, encode_counts([t + 10, t + 3900], [5, 80], [0, 1])))
    e.fold()
    e.add_counts(a, decode(Kind.COUNTS, encode_counts([t + 3100], [310], [9], "p", 4.0)))  # not folded yet
    return e, t


def assert_same(x, y):
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], dict):
            assert_same(x[k], y[k])
        elif isinstance(x[k], np.ndarray):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x[k] == y[k], k


def test_checkpoint_round_trip(tmp_path):
    config = load(ROOT / "docs" / "examples" / "site.yaml")
    e, t = engine_with_data(config)
    machines = [MachineRef("s", "a", "l", "m1"), MachineRef("s", "a", "l", "m2")]
    path = tmp_path / "gw.checkpoint.npz"
    checkpoint.save(path, e, machines, {1: "online"})
    assert not list(tmp_path.glob("*.tmp"))
    restored = KpiEngine(config)
    assert checkpoint.load(path, restored) == (machines, {1: "online"})
    assert_same(e.snapshot(), restored.snapshot())
    # and both go on the same way: new data, and a replay of old data that must not count again
    more = [(0, encode_counts([t + 2900, t + 3600], [300, 400], [9, 10], "p", 4.0)),
            (0, encode_counts([t, t + 500], [0, 50], [0, 2], "p", 4.0)),
            (1, encode_counts([t + 3900, t + 5000], [80, 100], [1, 1]))]
    for eng in (e, restored):
        for m, payload in more:
            eng.add_counts(m, decode(Kind.COUNTS, payload))
        eng.add_state(0, decode(Kind.STATE, encode_state([t + 600, t + 5000], [15, 4])))
        eng.fold()
    assert_same(e.snapshot(), restored.snapshot())
    assert int(restored.snapshot()["since_start"]["good"][0]) == 400
    # the file holds no pickles: numpy's loader refuses them, and nothing in it needs one
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_a_version_2_checkpoint_is_read(tmp_path):
    """Version 2 stored the timeline's rows as machines x capacity; an upgraded gateway reads it (compacted)."""
    config = load(ROOT / "docs" / "examples" / "site.yaml")
    e, _ = engine_with_data(config)
    machines = [MachineRef("s", "a", "l", "m1"), MachineRef("s", "a", "l", "m2")]
    arrays, doc = checkpoint.capture(e, machines, {0: "online"})
    caps = {}
    for r in checkpoint.ROWS:
        rows = getattr(e.timeline, r)
        fill = arrays[f"{r}.fill"]
        caps[r] = cap = int(2 ** np.ceil(np.log2(fill.max() + 2)))
        m, j = np.repeat(np.arange(fill.size), fill + 1), np.concatenate([np.arange(k + 1) for k in fill])
        for col, (shape, dtype, fillv) in rows.spec.items():
            dense = np.full((fill.size, cap, *shape), fillv, dtype)
            dense[m, j] = arrays[f"{r}.{col}"]
            arrays[f"{r}.{col}"] = dense
    path = tmp_path / "old.checkpoint.npz"
    checkpoint.write(path, arrays, {**doc, "version": 2, "caps": caps})
    restored = KpiEngine(config)
    assert checkpoint.load(path, restored) == (machines, {0: "online"})
    assert_same(e.snapshot(), restored.snapshot())


@pytest.mark.parametrize("content", ["garbage", "other_version"])
async def test_bad_checkpoint_is_moved_aside_and_the_gateway_starts_fresh(mosquitto, site, tmp_path, caplog,
                                                                            content):
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, state_dir=tmp_path)
    path = gw.checkpoint_path
    if content == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        e, _ = engine_with_data(None)
        arrays, doc = checkpoint.capture(e, [MachineRef(site, "a", "l", "m1"), MachineRef(site, "a", "l", "m2")], {})
        checkpoint.write(path, arrays, {**doc, "version": checkpoint.VERSION + 1})
    with caplog.at_level(logging.WARNING, "fieldlab.gateway"):
        await gw.start()
    try:
        assert gw.machines == [] and gw.engine.n == 0
        ref = MachineRef(site, "a", "l", "m9")
        c = publisher(mosquitto.url.port)
        publish(c, ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 10], [0, 7], [0, 0]))
        c.disconnect()
        c.loop_stop()
        for _ in range(100):
            if gw.stats["messages"]:
                break
            await asyncio.sleep(0.05)
        rows = gw.tick()
        assert [(r["machine"], r["good"]) for r in rows] == [(ref, 7)]
    finally:
        await gw.stop()
    aside = list(tmp_path.glob(f"{path.name}.corrupt-*"))
    assert len(aside) == 1
    assert f"checkpoint {path} not used" in caplog.text and str(aside[0]) in caplog.text
    # the clean stop wrote a good checkpoint in its place
    assert checkpoint.load(path, KpiEngine())[0] == [ref]
