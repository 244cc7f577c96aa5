"""The published JSON Schema files and the decoder must agree on what is valid."""
import json
from pathlib import Path

import jsonschema
import pytest

import contract
from contract import ContractError, Kind, decode

SCHEMAS = Path(contract.__file__).parent / "schemas"
T = 1764547200.0  # 2025-12-01T00:00:00Z

VALID = {
    Kind.TELEMETRY: {"v": 1, "ts": [T, T + 1], "signals": {"temp": [20.1, None]}, "units": {"temp": "degC"}},
    Kind.STATE: {"v": 1, "model": "packml", "ts": [T], "state": [4], "reason": [0]},
    Kind.COUNTS: {"v": 1, "ts": [T, T + 1], "good": [5, 6], "reject": [0, 0], "total": [5, 6],
                  "product": "p1", "ideal_cycle_s": 2.5},
    Kind.STATUS: {"v": 1, "ts": T, "status": "online", "info": {"agent": "x"}},
    Kind.KPI: {"v": 1, "ts": T, "good": 1, "reject": 0, "planned_s": 60.0, "run_s": 50.0,
               "availability": 0.8333, "performance": None, "quality": 1.0, "oee": 0.5},
    Kind.CMD: {"v": 1, "cmd": "breakdown", "args": {"minutes": 5}},
}

INVALID = [
    (Kind.TELEMETRY, {"v": 1, "ts": [T], "signals": {}}),
    (Kind.TELEMETRY, {"v": 1, "ts": [T], "signals": {"t": ["hot"]}}),
    (Kind.STATE, {"v": 1, "ts": [T], "state": [17]}),
    (Kind.STATE, {"v": 1, "ts": [T], "state": [4], "model": "isa88"}),
    (Kind.COUNTS, {"v": 1, "ts": [T], "good": [-1], "reject": [0]}),
    (Kind.COUNTS, {"v": 1, "ts": [T], "good": [1]}),
    (Kind.COUNTS, {"v": 2, "ts": [T], "good": [1], "reject": [0]}),
    (Kind.COUNTS, {"v": 1, "ts": [T], "good": [1], "reject": [0], "ideal_cycle_s": 0}),
    (Kind.STATUS, {"v": 1, "ts": T, "status": "asleep"}),
    (Kind.KPI, {"v": 1, "ts": T, "good": 1, "reject": 0, "planned_s": 1, "run_s": 1,
                "availability": "high", "performance": 1, "quality": 1, "oee": 1}),
    (Kind.CMD, {"v": 1, "cmd": ""}),
]


def schema(kind):
    return json.loads((SCHEMAS / f"{kind.value}.json").read_text())


def test_every_kind_has_a_valid_schema_file():
    for kind in Kind:
        jsonschema.Draft202012Validator.check_schema(schema(kind))


@pytest.mark.parametrize("kind", list(Kind))
def test_valid_examples_pass_schema_and_decoder(kind):
    jsonschema.validate(VALID[kind], schema(kind))
    decode(kind, json.dumps(VALID[kind]))


@pytest.mark.parametrize("kind, payload", INVALID)
def test_invalid_examples_fail_schema_and_decoder(kind, payload):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema(kind))
    with pytest.raises(ContractError):
        decode(kind, json.dumps(payload))


def test_encoders_produce_schema_valid_payloads():
    from contract import encode_counts, encode_kpi, encode_state, encode_status, encode_telemetry
    samples = {
        Kind.COUNTS: encode_counts([T, T + 1], [1, 2], [0, 0], "p", 3.0),
        Kind.STATE: encode_state([T], [4], [0]),
        Kind.TELEMETRY: encode_telemetry([T], {"x": [float("nan")]}),
        Kind.STATUS: encode_status(T, "online"),
        Kind.KPI: encode_kpi({"ts": T, "good": 0, "reject": 0, "planned_s": 0.0, "run_s": 0.0,
                              "availability": float("nan"), "performance": float("nan"),
                              "quality": float("nan"), "oee": float("nan")}),
    }
    for kind, payload in samples.items():
        jsonschema.validate(json.loads(payload), schema(kind))


# ----------------------------------------------------------------------------- plausible times, booleans

def _with_ts(kind, t):
    """VALID[kind] with every time set to ``t``."""
    doc = json.loads(json.dumps(VALID[kind]))
    doc["ts"] = [t] * len(doc["ts"]) if isinstance(doc["ts"], list) else t
    return doc


TIMED = [kind for kind in Kind if "ts" in VALID[kind] and kind is not Kind.STATUS]  # a status: stamped on arrival


def test_every_time_in_the_schemas_has_the_decoders_plausible_range():
    assert (contract.TS_MIN, contract.TS_MAX) == (946684800.0, 4102444800.0)  # 2000-01-01, 2100-01-01 UTC
    assert {kind for kind in Kind if "ts" in schema(kind)["properties"]} == {*TIMED, Kind.STATUS}
    assert schema(Kind.STATUS)["properties"]["ts"]["minimum"] == 0  # any time from 0: receivers stamp it
    for kind in TIMED:
        ts = schema(kind)["properties"]["ts"]
        rule = ts["items"] if ts["type"] == "array" else ts
        assert (rule["minimum"], rule["exclusiveMaximum"]) == (contract.TS_MIN, contract.TS_MAX), kind
        assert "maximum" not in rule and "exclusiveMinimum" not in rule, kind


@pytest.mark.parametrize("t, ok", [(0, True), (12.5, True), (1765432100123, True), (-1.5, False), (True, False)])
def test_schema_and_decoder_agree_on_a_status_time(t, ok):
    doc = _with_ts(Kind.STATUS, t)
    assert jsonschema.Draft202012Validator(schema(Kind.STATUS)).is_valid(doc) is ok
    if ok:
        assert decode(Kind.STATUS, json.dumps(doc)).ts == t
    else:
        with pytest.raises(ContractError, match=r"^status\.ts: "):
            decode(Kind.STATUS, json.dumps(doc))


@pytest.mark.parametrize("kind", TIMED)
@pytest.mark.parametrize("t, ok", [
    (946684800.0, True), (946684800, True), (946684799.999, False),  # TS_MIN is the first plausible time
    (4102444799.999, True), (4102444800.0, False), (4102444800, False),  # TS_MAX is the first implausible one
    (1765432100123, False), (0, False), (0.0, False), (-1.5, False), (12.5, False),
])
def test_schemas_and_decoder_agree_on_the_plausible_range(kind, t, ok):
    doc = _with_ts(kind, t)
    assert jsonschema.Draft202012Validator(schema(kind)).is_valid(doc) is ok
    if ok:
        decode(kind, json.dumps(doc))
    else:
        with pytest.raises(ContractError, match=rf"^{kind.value}\.ts(\[0\])? = "):
            decode(kind, json.dumps(doc))


BOOLEANS = [  # JSON true/false where the schemas want a number: Python reads them as 1 and 0
    (Kind.TELEMETRY, {"v": True}),
    (Kind.TELEMETRY, {"signals": {"temp": [True, None]}}),
    (Kind.TELEMETRY, {"signals": {"temp": [False, 20.5]}}),
    (Kind.STATE, {"v": True}),
    (Kind.STATE, {"ts": [T, T], "state": [True, 4], "reason": [0, 0]}),
    (Kind.STATE, {"ts": [T, T], "state": [4, 4], "reason": [False, 101]}),
    (Kind.COUNTS, {"v": True}),
    (Kind.COUNTS, {"good": [True, 5], "total": [1, 5]}),
    (Kind.COUNTS, {"reject": [False, 1], "total": [5, 7]}),
    (Kind.COUNTS, {"total": [5, True], "good": [5, 1]}),
    (Kind.STATUS, {"v": True}),
    (Kind.KPI, {"v": True}),
    (Kind.CMD, {"v": True}),
]
MODELS = [(Kind.STATE, {"model": bad}) for bad in ([], {}, ["packml"], 1, None, True, "")]


@pytest.mark.parametrize("kind, change", BOOLEANS + MODELS)
def test_booleans_and_wrong_types_fail_schema_and_decoder(kind, change):
    doc = {**VALID[kind], **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema(kind))
    with pytest.raises(ContractError, match=rf"^{kind.value}\.({'|'.join(change)})"):
        decode(kind, json.dumps(doc))
