"""Payloads of the fieldlab contract, version 1: JSON, columnar, checked.

Every payload is a JSON object with ``"v": 1``. Batches (telemetry, state,
counts) are columnar: one ``ts`` array (Unix time in seconds, float, non-
decreasing, from TS_MIN to before TS_MAX) and one array per value, all of the
same length. ``decode`` turns a payload straight into NumPy arrays and rejects
anything malformed with a ``ContractError`` that names the field and, where it
helps, the index.

The JSON Schema files in ``contract/schemas/`` describe the same rules for
producers in other languages (Node-RED, Telegraf, a PLC), but for the few JSON
Schema cannot express (equal lengths, times in order, total = good + reject:
docs/contract.md, "Rules a schema cannot express"); tests keep both in step
(tests/contract/test_schema_differential.py).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from .errors import ContractError
from .topics import Kind

VERSION = 1
#: Binary telemetry (docs/contract.md): magic, rows (uint32), signals (uint16), JSON header bytes (uint16),
#: little-endian; then the JSON header, then float64 ts[rows] and values[signals][rows].
BINARY_MAGIC = b"FLT1"
BINARY_HEADER = struct.Struct("<4sIHH")
MAX_SIGNALS = 4096  # signals per binary message (a JSON message is bounded by MAX_BATCH samples per array)
MAX_BATCH = 100_000  # samples per message; larger batches must be split by the producer
MAX_COUNTER = 2**53  # counters stay exact in a float64 / JSON number
#: Plausible times (Unix seconds): from 2000-01-01T00:00:00Z to before 2100-01-01T00:00:00Z. Outside is a
#: producer's mistake (milliseconds from JavaScript's Date.now(), seconds since boot, an unset clock) that
#: would wreck the machine's KPIs: such a message is refused (docs/contract.md).
TS_MIN = 946684800.0
TS_MAX = 4102444800.0

# OPC UA PackML (OPC 30060) / ISA-TR88.00.02 state numbers. Other vendors number
# PackML states differently: a producer must translate to these numbers.
PACKML = {
    0: "Stopped", 1: "Resetting", 2: "Idle", 3: "Starting", 4: "Execute", 5: "Completing",
    6: "Complete", 7: "Aborting", 8: "Aborted", 9: "Stopping", 10: "Clearing",
    11: "Suspending", 12: "Suspended", 13: "Unsuspending", 14: "Holding", 15: "Held",
    16: "Unholding",
}
#: Reason codes (state messages' ``reason``) that the simulators send and the dashboards name. Producers
#: may send other codes: the gateway books them as labels unless the site configuration maps them.
REASONS = {0: "none", 101: "breakdown", 102: "jam", 201: "material shortage", 202: "starved", 203: "blocked",
           301: "changeover"}
# For machines without PackML (a stack light, a simple PLC bit set).
SIMPLE = {0: "planned_stop", 1: "running", 2: "idle", 3: "down", 4: "setup"}
STATE_MODELS = {"packml": PACKML, "simple": SIMPLE}


@dataclass
class TelemetryBatch:
    ts: np.ndarray  # float64 seconds
    signals: dict[str, np.ndarray]  # float64, NaN where a sample is missing (JSON null)
    units: dict[str, str] = field(default_factory=dict)


@dataclass
class StateBatch:
    ts: np.ndarray  # float64 seconds: when the machine entered the state
    state: np.ndarray  # int64 state code of ``model``
    reason: np.ndarray  # int64 reason code, 0 = none given
    model: str = "packml"


@dataclass
class CountsBatch:
    ts: np.ndarray  # float64 seconds
    good: np.ndarray  # int64 monotonic counter (may reset to a lower value on a restart)
    reject: np.ndarray  # int64 monotonic counter
    product: str | None = None  # product running during the whole batch
    ideal_cycle_s: float | None = None  # ideal cycle time of that product, seconds per part

    @property
    def total(self) -> np.ndarray:
        return self.good + self.reject


@dataclass
class Status:
    ts: float
    status: str  # "online" | "offline"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class OperatorEntry:
    """What a person (the operator terminal, Node-RED, an MES) enters about a machine (kind ``operator``): the
    reason of the stop that started at ``ts``, or ``reject`` parts found bad by hand at ``ts``."""
    ts: float  # the start of the stop (reason), or when the parts were made (reject): the machine's time
    by: str  # who entered it
    reason: int | None = None
    reject: int | None = None
    at: float | None = None  # when it was entered (wall clock), if the sender says


@dataclass
class Command:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- encoding

def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _list(a) -> list:
    return np.asarray(a).tolist()


def encode_telemetry(ts, signals: dict, units: dict | None = None) -> bytes:
    sig = {k: [None if (isinstance(x, float) and math.isnan(x)) else x for x in _list(v)]
           for k, v in signals.items()}
    obj = {"v": VERSION, "ts": _list(ts), "signals": sig}
    if units:
        obj["units"] = dict(units)
    return _dumps(obj)


def encode_telemetry_binary(ts, signals: dict, units: dict | None = None) -> bytes:
    """The same batch as ``encode_telemetry`` in the binary columnar form (docs/contract.md, "telemetry,
    binary"): a 12-byte header, a small JSON header with the signal names, then float64 arrays. The
    gateway maps the arrays without parsing a number (NaN = missing, as null in JSON)."""
    ts = np.asarray(ts, dtype=np.float64)
    names = list(signals)
    if not 0 < len(names) <= MAX_SIGNALS:
        raise ContractError(f"telemetry: {len(names)} signals; the binary form carries 1-{MAX_SIGNALS} "
                            "(JSON has no such limit)")
    head = {"v": VERSION, "signals": names}
    if units:
        head["units"] = dict(units)
    text = _dumps(head)
    text += b" " * (-(BINARY_HEADER.size + len(text)) % 8)  # the arrays start 8-byte aligned
    if len(text) > 0xFFFF:
        raise ContractError(f"telemetry: the signal names and units take {len(text)} bytes; the binary form's "
                            "header holds at most 65,535 (JSON has no such limit)")
    cols = np.empty((len(names) + 1, ts.size), dtype="<f8")
    cols[0] = ts
    for i, name in enumerate(names, 1):
        cols[i] = signals[name]
    if np.isinf(cols).any():  # as encode_telemetry, which refuses them too: NaN (missing) is the only gap
        raise ContractError("telemetry: an infinite value or time cannot be sent")
    return BINARY_HEADER.pack(BINARY_MAGIC, ts.size, len(names), len(text)) + text + cols.tobytes()


def encode_state(ts, state, reason=None, model: str = "packml") -> bytes:
    obj = {"v": VERSION, "model": model, "ts": _list(ts), "state": _list(state)}
    if reason is not None:
        obj["reason"] = _list(reason)
    return _dumps(obj)


def encode_counts(ts, good, reject, product: str | None = None, ideal_cycle_s: float | None = None) -> bytes:
    obj = {"v": VERSION, "ts": _list(ts), "good": _list(good), "reject": _list(reject)}
    if product is not None:
        obj["product"] = product
    if ideal_cycle_s is not None:
        obj["ideal_cycle_s"] = float(ideal_cycle_s)
    return _dumps(obj)


def encode_status(ts: float, status: str, **info) -> bytes:
    return _dumps({"v": VERSION, "ts": float(ts), "status": status, **({"info": info} if info else {})})


def encode_command(cmd: str, **args) -> bytes:
    return _dumps({"v": VERSION, "cmd": cmd, "args": args})


def encode_sim_machines(machines: list[str]) -> bytes:
    """The retained list of a simulator's machines on ``sim_machines_topic``: {"v": 1, "machines": [...]}
    (contract/schemas/sim-machines.json). An empty list (the simulator's clean stop and its last will): no
    simulator listens there."""
    return _dumps({"v": VERSION, "machines": list(machines)})


def decode_sim_machines(data: bytes | str) -> list[str] | None:
    """The machine names; None if no simulator listens (an empty list, or an empty retained payload);
    ContractError if it is malformed."""
    if not data:
        return None
    obj = _load(data, "sim machines")
    machines = obj.get("machines")
    if not isinstance(machines, list) or not all(isinstance(m, str) and m for m in machines):
        raise ContractError("sim machines: field 'machines' must be a list of machine names")
    return machines or None


def encode_operator(ts: float, by: str, reason: int | None = None, reject: int | None = None,
                    at: float | None = None) -> bytes:
    """An operator entry (docs/contract.md, operator): a stop's reason, or rejects counted by hand."""
    obj = {"v": VERSION, "ts": float(ts), "by": by}
    obj.update({k: int(v) for k, v in (("reason", reason), ("reject", reject)) if v is not None})
    if at is not None:
        obj["at"] = float(at)
    return _dumps(obj)


def encode_kpi(kpi: dict) -> bytes:
    """KPI messages are produced by the gateway; ratios that are undefined are ``null``."""
    out = {"v": VERSION}
    for k, v in kpi.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return _dumps(out)


# ----------------------------------------------------------------------------- decoding

def _load(data: bytes | str, kind: str) -> dict:
    try:
        obj = orjson.loads(data)  # 13x json.loads on a 1,000-value batch: parsing is most of decoding
    except (UnicodeDecodeError, orjson.JSONDecodeError) as e:
        raise ContractError(f"{kind}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ContractError(f"{kind}: payload must be a JSON object, got {type(obj).__name__}")
    v = obj.get("v")
    if v != VERSION or v is True:  # (True == 1 in Python, not in JSON)
        raise ContractError(f"{kind}.v: expected schema version {VERSION}, got {v!r}")
    return obj


def _first_bad(values: list, ok) -> str:
    """Slow path, only on errors: find the first offending element for the message."""
    for i, x in enumerate(values):
        if not ok(x):
            return f"[{i}] = {json.dumps(x) if type(x) is bool else repr(x)}"  # JSON's true, not Python's True
    return ""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _holds_bool(values: list, arr: np.ndarray) -> bool:
    """Whether a list that NumPy read as numbers held a JSON true or false (they become 1 and 0). Long lists
    look at the element types only when a 0 or 1 is there: zeros are everyday values (an idle machine's
    power), and then a batch costs one vectorised comparison. Short lists: the types, one C pass."""
    if len(values) > 64 and not np.count_nonzero((arr == 0) | (arr == 1)):
        return False
    return bool in set(map(type, values))


def _numbers(obj: dict, key: str, kind: str, n: int | None, allow_null: bool = False) -> np.ndarray:
    """Decode a JSON array of numbers into float64 (or int64 when all are ints)."""
    values = obj.get(key)
    where = f"{kind}.{key}"
    if not isinstance(values, list):
        raise ContractError(f"{where}: required array of numbers, got {type(values).__name__}")
    if len(values) > MAX_BATCH:
        raise ContractError(f"{where}: {len(values)} samples, at most {MAX_BATCH} per message")
    if n is not None and len(values) != n:
        raise ContractError(f"{where}: length {len(values)} differs from ts length {n}")
    try:
        arr = np.asarray(values) if values else np.zeros(0)
    except ValueError:  # nested arrays of different lengths: an object array, refused below with the element
        arr = np.empty(0, dtype=object)
    if arr.dtype.kind in "iuf" and arr.ndim == 1 and not _holds_bool(values, arr):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # cannot come from JSON, but be safe
            raise ContractError(f"{where}: numbers must be finite")
        return arr
    if allow_null:
        if arr.dtype == object and arr.ndim == 1 and all(x is None or _is_number(x) for x in values):
            return np.array([np.nan if x is None else x for x in values], dtype=np.float64)
        return _fail(where, values, lambda x: x is None or _is_number(x), "a number or null")
    return _fail(where, values, _is_number, "a number")


def _fail(where: str, values: list, ok, what: str):
    raise ContractError(f"{where}{_first_bad(values, ok)}: must be {what}")


def _non_decreasing(values: list, arr: np.ndarray) -> bool:
    """Whether numbers never go backwards. Short lists: sorted() of an already sorted list is one C pass
    (0.5 µs for 10 times against 4.5 µs for the NumPy comparison, whose fixed cost dominates there)."""
    if len(values) <= 256:
        return sorted(values) == values
    return not np.count_nonzero(arr[1:] < arr[:-1])


def _implausible(where: str, t) -> ContractError:
    """The error for a time outside TS_MIN..TS_MAX, naming the unit it looks like."""
    for scale, unit, how in ((1e3, "milliseconds since 1970 (JavaScript Date.now())", "divide by 1000"),
                             (1e6, "microseconds since 1970", "divide by 1,000,000"),
                             (1e9, "nanoseconds since 1970", "divide by 1,000,000,000")):
        if TS_MIN * scale <= t < TS_MAX * scale:
            return ContractError(f"{where} = {t!r} is {unit}; send seconds: {how}")
    return ContractError(f"{where} = {t!r}: not a plausible time; send Unix time in seconds from {TS_MIN:.0f} "
                         f"(2000-01-01) to before {TS_MAX:.0f} (2100-01-01), from a set clock (not seconds since boot)")


def _ts(obj: dict, kind: str) -> np.ndarray:
    values = obj.get("ts")
    if type(values) is list and 0 < len(values) <= MAX_BATCH:  # the usual case, with fewer calls: float times
        try:
            ts = np.asarray(values)  # (JSON numbers are finite: orjson refuses the others)
        except ValueError:  # nested arrays of different lengths: _numbers below names the element
            ts = np.empty(0, dtype=object)
        # non-decreasing, so within the plausible range when the first and the last are
        if ts.dtype.kind == "f" and ts.ndim == 1 and _non_decreasing(values, ts) and \
                TS_MIN <= values[0] and values[-1] < TS_MAX:
            return ts
    ts = _numbers(obj, "ts", kind, None).astype(np.float64, copy=False)
    if ts.size == 0:
        raise ContractError(f"{kind}.ts: empty batch (send at least one sample)")
    if ts.size > 1:
        back = np.flatnonzero(np.diff(ts) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise ContractError(f"{kind}.ts[{i}] = {ts[i].item()!r}: timestamps must not go backwards "
                                f"(previous {ts[i - 1].item()!r})")
    if not (TS_MIN <= ts[0] and ts[-1] < TS_MAX):
        i = int(np.flatnonzero((ts < TS_MIN) | (ts >= TS_MAX))[0])
        raise _implausible(f"{kind}.ts[{i}]", values[i])
    return ts


def _time(obj: dict, kind: str, plausible: bool = True) -> float:
    """A message's single time (status, kpi): a number in the plausible range (``plausible``), or any
    number from 0 (a status, which receivers stamp on arrival: a last will's time is its connect time)."""
    ts = obj.get("ts")
    if not _is_number(ts):
        raise ContractError(f"{kind}.ts: required number (Unix time in seconds)")
    if plausible and not TS_MIN <= ts < TS_MAX:
        raise _implausible(f"{kind}.ts", ts)
    if not plausible and not 0 <= ts < float("inf"):
        raise ContractError(f"{kind}.ts: must be a finite number from 0, got {ts!r}")
    return float(ts)


_MAX_WHOLE = np.uint64(MAX_COUNTER)


def _whole(obj: dict, key: str, kind: str, n: int, what: str) -> np.ndarray:
    """An array of whole numbers from 0 to MAX_COUNTER - 1 (exact in a float64 and an int64) as int64."""
    arr = _numbers(obj, key, kind, n)
    if arr.dtype.kind == "f":
        bad = (arr < 0) | (arr >= MAX_COUNTER) | (arr != np.floor(arr))
    else:  # integers: one comparison, as a negative one read unsigned is 2**63 or more
        bad = arr.view(np.uint64) >= _MAX_WHOLE
    if np.count_nonzero(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ContractError(f"{kind}.{key}[{i}] = {obj[key][i]!r}: {what} are whole numbers >= 0 "
                            f"and below 2**53")
    return arr.astype(np.int64)


def _codes(obj: dict, key: str, kind: str, n: int, allowed: dict | None) -> np.ndarray:
    arr = _whole(obj, key, kind, n, "codes")
    if allowed is not None:
        bad = np.flatnonzero(arr > max(allowed))  # each model numbers its states 0..max (a test pins it)
        if bad.size:
            i = int(bad[0])
            raise ContractError(f"{kind}.{key}[{i}] = {arr[i]}: not a state of this model "
                                f"(valid: {sorted(allowed)})")
    return arr


def _optional_str(obj: dict, key: str, kind: str) -> str | None:
    v = obj.get(key)
    if v is not None and (not isinstance(v, str) or not v or len(v) > 128):
        raise ContractError(f"{kind}.{key}: must be a non-empty string of at most 128 characters")
    return v


_NUMBER_OR_NULL = frozenset({float, int, type(None)})


def _signal_matrix(signals: dict, n: int) -> np.ndarray | None:
    """Every signal of a telemetry batch as one (signals, n) float64 array (null -> NaN), with one NumPy
    conversion for the whole message instead of one per signal: at 10 rows per message the per-call
    overhead was most of decoding. None sends the batch to the per-signal path, which applies the same
    rules and names the first bad element: anything but arrays of length n holding numbers and nulls,
    and any batch holding a JSON true or false (refused there). Zeros are common (an idle machine's
    power), so a 0 or 1 alone costs one type scan, not the slow path."""
    values = list(signals.values())
    for v in values:
        if type(v) is not list or len(v) != n:
            return None
    flat = list(chain.from_iterable(values))
    try:
        arr = np.asarray(flat)
    except ValueError:  # nested arrays of different lengths
        return None
    if arr.ndim != 1:
        return None
    if arr.dtype.kind in "iuf":
        if _holds_bool(flat, arr):  # a JSON true/false mixed with numbers becomes 1/0 here
            return None
        arr = arr.astype(np.float64, copy=False)
    elif arr.dtype == object:  # nulls (sparse rows, as OPC UA sends them): check the element types, then
        if not set(map(type, flat)) <= _NUMBER_OR_NULL:  # None becomes NaN in the conversion
            return None
        arr = np.array(flat, dtype=np.float64)
    else:
        return None
    # No check for infinities: orjson refuses numbers that overflow a double (a test pins this), so every
    # number here is finite. (The check cost 3-4 µs a message.)
    return arr.reshape(len(values), n)


_HEADERS: dict[tuple[bytes, int], tuple[list, dict]] = {}  # a machine sends the same header every time
_HEADER_NAMES = [0]  # signal names held in _HEADERS: the bound of its memory


def _binary_header(text: bytes, nsig: int) -> tuple[list, dict]:
    """(signal names, units) of a binary telemetry header, checked once per distinct header."""
    got = _HEADERS.get((text, nsig))
    if got is not None:
        return got
    k = "telemetry header"
    head = _load(text, k)
    names = head.get("signals")
    if type(names) is not list or len(names) != nsig or not set(map(type, names)) <= {str}:
        raise ContractError(f"{k}.signals: required array of the {nsig} signal names")
    if "" in names or max(map(len, names)) > 128 or len(set(names)) != nsig:
        raise ContractError(f"{k}.signals: names must be 1-128 characters and unique")
    units = head["units"] if "units" in head else {}
    if type(units) is not dict or not set(map(type, units.values())) <= {str}:
        raise ContractError(f"{k}.units: must be an object of signal name -> unit string")
    got = (names, units)
    # bounded, for many machines or a producer that varies its header: 100,000 names (about 10 MB with the
    # header texts, for names of 16 characters), then it starts again
    if _HEADER_NAMES[0] + nsig + len(units) > 100_000:
        _HEADERS.clear()
        _HEADER_NAMES[0] = 0
    _HEADERS[text, nsig] = got
    _HEADER_NAMES[0] += nsig + len(units)
    return got


def _decode_telemetry_binary(data: bytes) -> TelemetryBatch:
    """Binary telemetry: the arrays are read-only views of ``data``, nothing is parsed per sample. The same
    rules as JSON: times finite and never going backwards, values finite or NaN (missing)."""
    k = "telemetry"
    if len(data) < BINARY_HEADER.size:
        raise ContractError(f"{k}: binary batch of {len(data)} bytes is shorter than its "
                            f"{BINARY_HEADER.size}-byte header")
    _, n, nsig, h = BINARY_HEADER.unpack_from(data)
    if not 0 < n <= MAX_BATCH:
        raise ContractError(f"{k}.rows: {n} rows, must be 1-{MAX_BATCH} per message")
    if not 0 < nsig <= MAX_SIGNALS:
        raise ContractError(f"{k}.signals: {nsig} signals, must be 1-{MAX_SIGNALS} per message")
    start = BINARY_HEADER.size + h
    size = start + 8 * n * (nsig + 1)
    if len(data) != size:
        raise ContractError(f"{k}: binary batch of {len(data)} bytes, its header says {size} "
                            f"({n} rows x {nsig} signals after a {h}-byte JSON header)")
    names, units = _binary_header(data[BINARY_HEADER.size:start], nsig)
    arr = np.frombuffer(data, "<f8", n * (nsig + 1), start)
    ts, values = arr[:n], arr[n:].reshape(nsig, n)
    # Few NumPy calls (each costs microseconds whatever the size): in non-decreasing times with no NaN
    # (a NaN fails every >= and every comparison with TS_MIN and TS_MAX), all are finite and plausible when
    # the first and last are.
    if not (TS_MIN <= ts[0] and ts[-1] < TS_MAX) or (n > 1 and np.count_nonzero(ts[1:] >= ts[:-1]) != n - 1):
        bad = np.flatnonzero(~np.isfinite(ts))
        back = np.flatnonzero(ts[1:] < ts[:-1])
        if not (bad.size or back.size):
            i = int(np.flatnonzero((ts < TS_MIN) | (ts >= TS_MAX))[0])
            raise _implausible(f"{k}.ts[{i}]", ts[i].item())
        i = int(bad[0]) if bad.size else int(back[0]) + 1
        raise ContractError(f"{k}.ts[{i}] = {ts[i].item()!r}: times must be finite and never go backwards")
    if np.count_nonzero(np.isinf(values)):
        s, i = (int(x[0]) for x in np.nonzero(np.isinf(values)))
        raise ContractError(f"{k}.signals.{names[s]}[{i}] = {values[s, i].item()!r}: must be a number "
                            "or NaN (missing)")
    return TelemetryBatch(ts, dict(zip(names, values)), dict(units))


def decode_telemetry(data: bytes | str) -> TelemetryBatch:
    """A telemetry batch, JSON or binary (``BINARY_MAGIC`` first)."""
    if type(data) is bytes and data[:4] == BINARY_MAGIC:
        return _decode_telemetry_binary(data)
    k = "telemetry"
    obj = _load(data, k)
    ts = _ts(obj, k)
    signals = obj.get("signals")
    if not isinstance(signals, dict) or not signals:
        raise ContractError(f"{k}.signals: required object of name -> array of numbers")
    if "" in signals or max(map(len, signals)) > 128:  # one C pass each, not a Python loop
        name = next(n for n in signals if not n or len(n) > 128)
        raise ContractError(f"{k}.signals: signal name {name!r} must be 1-128 characters")
    matrix = _signal_matrix(signals, ts.size)
    if matrix is not None:
        out = dict(zip(signals, matrix))
    else:
        out = {name: _numbers(signals, name, f"{k}.signals", ts.size, allow_null=True).astype(np.float64, copy=False)
               for name in signals}
    units = obj["units"] if "units" in obj else {}
    if type(units) is not dict or not set(map(type, units.values())) <= {str}:
        raise ContractError(f"{k}.units: must be an object of signal name -> unit string")
    return TelemetryBatch(ts, out, units)


def decode_state(data: bytes | str) -> StateBatch:
    k = "state"
    obj = _load(data, k)
    model = obj.get("model", "packml")
    if type(model) is not str or model not in STATE_MODELS:  # (a list or an object cannot be looked up)
        raise ContractError(f"{k}.model: {model!r} is not a state model (one of {sorted(STATE_MODELS)})")
    ts = _ts(obj, k)
    state = _codes(obj, "state", k, ts.size, STATE_MODELS[model])
    reason = _codes(obj, "reason", k, ts.size, None) if "reason" in obj else np.zeros(ts.size, np.int64)
    return StateBatch(ts, state, reason, model)


def decode_counts(data: bytes | str) -> CountsBatch:
    k = "counts"
    obj = _load(data, k)
    ts = _ts(obj, k)
    good = _whole(obj, "good", k, ts.size, "counters")
    reject = _whole(obj, "reject", k, ts.size, "counters")
    if "total" in obj:
        total = _whole(obj, "total", k, ts.size, "counters")
        bad = np.flatnonzero(total != good + reject)
        if bad.size:
            i = int(bad[0])
            raise ContractError(f"{k}.total[{i}] = {total[i]}: must equal good + reject "
                                f"({good[i]} + {reject[i]})")
    ict = obj.get("ideal_cycle_s")
    if ict is not None and (not _is_number(ict) or ict <= 0):
        raise ContractError(f"{k}.ideal_cycle_s: must be a number > 0 (seconds per part), got {ict!r}")
    return CountsBatch(ts, good, reject, _optional_str(obj, "product", k),
                       None if ict is None else float(ict))


def decode_status(data: bytes | str) -> Status:
    k = "status"
    obj = _load(data, k)
    if obj.get("status") not in ("online", "offline"):
        raise ContractError(f"{k}.status: must be \"online\" or \"offline\", got {obj.get('status')!r}")
    ts = _time(obj, k, plausible=False)  # the gateway stamps a status on arrival (docs/contract.md, status)
    info = obj.get("info", {})
    if not isinstance(info, dict):
        raise ContractError(f"{k}.info: must be an object")
    return Status(ts, obj["status"], info)


def decode_command(data: bytes | str) -> Command:
    k = "cmd"
    obj = _load(data, k)
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ContractError(f"{k}.cmd: required non-empty string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ContractError(f"{k}.args: must be an object")
    return Command(cmd, args)


MAX_HAND_REJECTS = 1_000_000  # rejects in one operator entry
_OPERATOR_KEYS = frozenset({"v", "ts", "by", "reason", "reject", "at"})


def decode_operator(data: bytes | str) -> OperatorEntry:
    """An operator entry: ``ts``, ``by`` and exactly one of ``reason`` (a stop's reason code) and ``reject``
    (parts found bad by hand); ``at`` optional. Whether the site knows the reason is the gateway's check."""
    k = "operator"
    obj = _load(data, k)
    extra = sorted(obj.keys() - _OPERATOR_KEYS)
    if extra:
        raise ContractError(f"{k}.{extra[0]}: not a field of this message (ts, by, reason or reject, at)")
    ts = _time(obj, k)
    by = obj.get("by")
    if type(by) is not str or not 1 <= len(by) <= 128:
        raise ContractError(f"{k}.by: required string of 1-128 characters (who entered it), got {by!r}")
    at = obj.get("at")
    if at is not None and not (_is_number(at) and TS_MIN <= at < TS_MAX):
        raise ContractError(f"{k}.at: when it was entered, Unix time in seconds, got {at!r}")
    if ("reason" in obj) == ("reject" in obj):
        raise ContractError(f"{k}: give either reason (a stop's reason code) or reject (parts found bad), "
                            f"not {'both' if 'reason' in obj else 'neither'}")
    if "reason" in obj:
        r = obj["reason"]
        if not (_is_number(r) and 0 <= r < MAX_COUNTER and r == math.floor(r)):
            raise ContractError(f"{k}.reason: must be a reason code (a whole number >= 0), got {r!r}")
        return OperatorEntry(ts, by, reason=int(r), at=None if at is None else float(at))
    n = obj["reject"]
    if not (_is_number(n) and 1 <= n <= MAX_HAND_REJECTS and n == math.floor(n)):
        raise ContractError(f"{k}.reject: must be a whole number of parts from 1 to {MAX_HAND_REJECTS}, got {n!r}")
    return OperatorEntry(ts, by, reject=int(n), at=None if at is None else float(at))


# The KPI message's shape (contract/schemas/kpi.json), checked field by field: (test, what it must be).
_NUM = (_is_number, "a number")
_NUM_OR_NULL = (lambda x: x is None or _is_number(x), "a number or null (undefined)")
_COUNT = (lambda x: _is_number(x) and x >= 0 and x == math.floor(x), "a whole number >= 0")
_KPI_MAIN = {"planned_s": _NUM, "run_s": _NUM, "operating_s": _NUM, "not_scheduled_s": _NUM, "breakdown_s": _NUM,
             "stopped_s": _NUM, "setup_s": _NUM, "small_stop_s": _NUM, "external_s": _NUM, "good": _COUNT, "reject": _COUNT,
             "total": _COUNT, "startup_reject": _COUNT, "ideal_s": _NUM_OR_NULL, "parts_without_ideal": _COUNT,
             "availability": _NUM_OR_NULL, "performance": _NUM_OR_NULL, "quality": _NUM_OR_NULL,
             "oee": _NUM_OR_NULL, "oee_simple": _NUM_OR_NULL, "utilisation": _NUM_OR_NULL, "teep": _NUM_OR_NULL,
             "failures": _COUNT, "mtbf_s": _NUM_OR_NULL, "mttr_s": _NUM_OR_NULL}
_KPI_BRIEF = {"start": _NUM, "end": _NUM, **{k: _KPI_MAIN[k] for k in (
    "planned_s", "run_s", "good", "reject", "availability", "performance", "quality", "oee")}}
_KPI_LOSSES = ("unplanned_stops", "external", "planned_stops", "small_stops", "slow_cycles", "production_rejects",
               "startup_rejects")
_KPI_LOSS = {"s": _NUM_OR_NULL, "pp": _NUM_OR_NULL}
_KPI_STOP = {"category": (lambda x: x in ("breakdown", "stopped", "setup", "small_stop", "external"),
                          "one of breakdown, stopped, setup, small_stop, external"),
             "reason": _COUNT, "seconds": _NUM}
_KPI_WINDOW = {"name": (lambda x: x == "since_start", '"since_start"'), "start": _NUM, "end": _NUM}


def _fields(where: str, obj, spec: dict) -> None:
    """An object with exactly the keys of ``spec``, each value passing its test (dicts: nested objects)."""
    if type(obj) is not dict:
        raise ContractError(f"{where}: must be an object")
    if obj.keys() != spec.keys():
        extra, missing = sorted(obj.keys() - spec.keys()), sorted(spec.keys() - obj.keys())
        raise ContractError(f"{where}.{extra[0]}: not a field of this message" if extra else
                            f"{where}.{missing[0]}: required")
    for key, rule in spec.items():
        if type(rule) is dict:
            _fields(f"{where}.{key}", obj[key], rule)
        elif not rule[0](obj[key]):
            raise ContractError(f"{where}.{key}: must be {rule[1]}, got {obj[key]!r}")


def decode_kpi(data: bytes | str) -> dict:
    """A KPI message as the gateway publishes it (a machine's, or a line's with ``machines``): exactly the
    fields of contract/schemas/kpi.json, no more and no fewer (docs/contract.md, kpi)."""
    k = "kpi"
    obj = _load(data, k)
    _time(obj, k)
    line = "machines" in obj
    windows = {"last_15min": _KPI_BRIEF, "last_1h": _KPI_BRIEF, "today": _KPI_BRIEF,
               "shift": _KPI_BRIEF if line else {**_KPI_BRIEF, "stop_reasons": (
                   lambda x: type(x) is list and len(x) <= 10, "an array of at most 10 stop reasons")}}
    spec = {"v": _NUM, "ts": _NUM, "tick_ts": _NUM, "window": _KPI_WINDOW, **_KPI_MAIN,
            "losses": dict.fromkeys(_KPI_LOSSES, _KPI_LOSS), "windows": windows}
    if line:
        spec["machines"] = (lambda x: type(x) is list and x and set(map(type, x)) == {str},
                            "a non-empty array of machine names")
        spec["n_machines"] = (lambda x: _COUNT[0](x) and x == len(obj["machines"]),
                              "the number of machines in kpi.machines")
        spec["bottleneck"] = (lambda x: x is None or type(x) is str, "a machine's name or null")
    else:
        spec["state"] = (lambda x: x is None or (_COUNT[0](x) and x <= max(PACKML)), "a state code or null")
        spec["state_name"] = (lambda x: x is None or type(x) is str, "a string or null")
        spec["status"] = (lambda x: x in ("online", "offline", None), '"online", "offline" or null')
    _fields(k, obj, spec)
    if not line:
        for i, stop in enumerate(obj["windows"]["shift"]["stop_reasons"]):
            _fields(f"{k}.windows.shift.stop_reasons[{i}]", stop, _KPI_STOP)
    return obj


DECODERS = {
    Kind.TELEMETRY: decode_telemetry,
    Kind.STATE: decode_state,
    Kind.COUNTS: decode_counts,
    Kind.STATUS: decode_status,
    Kind.KPI: decode_kpi,
    Kind.CMD: decode_command,
    Kind.OPERATOR: decode_operator,
}


def decode(kind: Kind | str, data: bytes | str):
    """Decode a payload of the given kind; ContractError with a precise reason if malformed."""
    decoder = DECODERS.get(kind)  # a Kind already (the gateway's case): no enum lookup
    try:
        return (decoder or DECODERS[Kind(kind)])(data)
    except RecursionError:  # orjson parses up to 1,024 levels; describing such a value is what overflows
        raise ContractError(f"{Kind(kind).value}: a value is nested too deeply (arrays or objects inside each "
                            f"other hundreds of levels deep); the contract's values are numbers, strings and "
                            f"flat arrays") from None
