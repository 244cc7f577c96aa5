"""contract/sparkplug.py: topics, the protobuf payload both ways, seq, STATE; the generated module vs the .proto.
Pure Python, well under a second. (The payloads against an independent implementation: tests/interop.)"""
import re
import zlib
from pathlib import Path

import pytest

from contract import ContractError
from contract import sparkplug as spb
from contract import sparkplug_b_pb2 as pb

PROTO = Path(spb.__file__).with_name("sparkplug_b.proto")


def test_topics_parse_and_print():
    t = spb.parse_topic("spBv1.0/plant1/DDATA/edge-1/press.2")
    assert (t.group, t.type, t.node, t.device) == ("plant1", "DDATA", "edge-1", "press.2")
    assert str(t) == "spBv1.0/plant1/DDATA/edge-1/press.2"
    assert spb.parse_topic("spBv1.0/plant1/NBIRTH/edge-1").device is None
    assert spb.parse_topic("spBv1.0/STATE/scada").type == "STATE"
    assert spb.topic("g", "NCMD", "n") == "spBv1.0/g/NCMD/n"


@pytest.mark.parametrize("topic, says", [
    ("spBv1.0/g/DDATA/n", "DDATA takes a device"),
    ("spBv1.0/g/NDATA/n/d", "NDATA takes no device"),
    ("spBv1.0/g/XDATA/n", "unknown message type 'XDATA'"),
    ("spBv1.0/g", "expected spBv1.0/<group>/<type>/<edge node>[/<device>]"),
    ("spAv1.0/g/NDATA/n", "not a Sparkplug B topic"),
])
def test_bad_topics_say_what_is_wrong(topic, says):
    with pytest.raises(ContractError, match=re.escape(says)):
        spb.parse_topic(topic)


def test_payload_round_trip_keeps_types_signs_and_nulls():
    metrics = [spb.Metric("Temp", 1, spb.DOUBLE, -3.25, 1_700_000_000_123),
               spb.Metric("Level", 2, spb.FLOAT, 0.5),
               spb.Metric("Offset", 3, spb.INT8, -5), spb.Metric("Delta", 4, spb.INT32, -70000),
               spb.Metric("Big", 5, spb.INT64, -(2**40)), spb.Metric("Count", 6, spb.UINT64, 2**53 - 1),
               spb.Metric("Word", 7, spb.UINT32, 4_000_000_000), spb.Metric("On", 8, spb.BOOLEAN, False),
               spb.Metric("Product", 9, spb.STRING, "A-12"), spb.Metric("Gone", 10, spb.DOUBLE, None),
               spb.Metric(None, 6, spb.UINT64, 7)]  # alias only
    p = spb.decode_payload(spb.encode_payload(metrics, 1_700_000_000_000, 255))
    assert (p.ts_ms, p.seq) == (1_700_000_000_000, 255)
    assert [(m.name, m.alias, m.datatype, m.value, m.ts_ms) for m in p.metrics] == \
        [(m.name, m.alias, m.datatype, m.value, m.ts_ms) for m in metrics]
    assert p.metric("Count").value == 2**53 - 1


def test_what_is_not_a_sparkplug_payload_is_refused_with_a_hint():
    with pytest.raises(ContractError, match="not a Sparkplug B protobuf message .* JSON"):
        spb.decode_payload(b'{"v": 1, "ts": [1]}')


def test_compressed_payloads_are_read():
    inner = spb.encode_payload([spb.Metric("Good", 1, spb.UINT64, 42)], 1_700_000_000_000, 3)
    outer = pb.Payload(uuid=spb.COMPRESSED, body=zlib.compress(inner))
    p = spb.decode_payload(outer.SerializeToString())
    assert (p.seq, p.metrics[0].value) == (3, 42)
    outer = pb.Payload(uuid=spb.COMPRESSED, body=b"not deflate")
    with pytest.raises(ContractError, match="cannot be decompressed"):
        spb.decode_payload(outer.SerializeToString())


def test_seq_wraps_and_rebirth_and_state_messages():
    assert [spb.next_seq(s) for s in (0, 254, 255)] == [1, 255, 0]
    req = spb.decode_payload(spb.rebirth_request(1_700_000_000_000))
    assert spb.is_rebirth_request(req) and req.metrics[0].datatype == spb.BOOLEAN
    assert spb.decode_state(spb.encode_state(True, 1)) is True
    assert spb.decode_state(b"OFFLINE") is False  # Sparkplug 2.2's text form
    with pytest.raises(ContractError, match="STATE"):
        spb.decode_state(b"[1]")


def _proto_fields(text: str) -> set[tuple[str, int]]:
    text = re.sub(r"//.*", "", text)
    fields = {(m[1], int(m[2])) for m in re.finditer(r"\b(?:optional|repeated|required)\s+[\w.]+\s+(\w+)\s*=\s*(\d+)",
                                                    text)}
    oneof = {(m[1], int(m[2])) for m in re.finditer(r"^\s*[\w.]+\s+(\w+)\s*=\s*(\d+)\s*;", text, re.M)}
    enum = {(m[1], int(m[2])) for m in re.finditer(r"^\s*(\w+)\s*=\s*(\d+)\s*;", text, re.M)}  # Int8 = 1;
    return fields | oneof | enum


def _descriptor_fields(desc) -> set[tuple[str, int]]:
    out = {(f.name, f.number) for f in desc.fields}
    for nested in desc.nested_types:
        out |= _descriptor_fields(nested)
    return out


def test_the_generated_module_matches_the_proto():
    """sparkplug_b_pb2.py is generated once and committed: every field (name and number) and every data type
    of the .proto is in it, and nothing else."""
    text = PROTO.read_text()
    generated = _descriptor_fields(pb.Payload.DESCRIPTOR)
    enum = {(v.name, v.number) for v in pb.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert _proto_fields(text) == generated | enum
    assert len(enum) == 35 and ("DateTimeArray", 34) in enum
