"""The OPC UA source rebuilds its session by itself (edge/opcua.py ``_watch``), against a real asyncua server.

asyncua 2.1's own restore failed at the second restart of the server (``ConnectionError`` while restoring; it
logged "Failed to restore subscription" and never tried again): the agent received nothing more until it
was restarted by hand. It showed with the agent in a process of its own, as in the field.
"""
import asyncio
import os
import subprocess
import sys

from contract import Kind, MachineRef
from edge.batcher import Batcher
from edge.opcua import OpcUaSource
from tests.helpers import terminate


async def _until(check, within_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_agent_process_gets_data_again_after_each_restart(sim, mosquitto, site, recorder, tmp_path):
    """A PLC rebooted twice: after each reboot the agent's telemetry comes again."""
    server = sim.servers[0]
    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(mosquitto.url, ref.topic(Kind.TELEMETRY))
    edge = subprocess.Popen([sys.executable, "-m", "fieldlab", "edge", "--opcua", server.endpoint, "--object",
                             "filler-01", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site,
                             "--area", "a", "--line", "l", "--buffer", str(tmp_path / "q.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        sim.run()
        assert await _until(lambda: len(rec.messages) > 0, 20), "no data before the first restart"
        for i in range(2):
            await server.restart(down_s=1.0)
            n = len(rec.messages)
            assert await _until(lambda: len(rec.messages) > n, 20), f"no data after restart {i + 1}"
    finally:
        terminate(edge)
        out = edge.stdout.read().decode(errors="replace")
    assert out.count("OPC UA resubscribed") >= 2, out[-3000:]


async def test_a_subscription_the_server_dropped_is_made_again(sim):
    """The connection stays up but the server forgets the subscription: data must flow again (asyncua's
    stale-subscription check usually re-creates it; past ``stale_s`` of silence our watchdog rebuilds)."""
    server = sim.servers[0]
    src = OpcUaSource(server.endpoint, "filler-01", keepalive_s=0.5, stale_s=2.0)
    await src.start(Batcher())
    sim.run()
    try:
        assert await _until(lambda: src.stats["notifications"] > 0, 5)
        service = server.server.iserver.subscription_service
        await service.delete_subscriptions(list(service.subscriptions))
        n = src.stats["notifications"]
        assert await _until(lambda: src.stats["notifications"] > n, 15), f"no data again; stats {src.stats}"
    finally:
        await src.stop()


async def test_stop_does_not_wait_for_a_server_that_is_gone(sim):
    server = sim.servers[0]
    src = OpcUaSource(server.endpoint, "filler-01", keepalive_s=0.5)
    await src.start(Batcher())
    await server._box.stop()
    await asyncio.sleep(1.0)  # the watchdog is now retrying against a closed port
    t0 = asyncio.get_running_loop().time()
    await src.stop()
    assert asyncio.get_running_loop().time() - t0 < 3.0
    await server.restart()  # give the fixture a server to stop
