"""Issue 13: the gateway survives broker restarts, tells the truth about its health, and no machine's data
can stop the others' KPIs. Real Mosquitto, real HTTP; each test reproduces one defect of the issue."""
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest

import contract
from contract import Kind, MachineRef, encode_counts, encode_state, encode_status
from contract.errors import ServiceError
from contract.topics import gateway_status_topic
from gateway.http import HttpEndpoint
from gateway.service import Gateway, default_client_id
from tests.conftest import Recorder
from tests.helpers import KeepLines, wait_until

T0 = 1_800_000_000.0  # 2027-01-15: every time in these tests is a plausible Unix time
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in (Path(contract.__file__).parent / "schemas").glob("*.json")}


def get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def produce(pub: Recorder, ref: MachineRef, t: float, good: int) -> None:
    """The machine runs from T0 and has made ``good`` parts by ``t``."""
    pub.publish(ref.topic(Kind.STATE), encode_state([T0], [4]))
    pub.publish(ref.topic(Kind.COUNTS), encode_counts([T0, t], [0, good], [0, 0], "p", 1.0))


async def test_broker_restart_does_not_freeze_the_kpis(own_mosquitto, site):
    """Defect 1: after a broker restart every tick failed (paho's is_published() raises for a message queued
    while disconnected) and KPIs stopped for good."""
    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(own_mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", mqtt_grace_s=0.5)
    await gw.start()
    pub = None
    try:
        pub = Recorder(own_mosquitto.url)
        produce(pub, ref, T0 + 100, 100)
        assert await wait_until(lambda: gw.rows and gw.rows[0]["good"] == 100)
        pub.close()
        await asyncio.to_thread(own_mosquitto.stop)
        await asyncio.sleep(1.5)  # ticks go on without a broker
        failing = gw.health()
        assert failing["status"] == "failing" and any("MQTT disconnected" in r for r in failing["reasons"])
        failures = gw.stats["tick_failures"]
        await asyncio.to_thread(own_mosquitto.start)  # (no persistence: what comes before we are back is gone)
        assert await wait_until(lambda: gw._client.is_connected() and gw.stats["mqtt_connects"] == 2, 15)
        pub = Recorder(own_mosquitto.url)
        sub = Recorder(own_mosquitto.url, [ref.topic(Kind.KPI)])
        pub.publish(ref.topic(Kind.COUNTS), encode_counts([T0 + 200], [200], [0], "p", 1.0))
        assert await wait_until(lambda: any(k["good"] == 200 for k in sub.got(ref.topic(Kind.KPI))), 15), \
            "KPIs never resumed after the broker restart"
        assert gw.stats["tick_failures"] == failures == 0
        assert await wait_until(lambda: gw.health()["status"] == "ok", 5), gw.health()
        sub.close()
    finally:
        if pub:
            pub.close()
        await gw.stop()


async def test_status_only_machine_gets_no_kpi_message_without_time(mosquitto, site):
    """Defect 5: a machine known only from its status got KPI messages with "ts": null."""
    quiet, busy = MachineRef(site, "a", "l", "quiet"), MachineRef(site, "a", "l", "busy")
    sub = Recorder(mosquitto.url, [f"fieldlab/v1/{site}/+/+/+/kpi"])
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        pub.publish(quiet.topic(Kind.STATUS), encode_status(T0, "online"))
        produce(pub, busy, T0 + 60, 60)
        assert await wait_until(lambda: sub.got(busy.topic(Kind.KPI)))
        await asyncio.sleep(0.5)
        assert sub.got(quiet.topic(Kind.KPI)) == []
        assert any(r["machine"] == quiet and r["status"] == "online" for r in gw.rows)  # the page still shows it
        assert all(isinstance(k["ts"], float) and isinstance(k["tick_ts"], float)
                   for t, p, _ in list(sub.messages) for k in [json.loads(p)])
        for _, p, _ in list(sub.messages):  # "ts": null broke the KPI message's own schema
            jsonschema.validate(json.loads(p), SCHEMAS["kpi"])
        kpi = sub.got(busy.topic(Kind.KPI))[-1]
        assert abs(kpi["tick_ts"] - time.time()) < 10 and kpi["ts"] == T0 + 60  # when computed, and the data's time
    finally:
        pub.close()
        sub.close()
        await gw.stop()


async def test_a_will_is_stamped_when_it_arrives(mosquitto, site):
    """Defect 4: a killed agent's will carried its connect time (or 0 from third parties), so it was stored
    before the agent's later "online" heartbeats and the agent looked online forever."""
    ref = MachineRef(site, "a", "l", "m1")
    sink = KeepLines()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[sink])
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        before = time.time()
        pub.publish(ref.topic(Kind.STATUS), encode_status(T0 + 500, "online"))
        pub.publish(ref.topic(Kind.STATUS), encode_status(T0, "offline"))  # the will, stamped at connect
        assert await wait_until(lambda: len([ln for ln in sink.lines if ln.startswith("agent,")]) == 2)
        stamps = [int(ln.rsplit(" ", 1)[1]) / 1e3 for ln in sink.lines if ln.startswith("agent,")]  # (ms)
        assert before - 0.001 <= stamps[0] <= stamps[1] <= time.time()  # the offline is the newest
        assert "online=0i" in [ln for ln in sink.lines if ln.startswith("agent,")][1]
        assert f"sent_ts={T0:g}" in sink.lines[-1] or f"sent_ts={T0}" in sink.lines[-1]
    finally:
        pub.close()
        await gw.stop()


async def test_a_replayed_status_keeps_the_time_it_arrived(mosquitto, site, tmp_path):
    """After a crash the journal is replayed at start: a status in it was stamped with the restart time and
    stored as a new point (a will replayed after the agent's later "online" made it look offline again)."""
    ref = MachineRef(site, "a", "l", "m1")
    first, again = KeepLines(), KeepLines()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[first], state_dir=tmp_path,
                 checkpoint_s=3600)
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        pub.publish(ref.topic(Kind.STATUS), encode_status(T0, "offline"))  # a will, stamped at connect
        assert await wait_until(lambda: any(ln.startswith("agent,") for ln in first.lines))
    finally:
        pub.close()
    stored = [ln for ln in first.lines if ln.startswith("agent,")]
    # a crash: no clean stop, no checkpoint; only the journal is left
    for task in (gw._task, gw._status_task):
        task.cancel()
    gw._client.disconnect()
    gw._client.loop_stop()
    gw._release_state()
    await asyncio.sleep(0.2)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[again], state_dir=tmp_path)
    await gw.start()
    try:
        assert await wait_until(lambda: any(ln.startswith("agent,") for ln in again.lines))
        assert [ln for ln in again.lines if ln.startswith("agent,")] == stored  # the same point, stored again
        assert gw.status == {0: "offline"}
    finally:
        await gw.stop()


async def test_health_tells_the_truth(mosquitto, site):
    """Defect 3: /healthz was a constant "ok". Now: starting until subscribed; stale KPIs when the
    computation hangs (and /healthz still answers at once: the computation runs off the HTTP thread)."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, port=0)
    await http.start()
    try:
        status, body = await asyncio.to_thread(get, f"{http.url}/healthz")
        assert status == 503 and body["reasons"] == ["starting: restoring state and subscribing"]
        await gw.start()
        assert await wait_until(lambda: gw.ticks > 2)
        status, body = await asyncio.to_thread(get, f"{http.url}/healthz")
        assert (status, body["status"], body["reasons"]) == (200, "ok", []), body
        hang = threading.Event()
        real = gw.engine.snapshot

        def stuck():  # a computation that hangs (as 10,000 machines or a poisoned calendar made it)
            hang.wait(30)
            return real()

        gw.engine.snapshot = stuck
        await asyncio.sleep(3 * gw.publish_s + 2.5)
        started = time.monotonic()
        status, body = await asyncio.to_thread(get, f"{http.url}/healthz", 1.0)
        assert time.monotonic() - started < 1.0
        assert status == 503 and "KPIs are stale" in body["reasons"][0], body
        metrics = await asyncio.to_thread(urllib.request.urlopen, f"{http.url}/metrics", None, 1.0)
        assert b"fieldlab_gateway_healthy 0" in metrics.read()
        gw.engine.snapshot = real
        hang.set()
        assert await wait_until(lambda: gw.health()["status"] == "ok", 5)
    finally:
        hang.set()
        await gw.stop()
        await http.stop()


async def test_gateway_status_is_retained_with_its_health(mosquitto, site):
    """Defect 3: the gateway had no status of its own on MQTT, so a stopped gateway's KPIs looked current.
    (Its last will, on kill -9, is checked with a real process in tests/chaos/test_broker.py.)"""
    cid = f"gw-{site}"
    topic = gateway_status_topic(cid)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=cid, status_s=0.2)
    await gw.start()
    sub = Recorder(mosquitto.url, [topic])
    try:
        assert await wait_until(lambda: len(sub.got(topic)) >= 2)  # retained on subscribe, then the heartbeat
        doc = sub.got(topic)[-1]
        assert doc["status"] == "online" and doc["ok"] is True and doc["instance"] == gw.instance
        assert abs(doc["ts"] - time.time()) < 5
        jsonschema.validate(doc, SCHEMAS["gateway-status"])
        await gw.stop()
        assert await wait_until(lambda: sub.got(topic)[-1]["status"] == "offline", 5)
        assert "ts" not in sub.got(topic)[-1]  # as the will: a time fixed in advance would lie
        jsonschema.validate(sub.got(topic)[-1], SCHEMAS["gateway-status"])
        with pytest.raises(jsonschema.ValidationError):  # the schema can tell: an online without health
            jsonschema.validate({k: v for k, v in doc.items() if k != "ok"}, SCHEMAS["gateway-status"])
    finally:
        sub.close()
        await gw.stop()


async def test_a_second_gateway_with_the_same_client_id_is_reported(mosquitto, site, caplog):
    """Defect 1, second half: two gateways with one client id took each other's session, silently."""
    cid = f"gw-{site}"
    one = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=cid)
    two = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=cid)
    await one.start()
    await two.start()
    try:
        assert await wait_until(lambda: one.stats["client_id_collisions"] or two.stats["client_id_collisions"], 15)
        seen = one if one.stats["client_id_collisions"] else two
        health = seen.health()
        assert health["status"] == "failing" and any("--client-id" in r for r in health["reasons"]), health
        assert "client id collision" in caplog.text
    finally:
        await two.stop()
        await one.stop()


def test_default_client_ids_differ_by_scope_and_host():
    assert default_client_id(["acme/+/+"], "acme", "pi-1") == "fieldlab-gateway-acme-pi-1"
    assert default_client_id(["acme/+/+"], "acme", "pi-2") != default_client_id(["acme/+/+"], "acme", "pi-1")
    assert default_client_id(["acme/h1/+"], "+", "pi-1") != default_client_id(["acme/h2/+"], "+", "pi-1")
    assert default_client_id(["+/+/+"], "+", "pi 1/x") == "fieldlab-gateway-all-pi-1-x"
    assert default_client_id(["acme/+/+"], "acme").endswith(socket.gethostname()[:40].replace(" ", "-"))


async def test_machine_cap_dead_letters_the_rest(mosquitto, site):
    """Defect 9: no cap on machine ids (10,000 machines: 520 MB and 3 s ticks)."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", max_machines=3)
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        for i in range(5):
            pub.publish(MachineRef(site, "a", "l", f"m{i}").topic(Kind.STATE), encode_state([T0], [4]))
        assert await wait_until(lambda: gw.stats["messages"] == 3 and gw.stats["dead_letters"] == 2)
        assert "limit (--max-machines)" in gw.last_error
        assert len(gw.machines) == 3
    finally:
        pub.close()
        await gw.stop()


async def test_a_malformed_request_target_gets_an_answer(mosquitto, site):
    """Defect 10: GET http://[::1/ raised in the handler and closed the connection without an answer."""
    gw = Gateway(mosquitto.url, site=site, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, port=0)
    await http.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
        writer.write(b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == b"400", answer[:100]
    finally:
        await http.stop()


async def test_the_gateway_forgets_old_history_and_since_start_stays_exact(mosquitto, site):
    """Defect 6: the timeline kept every counter change forever (3 GB per 1,000 machine-days). The gateway
    now prunes what no live window needs, tick by tick; since_start still counts every part."""
    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(mosquitto.url, site=site, publish_s=3600, client_id=f"gw-{site}")  # ticks when told
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        pub.publish(ref.topic(Kind.STATE), encode_state([T0], [4]))
        pub.publish(ref.topic(Kind.COUNTS), encode_counts([T0], [0], [0], "p", 60.0))  # the baseline reading
        hours = 72
        for h in range(hours):  # three days, a counter reading a minute, one part a minute
            ts = [T0 + h * 3600 + 60 * i for i in range(1, 61)]
            good = [h * 60 + i for i in range(1, 61)]
            pub.publish(ref.topic(Kind.COUNTS), encode_counts(ts, good, [0] * 60, "p", 60.0))
            assert await wait_until(lambda: gw.stats["messages"] == h + 3)
            await asyncio.to_thread(gw.tick)
        row = gw.rows[0]
        assert row["good"] == hours * 60 and row["run_s"] == hours * 3600.0 and row["performance"] == 1.0
        kept = gw.engine.timeline.kept_from[0]
        assert T0 + 24 * 3600 < kept < T0 + hours * 3600  # days before today are gone from the rows ...
        assert gw.engine.timeline.c.fill[0] < 40 * 60  # ... and so are their counter changes (4,320 sent)
    finally:
        pub.close()
        await gw.stop()


async def test_a_second_gateway_over_the_same_state_file_is_refused(mosquitto, site, tmp_path):
    """Principle 8, two instances: two gateways with one client id and state directory would write one
    checkpoint and journal over each other. The second refuses to start and names the first."""
    one = Gateway(mosquitto.url, site=site, client_id=f"gw-{site}", state_dir=tmp_path)
    await one.start()
    try:
        two = Gateway(mosquitto.url, site=site, client_id=f"gw-{site}", state_dir=tmp_path)
        with pytest.raises(ServiceError, match=rf"the gateway's state file .* is in use by another process "
                                               rf"\(pid {os.getpid()}\): two would corrupt it; stop the other"):
            await two.start()
    finally:
        await one.stop()
    again = Gateway(mosquitto.url, site=site, client_id=f"gw-{site}", state_dir=tmp_path)  # released at stop
    await again.start()
    await again.stop()


async def test_the_retained_status_says_failing_while_the_computation_hangs(mosquitto, site):
    """Review: the status was published after each computation, so a hung one left `ok: true` retained."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", status_s=0.3)
    await gw.start()
    sub = Recorder(mosquitto.url, [gw.status_topic])
    release = threading.Event()
    try:
        real = gw.engine.snapshot
        gw.engine.snapshot = lambda: (release.wait(30), real())[1]
        assert await wait_until(lambda: any(d.get("ok") is False and "KPIs are stale" in d["reasons"][0]
                                            for d in sub.got(gw.status_topic)), 15)
    finally:
        release.set()
        sub.close()
        await gw.stop()


async def test_a_hung_computation_does_not_hang_the_stop(mosquitto, site, tmp_path, caplog):
    """Review: stop() waited for the last computation without a limit, so a hung one hung the clean stop too."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path)
    gw.stop_tick_s = 1.0
    await gw.start()
    release = threading.Event()
    try:
        real = gw.engine.snapshot
        gw.engine.snapshot = lambda: (release.wait(60), real())[1]
        await asyncio.sleep(0.5)  # the computation is now waiting
        t0 = time.monotonic()
        with caplog.at_level(logging.ERROR, "fieldlab.gateway"):
            await asyncio.wait_for(gw.stop(), 10)
        assert time.monotonic() - t0 < 5
        assert "has not finished in 1 s" in caplog.text
    finally:
        release.set()


def test_the_computation_thread_does_not_keep_the_process_alive():
    """A ThreadPoolExecutor's threads are joined at exit: a hung computation kept the process from exiting."""
    code = ("import threading; from gateway.worker import DaemonWorker; w = DaemonWorker('kpi'); "
            "f = w.submit(threading.Event().wait); g = DaemonWorker('x').submit(lambda: 42); print(g.result())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == "42", out


class ThreadOfAccept(KeepLines):
    """A sink that notes on which thread it is handed lines (the InfluxDB sinks must be, on the loop's)."""

    def __init__(self):
        super().__init__()
        self.threads = set()

    def accept(self, lines):
        self.threads.add(threading.get_ident())
        super().accept(lines)


async def test_sinks_take_lines_on_the_event_loop_thread(mosquitto, site):
    """Review: with the computation in a worker thread, sinks were handed lines there, and the InfluxDB sinks'
    asyncio.Event.set() from a worker thread may never wake their writer."""
    sink = ThreadOfAccept()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[sink])
    await gw.start()
    pub = Recorder(mosquitto.url)
    try:
        produce(pub, MachineRef(site, "a", "l", "m1"), T0 + 60, 60)
        assert await wait_until(lambda: any(ln.startswith("counts,") for ln in sink.lines))
        assert sink.threads == {threading.get_ident()}
    finally:
        pub.close()
        await gw.stop()
