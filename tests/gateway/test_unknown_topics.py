"""Messages on topics the gateway receives but does not understand: counted on /metrics, logged once, never
dead-lettered (docs/contract.md, Dead letters). Real Mosquitto; the topics arrive through an old subscription kept
in the gateway's persistent session, as after a change of its scope. And a bad message that is waiting when the
gateway connects."""
import asyncio
import logging
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from contract import DEADLETTER_TOPIC, Kind, MachineRef, encode_counts
from gateway.http import render_metrics
from gateway.service import Gateway
from tests.helpers import wait_until

T0 = 1_700_092_800.0


def _old_session(url, client_id: str, topics: list[str]) -> None:
    """Subscribe ``topics`` in a persistent session of ``client_id`` and leave: the broker keeps them for it."""
    done = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
    c.on_subscribe = lambda *a: done.set()
    c.connect(url.host, url.port)
    c.loop_start()
    assert done.wait(5), "no SUBACK"
    c.disconnect()
    c.loop_stop()


async def test_unknown_topics_are_counted_and_logged_once_not_dead_lettered(mosquitto, site, publisher, caplog):
    client_id = f"gw-{site}"
    _old_session(mosquitto.url, client_id, [f"plant/{site}/#", f"fieldlab/v1/{site}/x/#", DEADLETTER_TOPIC])
    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=client_id)
    caplog.set_level(logging.WARNING, logger="fieldlab.gateway")
    await gw.start()
    try:
        publisher(f"plant/{site}/press-01/counts", b'{"good": 5}')  # outside fieldlab/v1/
        publisher(f"fieldlab/v1/{site}/x/l/m1/temperature", b"21.5")  # no such kind
        publisher(ref.topic(Kind.COUNTS), encode_counts([T0], [0], [0]))  # accepted
        publisher(ref.topic(Kind.COUNTS), b'{"v": 1}')  # a dead letter, which comes back on _sys/deadletter
        assert await wait_until(lambda: gw.stats["unknown_topics"] == 3 and gw.stats["dead_letters"] == 1), gw.stats
        await asyncio.sleep(0.5)  # the dead letter it heard again was not dead-lettered in turn: no loop
        assert (gw.stats["unknown_topics"], gw.stats["dead_letters"], gw.stats["messages"]) == (3, 1, 1)
        assert "fieldlab_gateway_unknown_topics_total 3\n" in render_metrics(gw)
    finally:
        await gw.stop()
    logged = [r.getMessage() for r in caplog.records if "does not understand" in r.getMessage()]
    assert len(logged) == 1, logged  # at most once a minute
    assert f'topic="plant/{site}/press-01/counts" unknown_topics=1' in logged[0]
    assert gw.machines == [ref]  # nothing of them became a machine


async def test_a_bad_message_waiting_at_connect_is_dead_lettered_and_ingest_goes_on(mosquitto, site, recorder):
    """A message queued in the gateway's session while it was away arrives while it connects, before its client is
    set: the dead letter goes out through the client that received it, and paho's thread lives on."""
    ref = MachineRef(site, "a", "l", "m1")
    dead = recorder(mosquitto.url, DEADLETTER_TOPIC)
    first = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    await first.start()
    await first.stop()
    dead.publish(ref.topic(Kind.COUNTS), b'{"v": 1, "ts": [1765432100123], "good": [1], "reject": [0]}')
    second = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    try:
        await second.start()
        dead.publish(ref.topic(Kind.COUNTS), encode_counts([T0], [0], [0]))
        assert await wait_until(lambda: second.stats["messages"] == 1), second.stats
    finally:
        await second.stop()
    assert second.stats["dead_letters"] == 1
    assert dead.wait_for(lambda r: r.got(DEADLETTER_TOPIC))
    assert "is milliseconds since 1970" in dead.got(DEADLETTER_TOPIC)[0]["error"]
