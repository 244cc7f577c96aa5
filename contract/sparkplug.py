"""Sparkplug B (Eclipse Sparkplug 3.0): topics, payloads, sequence numbers.

Both the gateway (Sparkplug devices read as machines, gateway/sparkplug.py) and the edge agent (a machine
published as a Sparkplug device, edge/sparkplug.py) speak it, and neither may import the other: so it lives
in the contract package. docs/contract.md, "Sparkplug B", has the whole picture.

    spBv1.0/<group>/<NBIRTH|NDEATH|NDATA|NCMD>/<edge node>
    spBv1.0/<group>/<DBIRTH|DDEATH|DDATA|DCMD>/<edge node>/<device>
    spBv1.0/STATE/<host id>                      (a primary host's JSON {"online": ..., "timestamp": ...})

Payloads are protobuf messages of the Eclipse Tahu schema (``sparkplug_b.proto``, compiled once into
``sparkplug_b_pb2.py``: see its header). Times in Sparkplug are milliseconds since 1970.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from . import sparkplug_b_pb2 as pb
from .errors import ContractError

NAMESPACE = "spBv1.0"
NODE_TYPES = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})
STATE = "STATE"
BDSEQ = "bdSeq"  # the NBIRTH's and the NDEATH's (the last will's) session number
REBIRTH = "Node Control/Rebirth"  # an NCMD metric: a host asks the node to send its births again
COMPRESSED = "SPBV1.0_COMPRESSED"  # payload.uuid of a compressed payload (body = DEFLATE or GZIP of a payload)
MAX_PAYLOAD = 16 * 2**20  # bytes a (decompressed) payload may have

# DataType of sparkplug_b.proto: the scalar ones, which fieldlab reads and writes
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = 1, 2, 3, 4, 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
NUMERIC = frozenset({INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, FLOAT, DOUBLE, BOOLEAN})
_SIGNED = {INT8: 32, INT16: 32, INT32: 32, INT64: 64}  # two's complement in the unsigned field of that width


@dataclass(frozen=True)
class Topic:
    group: str
    type: str  # NBIRTH, ..., DCMD, or STATE (then ``node`` is the host id and ``group`` is empty)
    node: str
    device: str | None = None

    def __str__(self) -> str:
        if self.type == STATE:
            return f"{NAMESPACE}/{STATE}/{self.node}"
        return "/".join([NAMESPACE, self.group, self.type, self.node] + ([self.device] if self.device else []))


def topic(group: str, type_: str, node: str, device: str | None = None) -> str:
    return str(Topic(group, type_, node, device))


def state_topic(host_id: str) -> str:
    """The retained STATE topic of a primary host application."""
    return f"{NAMESPACE}/{STATE}/{host_id}"


def parse_topic(text: str) -> Topic:
    """A Sparkplug topic; ContractError naming what is wrong with it."""
    parts = text.split("/")
    if parts[0] != NAMESPACE:
        raise ContractError(f"topic {text!r}: not a Sparkplug B topic (starts with {NAMESPACE}/)")
    if len(parts) == 3 and parts[1] == STATE and parts[2]:
        return Topic("", STATE, parts[2])
    if len(parts) in (4, 5) and all(parts[1:]):
        t = parts[2]
        if t in NODE_TYPES and len(parts) == 4 or t in DEVICE_TYPES and len(parts) == 5:
            return Topic(parts[1], t, parts[3], parts[4] if len(parts) == 5 else None)
        if t in NODE_TYPES | DEVICE_TYPES:
            raise ContractError(f"topic {text!r}: {t} takes {'no device' if t in NODE_TYPES else 'a device'} "
                                f"(spBv1.0/<group>/{t}/<edge node>{'' if t in NODE_TYPES else '/<device>'})")
        raise ContractError(f"topic {text!r}: unknown message type {t!r} (one of "
                            f"{', '.join(sorted(NODE_TYPES | DEVICE_TYPES))})")
    raise ContractError(f"topic {text!r}: expected spBv1.0/<group>/<type>/<edge node>[/<device>]")


@dataclass
class Metric:
    name: str | None = None  # in births; DATA messages may send the alias only
    alias: int | None = None
    datatype: int | None = None  # in births (DataType number); later messages may leave it out
    value: Any = None  # None: null, or a kind of value fieldlab does not read (DataSet, Template, Bytes, arrays)
    ts_ms: int | None = None


@dataclass
class Payload:
    ts_ms: int | None
    seq: int | None
    metrics: list[Metric]

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def _value(m, datatype: int | None):
    kind = m.WhichOneof("value")
    if m.is_null or kind is None:
        return None
    v = getattr(m, kind)
    if kind == "int_value" or kind == "long_value":
        bits = _SIGNED.get(datatype)
        width = 32 if kind == "int_value" else 64
        if bits and v >= 2 ** (width - 1):  # a negative number of a signed type
            v -= 2 ** width
        return v
    if kind in ("float_value", "double_value", "boolean_value", "string_value"):
        return v
    return None  # bytes, DataSet, Template, extension: not read


def _decompress(p, size: int):
    algorithm = next((m.string_value for m in p.metrics if m.name == "algorithm"), "DEFLATE").upper()
    try:
        if algorithm == "GZIP":
            raw = gzip.decompress(p.body)  # (bounded below: a GZIP bomb costs memory once, then is refused)
        elif algorithm == "DEFLATE":
            d = zlib.decompressobj()
            raw = d.decompress(p.body, MAX_PAYLOAD + 1)
        else:
            raise ContractError(f"Sparkplug payload: compressed with {algorithm!r}; DEFLATE and GZIP are read")
    except (OSError, EOFError, zlib.error) as e:
        raise ContractError(f"Sparkplug payload: compressed body cannot be decompressed ({e})") from None
    if len(raw) > MAX_PAYLOAD:
        raise ContractError(f"Sparkplug payload: more than {MAX_PAYLOAD} bytes decompressed")
    return decode_payload(raw, compressed=False)


def decode_payload(data: bytes, compressed: bool = True) -> Payload:
    """A Sparkplug B payload (compressed ones too); ContractError if it is not one."""
    if len(data) > MAX_PAYLOAD:
        raise ContractError(f"Sparkplug payload: {len(data)} bytes, at most {MAX_PAYLOAD}")
    p = pb.Payload()
    try:
        p.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:  # (the C parser raises DecodeError; deep nesting others)
        raise ContractError(f"Sparkplug payload: not a Sparkplug B protobuf message ({e}); is it JSON or "
                            f"another MQTT convention on a spBv1.0 topic?") from None
    if compressed and p.uuid == COMPRESSED:
        return _decompress(p, len(data))
    metrics = [Metric(m.name if m.HasField("name") else None, m.alias if m.HasField("alias") else None,
                      m.datatype if m.HasField("datatype") else None, _value(m, m.datatype),
                      m.timestamp if m.HasField("timestamp") else None) for m in p.metrics]
    return Payload(p.timestamp if p.HasField("timestamp") else None, p.seq if p.HasField("seq") else None,
                   metrics)


def _set_value(m, datatype: int, value) -> None:
    if value is None:
        m.is_null = True
    elif datatype in (INT8, INT16, INT32, UINT8, UINT16):  # as the Eclipse Tahu libraries map them
        m.int_value = int(value) & 0xFFFFFFFF
    elif datatype in (INT64, UINT32, UINT64, DATETIME):
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == FLOAT:
        m.float_value = float(value)
    elif datatype == DOUBLE:
        m.double_value = float(value)
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype in (STRING, TEXT, UUID):
        m.string_value = str(value)
    else:
        raise ContractError(f"Sparkplug metric: data type {datatype} is not written by fieldlab")


def encode_payload(metrics: list[Metric], ts_ms: int | None = None, seq: int | None = None) -> bytes:
    """A Sparkplug B payload. A metric's datatype says which value field it uses (the Tahu mapping)."""
    p = pb.Payload()
    if ts_ms is not None:
        p.timestamp = int(ts_ms)
    if seq is not None:
        p.seq = int(seq)
    for metric in metrics:
        m = p.metrics.add()
        if metric.name is not None:
            m.name = metric.name
        if metric.alias is not None:
            m.alias = int(metric.alias)
        if metric.ts_ms is not None:
            m.timestamp = int(metric.ts_ms)
        if metric.datatype is not None:
            m.datatype = metric.datatype
        _set_value(m, metric.datatype, metric.value)
    return p.SerializeToString()


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``: every message of an edge node after its NBIRTH (seq 0) counts
    up by one, 255 wraps to 0."""
    return (seq + 1) & 0xFF


def rebirth_request(ts_ms: int) -> bytes:
    """The NCMD payload a host sends an edge node to ask for its births again."""
    return encode_payload([Metric(REBIRTH, None, BOOLEAN, True, None)], ts_ms)


def is_rebirth_request(payload: Payload) -> bool:
    m = payload.metric(REBIRTH)
    return m is not None and m.value is True


def encode_state(online: bool, ts_ms: int) -> bytes:
    """A primary host's STATE message (Sparkplug 3.0: JSON, retained)."""
    return json.dumps({"online": bool(online), "timestamp": int(ts_ms)}).encode()


def decode_state(data: bytes) -> bool:
    """Whether a STATE message says the host is online (3.0 JSON, or the 2.2 text ONLINE/OFFLINE)."""
    text = data.decode("utf-8", "replace").strip()
    if text in ("ONLINE", "OFFLINE"):
        return text == "ONLINE"
    try:
        obj = json.loads(text)
    except ValueError:
        raise ContractError(f"Sparkplug STATE: {text[:80]!r} is neither JSON {{\"online\": ...}} nor "
                            f"ONLINE/OFFLINE") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("online"), bool):
        raise ContractError("Sparkplug STATE: expected JSON {\"online\": true|false, \"timestamp\": ...}")
    return obj["online"]
