"""``fieldlab gateway forget``: a test machine leaves the KPIs, the page and the API, its retained KPI message is
cleared, a restart does not bring it back (not even its old retained status), and it returns afresh when it
sends again. Real Mosquitto, the real gateway, the CLI as a process."""
import asyncio
import os
import subprocess
import sys
import time

from contract import Kind, MachineRef, encode_counts, encode_state, encode_status
from gateway.service import Gateway
from tests.conftest import Recorder
from tests.helpers import wait_until

T0 = 1_800_000_000.0
EXECUTE = 4


def forget(port: int, ref: MachineRef, *more) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fieldlab", "gateway", "forget", ref.path, "--broker",
                           f"mqtt://127.0.0.1:{port}", *more], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_forget_a_machine(mosquitto, site, tmp_path):
    test, real = MachineRef(site, "a", "l", "test-01"), MachineRef(site, "a", "l", "press-01")
    pub = Recorder(mosquitto.url, [test.topic(Kind.KPI), real.topic(Kind.KPI)])
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path)
    await gw.start()
    try:
        for ref, good in ((test, 10), (real, 20)):
            pub.publish(ref.topic(Kind.STATUS), encode_status(time.time() - 60, "online"), retain=True)
            pub.publish(ref.topic(Kind.STATE), encode_state([T0], [EXECUTE]))
            pub.publish(ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 100], [0, good], [0, 0], "p", 1.0))
        assert await wait_until(lambda: {r["machine"] for r in gw.rows} == {test, real} and all(
            r["good"] for r in gw.rows))
        out = await asyncio.to_thread(forget, mosquitto.port, test)
        assert out.returncode == 0 and f"forgot {test.path}" in out.stdout, out
        assert [r["machine"] for r in gw.rows] == [real]
        assert gw.row_of(test) is None and gw.timeline(test) is None
        late = Recorder(mosquitto.url, [test.topic(Kind.KPI)])  # a late subscriber gets no retained KPIs of it
        await asyncio.sleep(0.5)
        late.close()
        assert not [p for _, p, _ in late.messages if p]
        pub.publish(real.topic(Kind.COUNTS), encode_counts([T0 + 200], [30], [0], "p", 1.0))  # the other goes on
        assert await wait_until(lambda: gw.row_of(real) and gw.row_of(real)["good"] == 30)
    finally:
        await gw.stop()
    # a restart: the checkpoint remembers, and the old retained status does not bring it back
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path)
    await gw.start()
    try:
        await asyncio.sleep(0.5)
        assert [r["machine"] for r in gw.rows] == [real]
        # it sends again: back, from a fresh start (its counter's first reading is the new baseline)
        pub.publish(test.topic(Kind.COUNTS), encode_counts([T0 + 300, T0 + 400], [10, 14], [0, 0], "p", 1.0))
        assert await wait_until(lambda: gw.row_of(test) is not None and gw.row_of(test)["good"] == 4)
    finally:
        await gw.stop()
        pub.close()


async def test_forget_says_so_when_no_gateway_answers(mosquitto, site):
    ref = MachineRef(site, "a", "l", "ghost")
    pub = Recorder(mosquitto.url)
    try:
        pub.publish(ref.topic(Kind.KPI), b'{"v":1}', retain=True)  # retained KPIs, but no gateway running
        out = await asyncio.to_thread(forget, mosquitto.port, ref, "--wait", "1")
        assert out.returncode == 1 and "is a gateway running" in out.stdout, out
    finally:
        pub.publish(ref.topic(Kind.KPI), b"", retain=True)
        pub.close()


async def test_a_forget_survives_a_crash_before_the_checkpoint(mosquitto, site, tmp_path):
    """The forget is journaled like data: after a crash the replay forgets the machine again, with the time it
    first arrived (so its old retained status still does not bring it back)."""
    test = MachineRef(site, "a", "l", "test-01")
    pub = Recorder(mosquitto.url)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path,
                 checkpoint_s=3600)
    await gw.start()
    pub.publish(test.topic(Kind.STATUS), encode_status(time.time() - 60, "online"), retain=True)
    pub.publish(test.topic(Kind.COUNTS), encode_counts([T0, T0 + 100], [0, 10], [0, 0], "p", 1.0))
    assert await wait_until(lambda: gw.row_of(test) is not None and gw.row_of(test)["good"] == 10)
    checkpointed = gw.checkpoint_path.exists()
    out = await asyncio.to_thread(forget, mosquitto.port, test)
    assert out.returncode == 0, out
    for task in (gw._task, gw._status_task):  # a crash: no clean stop, no checkpoint after the forget
        task.cancel()
    gw._client.disconnect()
    gw._client.loop_stop()
    gw._release_state()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path)
    await gw.start()
    try:
        await asyncio.sleep(0.5)
        assert gw.row_of(test) is None and gw.rows == [], (checkpointed, gw.rows)
    finally:
        await gw.stop()
        pub.publish(test.topic(Kind.STATUS), b"", retain=True)
        pub.close()
