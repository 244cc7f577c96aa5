"""The gateway is killed (kill -9) mid-run and started again, more than once; a second gateway starts with the
same client id; producers send nonsense beside a well-behaved machine. The ledger says what really happened."""
import json
import socket
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from contract import encode_state
from contract.topics import DEADLETTER_TOPIC, gateway_status_topic
from fieldlab.broker import free_port
from tests.chaos.conftest import (
    FULL, compare, gateway_cmd, http_json, machine_kpis, metric, poll, retained, rss_kib, sim_cmd,
)


def test_killed_gateway_loses_nothing_and_says_it_is_offline(durable_broker, procs, report, tmp_path, seed):
    kills = 5 if FULL else 2
    run_s = 10.0 + kills * 6.0
    site = f"c{uuid.uuid4().hex[:8]}"
    http = free_port()
    ledger_file = tmp_path / "ledger.json"
    cmd = gateway_cmd(durable_broker.port, http, tmp_path / "state", site, "--client-id", f"gw-{site}")
    status_topic = gateway_status_topic(f"gw-{site}")
    gw = procs("gateway", cmd)
    gw.wait_for("gateway reading")
    sim = procs("sim", sim_cmd(durable_broker.port, site, ledger_file, run_s, seed=seed))
    sim.wait_for("publishing:")
    recoveries = []
    for i in range(kills):
        # an observable point: a checkpoint with data is on disk, and messages arrived after it
        assert poll(lambda: list((tmp_path / "state").glob("*.checkpoint.npz"))
                    and (metric(http, "fieldlab_gateway_messages_total") or 0) > 10, 20), gw.tail()
        time.sleep(1.3)
        gw.kill()
        will = poll(lambda: (lambda s: s if s.get("status") == "offline" else None)(
            retained(durable_broker.port, status_topic).get(status_topic, {})), 10)
        assert will, "the gateway's last will did not say offline"
        gw = procs(f"gateway-{i + 2}", cmd)
        started = time.monotonic()
        gw.wait_for("gateway reading")
        assert poll(lambda: http_json(f"http://127.0.0.1:{http}/healthz")[0] == 200, 15), gw.tail()
        recoveries.append(time.monotonic() - started)
        assert poll(lambda: (lambda s: s.get("status") == "online" and s.get("ok") is True)(
            retained(durable_broker.port, status_topic).get(status_topic, {})), 10), "no healthy status after restart"
    assert sim.popen.wait(run_s + 60) == 0, sim.tail()
    ledger = json.loads(ledger_file.read_text())
    kpis = poll(lambda: (lambda k: k if compare(k, ledger)["lost"] == 0 and len(k) == len(ledger) else None)(
        machine_kpis(durable_broker.port, site)), 20) or machine_kpis(durable_broker.port, site)
    result = compare(kpis, ledger)
    report(scenario="gateway killed (kill -9) and restarted", injected="kill -9", times=kills,
           recovery_s=round(max(recoveries), 2), **result)
    assert result["lost"] == 0 and result["duplicated"] == 0, (result, gw.tail())
    assert result["run_s_error"] < 1e-3, (result, kpis, ledger)


def test_a_second_gateway_with_the_same_client_id_is_reported(durable_broker, procs, report, tmp_path):
    site = f"c{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    gws = [procs(f"gateway-{i}", gateway_cmd(durable_broker.port, port, tmp_path / f"state-{i}", site,
                                             "--client-id", f"gw-{site}"))
           for i, port in enumerate(ports)]
    for g in gws:
        g.wait_for("gateway reading")
    started = time.monotonic()
    seen = poll(lambda: [p for p in ports if http_json(f"http://127.0.0.1:{p}/healthz")[0] == 503], 20)
    assert seen, "neither gateway reported the collision on /healthz"
    reasons = http_json(f"http://127.0.0.1:{seen[0]}/healthz")[1]["reasons"]
    assert any("client id" in r and "--client-id" in r for r in reasons), reasons
    assert any("client id collision" in ln for g in gws for ln in g.lines)
    report(scenario="two gateways with one client id", injected="second process", times=1,
           recovery_s=None, detected_s=round(time.monotonic() - started, 2))
    gws[1].stop()
    assert gws[0].stop() == 0, gws[0].tail()


def _flood(port: int, site: str, good_machine: str) -> dict[str, int]:
    """Nonsense from a JavaScript producer, a broken PLC and a runaway script; what each should cost."""
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = f"fieldlab/v1/{site}/a/l"
    now = time.time()
    ms = int(now * 1000)
    bad = [
        (f"{t}/js-01/state", json.dumps({"v": 1, "ts": [ms], "state": [4]}).encode()),  # Date.now()
        (f"{t}/js-01/counts", json.dumps({"v": 1, "ts": [ms, ms + 1000], "good": [0, 5], "reject": [0, 0]}).encode()),
        (f"{t}/plc-01/state", b"\xff\xfe garbage"),
        (f"{t}/plc-01/state", json.dumps({"v": True, "ts": [now], "state": [4]}).encode()),
        (f"{t}/plc-01/state", json.dumps({"v": 1, "ts": [now], "state": [4], "model": []}).encode()),
        (f"{t}/plc-01/counts", json.dumps({"v": 1, "ts": [now], "good": [True], "reject": [0]}).encode()),
        (f"{t}/plc-01/telemetry", b"FLT1" + b"\x00" * 40),  # a binary telemetry header that lies
        (f"{t}/{good_machine}/state", b"[" * 100_000),  # deep nesting, on the good machine's own topic
        (f"{t}/big-01/telemetry", json.dumps({"v": 1, "ts": [now] * 200_000,
                                              "signals": {"x": [1.0] * 200_000}}).encode()),  # ~5 MB
    ]
    invented = [(f"{t}/ghost-{i:03d}/state", encode_state([now + i], [4])) for i in range(50)]
    for topic, payload in bad + invented:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    return {"bad": len(bad), "invented": len(invented)}


def test_nonsense_beside_a_good_machine_changes_nothing_for_it(durable_broker, procs, report, tmp_path, seed):
    site = f"c{uuid.uuid4().hex[:8]}"
    http = free_port()
    ledger_file = tmp_path / "ledger.json"
    dead = []
    d = paho.Client(CallbackAPIVersion.VERSION2)
    d.on_connect = lambda c, u, f, rc, p: c.subscribe(DEADLETTER_TOPIC, qos=1)
    d.on_message = lambda c, u, m: dead.append(json.loads(m.payload))
    d.connect("127.0.0.1", durable_broker.port)
    d.loop_start()
    cap = 5
    cmd = gateway_cmd(durable_broker.port, http, tmp_path / "state", site, "--max-machines", str(cap))
    gw = procs("gateway", cmd)
    gw.wait_for("gateway reading")
    sim = procs("sim", sim_cmd(durable_broker.port, site, ledger_file, 14, machines=1, seed=seed))
    sim.wait_for("publishing:")
    assert poll(lambda: (metric(http, "fieldlab_gateway_machines") or 0) >= 1, 20)
    rss_before = rss_kib(gw.popen.pid)
    sent = _flood(durable_broker.port, site, "cnc-01")
    refused = sent["bad"] + sent["invented"] - (cap - 1)
    assert poll(lambda: metric(http, "fieldlab_gateway_dead_letters_total") == refused, 20), \
        (metric(http, "fieldlab_gateway_dead_letters_total"), refused, gw.tail())
    ms_reason = [x["error"] for x in dead if "/js-01/" in x["topic"]]
    assert ms_reason and all("milliseconds" in r for r in ms_reason), ms_reason
    assert not any("internal error" in x["error"] for x in dead), [x["error"] for x in dead]
    assert http_json(f"http://127.0.0.1:{http}/healthz")[0] == 200
    # the journal holds what was accepted; a restart over it must come up and go on (no poison replayed)
    gw.kill()
    gw = procs("gateway-2", cmd)
    gw.wait_for("gateway reading")
    assert poll(lambda: http_json(f"http://127.0.0.1:{http}/healthz")[0] == 200, 15), gw.tail()
    assert sim.popen.wait(60) == 0, sim.tail()
    ledger = json.loads(ledger_file.read_text())
    kpis = poll(lambda: (lambda k: k if compare(k, ledger)["lost"] == 0 else None)(
        {m: k for m, k in machine_kpis(durable_broker.port, site).items() if m in ledger}), 20)
    result = compare(kpis or {}, ledger)
    rss_after = rss_kib(gw.popen.pid)
    report(scenario="nonsense beside a good machine, then kill -9", injected="malformed and invented",
           times=sent["bad"] + sent["invented"], dead_letters=refused, recovery_s=None, **result,
           rss_kib=[rss_before, rss_after])
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["run_s_error"] < 1e-3, (result, kpis)
    assert metric(http, "fieldlab_gateway_tick_failures_total") == 0
    d.disconnect()
    d.loop_stop()


def test_file_descriptors_run_out_and_the_log_stays_small(durable_broker, procs, report, tmp_path, seed):
    """Issue 13, defect 10: with its file descriptors used up (here: a low limit and 80 idle HTTP clients)
    asyncio logged every failed accept with a traceback, 23 MB in 30 s. The log stays small; once the clients
    go, the gateway serves again, and the machines' KPIs equal the ledger."""
    site = f"c{uuid.uuid4().hex[:8]}"
    http = free_port()
    ledger_file = tmp_path / "ledger.json"
    gw = procs("gateway", ["prlimit", "--nofile=60"] + gateway_cmd(durable_broker.port, http, tmp_path / "state",
                                                                    site))
    gw.wait_for("gateway reading")
    sim = procs("sim", sim_cmd(durable_broker.port, site, ledger_file, 14, seed=seed))
    sim.wait_for("publishing:")
    assert poll(lambda: (metric(http, "fieldlab_gateway_messages_total") or 0) > 5, 20)
    socks = []
    for _ in range(80):
        try:
            socks.append(socket.create_connection(("127.0.0.1", http), timeout=1))
        except OSError:
            break
    logged = sum(map(len, gw.lines))
    time.sleep(6)
    flood = sum(map(len, gw.lines)) - logged
    for s in socks:
        s.close()
    back = poll(lambda: http_json(f"http://127.0.0.1:{http}/healthz")[0] == 200, 15)
    assert sim.popen.wait(60) == 0, sim.tail()
    ledger = json.loads(ledger_file.read_text())
    kpis = poll(lambda: (lambda k: k if compare(k, ledger)["lost"] == 0 else None)(
        machine_kpis(durable_broker.port, site)), 20) or {}
    result = compare(kpis, ledger)
    report(scenario="file descriptors exhausted (80 idle clients, limit 60)", injected="fd exhaustion", times=1,
           recovery_s=None, log_bytes_6s=flood, **result)
    assert len(socks) > 40  # the limit was really reached
    assert flood < 50_000, f"{flood} bytes of log in 6 s"
    assert back, gw.tail()
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["run_s_error"] < 1e-3, result
