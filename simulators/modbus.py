"""Serve a simulated machine over Modbus TCP (pymodbus), as many older machines only talk Modbus.

One server per machine, unit (device) id 1. The same twelve registers answer as input registers
(FC4) and as holding registers (FC3); see ``REGISTER_MAP`` and docs/simulators.md. Read-only:
a client's write is accepted but every read serves the simulator's latest values, so it has no
effect. Modbus has no timestamps: a client sees the latest values when it polls.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
from collections.abc import Mapping
from typing import NamedTuple, NoReturn

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from contract.errors import ServiceError

from .machine import Machine

log = logging.getLogger("fieldlab.sim")

UNIT_ID = 1


class Register(NamedTuple):
    address: int  # 0-based protocol address of the first word
    name: str
    type: str  # uint16 | int16 | uint32 | float32 (32-bit: high word first)
    scale: float  # engineering value = raw * scale
    unit: str


REGISTER_MAP: tuple[Register, ...] = (
    Register(0, "state", "uint16", 1, "PackML state (OPC 30060)"),
    Register(1, "reason", "uint16", 1, "reason code"),
    Register(2, "good", "uint32", 1, "parts"),
    Register(4, "reject", "uint32", 1, "parts"),
    Register(6, "temperature", "int16", 0.1, "degC"),
    Register(7, "power", "uint16", 0.01, "kW"),
    Register(8, "vibration", "uint16", 0.01, "mm/s"),
    Register(9, "ideal_cycle_time", "uint16", 0.1, "s"),
    Register(10, "temperature", "float32", 1, "degC"),
)
WORDS = {"uint16": 1, "int16": 1, "uint32": 2, "float32": 2}
REGISTER_COUNT = max(r.address + WORDS[r.type] for r in REGISTER_MAP)  # 12
_RANGE = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF)}
_F32_MAX = 3.4028234663852886e38


def _encode_one(reg: Register, value: float) -> list[int]:
    if reg.type == "float32":
        v = value if math.isnan(value) else min(max(value, -_F32_MAX), _F32_MAX)
        hi, lo = struct.unpack(">HH", struct.pack(">f", v))
        return [hi, lo]
    if reg.type == "uint32":  # a counter: wraps like a PLC's
        raw = int(value) % 2**32
        return [raw >> 16, raw & 0xFFFF]
    lo_, hi_ = _RANGE[reg.type]
    x = value / reg.scale
    x = 0.0 if math.isnan(x) else min(max(x, lo_), hi_)  # clamp to the type's range
    return [round(x) & 0xFFFF]  # two's complement for int16


def encode(values: Mapping[str, float]) -> list[int]:
    """The register words (address 0 first) for engineering values keyed by ``REGISTER_MAP`` names.

    uint16/int16 are scaled, rounded and clamped to the type's range (NaN gives 0); uint32
    counters wrap modulo 2**32; float32 is IEEE 754, clamped to its finite range.
    """
    words = [0] * REGISTER_COUNT
    for reg in REGISTER_MAP:
        words[reg.address:reg.address + WORDS[reg.type]] = _encode_one(reg, values[reg.name])
    return words


class ModbusMachineServer:
    """One machine's latest values as Modbus TCP registers (``REGISTER_MAP``), unit id 1."""

    def __init__(self, machine: Machine, host: str, port: int):
        self.machine, self.host, self.port = machine, host, port
        self.endpoint = f"{host}:{port}"
        self.values: dict[str, float] = {"temperature": machine.temperature, "power": 0.0, "vibration": 0.0}
        self._words: list[int] = []
        self._server: ModbusTcpServer | None = None
        self.refresh({})

    def refresh(self, pv: Mapping[str, float]) -> None:
        """Take the machine's current state, reason and counts and the process values ``pv``
        (keys temperature, power, vibration; a missing key keeps its previous value)."""
        m = self.machine
        self.values.update(pv)
        self.values.update(state=m.state, reason=m.reason, good=m.good, reject=m.reject,
                           ideal_cycle_time=m.spec.ideal_cycle_s)
        self._words = encode(self.values)  # one assignment: a read never sees half an update

    async def _serve(self, function_code, start_address, address, count, registers, set_values):
        # Called by pymodbus before every request is served: lay the latest words over the
        # block, so reads see them and whatever a client wrote is gone.
        registers[:REGISTER_COUNT] = self._words  # the block starts at address 0

    async def start(self) -> None:
        # Bind once ourselves first: pymodbus only logs why listening failed.
        loop = asyncio.get_running_loop()
        try:
            probe = await loop.create_server(asyncio.Protocol, self.host, self.port, reuse_address=True)
            probe.close()
            await probe.wait_closed()
        except OSError as e:
            self._port_error(os.strerror(e.errno) if (e.errno or 0) > 0 else str(e))
        device = SimDevice(id=UNIT_ID, action=self._serve,
                           simdata=[SimData(0, values=[0] * REGISTER_COUNT, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError:  # taken between the probe and now
            self._server = None
            self._port_error("cannot listen")
        log.info("modbus server up machine=%s endpoint=%s", self.machine.spec.name, self.endpoint)

    def _port_error(self, why: str) -> NoReturn:
        raise ServiceError(f"cannot serve Modbus TCP on {self.host}:{self.port}: {why} "
                           f"(is the port taken? choose another with --modbus-port)") from None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # closes the listener and every client connection
            self._server = None


__all__ = ["REGISTER_COUNT", "REGISTER_MAP", "UNIT_ID", "ModbusMachineServer", "Register", "encode"]
