"""Two gateways share one broker: each owns the lines of its scope, every machine is computed once."""
import json

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import ContractError, Kind, MachineRef, encode_counts, encode_state, encode_status
from gateway.service import Gateway, parse_scope
from tests.helpers import wait_until

T0 = 1_700_092_800.0  # 2023-11-16T00:00:00Z: a plausible time (contract.TS_MIN..TS_MAX)


async def test_two_gateways_split_the_plant_by_scope(mosquitto, site, recorder):
    machines = [MachineRef(site, hall, line, f"m{i}") for i, (hall, line) in
                enumerate([("hall-1", "l1"), ("hall-1", "l2"), ("hall-2", "l1"), ("hall-2", "l9")])]
    one = Gateway(mosquitto.url, publish_s=3600, scope=[f"{site}/hall-1/+"])
    two = Gateway(mosquitto.url, publish_s=3600, scope=[f"{site}/hall-2/+"])
    assert one.client_id != two.client_id  # both keep a persistent session: they must not share one
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/+/+/+/kpi")
    await one.start()
    await two.start()
    pub = paho.Client(CallbackAPIVersion.VERSION2)
    pub.connect(mosquitto.url.host, mosquitto.url.port)
    pub.loop_start()
    try:
        for k, ref in enumerate(machines):
            pub.publish(ref.topic(Kind.STATE), encode_state([T0], [4]), qos=1).wait_for_publish(5)
            pub.publish(ref.topic(Kind.COUNTS), encode_counts([T0, T0 + 100.0], [0, 10 + k], [0, 0]),
                        qos=1).wait_for_publish(5)
        # then one marker per scope: a gateway has everything meant for it once its marker is in (the broker
        # keeps the order of QoS 1 messages), so nothing can still be on its way when the counts are checked
        for ref in (machines[0], machines[2]):
            pub.publish(ref.topic(Kind.STATUS), encode_status(T0 + 1.0, "online"), qos=1).wait_for_publish(5)

        def marker_in(gw, ref):
            return ref in gw._index and gw.status.get(gw._index[ref]) == "online"
        assert await wait_until(lambda: marker_in(one, machines[0]) and marker_in(two, machines[2])), (
            one.stats, two.stats)
        assert (one.stats["messages"], two.stats["messages"]) == (4 + 1, 4 + 1)
        assert sorted(one.machines) == machines[:2] and sorted(two.machines) == machines[2:]
        one.tick()
        two.tick()
    finally:
        pub.disconnect()
        pub.loop_stop()
        await one.stop()
        await two.stop()
    machine_kpis = lambda r: [(t, p) for t, p, _ in r.messages if t.split("/")[5] != "_line"]  # noqa: E731
    assert rec.wait_for(lambda r: len(machine_kpis(r)) >= 4 * 2)  # one tick each + the final one at stop
    by_machine = {}
    for topic, payload in machine_kpis(rec):
        by_machine.setdefault(topic.split("/")[5], []).append(json.loads(payload)["good"])
    lines = {"/".join(t.split("/")[3:5]) for t, _, _ in rec.messages if "/_line/" in t}
    assert lines == {"hall-1/l1", "hall-1/l2", "hall-2/l1", "hall-2/l9"}  # each line computed by its owner
    assert {m: set(g) for m, g in by_machine.items()} == {"m0": {10}, "m1": {11}, "m2": {12}, "m3": {13}}


def test_scope_patterns_are_checked():
    assert parse_scope(["acme/hall-1/+", "/acme/+/+/"]) == ["acme/hall-1/+", "acme/+/+"]
    with pytest.raises(ContractError, match="write site/area/line"):
        parse_scope(["acme/hall-1"])
    with pytest.raises(ContractError, match="area 'hall 1'"):
        parse_scope(["acme/hall 1/+"])
