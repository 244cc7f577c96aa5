"""The agent's heartbeat (retained status with its health) and running it from a mapping file."""
import asyncio
import os
import signal
import subprocess
import sys
import time

from contract import BINARY_MAGIC, Kind, MachineRef, decode
from contract.errors import ServiceError
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from fieldlab.broker import PrivateMosquitto
from simulators.feed import MachineFeed
from tests.helpers import terminate

T0 = 1_700_092_800.0  # 2023-11-16T00:00:00Z: a plausible time (contract.TS_MIN..TS_MAX)

HEALTH = {"agent", "uptime_s", "backlog", "backlog_bytes", "dropped", "sent", "acknowledged", "reconnects", "samples",
          "rejected", "last_error", "source"}


async def test_heartbeat_reports_health_and_reconnects(tmp_path, site, recorder):
    broker = PrivateMosquitto(workdir=tmp_path / "broker", persistence=True)
    (tmp_path / "broker").mkdir()
    try:
        broker.start()
    except ServiceError as e:
        raise AssertionError(str(e)) from None
    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(broker.url, ref.topic(Kind.STATUS))
    agent = EdgeAgent(ref, broker.url, MachineFeed("filler-01", seed=2, speed=60), buffer=tmp_path / "q.db",
                      flush_s=0.1, heartbeat_s=0.3)
    try:
        await agent.start()
        await asyncio.sleep(1.5)
        online = [decode(Kind.STATUS, p) for _, p, _ in rec.messages]
        assert len(online) >= 4 and all(s.status == "online" for s in online)  # birth + heartbeats
        assert set(online[-1].info) == HEALTH
        samples = [s.info["samples"] for s in online]
        assert samples == sorted(samples) and samples[-1] > 0
        last = online[-1].info
        assert (last["dropped"], last["reconnects"], last["last_error"], last["rejected"]) == (0, 0, None, 0)
        assert last["acknowledged"] > 0 and last["source"]["events"] > 0

        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.0)
        assert agent.health()["backlog"] > 0  # kept on disk meanwhile
        await asyncio.to_thread(broker.start)
        rec.messages.clear()
        assert await asyncio.to_thread(rec.wait_for, lambda r: any(
            decode(Kind.STATUS, p).info.get("reconnects") == 1 for _, p, _ in r.messages), 15)
    finally:
        await agent.stop()
        broker.stop()


async def test_state_codes_outside_the_model_are_counted_not_sent(tmp_path, mosquitto, site, recorder):
    """A mapping file that misses a vendor code: the bad value is counted in the heartbeat, nothing breaks."""
    class Source:
        stats = {}

        async def start(self, batcher):
            for ts, state in ((T0 + 1.0, 1), (T0 + 2.0, 2), (T0 + 3.0, 9)):  # vendor codes; 9 is not in the map
                batcher.record("state", ts, state)

        async def stop(self):
            pass

    ref = MachineRef(site, "a", "l", "m")
    rec = recorder(mosquitto.url, ref.topic(Kind.STATE))
    agent = EdgeAgent(ref, mosquitto.url, Source(), buffer=tmp_path / "q.db", flush_s=0.1,
                      batcher=Batcher("packml", {1: 4, 2: 15}))
    await agent.start()
    await agent.stop()
    assert rec.wait_for(lambda r: r.messages)
    states = [(float(t), int(s)) for _, p, _ in rec.messages for b in [decode(Kind.STATE, p)]
              for t, s in zip(b.ts, b.state)]
    assert states == [(T0 + 1.0, 4), (T0 + 2.0, 15)]
    assert agent.health()["rejected"] == 1


def test_cli_runs_from_a_mapping_file(tmp_path, mosquitto, site, recorder):
    path = tmp_path / "edge.yaml"
    path.write_text(f"""\
machine: {site}/a/l/cnc-01
broker:
  url: mqtt://127.0.0.1:{mosquitto.port}
buffer:
  path: {tmp_path / 'outbox.db'}
publish:
  flush: 100ms
  heartbeat: 1s
  encoding: binary
source:
  type: sim
  machine: cnc-01
  speed: 120
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    check = subprocess.run([sys.executable, "-m", "fieldlab", "edge", "--config", str(path), "--check"],
                           capture_output=True, text=True, env=env, timeout=30)
    assert check.returncode == 0, check.stderr
    assert f"{path}: OK" in check.stdout and f"{site}/a/l/cnc-01" in check.stdout
    assert "telemetry as binary" in check.stdout

    ref = MachineRef(site, "a", "l", "cnc-01")
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "edge", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert rec.wait_for(lambda r: any(t == ref.topic(Kind.COUNTS) for t, _, _ in r.messages), 20)
        assert rec.wait_for(lambda r: any(t == ref.topic(Kind.TELEMETRY) for t, _, _ in r.messages), 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        terminate(proc)
    assert rec.wait_for(lambda r: r.json("/status") and r.json("/status")[-1]["status"] == "offline")
    # publish.encoding: binary reached the Batcher: telemetry is binary and decodes per the contract
    tel = [p for t, p, _ in rec.messages if t == ref.topic(Kind.TELEMETRY)]
    assert all(p[:4] == BINARY_MAGIC for p in tel)
    assert all({"temperature", "power"} <= set(decode(Kind.TELEMETRY, p).signals) for p in tel)
    assert (tmp_path / "outbox.db").exists()


def test_cli_reports_a_bad_mapping_file_with_line_and_key(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("machine: a/b/c/d\nbroker: {url: mqtt://x}\nsource:\n  type: modbus\n  host: 10.0.0.9\n"
                    "  port: 99999\ntags: []\n")
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "fieldlab", "edge", "--config", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 78  # EX_CONFIG: the systemd unit does not restart on it
    assert r.stderr.strip() == (f"fieldlab edge: error: {path}:6: source.port: 99999: write a whole number "
                                "from 1 to 65535")
    assert time.monotonic() - started < 20


class Firehose:
    """A source producing far more than the outbox may keep: 200 values every 10 ms."""

    def __init__(self):
        self.stats, self._task, self.t = {}, None, 1_800_000_000.0

    async def start(self, batcher):
        async def run():
            while True:
                for _ in range(20):
                    self.t += 0.01
                    for k in range(10):
                        batcher.value(self.t, f"v{k}", k + self.t % 1)
                await asyncio.sleep(0.01)
        self._task = asyncio.create_task(run())

    async def stop(self):
        self._task.cancel()


async def test_full_outbox_drops_the_oldest_counts_them_and_stays_up(tmp_path, site, recorder):
    from fieldlab.broker import free_port

    port = free_port()  # nobody listens yet: the Wi-Fi is down
    broker = PrivateMosquitto(workdir=tmp_path / "broker", port=port)
    (tmp_path / "broker").mkdir()
    ref = MachineRef(site, "a", "l", "m")
    bound = 2**20
    agent = EdgeAgent(ref, broker.url, Firehose(), buffer=tmp_path / "q.db", flush_s=0.05,
                      max_buffer_bytes=bound, wait_for_broker=False, heartbeat_s=0.5)
    await agent.start()
    try:
        for _ in range(150):
            await asyncio.sleep(0.1)
            if agent.health()["dropped"] > 50:
                break
        health = agent.health()
        assert health["dropped"] > 50 and health["backlog_bytes"] <= bound
        assert all(not t.done() for t in agent._tasks), "the agent's loops must keep running"
        files = [tmp_path / n for n in ("q.db", "q.db-wal")]
        assert sum(f.stat().st_size for f in files if f.exists()) < 1.5 * bound + 1.5 * 2**20
        oldest_kept = agent.queue.peek(0, 1)[0][0]
        assert oldest_kept > health["dropped"]  # rows 1..dropped are the ones that went
        broker.start()  # the Wi-Fi is back: what is kept is delivered, the heartbeat says what was lost
        rec = recorder(broker.url, ref.topic(Kind.STATUS))
        assert await asyncio.to_thread(rec.wait_for, lambda r: any(
            decode(Kind.STATUS, p).info.get("dropped", 0) >= health["dropped"] for _, p, _ in r.messages), 15)
    finally:
        await agent.stop(drain_s=2.0)
        broker.stop()
