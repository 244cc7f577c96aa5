"""Payloads of the fieldlab contract, version 1: JSON, columnar, checked.

Every payload is a JSON object with ``"v": 1``. Batches (telemetry, state,
counts) are columnar: one ``ts`` array (Unix time in seconds, float, non-
decreasing) and one array per value, all of the same length. ``decode`` turns a
payload straight into NumPy arrays and rejects anything malformed with a
``ContractError`` that names the field and, where it helps, the index.

The JSON Schema files in ``contract/schemas/`` describe the same rules for
producers in other languages (Node-RED, Telegraf, a PLC); tests keep both in step.
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
    if v != VERSION:
        raise ContractError(f"{kind}.v: expected schema version {VERSION}, got {v!r}")
    return obj


def _first_bad(values: list, ok) -> str:
    """Slow path, only on errors: find the first offending element for the message."""
    for i, x in enumerate(values):
        if not ok(x):
            return f"[{i}] = {x!r}"
    return ""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
    if arr.dtype.kind in "iuf" and arr.ndim == 1:
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


def _ts(obj: dict, kind: str) -> np.ndarray:
    values = obj.get("ts")
    if type(values) is list and 0 < len(values) <= MAX_BATCH:  # the usual case, with fewer calls: float times
        try:
            ts = np.asarray(values)  # (JSON numbers are finite: orjson refuses the others)
        except ValueError:  # nested arrays of different lengths: _numbers below names the element
            ts = np.empty(0, dtype=object)
        if ts.dtype.kind == "f" and ts.ndim == 1 and _non_decreasing(values, ts):
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
    return ts


def _counter(obj: dict, key: str, kind: str, n: int) -> np.ndarray:
    arr = _numbers(obj, key, kind, n)
    bad = np.flatnonzero((arr < 0) | (arr >= MAX_COUNTER) | (arr != np.floor(arr)))
    if bad.size:
        i = int(bad[0])
        raise ContractError(f"{kind}.{key}[{i}] = {arr[i].item()!r}: counters are whole numbers >= 0")
    return arr.astype(np.int64)


def _codes(obj: dict, key: str, kind: str, n: int, allowed: dict | None) -> np.ndarray:
    arr = _numbers(obj, key, kind, n)
    if arr.dtype.kind == "f" and (arr != np.floor(arr)).any():
        i = int(np.flatnonzero(arr != np.floor(arr))[0])
        raise ContractError(f"{kind}.{key}[{i}] = {arr[i].item()!r}: codes are whole numbers")
    arr = arr.astype(np.int64)
    if allowed is not None:
        bad = np.flatnonzero(~np.isin(arr, np.fromiter(allowed, dtype=np.int64)))
        if bad.size:
            i = int(bad[0])
            raise ContractError(f"{kind}.{key}[{i}] = {arr[i]}: not a state of this model "
                                f"(valid: {sorted(allowed)})")
    elif (arr < 0).any():
        i = int(np.flatnonzero(arr < 0)[0])
        raise ContractError(f"{kind}.{key}[{i}] = {arr[i]}: codes are >= 0")
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
    and any batch holding a JSON true or false (the per-signal rules for booleans are kept exactly as
    they were). Zeros are common (an idle machine's power), so a 0 or 1 alone costs one type scan, not
    the slow path."""
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
        # a JSON true/false mixed with numbers becomes 1/0 here: only then look at the element types
        if np.count_nonzero((arr == 0) | (arr == 1)) and bool in set(map(type, flat)):
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
    # (a NaN fails every >=), all are finite when the first and last are.
    if not (math.isfinite(ts[0]) and math.isfinite(ts[-1])) or (
            n > 1 and np.count_nonzero(ts[1:] >= ts[:-1]) != n - 1):
        bad = np.flatnonzero(~np.isfinite(ts))
        i = int(bad[0]) if bad.size else int(np.flatnonzero(ts[1:] < ts[:-1])[0]) + 1
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
    if model not in STATE_MODELS:
        raise ContractError(f"{k}.model: {model!r} is not a state model (one of {sorted(STATE_MODELS)})")
    ts = _ts(obj, k)
    state = _codes(obj, "state", k, ts.size, STATE_MODELS[model])
    reason = _codes(obj, "reason", k, ts.size, None) if "reason" in obj else np.zeros(ts.size, np.int64)
    return StateBatch(ts, state, reason, model)


def decode_counts(data: bytes | str) -> CountsBatch:
    k = "counts"
    obj = _load(data, k)
    ts = _ts(obj, k)
    good = _counter(obj, "good", k, ts.size)
    reject = _counter(obj, "reject", k, ts.size)
    if "total" in obj:
        total = _counter(obj, "total", k, ts.size)
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
    ts = obj.get("ts")
    if not _is_number(ts):
        raise ContractError(f"{k}.ts: required number (Unix time in seconds)")
    info = obj.get("info", {})
    if not isinstance(info, dict):
        raise ContractError(f"{k}.info: must be an object")
    return Status(float(ts), obj["status"], info)


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


def decode_kpi(data: bytes | str) -> dict:
    k = "kpi"
    obj = _load(data, k)
    for key in ("availability", "performance", "quality", "oee"):
        v = obj.get(key, "missing")
        if v is not None and not _is_number(v):
            raise ContractError(f"{k}.{key}: required number or null (undefined), got {v!r}")
    for key in ("good", "reject", "planned_s", "run_s"):
        if not _is_number(obj.get(key)):
            raise ContractError(f"{k}.{key}: required number")
    return obj


DECODERS = {
    Kind.TELEMETRY: decode_telemetry,
    Kind.STATE: decode_state,
    Kind.COUNTS: decode_counts,
    Kind.STATUS: decode_status,
    Kind.KPI: decode_kpi,
    Kind.CMD: decode_command,
}


def decode(kind: Kind | str, data: bytes | str):
    """Decode a payload of the given kind; ContractError with a precise reason if malformed."""
    decoder = DECODERS.get(kind)  # a Kind already (the gateway's case): no enum lookup
    return (decoder or DECODERS[Kind(kind)])(data)
