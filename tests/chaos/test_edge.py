"""The full chain with OPC UA: a simulated machine's OPC UA server, ``fieldlab edge`` reading it (disk outbox),
Mosquitto, the gateway. Faults: the edge agent killed (kill -9) and restarted over the same outbox; the OPC UA
server restarted while the machine runs on; the broker and the edge agent killed together.

Ground truth is the simulator's ledger, less what the machine made before the agent's first counter reading:
``fieldlab sim``'s clock starts before an agent can subscribe, and the gateway counts from a machine's first
reading (gateway/oee.py, counter_increase). ``fieldlab sim`` also publishes straight to MQTT (``--publish``, under
another site that the gateway does not read) only so that it keeps its OPC UA server up for its publishers' 0.3 s
at the end: without that, the server stops at once after the last tick and the agent never sees it.

Tolerances. Parts exactly: counters are cumulative, so a reading the agent never saw costs nothing once a later
one arrives. Run time: a state change that happens while no client is subscribed (agent dead, server down) is not
visible to anyone (docs/architecture.md); the next reading shows only the state the machine is in by then. So the
run-time error may be at most the simulated time nobody saw: ``unseen_s`` (gaps in the agent's samples).
"""
import asyncio
import json
import signal
import sqlite3
import time
import uuid

import numpy as np
import pytest

from contract import Kind, decode
from fieldlab.broker import free_port
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation
from tests.chaos.conftest import (
    FULL, compare, fieldlab, gateway_cmd, http_json, metric, poll, settled_kpis, sim_cmd,
)

MACHINE = "filler-01"  # the third demo machine: a part every 2 s, short stops now and then
SPEED = 60.0
RESTART_S = 30.0  # an OPC UA server's stop and start take 3-7 s here; longer is a hang
GAP_S = 5 * 0.1 * SPEED  # simulated seconds between two samples beyond which time counts as unseen (a tick: 6 s)


def edge_cmd(endpoint: str, broker_port: int, site: str, outbox) -> list[str]:
    return fieldlab("edge", "--opcua", endpoint, "--object", MACHINE, "--broker", f"mqtt://127.0.0.1:{broker_port}",
                    "--site", site, "--area", "a", "--line", "l", "--buffer", str(outbox))


def samples(messages: list, kind: Kind) -> list:
    return [decode(kind, p) for t, p in list(messages) if t.endswith(f"/{MACHINE}/{kind.value}")]


def unseen_s(messages: list, led: dict) -> float:
    """Simulated seconds of the machine's life no client saw: before the first state the agent read (its time
    stamp is the change's), gaps longer than GAP_S between its samples (a kill, an outage), after its last one."""
    first_state = samples(messages, Kind.STATE)[0].ts[0]
    ts = np.unique(np.concatenate([b.ts for b in samples(messages, Kind.TELEMETRY)]))
    gaps = np.diff(ts)
    return float(first_state - led["start"] + gaps[gaps > GAP_S].sum() + max(0.0, led["end"] - ts[-1]))


def seen_ledger(led: dict, messages: list) -> tuple[dict, int]:
    """({MACHINE: the ledger less the parts made before the agent's first counter reading}, those parts)."""
    first = samples(messages, Kind.COUNTS)[0]
    g0, r0 = int(first.good[0]), int(first.reject[0])
    return {MACHINE: {**led, "good": led["good"] - g0, "reject": led["reject"] - r0}}, g0 + r0


def check(report, port: int, site: str, led: dict, messages: list, **row) -> None:
    """Compare the gateway's final KPIs with the ledger, report, and assert the tolerances above."""
    ledger, before = seen_ledger(led, messages)
    kpis = settled_kpis(port, site, ledger)
    result, unseen = compare(kpis, ledger), unseen_s(messages, led)
    report(**row, **result, made_before_first_reading=before, unseen_s=round(unseen, 3))
    assert result["lost"] == 0 and result["duplicated"] == 0, (result, kpis, ledger)
    assert result["run_s_error"] <= unseen + 1e-3, (result, unseen)


def sim_ledger(sim, path, timeout: float) -> dict:
    """The machine's ledger once ``fieldlab sim`` has written it (before it stops its OPC UA server)."""
    def read():
        try:
            return json.loads(path.read_text())[MACHINE]
        except (OSError, ValueError):
            return None
    led = poll(read, timeout)
    assert led, f"fieldlab sim wrote no ledger:\n{sim.tail()}"
    return led


def sim_exited(sim) -> None:
    """``fieldlab sim`` stops by itself after its ledger (--duration): its OPC UA server's stop must not hang."""
    assert poll(lambda: sim.popen.poll() is not None, 15), f"fieldlab sim did not exit after its ledger:\n{sim.tail()}"
    assert sim.popen.returncode == 0, sim.tail()


async def bounded(step, what: str):
    """Await ``step``; fail, naming it, if it takes longer than RESTART_S (a hang in a server's stop or start)."""
    try:
        return await asyncio.wait_for(step, RESTART_S)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} did not finish within {RESTART_S:g} s", pytrace=False)


def outbox_rows(path) -> int:
    """Messages in an edge agent's outbox (read beside the running agent: SQLite in WAL mode)."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def new_samples(messages: list, after: int, n: int = 3):
    """A predicate: ``n`` telemetry messages of the machine arrived after the first ``after`` messages."""
    return lambda: sum(t.endswith(f"/{MACHINE}/telemetry") for t, _ in list(messages)[after:]) >= n


def start_chain(durable_broker, durable_sub, procs, tmp_path, seed, run_s: float):
    """Gateway, a recording subscriber, ``fieldlab sim`` and ``fieldlab edge``: (site, http port, subscriber, sim,
    edge command, edge)."""
    site, http = f"c{uuid.uuid4().hex[:8]}", free_port()
    sub = durable_sub(durable_broker.port, f"fieldlab/v1/{site}/#")
    gw = procs("gateway", gateway_cmd(durable_broker.port, http, tmp_path / "state", site))
    gw.wait_for("gateway reading")
    sim = procs("sim", sim_cmd(durable_broker.port, f"{site}-tap", tmp_path / "ledger.json", run_s, machines=3,
                               speed=SPEED, seed=seed))
    sim.wait_for("publishing:")
    endpoint = next(ln.split(": ", 1)[1].strip() for ln in sim.lines if ln.startswith(f"{MACHINE}: opc.tcp://"))
    cmd = edge_cmd(endpoint, durable_broker.port, site, tmp_path / "outbox.db")
    edge = procs("edge", cmd)
    edge.wait_for("edge agent for")
    assert poll(new_samples(sub.messages, 0), 20), edge.tail()
    return site, http, sub, sim, cmd, edge


def test_killed_edge_agent_loses_no_part(durable_broker, durable_sub, procs, report, tmp_path, seed):
    kills = 5 if FULL else 2
    run_s = 8.0 + kills * 5.0
    site, http, sub, sim, cmd, edge = start_chain(durable_broker, durable_sub, procs, tmp_path, seed, run_s)
    recoveries = []
    for i in range(kills):
        # an observable point: the agent has published data since it (re)started (the subscriber has it)
        n = len(sub.messages)
        assert poll(new_samples(sub.messages, n), 20), edge.tail()
        edge.kill()
        edge = procs(f"edge-{i + 2}", cmd)  # the same outbox
        started, n = time.monotonic(), len(sub.messages)
        assert poll(new_samples(sub.messages, n), 20), f"no data after restart {i + 1}:\n{edge.tail()}"
        recoveries.append(time.monotonic() - started)
    led = sim_ledger(sim, tmp_path / "ledger.json", run_s + 60)
    check(report, durable_broker.port, site, led, sub.messages, scenario="edge agent killed (kill -9), same outbox",
          injected="kill -9", times=kills, recovery_s=round(max(recoveries), 2))
    assert metric(http, "fieldlab_gateway_tick_failures_total") == 0
    sim_exited(sim)


async def test_opcua_server_restarts_lose_no_part(durable_broker, durable_sub, procs, report, tmp_path, seed):
    """``fieldlab sim`` cannot restart its OPC UA server while the simulation goes on, so the machine and its
    server run here, in the test's process (simulators/opcua.py MachineServer.restart, as a PLC reboot); the
    agent, the broker and the gateway are processes as elsewhere. Before each restart a breakdown is injected:
    it starts while the server is down, so no client sees it begin (the documented limit, measured)."""
    restarts = 5 if FULL else 2
    site, http = f"c{uuid.uuid4().hex[:8]}", free_port()
    sub = durable_sub(durable_broker.port, f"fieldlab/v1/{site}/#")
    clock = SimClock(time.time(), SPEED)
    sim = Simulation([Machine(DEMO_MACHINES[2], clock.t0, seed)], clock, base_port=free_port())
    await sim.start()
    server = sim.servers[0]
    try:
        gw = procs("gateway", gateway_cmd(durable_broker.port, http, tmp_path / "state", site))
        await asyncio.to_thread(gw.wait_for, "gateway reading")
        edge = procs("edge", edge_cmd(server.endpoint, durable_broker.port, site, tmp_path / "outbox.db"))
        await asyncio.to_thread(edge.wait_for, "edge agent for")
        sim.run()  # the clock starts once the agent has subscribed: it sees the machine from its first second
        recoveries = []
        for i in range(restarts):
            # an observable point: samples have arrived since the server (re)started
            n = len(sub.messages)
            assert await asyncio.to_thread(poll, new_samples(sub.messages, n), 20), edge.tail()
            sim.inject(MACHINE, "breakdown", minutes=2)  # takes effect at the next tick: the server is down by then
            await bounded(server.restart(down_s=1.0), f"OPC UA server restart {i + 1}")
            started, n = time.monotonic(), len(sub.messages)
            assert await asyncio.to_thread(poll, new_samples(sub.messages, n), 30), f"no data after restart {i + 1}"
            recoveries.append(time.monotonic() - started)
        n = len(sub.messages)
        assert await asyncio.to_thread(poll, new_samples(sub.messages, n, 10), 20)  # production goes on
        await sim.freeze()
        led = sim.ledgers()[MACHINE]
        await asyncio.to_thread(check, report, durable_broker.port, site, led, sub.messages,
                                scenario="OPC UA server restarted (breakdown while down)", injected="server restart",
                                times=restarts, recovery_s=round(max(recoveries), 2))
    finally:
        await bounded(sim.stop(), "stopping the OPC UA server")


def test_broker_and_edge_agent_killed_together(durable_broker, durable_sub, procs, report, tmp_path, seed):
    """Both killed at once; the agent comes back first, while the broker is still down, and keeps what it reads
    on disk (a backlog); then the broker. The broker saved its sessions before (SIGUSR1 writes Mosquitto's
    persistence file, as its ``autosave_interval`` does: 60 s in fieldlab deploy's configuration), so it queues
    the agent's backlog for the gateway even before the gateway has reconnected."""
    kills = 5 if FULL else 2
    run_s = 10.0 + kills * 7.0
    site, http, sub, sim, cmd, edge = start_chain(durable_broker, durable_sub, procs, tmp_path, seed, run_s)
    outbox, saved = tmp_path / "outbox.db", durable_broker.dir / "mosquitto.db"
    recoveries, backlogs = [], []
    for i in range(kills):
        n = len(sub.messages)
        assert poll(new_samples(sub.messages, n), 20), edge.tail()
        mtime = saved.stat().st_mtime_ns if saved.exists() else 0
        durable_broker.proc.send_signal(signal.SIGUSR1)  # Mosquitto: write the persistence file now
        assert poll(lambda: saved.exists() and saved.stat().st_mtime_ns != mtime, 10), "no persistence file"
        durable_broker.kill()
        edge.kill()
        edge = procs(f"edge-{i + 2}", cmd)  # the same outbox, no broker yet
        edge.wait_for("edge agent for")
        backlog = poll(lambda: (lambda n: n if n > 5 else None)(outbox_rows(outbox)), 20)
        assert backlog, f"the agent kept nothing on disk while the broker was down:\n{edge.tail()}"
        backlogs.append(backlog)
        before = metric(http, "fieldlab_gateway_mqtt_connects_total")
        durable_broker.start()
        started, n = time.monotonic(), len(sub.messages)
        assert poll(lambda: (metric(http, "fieldlab_gateway_mqtt_connects_total") or 0) > before
                    and http_json(f"http://127.0.0.1:{http}/healthz")[0] == 200 and new_samples(sub.messages, n)(),
                    30), f"no recovery from double fault {i + 1}:\n{edge.tail()}"
        recoveries.append(time.monotonic() - started)
    led = sim_ledger(sim, tmp_path / "ledger.json", run_s + 60)
    check(report, durable_broker.port, site, led, sub.messages, scenario="broker and edge agent killed together",
          injected="kill -9 both", times=kills, recovery_s=round(max(recoveries), 2), backlog=backlogs)
    sim_exited(sim)
