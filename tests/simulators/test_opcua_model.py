"""The typed OPC UA address space (simulators/uamodel.py), seen from a real asyncua client.

Object types per machine kind derived from one base type, instances of them, engineering units
(EUInformation with UNECE codes) and ranges on AnalogItems, readable string NodeIds, subscriptions
and the fault methods.
"""

import pytest
from asyncua import Client, ua

from fieldlab.broker import free_port
from simulators.machine import DEMO_MACHINES, EXECUTE, HELD, Machine
from simulators.opcua import NAMESPACE, SimClock, Simulation
from tests.helpers import wait_until

T0 = 1_800_000_000.0
CEFACT = "http://www.opcfoundation.org/UA/units/un/cefact"


def code(text: str) -> int:
    """OPC 10000-8 5.6.4.4, written out: C81 (radian) -> 4405297, the spec's own example."""
    n = 0
    for ch in text:
        n = n * 256 + ord(ch)
    return n


assert code("C81") == 4405297

# (browse path below the machine, UNECE code, symbol) for every AnalogItem, per machine
UNITS = {
    "cnc-01": [("IdealCycleTime", "SEC", "s"), ("Process/Temperature", "CEL", "°C"), ("Process/Power", "KWT", "kW"),
               ("Process/Vibration", "C16", "mm/s"), ("SpindleSpeed", "M46", "r/min"), ("SpindleLoad", "P1", "%")],
    "moulder-01": [("Process/Temperature", "CEL", "°C"), ("InjectionPressure", "BAR", "bar")],
    "filler-01": [("FillVolume", "MLT", "ml")],
    "assembly-01": [("ScrewTorque", "NU", "N·m")],
}
TYPES = {"cnc-01": "CncMachineType", "moulder-01": "InjectionMouldingMachineType",
         "filler-01": "FillingMachineType", "assembly-01": "AssemblyStationType"}


@pytest.fixture
async def sim():
    clock = SimClock(T0, speed=600.0)
    s = Simulation([Machine(spec, T0, seed=3 + i) for i, spec in enumerate(DEMO_MACHINES)], clock,
                   base_port=free_port(count=4), tick_s=0.05, typed=True)
    await s.start()
    yield s
    await s.stop()


async def child(node, idx, path):
    return await node.get_child([f"{idx}:{p}" for p in path.split("/")])


async def test_types_instances_units_and_string_nodeids(sim):
    for server in sim.servers:
        name = server.machine.spec.name
        async with Client(server.endpoint) as c:
            idx = await c.get_namespace_index(NAMESPACE)
            # the types: one base type below BaseObjectType, one subtype per kind below it
            base = c.get_node(ua.ObjectIds.BaseObjectType)
            subtypes = {(await n.read_browse_name()).to_string(): n
                        for n in await base.get_children(refs=ua.ObjectIds.HasSubtype)}
            mtype = subtypes[f"{idx}:FieldlabMachineType"]
            kinds = {(await n.read_browse_name()).Name for n in await mtype.get_children(refs=ua.ObjectIds.HasSubtype)}
            assert kinds == set(TYPES.values())
            # the instance is of its kind's type and has the base type's members and its own
            obj = await c.nodes.objects.get_child(f"{idx}:{name}")
            assert obj.nodeid == ua.NodeId(name, idx)
            tdef = c.get_node(await obj.read_type_definition())
            assert (await tdef.read_browse_name()).Name == TYPES[name]
            members = {(await n.read_browse_name()).Name for n in await obj.get_children()}
            assert {"State", "StateReason", "GoodCount", "RejectCount", "Product", "IdealCycleTime", "Process",
                    "InjectBreakdown", "Reset"} <= members
            # engineering units: EUInformation with the UNECE code, on AnalogItemType variables
            for path, unece, symbol in UNITS[name]:
                var = await child(obj, idx, path)
                assert await var.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType), path
                assert await var.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
                eu = await (await var.get_child("0:EngineeringUnits")).read_value()
                assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (CEFACT, code(unece), symbol), path
            # ranges where they mean something, the temperature's from the machine's own setpoint
            temp = await child(obj, idx, "Process/Temperature")
            rng = await (await temp.get_child("0:EURange")).read_value()
            spec = server.machine.spec
            assert rng.Low == 0.0 and max(spec.temp_setpoint_c, spec.idle_temp_c) < rng.High <= 2 * spec.temp_setpoint_c + 50
            assert rng.Low <= await temp.read_value() <= rng.High
            # no numeric NodeIds in our namespace: every node of the instance is named by its path
            todo, seen = [obj], 0
            while todo:
                n = todo.pop()
                for ch in await n.get_children():
                    if ch.nodeid.NamespaceIndex == idx:
                        assert ch.nodeid.NodeIdType == ua.NodeIdType.String, ch.nodeid
                        assert ch.nodeid.Identifier.startswith(f"{name}."), ch.nodeid
                        seen += 1
                        todo.append(ch)
            assert seen > 20


async def test_subscribe_and_call_a_fault_method(sim):
    server = sim.servers[0]  # cnc-01
    m = server.machine
    async with Client(server.endpoint) as c:
        idx = await c.get_namespace_index(NAMESPACE)
        obj = await c.nodes.objects.get_child(f"{idx}:cnc-01")
        names = ["State", "GoodCount", "Process/Temperature", "SpindleSpeed"]
        nodes = [await child(obj, idx, p) for p in names]
        seen: dict[str, list] = {p: [] for p in names}
        by_id = {n.nodeid: p for n, p in zip(nodes, names)}

        class Handler:
            def datachange_notification(self, node, val, data):
                seen[by_id[node.nodeid]].append(val)

        sub = await c.create_subscription(50, Handler())
        await sub.subscribe_data_change(nodes, queuesize=10_000)
        sim.run()
        assert await wait_until(lambda: m.good >= 3)
        # a fault from the client, by the instance's method
        result = await obj.call_method(f"{idx}:InjectBreakdown", ua.Variant(10.0, ua.VariantType.Double))
        assert "cnc-01: breakdown (minutes 10)" in result
        assert await wait_until(lambda: any(s[3] == 101 and s[4] is not None for s in m.ledger.stops))
        with pytest.raises(ua.UaStatusCodeError):  # a bad argument is refused, not applied
            await obj.call_method(f"{idx}:InjectBreakdown", ua.Variant(-1.0, ua.VariantType.Double))
        # the method declared on the type is not a machine: it refuses
        mtype = c.get_node(ua.NodeId("FieldlabMachineType", idx))
        with pytest.raises(ua.UaStatusCodeError):
            await mtype.call_method(f"{idx}:Reset")
        await sim.freeze()
        assert await wait_until(lambda: seen["GoodCount"] and seen["GoodCount"][-1] == m.good)  # the last publish
        await sub.delete()
    assert len(m.ledger.faults) == 1 and m.ledger.faults[0]["applied"] is not None
    assert seen["GoodCount"][-1] == m.good and m.good >= 3
    assert HELD in seen["State"] and EXECUTE in seen["State"]
    assert len(seen["Process/Temperature"]) > 3
    assert max(seen["SpindleSpeed"]) > 7000 and 0.0 in seen["SpindleSpeed"]  # turning, then stopped (Held)


async def test_one_shared_server_serves_every_machine_with_its_own_methods():
    """Simulation(shared=True), as `fieldlab sim --one-server`: one endpoint, every machine an instance below
    Objects, the types once; a method acts on its own machine only; the edge agent's default browse paths
    (Objects/<machine>/...) read each machine's values."""
    from edge.opcua import OpcUaSource

    clock = SimClock(T0, speed=600.0)
    machines = [Machine(spec, T0, seed=3 + i) for i, spec in enumerate(DEMO_MACHINES[:3])]
    sim = Simulation(machines, clock, base_port=free_port(), tick_s=0.05, typed=True, shared=True)
    await sim.start()
    try:
        assert len(set(sim.endpoints.values())) == 1
        endpoint = next(iter(sim.endpoints.values()))
        async with Client(endpoint) as c:
            idx = await c.get_namespace_index(NAMESPACE)
            for m in machines:
                obj = await c.nodes.objects.get_child(f"{idx}:{m.spec.name}")
                tdef = c.get_node(await obj.read_type_definition())
                assert (await tdef.read_browse_name()).Name == TYPES[m.spec.name]
            base = c.get_node(ua.NodeId("FieldlabMachineType", idx))
            assert len(await base.get_children(refs=ua.ObjectIds.HasSubtype)) == 4
            sim.run()
            moulder = await c.nodes.objects.get_child(f"{idx}:moulder-01")
            await moulder.call_method(f"{idx}:InjectBreakdown", ua.Variant(10.0, ua.VariantType.Double))
        # the edge agent's source, as fieldlab demo configures it, on the shared endpoint
        seen: dict[str, list] = {}

        class Batcher:
            units: dict = {}

            def record(self, role, t, value):
                seen.setdefault(role, []).append(value)

            def value(self, t, name, value):
                seen.setdefault(name, []).append(value)

        source = OpcUaSource(endpoint, "filler-01")
        await source.start(Batcher())
        assert await wait_until(lambda: seen.get("good") and seen["good"][-1] >= 20, timeout=30)
        await source.stop()
        await sim.freeze()
    finally:
        await sim.stop()
    led = sim.ledgers()
    assert [f["fault"] for f in led["moulder-01"]["faults"]] == ["breakdown"]
    assert led["cnc-01"]["faults"] == [] and led["filler-01"]["faults"] == []
    assert seen["product"][0] == "bottle-1l" and max(seen["good"]) <= led["filler-01"]["good"]


async def test_stopping_never_waits_for_ever():
    """asyncua 2.1 waits, when it stops, until every client connection is gone; an edge agent that reconnects
    in between kept that wait going for good (chaos suite: 1 stop in 38, and `fieldlab sim` never exited). Here
    asyncua's own stop is made to hang: ours returns anyway, and the port is free again."""
    import asyncio
    import time

    from fieldlab.broker import listening
    from simulators.opcua import SharedServer

    port = free_port()
    box = SharedServer("127.0.0.1", port, typed=False)
    await box.init("hang")
    await box.start()
    real = box.server.bserver.stop

    async def hangs():  # closes the listener, then waits as if a connection never went
        await real()
        await asyncio.Event().wait()

    box.server.bserver.stop = hangs
    started = time.monotonic()
    await asyncio.wait_for(box.stop(grace_s=0.5), 10)
    assert time.monotonic() - started < 3
    assert not listening(port)
