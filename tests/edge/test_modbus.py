"""The Modbus TCP source against a real pymodbus TCP server on a free loopback port.

Values are written into the server's datastore as register words built here with
``struct`` (independent of the source's NumPy decoding), read through
ModbusSource into a real Batcher, drained, and decoded with the contract.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from contract import Kind, decode
from contract.errors import ServiceError
from contract.yamlfile import ConfigError
from edge.batcher import Batcher
from edge.modbus import TYPES, ModbusMappingError, ModbusSource, Register, explain
from fieldlab.broker import free_port

FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
          "float32": "f", "float64": "d"}
UNIT = 1


def words(value, type_: str, word_order: str = "big", byte_order: str = "big") -> list[int]:
    """How a device lays ``value`` out in registers."""
    raw = struct.pack(">" + STRUCT[type_], value)
    w = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        w = w[::-1]
    if byte_order == "little":
        w = [x[::-1] for x in w]
    return [int.from_bytes(x, "big") for x in w]


class Plc:
    """A pymodbus TCP server: 2048 coils and discrete inputs, 400 holding and 100 input registers.

    Holding addresses from 400 up do not exist: reading them gets Modbus exception 2.
    """

    def __init__(self, port: int):
        self.port, self.server, self.requests = port, None, []

    def _trace(self, sending: bool, pdu):
        if not sending:
            self.requests.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    async def start(self) -> Plc:
        bits = [SimData(0, values=[False] * 2048, datatype=DataType.BITS)]
        device = SimDevice(UNIT, simdata=(bits, [SimData(0, values=[False] * 2048, datatype=DataType.BITS)],
                                          [SimData(0, values=[0] * 400, datatype=DataType.REGISTERS)],
                                          [SimData(0, values=[0] * 100, datatype=DataType.REGISTERS)]))
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port), trace_pdu=self._trace)
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        await self.server.shutdown()

    async def set(self, table: str, address: int, values: list) -> None:
        await self.server.async_setValues(UNIT, FC[table], address, list(values))


@pytest.fixture
async def plc():
    p = await Plc(free_port()).start()
    yield p
    await p.stop()


class RecordingBatcher(Batcher):
    """A real Batcher that also remembers the Python type of every role value it was given."""

    def __init__(self):
        super().__init__()
        self.types: set[tuple[str, type]] = set()

    def record(self, role, ts, value):
        self.types.add((role, type(value)))
        super().record(role, ts, value)


def drain(b: Batcher) -> dict:
    out = {k: [] for k in Kind}
    for kind, payload in b.drain():
        out[kind].append(decode(kind, payload))
    return out


async def until(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def polls(src: ModbusSource, n: int) -> None:
    n0 = src.stats["polls"]
    await until(lambda: src.stats["polls"] >= n0 + n)


# one value per type with a different byte in every position, so any mix-up of words or bytes shows
SAMPLES = {"int16": -12345, "uint32": 0x89ABCDEF, "int32": -123456789, "float32": -1234.25,
           "float64": 6.02214076e23, "uint64": 0x0012_3456_789A_BCDE, "int64": -0x0012_3456_789A_BCDE}
ORDERS = [("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")]


async def test_every_type_word_and_byte_order_and_scaling(plc):
    regs, expected, address = [], {}, 0
    for type_, value in SAMPLES.items():
        for wo, bo in ORDERS:
            name = f"{type_}_{wo}_{bo}"
            regs.append(Register(f"value:{name}", address, type=type_, word_order=wo, byte_order=bo))
            await plc.set("holding", address, words(value, type_, wo, bo))
            expected[name] = float(value)
            address += TYPES[type_]
    # engineering value = raw * scale + offset
    regs.append(Register("value:temp", 300, scale=0.1, offset=-20.0, unit="degC"))
    await plc.set("holding", 300, [215])
    expected["temp"] = 1.5
    regs.append(Register("value:pressure", 10, table="input", type="int32", word_order="little", scale=0.5,
                         offset=10.0, unit="bar"))
    await plc.set("input", 10, words(-100, "int32", "little"))
    expected["pressure"] = -40.0

    b = Batcher()
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=10)  # start() polls once
    await src.start(b)
    try:
        tel, = drain(b)[Kind.TELEMETRY]
    finally:
        await src.stop()
    got = {name: float(v[0]) for name, v in tel.signals.items()}
    assert got == pytest.approx(expected, rel=1e-12)
    assert tel.units == {"temp": "degC", "pressure": "bar"}
    assert src.stats["errors"] == 0


async def test_report_by_exception_and_deadband(plc):
    await plc.set("holding", 100, words(70_000, "uint32", "little"))  # good spans two words
    await plc.set("holding", 102, [7, 4, 0])  # reject, state (Execute), reason
    await plc.set("holding", 105, words(2.5, "float32"))  # ideal_cycle_s
    await plc.set("holding", 110, words(200, "int16") + [100])  # temp (x0.1), speed
    regs = [Register("good", 100, type="uint32", word_order="little"), Register("reject", 102),
            Register("state", 103), Register("reason", 104), Register("ideal_cycle_s", 105, type="float32"),
            Register("value:temp", 110, type="int16", scale=0.1, deadband=0.5), Register("value:speed", 111)]
    b = RecordingBatcher()
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=0.03)
    await src.start(b)
    try:
        await polls(src, 5)
        out = drain(b)
        counts, = out[Kind.COUNTS]
        assert (counts.good.tolist(), counts.reject.tolist(), counts.ideal_cycle_s) == ([70_000], [7], 2.5)
        state, = out[Kind.STATE]
        assert (state.state.tolist(), state.reason.tolist()) == ([4], [0])
        tel, = out[Kind.TELEMETRY]
        assert {n: v.tolist() for n, v in tel.signals.items()} == {"temp": [20.0], "speed": [100.0]}
        assert b.types == {("good", int), ("reject", int), ("state", int), ("reason", int),
                           ("ideal_cycle_s", float)}

        await polls(src, 5)
        assert b.drain() == []  # nothing changed, nothing reported

        await plc.set("holding", 100, words(70_001, "uint32", "little"))
        await plc.set("holding", 110, words(203, "int16"))  # 20.3: within the 0.5 deadband
        await polls(src, 5)
        out = drain(b)
        counts, = out[Kind.COUNTS]
        assert (counts.good.tolist(), counts.reject.tolist()) == ([70_001], [7])
        assert out[Kind.TELEMETRY] == [] and out[Kind.STATE] == []

        await plc.set("holding", 110, words(206, "int16"))  # 20.6: 0.6 from the last reported 20.0
        await plc.set("holding", 103, [15, 7])  # Held, reason 7
        await polls(src, 5)
        out = drain(b)
        tel, = out[Kind.TELEMETRY]
        assert {n: v.tolist() for n, v in tel.signals.items()} == {"temp": [pytest.approx(20.6)]}
        state, = out[Kind.STATE]
        assert (state.state.tolist(), state.reason.tolist()) == ([15], [7])
        assert out[Kind.COUNTS] == []
    finally:
        await src.stop()


async def test_coils_and_discrete_inputs_as_bools(plc):
    await plc.set("discrete", 3, [True])
    regs = [Register("value:door_open", 3, table="discrete", type="bool"),
            Register("value:lamp", 5, table="coil", type="bool"),
            Register("value:estop", 9, table="discrete", type="bool")]
    b = Batcher()
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=0.03)
    await src.start(b)
    try:
        tel, = drain(b)[Kind.TELEMETRY]
        assert {n: v.tolist() for n, v in tel.signals.items()} == {"door_open": [1.0], "lamp": [0.0], "estop": [0.0]}
        await plc.set("discrete", 3, [False])
        await plc.set("coil", 5, [True])
        await polls(src, 4)
        tel, = drain(b)[Kind.TELEMETRY]
        assert {n: v.tolist() for n, v in tel.signals.items()} == {"door_open": [0.0], "lamp": [1.0]}
    finally:
        await src.stop()


async def test_one_request_per_block_within_the_spec_limits(plc):
    # holding 0, 8, ..., 128: gaps of 7 are merged, but 0..128 would be 129 registers > 125
    regs = [Register(f"value:h{a}", a) for a in range(0, 129, 8)]
    regs += [Register("value:i10", 10, table="input"), Register("value:i50", 50, table="input", type="float64")]
    # discrete 0, 30, ..., 2010: merged up to the 2000-bit limit
    regs += [Register(f"value:d{a}", a, table="discrete", type="bool") for a in range(0, 2011, 30)]
    for a in range(0, 129, 8):
        await plc.set("holding", a, [a + 1])
    await plc.set("discrete", 2010, [True])
    b = Batcher()
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=10)  # start() polls once
    await src.start(b)
    await src.stop()
    assert sorted(plc.requests) == [(2, 0, 1981), (2, 2010, 1), (3, 0, 121), (3, 128, 1), (4, 10, 1), (4, 50, 4)]
    tel, = drain(b)[Kind.TELEMETRY]
    assert len(tel.signals) == len(regs)
    assert [tel.signals[f"h{a}"][0] for a in range(0, 129, 8)] == [a + 1 for a in range(0, 129, 8)]
    assert (tel.signals["d2010"][0], tel.signals["d1980"][0]) == (1.0, 0.0)


async def test_device_restart_is_survived_and_data_flows_again(plc, caplog):
    caplog.set_level(logging.INFO, logger="fieldlab.edge.modbus")
    await plc.set("holding", 0, [10, 1])
    b = Batcher()
    src = ModbusSource("127.0.0.1", plc.port, [Register("good", 0), Register("reject", 1)],
                       poll_s=0.03, timeout_s=0.3)
    await src.start(b)
    try:
        counts, = drain(b)[Kind.COUNTS]
        assert counts.good.tolist() == [10]

        await plc.stop()  # the PLC reboots
        await until(lambda: src.stats["errors"] >= 3)
        assert not src._task.done()
        await asyncio.sleep(0.3)

        await plc.start()  # back on the same port, its registers cleared; the counters are restored
        await plc.set("holding", 0, [12, 1])
        seen = []

        def good_seen() -> list[int]:
            seen.extend(v for c in drain(b)[Kind.COUNTS] for v in c.good.tolist())
            return seen
        await until(lambda: 12 in good_seen(), timeout=8)
        assert src.stats["reconnects"] >= 1 and src.stats["errors"] >= 1
        await plc.set("holding", 0, [13])
        await until(lambda: 13 in good_seen())
        assert src.stats["last_error"] is None  # recovered: the heartbeat no longer reports the outage
    finally:
        await src.stop()
    warnings = [r for r in caplog.records if r.name == "fieldlab.edge.modbus" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line per outage, not one per poll
    assert f"127.0.0.1:{plc.port}" in warnings[0].getMessage()


async def test_modbus_exception_skips_only_that_block(plc, caplog):
    """At run time (after a good start: the PLC's program changed), a refused block costs only that block."""
    caplog.set_level(logging.INFO, logger="fieldlab.edge.modbus")
    await plc.set("holding", 0, [42])
    await plc.set("input", 5, [43])
    b = Batcher()
    # blocks are read coil, discrete, holding, input: the one after the failing block must still be read
    regs = [Register("value:before", 0), Register("value:missing", 500), Register("value:after", 5, table="input")]
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=0.03)
    src._batcher = b  # as after start(): polls that meet the missing register go on
    assert await src.client.connect()
    try:
        for _ in range(3):
            await src.poll()
        tel, = drain(b)[Kind.TELEMETRY]
        assert {n: v.tolist() for n, v in tel.signals.items()} == {"before": [42.0], "after": [43.0]}
        assert src.stats["errors"] >= 3 and "exception 2" in src.stats["last_error"]
        warnings = [r.getMessage() for r in caplog.records
                    if r.name == "fieldlab.edge.modbus" and r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "Modbus exception 2 (illegal data address) reading holding 500" in warnings[0]
    finally:
        await src.stop()


async def test_a_register_refused_at_start_is_a_mapping_error(plc):
    """Exceptions 1-3 at start: the mapping file is wrong, retrying cannot help (exit 78 via ConfigError)."""
    src = ModbusSource("127.0.0.1", plc.port, [Register("good", 0), Register("reject", 399, type="uint32")])
    with pytest.raises(ModbusMappingError, match=r"refuses registers of the mapping file: Modbus exception 2 "
                                                 r"\(illegal data address\) reading holding 399-400") as e:
        await src.start(Batcher())
    assert isinstance(e.value, ConfigError) and "type: (a uint32 spans 2 registers)" in str(e.value)
    assert not src.client.connected and src._task is None
    await src.stop()


@pytest.fixture
async def gapped():
    """A device whose holding registers are 0-1 and 5-6 only: a request across 2-4 is refused (exception 2)."""
    port = free_port()
    bits = [SimData(0, values=[False] * 8, datatype=DataType.BITS)]
    words_ = [SimData(0, values=[7, 8], datatype=DataType.REGISTERS),
              SimData(5, values=[9, 10], datatype=DataType.REGISTERS)]
    server = ModbusTcpServer(SimDevice(UNIT, simdata=(bits, bits, words_, [SimData(0, values=[0] * 4,
                                                                                   datatype=DataType.REGISTERS)])),
                             address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    yield port
    await server.shutdown()


async def test_tags_merged_across_a_gap_the_device_refuses_are_read_one_by_one(gapped):
    """Neighbouring tags are read with one request, gaps included; a device with holes in its map refuses that.
    Start tries the tags one by one: all there, so the agent runs (reading them separately), and the check agrees."""
    regs = [Register("good", 0), Register("reject", 5)]
    b = Batcher()
    src = ModbusSource("127.0.0.1", gapped, regs, poll_s=10)
    assert len(src.blocks) == 1  # merged: 0-5
    await src.start(b)
    try:
        counts, = drain(b)[Kind.COUNTS]
        assert (counts.good.tolist(), counts.reject.tolist()) == ([7], [9])
        assert len(src.blocks) == 2
    finally:
        await src.stop()
    again = ModbusSource("127.0.0.1", gapped, regs)
    readings = await again.read_all()
    again.client.close()
    assert [(r.raw, r.error) for r in readings] == [(7, None), (9, None)]


async def test_a_missing_tag_among_merged_ones_is_named_alone(gapped):
    regs = [Register("good", 0), Register("reject", 3), Register("state", 5)]
    src = ModbusSource("127.0.0.1", gapped, regs, poll_s=10)
    with pytest.raises(ModbusMappingError) as e:
        await src.start(Batcher())
    assert "reading holding 3: the device has no such register" in str(e.value)
    assert "holding 0" not in str(e.value) and "holding 5" not in str(e.value)
    await src.stop()
    again = ModbusSource("127.0.0.1", gapped, regs)
    readings = await again.read_all()
    again.client.close()
    assert [(r.raw, r.kind) for r in readings] == [(7, None), (None, "config"), (9, None)]


@pytest.mark.parametrize("code, says", [
    (1, "the device has no coil table (FC1)"), (2, "0-based: a manual that counts from 1"),
    (3, "refuses to read this many"), (4, "most often a wrong unit_id (9)"), (10, "no route to unit 9"),
    (11, "most often a wrong unit_id (9)"),
])
def test_exception_codes_say_the_likely_cause(code, says):
    assert says in explain(code, "coil", 3, 3, 9)
    assert "1-based 3xxxx/4xxxx" in explain(2, "holding", 40003, 40004, 1)
    assert "table: input and address: 9" in explain(2, "input", 30010, 30010, 1)
    assert "3xxxx" not in explain(2, "holding", 20000, 20000, 1)


async def test_a_counter_read_with_the_wrong_word_order_is_warned_about_once(plc, caplog):
    """The device sends 2 high word first ([0, 2]); read word-swapped it is 131072: the warning names the key."""
    caplog.set_level(logging.WARNING, logger="fieldlab.edge.modbus")
    await plc.set("holding", 10, [0, 2] + words(21.5, "float32") + words(70_000, "uint32"))
    regs = [Register("good", 10, type="uint32", word_order="little"),
            Register("value:temp", 12, type="float32", word_order="little"),
            Register("value:ok", 14, type="uint32")]  # right order, a large value: no warning
    src = ModbusSource("127.0.0.1", plc.port, regs, poll_s=0.03)
    await src.start(Batcher())
    try:
        await polls(src, 3)
        readings = {r.register.tag: r for r in await src.read_all()}
    finally:
        await src.stop()
    assert set(src.warnings) == {"good", "value:temp"}
    assert "reads 131072, which looks wrong: with word_order: big it would read 2" in src.warnings["good"]
    assert "word_order: big it would read 21.5" in src.warnings["value:temp"]
    assert "Check the tag's word_order key" in src.warnings["good"]
    logged = [r.getMessage() for r in caplog.records if "word_order" in r.getMessage()]
    assert len(logged) == 2  # once each, not once per poll
    assert readings["good"].raw == 131072 and readings["good"].warning == src.warnings["good"]
    assert readings["value:ok"].value == 70_000 and readings["value:ok"].warning is None


async def test_unreachable_device_at_start_is_a_service_error():
    port = free_port()
    src = ModbusSource("127.0.0.1", port, [Register("good", 0)], timeout_s=0.5)
    with pytest.raises(ServiceError, match=f"cannot reach the Modbus device at 127.0.0.1:{port}"):
        await src.start(Batcher())
    await src.stop()


@pytest.mark.parametrize("kwargs, fix", [
    ({"tag": "value:x", "address": 0, "type": "bool"}, "use a numeric type"),
    ({"tag": "value:x", "address": 0, "table": "coil", "type": "uint16"}, "use type 'bool'"),
    ({"tag": "good", "address": 0, "type": "int8"}, "not one of"),
    ({"tag": "good", "address": -1}, "0-based"),
    ({"tag": "value:x", "address": 65535, "type": "float32"}, "beyond 65535"),
    ({"tag": "value:x", "address": 65535, "type": "uint16"}, None),
    ({"tag": "product", "address": 0}, "tag must be one of"),
    ({"tag": "speed", "address": 0}, "'value:<name>'"),
    ({"tag": "value:x", "address": 0, "word_order": "middle"}, "'big' or 'little'"),
    ({"tag": "value:x", "address": 0, "table": "memory"}, "table 'memory'"),
    ({"tag": "value:x", "address": 0, "deadband": -1}, "deadband"),
])
def test_invalid_registers_name_the_tag_and_the_fix(kwargs, fix):
    if fix is None:
        Register(**kwargs)  # the last register of the address space is fine
        return
    with pytest.raises(ValueError, match=f"register '{kwargs['tag']}'.*{fix}"):
        Register(**kwargs)


def test_a_tag_mapped_twice_is_refused():
    with pytest.raises(ValueError, match="'good' is mapped more than once"):
        ModbusSource("127.0.0.1", 502, [Register("good", 0), Register("good", 1)])
