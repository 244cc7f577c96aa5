"""Modbus TCP source: poll a PLC's registers at a fixed rate and feed a Batcher by exception.

Modbus has no subscriptions, so the source polls. Function codes and limits are
from the Modbus Application Protocol Specification V1.1b3: read coils (FC1,
1-2000 bits), read discrete inputs (FC2, 1-2000 bits), read holding registers
(FC3, 1-125 registers), read input registers (FC4, 1-125 registers). Addresses
are 0-based on the wire: "register 40001" in the old 1-based notation is
holding address 0.

A register is 16 bits, sent most significant byte first. Wider values span
consecutive registers, and the spec does not say in which order: "big" word
order puts the most significant word first, "little" (a "word swap", common on
PLCs) the least significant first; a few devices also swap the two bytes inside
each word (byte_order "little"). Example: the float32 21.5 is 0x41AC0000.
Big/big it is sent as registers [0x41AC, 0x0000]; word-swapped as
[0x0000, 0x41AC]; byte-swapped as [0xAC41, 0x0000]. The engineering value is
``raw * scale + offset``: a uint16 of 215 with scale 0.1 and offset -20 is 1.5.

Each poll reads every block of neighbouring registers with one request and
decodes all values of one type with NumPy. A tag is handed to the Batcher only
when it changed (process values: by more than their deadband). If the device
goes away the source keeps trying (backoff up to 5 s) and data flows again when
it is back, without a restart.

What goes wrong on a first connection is said in words: a Modbus exception code
becomes its likely cause (``explain``: 2 = the address does not exist, often the
manual's 1-based or 4xxxx numbering; 4 or no answer = often a wrong unit id),
and the first read of every block is checked for the signature of a wrong
``word_order`` (``word_order_suspect``). An address the device refuses at start
(exceptions 1-3) is a mistake in the mapping file: ``start`` raises
``ModbusMappingError`` (exit 78). A refused request for several tags may be only
the unmapped addresses between them (a device with holes in its map): those tags
are then read one by one, and only a tag refused on its own counts. ``read_all``
reads every register once without a Batcher, for ``fieldlab edge check --online``
and ``fieldlab edge read``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from contract.errors import ServiceError
from contract.tasks import cancel_and_wait
from contract.yamlfile import ConfigError

from .batcher import ROLES, Batcher

log = logging.getLogger("fieldlab.edge.modbus")
# pymodbus logs every failed request and connect; this module logs one line per outage instead
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

TYPES: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
                         "float32": 2, "float64": 4, "bool": 1}
_DTYPES = {"int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8",
           "float32": "f4", "float64": "f8"}
TABLES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}  # table -> read function code
_BITS = ("coil", "discrete")
MAX_READ = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}  # per request (spec 6.1-6.4)
MAX_GAP = {"coil": 32, "discrete": 32, "holding": 8, "input": 8}  # unused addresses read to save a request
_FLOATS = ("float32", "float64")
MAX_BACKOFF_S = 5.0
MAPPING_EXCEPTIONS = (1, 2, 3)  # illegal function, data address, data value: the mapping, not the device's mood
UNIT_EXCEPTIONS = (4, 10)  # device failure, gateway path unavailable: on a first connection most often the unit id


class ModbusMappingError(ConfigError):
    """The device refuses a register of the mapping file (Modbus exception 1-3 at start): exit 78."""


def explain(code: int, table: str, first: int, last: int, unit_id: int) -> str:
    """A Modbus exception code (spec 7) as its likely cause on a first connection, with the fix."""
    span = f"{table} {first}" if first == last else f"{table} {first}-{last}"
    fc = TABLES[table]
    if code == 1:
        return (f"Modbus exception 1 (illegal function) reading {span}: the device has no {table} table (FC{fc}); "
                f"check table: (holding, input, coil, discrete) against the manual")
    if code == 2:
        hint = ""
        if str(first)[0] in "34" and (30001 <= first < 50000 or 300001 <= first < 465537):
            base = 10000 if first < 50000 else 100000
            hint = (f"; {first} looks like the manual's 1-based 3xxxx/4xxxx number: write the address without "
                    f"table: and fieldlab converts it, or table: {'input' if str(first)[0] == '3' else 'holding'} "
                    f"and address: {first % base - 1}")
        return (f"Modbus exception 2 (illegal data address) reading {span}: the device has no such register{hint}. "
                f"fieldlab addresses are 0-based: a manual that counts from 1 (40001 = the first holding register) "
                f"means address - 1; also check table: (holding or input) and type: (a uint32 spans 2 registers)")
    if code == 3:
        return (f"Modbus exception 3 (illegal data value) reading {span}: the device refuses to read this many "
                f"registers at once or this type; check type: and the addresses of neighbouring tags")
    if code in (4, 11):
        what = "server device failure" if code == 4 else "gateway target device failed to respond"
        return (f"Modbus exception {code} ({what}) reading {span}: most often a wrong unit_id ({unit_id}) - the "
                f"device (or the device behind a Modbus gateway) with that unit id does not exist or failed; check "
                f"source.unit_id against the device's settings (1 is usual, 255 or 0 for some TCP devices)")
    if code == 10:
        return (f"Modbus exception 10 (gateway path unavailable) reading {span}: the Modbus gateway has no route to "
                f"unit {unit_id}; check source.unit_id and the gateway's serial settings")
    if code == 6:
        return f"Modbus exception 6 (device busy) reading {span}: the device is busy; it is retried"
    return f"Modbus exception {code} reading {span} (FC{fc}); see the device's manual"


def _plausible(type_: str, v: float) -> bool:
    if type_ in _FLOATS:
        return v == 0 or (math.isfinite(v) and 1e-6 <= abs(v) <= 1e15)
    return abs(v) < 65536


def word_order_suspect(reg: Register, value: float, other: float) -> str | None:
    """A warning if ``value`` (read with the register's word order) looks like the other word order's ``other``:
    a counter of 131072 that reads 2 the other way round, a float of 2e-41 that reads 21.5. One reading cannot
    be sure (a counter's low word can be 0), so this warns, it does not refuse."""
    if TYPES[reg.type] < 2 or reg.table in _BITS:
        return None
    if reg.type in _FLOATS:
        if _plausible(reg.type, value) or not _plausible(reg.type, other):
            return None
    elif not (abs(value) >= 65536 and abs(other) < 65536):
        return None
    flip = "little" if reg.word_order == "big" else "big"
    return (f"Modbus register '{reg.tag}' ({reg.table} {reg.address}, {reg.type}) reads {value:g}, which looks "
            f"wrong: with word_order: {flip} it would read {other:g}. Check the tag's word_order key "
            f"(now {reg.word_order}; the device's manual says which word comes first)")


@dataclass
class Reading:
    """One register read once (``ModbusSource.read_all``): the raw and engineering value, or why it failed."""
    register: Register
    raw: float | bool | None = None
    value: float | None = None
    error: str | None = None
    warning: str | None = None
    kind: str | None = None  # of the error: "config" (fix the mapping file) or "unreachable" (device, network)


@dataclass(frozen=True)
class Register:
    tag: str                 # a role from edge.batcher.ROLES (not "product") or "value:<name>"
    address: int             # 0-based protocol address
    table: str = "holding"   # holding (FC3) | input (FC4) | coil (FC1) | discrete (FC2)
    type: str = "uint16"     # a key of TYPES; bool only (and always) on coil/discrete
    word_order: str = "big"  # big: most significant word first; little: word swap
    byte_order: str = "big"  # byte order inside each word; little: byte swap
    scale: float = 1.0       # engineering value = raw * scale + offset
    offset: float = 0.0
    unit: str | None = None
    deadband: float = 0.0    # process values: report only when |new - last reported| > deadband

    def __post_init__(self):
        def bad(why: str):
            raise ValueError(f"Modbus register '{self.tag}': {why}")

        roles = [r for r in ROLES if r != "product"]
        if self.tag not in roles and not (self.tag.startswith("value:") and len(self.tag) > 6):
            bad(f"tag must be one of {roles} or 'value:<name>' for a process value")
        if self.table not in TABLES:
            bad(f"table {self.table!r} is not one of {list(TABLES)}")
        if self.type not in TYPES:
            bad(f"type {self.type!r} is not one of {list(TYPES)}")
        if self.table in _BITS and self.type != "bool":
            bad(f"a {self.table} is a single bit: use type 'bool'")
        if self.table not in _BITS and self.type == "bool":
            bad(f"{self.table} registers are 16-bit words: use a numeric type, or table 'coil'/'discrete' for bits")
        for name in ("word_order", "byte_order"):
            if getattr(self, name) not in ("big", "little"):
                bad(f"{name} must be 'big' or 'little', not {getattr(self, name)!r}")
        if not isinstance(self.address, int) or isinstance(self.address, bool) or self.address < 0:
            bad(f"address must be a whole number >= 0 (0-based: register 40001 is holding address 0), "
                f"not {self.address!r}")
        if self.address + TYPES[self.type] - 1 > 65535:
            bad(f"address {self.address} plus {TYPES[self.type]} registers of {self.type} goes beyond 65535")
        if not math.isfinite(self.scale) or not math.isfinite(self.offset) or self.scale == 0:
            bad("scale must be a finite non-zero number, offset a finite number")
        if not self.deadband >= 0:
            bad(f"deadband must be >= 0, not {self.deadband!r}")


@dataclass
class _Group:
    """Registers of one block with the same type and byte/word order: decoded together."""
    regs: list[Register]
    index: np.ndarray  # (n, words) positions in the block's words, or (n,) bit positions
    scale: np.ndarray
    offset: np.ndarray


@dataclass
class _Block:
    table: str
    address: int
    count: int
    groups: list[_Group]


NO_MERGE = {table: -1 for table in TABLES}  # one request per register


def _plan(registers: Sequence[Register], max_gap: dict[str, int] = MAX_GAP) -> list[_Block]:
    """Contiguous read blocks per table: neighbours merged across small gaps, within the spec's limits."""
    blocks = []
    for table in TABLES:
        regs = sorted((r for r in registers if r.table == table), key=lambda r: r.address)
        runs: list[list[Register]] = []
        start = end = 0
        for r in regs:
            r_end = r.address + TYPES[r.type]
            if runs and r.address - end <= max_gap[table] and max(end, r_end) - start <= MAX_READ[table]:
                runs[-1].append(r)
                end = max(end, r_end)
            else:
                runs.append([r])
                start, end = r.address, r_end
        for run in runs:
            first = run[0].address
            count = max(r.address + TYPES[r.type] for r in run) - first
            keys = sorted({(r.type, r.word_order, r.byte_order) for r in run})
            groups = []
            for key in keys:
                members = [r for r in run if (r.type, r.word_order, r.byte_order) == key]
                offsets = np.array([r.address - first for r in members])
                index = offsets if table in _BITS else offsets[:, None] + np.arange(TYPES[key[0]])
                groups.append(_Group(members, index, np.array([r.scale for r in members]),
                                     np.array([r.offset for r in members])))
            blocks.append(_Block(table, first, count, groups))
    return blocks


def _decode_words(words: np.ndarray, index: np.ndarray, type_: str, word_order: str, byte_order: str) -> np.ndarray:
    """Raw values from a block's registers: ``index`` is (n, words per value) into ``words`` (uint16)."""
    w = np.asarray(words, dtype=np.uint16)[index]
    if byte_order == "little":
        w = w.byteswap()
    if word_order == "little":
        w = w[:, ::-1]
    # each word most significant byte first, most significant word first: the value's big-endian bytes
    return np.ascontiguousarray(w, dtype=">u2").view(">" + _DTYPES[type_]).reshape(len(w))


class ModbusSource:
    def __init__(self, host: str, port: int = 502, registers: Sequence[Register] = (), *, unit_id: int = 1,
                 poll_s: float = 0.1, timeout_s: float = 1.0):
        tags = [r.tag for r in registers]
        if dup := sorted({t for t in tags if tags.count(t) > 1}):
            raise ValueError(f"Modbus registers: tag {dup[0]!r} is mapped more than once (give each tag one register)")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"Modbus unit_id {unit_id}: must be 0-255 (usually 1, or 255 for a plain TCP device)")
        if not poll_s > 0 or not timeout_s > 0:
            raise ValueError("Modbus poll_s and timeout_s must be > 0 seconds")
        self.host, self.port, self.unit_id = host, port, unit_id
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.registers = tuple(registers)
        self.blocks = _plan(self.registers)
        # retries=0 and no built-in reconnect: a failed request fails this poll; _connect() reconnects
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self.stats: dict = {"polls": 0, "errors": 0, "last_error": None, "reconnects": 0}
        self._batcher: Batcher | None = None
        self._task: asyncio.Task | None = None
        self._last: dict[str, object] = {}  # last value reported per tag
        self._stopping = False
        self._failing = False  # inside an outage: warned once already
        self._backoff = 0.1
        self._next_connect = 0.0
        self._starting = False
        self._refused: list[tuple[_Block, str]] = []  # mapping errors seen by the first poll
        self._checked: set[int] = set()  # blocks whose first read was checked for a wrong word order
        self.warnings: dict[str, str] = {}  # tag -> what that check found (logged once each)

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, batcher: Batcher) -> None:
        self._batcher, self._stopping = batcher, False
        batcher.units.update({r.tag[6:]: r.unit for r in self.registers if r.unit and r.tag.startswith("value:")})
        if not await self.client.connect():
            raise ServiceError(f"cannot reach the Modbus device at {self._where}: connection refused or no answer "
                               f"within {self.timeout_s:g} s (check host, port, network, and that Modbus TCP "
                               f"is enabled on the device)")
        log.info("polling Modbus device=%s unit=%d registers=%d requests/poll=%d every %gs",
                 self._where, self.unit_id, len(self.registers), len(self.blocks), self.poll_s)
        await self._first_poll()
        merged = [b for b, _ in self._refused if sum(len(g.regs) for g in b.groups) > 1]
        if merged:  # one request for several tags (and the gaps between them): which tag is it, or is it a gap?
            alone = _plan([r for b in merged for g in b.groups for r in g.regs], NO_MERGE)
            self.blocks = [b for b in self.blocks if b not in merged] + alone
            log.info("Modbus device %s refuses a request for several tags: reading those %d tags one by one",
                     self._where, len(alone))
            await self._first_poll()
        if self._refused:  # the device says these registers do not exist: retrying cannot help
            self.client.close()
            raise ModbusMappingError(f"the Modbus device at {self._where} (unit {self.unit_id}) refuses registers "
                                     f"of the mapping file: " + "; ".join(why for _, why in self._refused))
        self._task = asyncio.create_task(self._run(), name=f"modbus-poll-{self._where}")

    async def _first_poll(self) -> None:
        self._starting, self._refused = True, []
        try:
            await self._poll_safely()
        finally:
            self._starting = False

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task:
            # the loop also checks _stopping: on Python 3.11 asyncio.wait_for (inside the client) can swallow
            # a cancellation that arrives together with the device's answer
            await cancel_and_wait(task)
        self.client.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._stopping:
            due += self.poll_s
            now = loop.time()
            if due < now:  # a slow poll or an outage: skip the missed slots instead of bursting
                due += math.ceil((now - due) / self.poll_s) * self.poll_s
            await asyncio.sleep(due - now)
            if not self._stopping:
                await self._poll_safely()

    async def _poll_safely(self) -> None:
        try:
            await self.poll()
        except Exception as e:  # noqa: BLE001 - polling must outlive any surprise; stats and the log say why
            self._error(f"{type(e).__name__}: {e}")

    def _error(self, what: str) -> None:
        self.stats["errors"] += 1
        self.stats["last_error"] = what
        if not self._failing:
            self._failing = True
            log.warning("Modbus device %s unit %d: %s (retrying, up to every %gs)",
                        self._where, self.unit_id, what, MAX_BACKOFF_S)

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect:
            return False
        if await self.client.connect():
            self.stats["reconnects"] += 1
            self._backoff = 0.1
            return True
        self._next_connect = loop.time() + self._backoff
        self._backoff = min(2 * self._backoff, MAX_BACKOFF_S)
        self._error(f"cannot connect to {self._where}")
        return False

    async def poll(self) -> None:
        """One poll: read every block, report what changed, all with one timestamp."""
        if not self.client.connected and not await self._connect():
            return
        self.stats["polls"] += 1
        ts = time.time()
        errors = self.stats["errors"]
        read = {"coil": self.client.read_coils, "discrete": self.client.read_discrete_inputs,
                "holding": self.client.read_holding_registers, "input": self.client.read_input_registers}
        for block in self.blocks:
            where = f"{block.table} {block.address}-{block.address + block.count - 1}"
            try:
                resp = await read[block.table](block.address, count=block.count, device_id=self.unit_id)
            except (ModbusException, OSError, asyncio.TimeoutError) as e:
                # no answer or a dropped connection: start afresh with a new connection
                self.client.close()
                self._next_connect = 0.0
                self._error(f"reading {where}: {e or type(e).__name__}")
                return
            if resp.isError():
                # the device answered with a Modbus exception (e.g. 2: illegal data address): other blocks go on
                code = resp.exception_code
                self._error(explain(code, block.table, block.address, block.address + block.count - 1, self.unit_id))
                if self._starting and code in MAPPING_EXCEPTIONS:
                    self._refused.append((block, self.stats["last_error"]))
                continue
            self._report(ts, block, resp.bits[:block.count] if block.table in _BITS else resp.registers)
        if self._failing and self.stats["errors"] == errors:
            self._failing = False
            self.stats["last_error"] = None  # the heartbeat reports current problems, not old ones
            log.info("Modbus device %s unit %d answers again", self._where, self.unit_id)

    def _decode(self, block: _Block, data: list):
        """(group, raw values, engineering values) per group of a block's answer; the first answer of each block is
        checked for a wrong word order (logged once, kept in ``warnings``)."""
        first = id(block) not in self._checked
        self._checked.add(id(block))
        for g in block.groups:
            r0 = g.regs[0]
            if block.table in _BITS:
                raw = np.asarray(data, dtype=bool)[g.index]
            else:
                words = np.asarray(data, dtype=np.uint16)
                raw = _decode_words(words, g.index, r0.type, r0.word_order, r0.byte_order)
                if first and TYPES[r0.type] > 1:
                    flip = "little" if r0.word_order == "big" else "big"
                    other = _decode_words(words, g.index, r0.type, flip, r0.byte_order)
                    for reg, v, o in zip(g.regs, raw.tolist(), other.tolist()):
                        if (why := word_order_suspect(reg, v, o)) and reg.tag not in self.warnings:
                            self.warnings[reg.tag] = why
                            log.warning("%s", why)
            yield g, raw, raw.astype(np.float64) * g.scale + g.offset

    def _report(self, ts: float, block: _Block, data: list) -> None:
        b = self._batcher
        for g, raw, eng in self._decode(block, data):
            for reg, r, e in zip(g.regs, raw.tolist(), eng.tolist()):
                last = self._last.get(reg.tag)
                if reg.tag.startswith("value:"):
                    if last is None or math.isnan(e) != math.isnan(last) or abs(e - last) > reg.deadband:
                        self._last[reg.tag] = e
                        b.value(ts, reg.tag[6:], e)
                    continue
                if not math.isfinite(e):
                    self._error(f"{reg.tag} reads {e} from {reg.table} {reg.address}")
                    continue
                if reg.tag == "ideal_cycle_s":
                    v = e
                elif reg.type in _FLOATS or (reg.scale, reg.offset) != (1.0, 0.0):
                    v = round(e)
                else:
                    v = int(r)  # exact, also for a 64-bit counter
                if v != last:
                    self._last[reg.tag] = v
                    b.record(reg.tag, ts, v)

    async def read_all(self) -> list[Reading]:
        """Read every register once, in mapping order (connecting if needed): raw and engineering values, or the
        cause of a failure in words. No Batcher, nothing reported: for checks and ``fieldlab edge read``."""
        out = {r: Reading(r) for r in self.registers}
        if not self.client.connected and not await self.client.connect():
            why = (f"cannot reach the Modbus device at {self._where}: connection refused or no answer within "
                   f"{self.timeout_s:g} s (check host, port, network, and that Modbus TCP is enabled)")
            for reading in out.values():
                reading.error, reading.kind = why, "unreachable"
            return list(out.values())
        read = {"coil": self.client.read_coils, "discrete": self.client.read_discrete_inputs,
                "holding": self.client.read_holding_registers, "input": self.client.read_input_registers}
        todo = list(self.blocks)
        while todo:
            block = todo.pop(0)
            regs = [r for g in block.groups for r in g.regs]
            try:
                resp = await read[block.table](block.address, count=block.count, device_id=self.unit_id)
            except (ModbusException, OSError, asyncio.TimeoutError) as e:
                self.client.close()  # a late answer must not be taken for the next request's
                why = (f"no answer from unit {self.unit_id} reading {block.table} {block.address}"
                       f"-{block.address + block.count - 1} within {self.timeout_s:g} s ({e or type(e).__name__}): "
                       f"a wrong unit_id (some devices ignore requests for other units) or a device that is busy")
                for r in regs:
                    out[r].error, out[r].kind = why, "unreachable"
                await self.client.connect()
                continue
            if resp.isError() and resp.exception_code in MAPPING_EXCEPTIONS and len(regs) > 1:
                todo[:0] = _plan(regs, NO_MERGE)  # which of these tags is refused (or only the gaps between them)?
                continue
            if resp.isError():
                code = resp.exception_code
                why = explain(code, block.table, block.address, block.address + block.count - 1, self.unit_id)
                kind = "config" if code in MAPPING_EXCEPTIONS + UNIT_EXCEPTIONS else "unreachable"
                for r in regs:
                    out[r].error, out[r].kind = why, kind
                continue
            for g, raw, eng in self._decode(block, resp.bits[:block.count] if block.table in _BITS
                                            else resp.registers):
                for reg, r, e in zip(g.regs, raw.tolist(), eng.tolist()):
                    out[reg].raw, out[reg].value, out[reg].warning = r, e, self.warnings.get(reg.tag)
        return list(out.values())
