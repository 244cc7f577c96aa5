"""The gateway against a real Mosquitto: KPIs out, bad input parked and counted."""
import asyncio
import json
import logging

import pytest

from contract import (
    DEADLETTER_TOPIC, Kind, MachineRef, encode_counts, encode_state, encode_telemetry, encode_telemetry_binary,
)
from gateway.service import Gateway, default_client_id
from tests.helpers import KeepLines, wait_until

T0 = 1_700_092_800.0  # 2023-11-16T00:00:00Z, midnight of a Thursday as 1970-01-01: the tests' times are after it


async def test_kpis_are_published_retained(mosquitto, site, publisher, recorder):
    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    await gw.start()
    try:
        publisher(ref.topic(Kind.STATE), encode_state([T0, T0 + 300.0], [4, 15]))
        publisher(ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 500.0], [0, 90], [0, 10], "p", 3.0))
        assert await wait_until(lambda: gw.stats["messages"] == 2)
        gw.tick()
    finally:
        await gw.stop()
    # a subscriber that comes later still gets the last KPI (retained)
    rec = recorder(mosquitto.url, ref.topic(Kind.KPI))
    assert rec.wait_for(lambda r: r.json("/kpi"))
    kpi = rec.json("/kpi")[-1]
    assert rec.messages[-1][2] is True
    # 500 s planned (0..300 Execute, 300..500 Held: a breakdown), 100 parts x 3 s ideal
    assert (kpi["good"], kpi["reject"], kpi["run_s"], kpi["planned_s"]) == (90, 10, 300.0, 500.0)
    assert kpi["availability"] == 0.6
    assert kpi["performance"] == 1.0
    assert kpi["quality"] == 0.9
    assert kpi["oee"] == pytest.approx(0.54)
    assert kpi["state_name"] == "Held"
    assert (kpi["failures"], kpi["mtbf_s"], kpi["mttr_s"]) == (1, 300.0, 200.0)
    assert kpi["losses"]["unplanned_stops"] == {"s": 200.0, "pp": 40.0}
    assert kpi["losses"]["production_rejects"]["s"] == 30.0  # 10 rejects x 3 s
    assert kpi["windows"]["last_15min"]["oee"] == pytest.approx(0.54)  # the whole history is 500 s
    assert kpi["windows"]["shift"]["stop_reasons"] == [{"category": "breakdown", "reason": 0, "seconds": 200.0}]


async def test_malformed_payload_is_parked_counted_and_harmless(mosquitto, site, publisher, recorder, caplog):
    ref = MachineRef(site, "a", "l", "m1")
    dead = recorder(mosquitto.url, DEADLETTER_TOPIC)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    await gw.start()
    try:
        caplog.set_level(logging.WARNING, logger="fieldlab.gateway")
        publisher(ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 10.0], [0, 5], [0, 0], "p", 1.0))
        bad = json.dumps({"v": 1, "ts": [T0 + 20.0, T0 + 30.0], "good": [6, -7], "reject": [0, 0]})
        publisher(ref.topic(Kind.COUNTS), bad)
        publisher(ref.topic(Kind.STATE), b"not json at all")
        publisher(f"fieldlab/v1/{site}/a/l/m1/counts", f'{{"v": 1, "ts": [{T0 + 40.0}], "good": [9], "reject": [0]}}')
        assert await wait_until(lambda: gw.stats["messages"] == 2 and gw.stats["dead_letters"] == 2)
        rows = gw.tick()
        assert gw._task is not None and not gw._task.done()  # still running
    finally:
        await gw.stop()
    # the bad batch did not touch the machine: 0 -> 5 -> 9, the -7 never counted
    assert rows[0]["good"] == 9
    assert any("counts.good[1] = -7: counters are whole numbers >= 0" in r.getMessage() for r in caplog.records)
    assert dead.wait_for(lambda r: len(r.json("deadletter")) == 2)
    letters = dead.json("deadletter")
    assert letters[0]["topic"] == ref.topic(Kind.COUNTS)
    assert "counts.good[1] = -7" in letters[0]["error"]
    assert letters[0]["payload"] == bad
    assert "not valid JSON" in letters[1]["error"]


async def test_binary_and_json_telemetry_arrive_alike_and_bad_binary_is_parked_as_base64(
        mosquitto, site, publisher, recorder):
    import base64

    ref = MachineRef(site, "a", "l", "m1")
    dead = recorder(mosquitto.url, DEADLETTER_TOPIC)
    keep = KeepLines()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[keep])
    ts, sig = [T0 + 1.0, T0 + 2.0, T0 + 3.0], {"t": [20.0, float("nan"), 22.0], "p": [1.0, 2.0, 3.0]}
    bad = encode_telemetry_binary(ts, sig)[:-8]  # one value short
    await gw.start()
    try:
        publisher(ref.topic(Kind.TELEMETRY), encode_telemetry(ts, sig, {"t": "degC"}))
        publisher(ref.topic(Kind.TELEMETRY),
                  encode_telemetry_binary([T0 + 4.0, T0 + 5.0], {"t": [23.0, 24.0]}, {"t": "degC"}))
        publisher(ref.topic(Kind.TELEMETRY), bad)
        assert await wait_until(lambda: gw.stats["messages"] == 2 and gw.stats["dead_letters"] == 1)
        assert gw.stats["samples"] == 3 * 2 + 2 * 1
        gw.tick()
    finally:
        await gw.stop()
    telemetry = sorted(x.split(" ", 1)[1] for x in keep.lines if x.startswith("telemetry,"))
    ms = int(T0) * 1000
    assert telemetry == [f"p=1.0,t=20.0 {ms + 1000}", f"p=2.0 {ms + 2000}", f"p=3.0,t=22.0 {ms + 3000}",
                         f"t=23.0 {ms + 4000}", f"t=24.0 {ms + 5000}"]
    assert dead.wait_for(lambda r: len(r.json("deadletter")) == 1)
    letter = dead.json("deadletter")[0]
    assert "its header says" in letter["error"] and "payload" not in letter
    assert base64.b64decode(letter["payload_base64"]) == bad


async def test_unreachable_broker_is_a_clear_error():
    from contract.errors import ServiceError
    from contract.mqtt import BrokerUrl
    from fieldlab.broker import free_port

    gw = Gateway(BrokerUrl("127.0.0.1", free_port()))
    with pytest.raises(ServiceError, match=r"cannot reach the MQTT broker at mqtt://127.0.0.1:\d+: Connection refused"):
        await gw.start()


async def test_messages_sent_while_the_gateway_restarts_are_not_lost(mosquitto, site, publisher, recorder):
    """The broker keeps the gateway's session: what arrives while it is away is handed over when it is back."""
    ref = MachineRef(site, "a", "l", "m1")
    first = Gateway(mosquitto.url, site=site, publish_s=0.1)
    await first.start()
    await first.stop()  # e.g. an update of the gateway; the machines keep producing
    publisher(ref.topic(Kind.STATE), encode_state([T0], [4]))
    publisher(ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 100.0], [0, 40], [0, 2], "p", 2.0))
    second = Gateway(mosquitto.url, site=site, publish_s=0.1)
    assert second.client_id == first.client_id == default_client_id([f"{site}/+/+"], site)
    await second.start()
    try:
        assert await wait_until(lambda: second.stats["messages"] == 2), second.stats
        second.tick()
    finally:
        await second.stop()
    rec = recorder(mosquitto.url, ref.topic(Kind.KPI))
    assert rec.wait_for(lambda r: r.json("/kpi"))
    assert (rec.json("/kpi")[-1]["good"], rec.json("/kpi")[-1]["reject"]) == (40, 2)


def _message(topic: str, payload: bytes):
    """What paho's network thread hands to on_message."""
    from paho.mqtt.client import MQTTMessage

    msg = MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


async def test_ingest_never_waits_for_a_tick_and_what_arrives_during_it_counts_once(mosquitto, site):
    """The tick folds and computes outside the ingest lock: paho's thread goes on taking messages while a
    tick is in the middle of folding; those messages are folded by the next tick, exactly once."""
    import threading

    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(mosquitto.url, site=site, publish_s=3600, client_id=f"gw-{site}")  # ticks only when told
    await gw.start()
    fold, in_fold, release = gw.engine.fold, threading.Event(), threading.Event()

    def held_fold():  # a tick that takes as long as the test wants, while holding the engine
        in_fold.set()
        assert release.wait(10)
        fold()

    try:
        first_counts = encode_counts([T0, T0 + 10.0], [0, 5], [0, 0], "p", 1.0)
        gw._on_message(None, None, _message(ref.topic(Kind.COUNTS), first_counts))
        gw.engine.fold = held_fold
        first: list = []
        ticking = threading.Thread(target=lambda: first.append(gw.tick()))
        ticking.start()
        assert in_fold.wait(5)
        ingested = threading.Event()

        def network_thread():  # as paho's thread would: ten more messages while the tick folds
            for k in range(1, 11):
                t = T0 + 10.0 + 10 * k
                gw._on_message(None, None, _message(ref.topic(Kind.COUNTS),
                                                    encode_counts([t], [5 + 5 * k], [k], "p", 1.0)))
            ingested.set()

        threading.Thread(target=network_thread, daemon=True).start()
        waited = not ingested.wait(5)
        release.set()
        ticking.join(10)
        gw.engine.fold = fold
        assert not waited, "ingest waited for the tick to finish"
        assert gw.stats["messages"] == 11
        assert (first[0][0]["good"], first[0][0]["reject"]) == (5, 0)  # the tick folds what came before it
        rows = gw.tick()  # and the next one what came during it
        assert (rows[0]["good"], rows[0]["reject"]) == (55, 10)
        rows = gw.tick()  # nothing new: nothing counted twice
        assert (rows[0]["good"], rows[0]["reject"]) == (55, 10)
    finally:
        release.set()
        gw.engine.fold = fold
        await gw.stop()


async def test_messages_through_the_broker_during_fast_ticks_are_counted_once(mosquitto, site, publisher):
    """Many messages through Mosquitto while the gateway ticks every 5 ms: the totals are exact."""
    ref = MachineRef(site, "a", "l", "m1")
    gw = Gateway(mosquitto.url, site=site, publish_s=0.005, client_id=f"gw-{site}")
    await gw.start()
    try:
        def publish_all():  # in a thread: the event loop ticks meanwhile
            publisher(ref.topic(Kind.STATE), encode_state([T0], [4]))
            publisher(ref.topic(Kind.COUNTS), encode_counts([T0], [0], [0], "p", 0.25))  # the counters' start
            for k in range(300):
                publisher(ref.topic(Kind.COUNTS), encode_counts([T0 + k + 0.5, T0 + k + 1.0], [2 * k + 1, 2 * k + 2],
                                                                [k, k + 1], "p", 0.25))

        await asyncio.to_thread(publish_all)
        assert await wait_until(lambda: gw.stats["messages"] == 302), gw.stats
        ticks = gw.ticks
        assert await wait_until(lambda: gw.ticks > ticks)  # a tick that began after the last message
        rows = gw.tick()
    finally:
        await gw.stop()
    assert ticks >= 3  # the messages really met several ticks
    assert (rows[0]["good"], rows[0]["reject"], rows[0]["total"]) == (600, 300, 900)
