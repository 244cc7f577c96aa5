"""The Modbus TCP view of a simulated machine, read by a real pymodbus client over loopback.

Registers are decoded here by hand from the documented table (docs/simulators.md), not with the
server's encoder, so a wrong word order, scale or sign shows up.
"""
import asyncio
import errno
import os
import socket
import struct
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from contract.errors import ServiceError
from fieldlab.broker import free_port
from simulators.machine import DEMO_MACHINES, EXECUTE, HELD, REASON_BREAKDOWN, Machine
from simulators.modbus import REGISTER_MAP, ModbusMachineServer
from simulators.opcua import SimClock, Simulation

T0 = 1_000_000.0
HOST = "127.0.0.1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "simulators.md"


def decode(w: list[int]) -> dict:
    i16 = struct.unpack(">h", struct.pack(">H", w[6]))[0]
    return {"state": w[0], "reason": w[1], "good": w[2] << 16 | w[3], "reject": w[4] << 16 | w[5],
            "temperature": i16 / 10, "power": w[7] / 100, "vibration": w[8] / 100,
            "ideal_cycle_time": w[9] / 10,
            "temperature_f32": struct.unpack(">f", struct.pack(">HH", w[10], w[11]))[0]}


async def connect(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=2, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def read(client, table: str = "input") -> list[int]:
    fn = client.read_input_registers if table == "input" else client.read_holding_registers
    rr = await fn(0, count=12, device_id=1)
    assert not rr.isError(), rr
    return list(rr.registers)


def held_machine() -> Machine:
    """The moulder, run until it stands in a breakdown (state and reason both non-zero)."""
    m = Machine(DEMO_MACHINES[1], T0, seed=7)
    t = T0
    while (m.state, m.reason) != (HELD, REASON_BREAKDOWN):
        t += 30
        m.advance(t)
    assert m.good > 0
    return m


@pytest.fixture
async def served():
    m = held_machine()
    server = ModbusMachineServer(m, HOST, free_port())
    await server.start()
    yield m, server
    await server.stop()


def test_register_map_is_the_documented_table():
    assert [tuple(r[:4]) for r in REGISTER_MAP] == [
        (0, "state", "uint16", 1), (1, "reason", "uint16", 1), (2, "good", "uint32", 1),
        (4, "reject", "uint32", 1), (6, "temperature", "int16", 0.1), (7, "power", "uint16", 0.01),
        (8, "vibration", "uint16", 0.01), (9, "ideal_cycle_time", "uint16", 0.1),
        (10, "temperature", "float32", 1)]
    doc = DOCS.read_text()
    for r in REGISTER_MAP:
        addr = str(r.address) if r.type in ("uint16", "int16") else f"{r.address}-{r.address + 1}"
        assert f"| {addr} | {r.name} | {r.type} |" in doc, r


async def test_every_register_is_the_machines_current_value(served):
    m, server = served
    pv = {"temperature": 231.37, "power": 2.718, "vibration": 0.234}
    server.refresh(pv)
    client = await connect(server.port)
    try:
        words = await read(client, "input")
        assert await read(client, "holding") == words  # FC3 and FC4 serve the same registers
        v = decode(words)
        assert (v["state"], v["reason"]) == (m.state, m.reason) == (HELD, REASON_BREAKDOWN)
        assert (v["good"], v["reject"]) == (m.good, m.reject)
        assert v["temperature"] == pytest.approx(231.4)
        assert v["power"] == pytest.approx(2.72) and v["vibration"] == pytest.approx(0.23)
        assert v["ideal_cycle_time"] == pytest.approx(m.spec.ideal_cycle_s)
        assert v["temperature_f32"] == pytest.approx(231.37, rel=1e-6)
        # the machine runs on: the next refresh shows its new state and counts
        t = m.clock
        while m.state != EXECUTE or m.good == v["good"]:
            t += 30
            m.advance(t)
        server.refresh({})
        v2 = decode(await read(client, "holding"))
        assert (v2["state"], v2["reason"], v2["good"], v2["reject"]) == (m.state, m.reason, m.good, m.reject)
        assert v2["power"] == v["power"]  # a process value not given keeps its last value
        # writes are ignored: the next read serves the simulator's values again
        before = await read(client, "holding")
        assert not (await client.write_register(0, 99, device_id=1)).isError()
        assert not (await client.write_registers(2, [1, 2, 3], device_id=1)).isError()
        assert await read(client, "holding") == await read(client, "input") == before
    finally:
        client.close()


async def test_counters_above_65535_use_two_words_high_first(served):
    m, server = served
    m.good, m.reject = 100_000, 2**32 + 7  # the reject counter wrapped
    server.refresh({})
    client = await connect(server.port)
    try:
        words = await read(client)
    finally:
        client.close()
    assert words[2:4] == [0x0001, 0x86A0]  # the worked example in docs/simulators.md
    assert words[4:6] == [0, 7]


@pytest.mark.parametrize("pv, expect", [
    ({"temperature": -12.34, "power": 0.0, "vibration": 0.0}, {"temperature": -12.3, "power": 0, "vibration": 0}),
    ({"temperature": 4000.0, "power": 700.0, "vibration": 1000.0},
     {"temperature": 3276.7, "power": 655.35, "vibration": 655.35}),  # clamped at the top
    ({"temperature": -4000.0, "power": -3.0, "vibration": -0.5},
     {"temperature": -3276.8, "power": 0, "vibration": 0}),  # clamped at the bottom
])
async def test_signed_temperature_and_clamping(served, pv, expect):
    _, server = served
    server.refresh(pv)
    client = await connect(server.port)
    try:
        v = decode(await read(client))
    finally:
        client.close()
    for k, want in expect.items():
        assert v[k] == pytest.approx(want), k
    assert v["temperature_f32"] == pytest.approx(pv["temperature"], rel=1e-6)  # the float is not clamped


async def test_two_clients_at_once_and_clients_coming_and_going(served):
    m, server = served
    a, b = await connect(server.port), await connect(server.port)
    try:
        for good in (10, 70_000, 123_456):
            m.good = good
            server.refresh({})
            wa, wb = await asyncio.gather(read(a), read(b, "holding"))
            assert decode(wa)["good"] == decode(wb)["good"] == good
        # one leaves; the other goes on, and a newcomer is served
        a.close()
        with socket.create_connection((HOST, server.port)) as raw:  # a client that dies mid-request
            raw.sendall(b"\x00\x01\x00\x00\x00\x06")
        m.good = 5
        server.refresh({})
        assert decode(await read(b))["good"] == 5
        a = await connect(server.port)  # it comes back
        assert decode(await read(a))["good"] == 5
    finally:
        a.close()
        b.close()


async def test_stop_closes_clients_and_frees_the_port(served):
    _, server = served
    client = await connect(server.port)
    await server.stop()
    for _ in range(50):
        if not client.connected:
            break
        await asyncio.sleep(0.01)
    assert not client.connected  # the server hung up
    client.close()
    await server.start()  # the same port again, at once
    client = await connect(server.port)
    try:
        assert len(await read(client)) == 12
    finally:
        client.close()


async def test_port_taken_is_a_one_line_service_error(served):
    _, server = served
    other = ModbusMachineServer(server.machine, HOST, server.port)
    why = os.strerror(errno.EADDRINUSE)  # the reason is named, not only guessed
    with pytest.raises(ServiceError, match=rf"{server.port}: {why} .*--modbus-port"):
        await other.start()
    await other.stop()  # harmless after a failed start


async def test_simulation_serves_modbus_and_counts_equal_the_ledger():
    ports = free_port(count=4)  # OPC UA on the first two, Modbus on the next two
    machines = [Machine(spec, T0, seed=3) for spec in DEMO_MACHINES[1:3]]  # moulder, filler
    sim = Simulation(machines, SimClock(T0, 60.0), HOST, base_port=ports, tick_s=0.05, modbus_base_port=ports + 2)
    assert sim.modbus_endpoints == {"moulder-01": f"{HOST}:{ports + 2}", "filler-01": f"{HOST}:{ports + 3}"}
    await sim.start()
    clients = {}
    try:
        clients = {m.spec.name: await connect(ports + 2 + i) for i, m in enumerate(machines)}
        first = decode(await read(clients["filler-01"]))
        assert (first["good"], first["reject"]) == (0, 0)
        assert first["temperature_f32"] == pytest.approx(sim.servers[1].last_pv["temperature"], rel=1e-6)
        sim.run()
        await asyncio.sleep(2.0)  # two simulated minutes
        live = decode(await read(clients["filler-01"]))
        assert live["good"] > 0  # the view follows the running machine
        await sim.freeze()
        ledgers = sim.ledgers()
        for i, m in enumerate(machines):
            v = decode(await read(clients[m.spec.name], "holding"))
            led = ledgers[m.spec.name]
            assert (v["good"], v["reject"]) == (led["good"], led["reject"]), m.spec.name
            assert v["state"] == m.state
            assert v["ideal_cycle_time"] == pytest.approx(m.spec.ideal_cycle_s)
            assert v["temperature_f32"] == pytest.approx(m.temperature, abs=2e-3)  # this tick's, not the first
        assert ledgers["filler-01"]["good"] >= live["good"] > 0
    finally:
        for c in clients.values():
            c.close()
        await sim.stop()
    for p in range(ports, ports + 4):  # stop() closed every server
        with socket.socket() as s:
            s.bind((HOST, p))


@pytest.mark.parametrize("taken", ["modbus of the second machine", "opcua of the first machine"])
async def test_simulation_start_failure_stops_what_it_started(taken):
    ports = free_port(count=4)  # OPC UA ports, ports + 1; Modbus ports + 2, ports + 3
    n = 2 if taken.endswith("second machine") else 1
    blocked = ports + 3 if taken.startswith("modbus") else ports
    machines = [Machine(spec, T0, seed=1) for spec in DEMO_MACHINES[:n]]
    with socket.socket() as blocker:
        blocker.bind((HOST, blocked))
        blocker.listen()
        sim = Simulation(machines, SimClock(T0, 1.0), HOST, base_port=ports, modbus_base_port=ports + 2)
        with pytest.raises(ServiceError, match=str(blocked)):
            await sim.start()
    for p in (ports, ports + 1, ports + 2, ports + 3):  # everything it had started is closed again
        with socket.socket() as s:
            s.bind((HOST, p))


def test_no_modbus_unless_asked():
    sim = Simulation([Machine(DEMO_MACHINES[0], T0, 1)], SimClock(T0, 1.0), HOST, base_port=free_port())
    assert sim.modbus_servers == [] and sim.modbus_endpoints == {}
