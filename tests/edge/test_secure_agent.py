"""An edge agent from its mapping file, over TLS with its own username and a password file."""
import asyncio

from contract import Kind, MachineRef, decode
from contract.mqtt import connect
from edge import config as edge_config
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from simulators.feed import MachineFeed
from tests.contract.test_mqtt_security import PASSWORD, USER, pki, secure  # noqa: F401 (fixtures)


async def test_agent_publishes_over_tls_with_its_credentials(secure, tmp_path, site):
    (tmp_path / "mqtt-password").write_text(PASSWORD + "\n")
    (tmp_path / "edge.yaml").write_text(f"""\
machine: {site}/a/l/filler-01
broker:
  url: mqtts://127.0.0.1:{secure.tls_port}
  ca_file: {secure.tls[0]}
  username: {USER}
  password_file: {tmp_path / 'mqtt-password'}
source: {{type: sim, machine: filler-01, speed: 60}}
""")
    cfg = edge_config.load(tmp_path / "edge.yaml", {})
    got = []
    ref = MachineRef(site, "a", "l", "filler-01")
    reader = await asyncio.to_thread(connect, cfg.broker, subscriptions=[(f"fieldlab/v1/{site}/#", 1)],
                                     on_message=lambda c, u, m: got.append((m.topic, m.payload)))
    agent = EdgeAgent(cfg.machine, cfg.broker, MachineFeed("filler-01", speed=60), buffer=tmp_path / "q.db",
                      flush_s=0.1, batcher=Batcher())
    try:
        await agent.start()
        await asyncio.sleep(1.5)
        assert agent.health()["last_error"] is None and agent.health()["acknowledged"] > 0
        await agent.stop()
        for _ in range(50):
            if any(t == ref.topic(Kind.STATUS) and b"offline" in p for t, p in got):
                break
            await asyncio.sleep(0.1)
    finally:
        reader.disconnect()
        reader.loop_stop()
    counts = [decode(Kind.COUNTS, p) for t, p in got if t == ref.topic(Kind.COUNTS)]
    led = agent.source.machine.ledger_now()
    assert counts and (int(counts[-1].good[-1]), int(counts[-1].reject[-1])) == (led.good, led.reject)
    assert [decode(Kind.STATUS, p).status for t, p in got if t == ref.topic(Kind.STATUS)][-1] == "offline"
