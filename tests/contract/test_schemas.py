"""The published JSON Schema files and the decoder must agree on what is valid."""
import json
from pathlib import Path

import jsonschema
import pytest

import contract
from contract import ContractError, Kind, decode

SCHEMAS = Path(contract.__file__).parent / "schemas"

VALID = {
    Kind.TELEMETRY: {"v": 1, "ts": [1.0, 2.0], "signals": {"temp": [20.1, None]}, "units": {"temp": "degC"}},
    Kind.STATE: {"v": 1, "model": "packml", "ts": [1.0], "state": [4], "reason": [0]},
    Kind.COUNTS: {"v": 1, "ts": [1.0, 2.0], "good": [5, 6], "reject": [0, 0], "total": [5, 6],
                  "product": "p1", "ideal_cycle_s": 2.5},
    Kind.STATUS: {"v": 1, "ts": 1.0, "status": "online", "info": {"agent": "x"}},
    Kind.KPI: {"v": 1, "ts": 1.0, "good": 1, "reject": 0, "planned_s": 60.0, "run_s": 50.0,
               "availability": 0.8333, "performance": None, "quality": 1.0, "oee": 0.5},
    Kind.CMD: {"v": 1, "cmd": "breakdown", "args": {"minutes": 5}},
}

INVALID = [
    (Kind.TELEMETRY, {"v": 1, "ts": [1.0], "signals": {}}),
    (Kind.TELEMETRY, {"v": 1, "ts": [1.0], "signals": {"t": ["hot"]}}),
    (Kind.STATE, {"v": 1, "ts": [1.0], "state": [17]}),
    (Kind.STATE, {"v": 1, "ts": [1.0], "state": [4], "model": "isa88"}),
    (Kind.COUNTS, {"v": 1, "ts": [1.0], "good": [-1], "reject": [0]}),
    (Kind.COUNTS, {"v": 1, "ts": [1.0], "good": [1]}),
    (Kind.COUNTS, {"v": 2, "ts": [1.0], "good": [1], "reject": [0]}),
    (Kind.COUNTS, {"v": 1, "ts": [1.0], "good": [1], "reject": [0], "ideal_cycle_s": 0}),
    (Kind.STATUS, {"v": 1, "ts": 1.0, "status": "asleep"}),
    (Kind.KPI, {"v": 1, "ts": 1.0, "good": 1, "reject": 0, "planned_s": 1, "run_s": 1,
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
        Kind.COUNTS: encode_counts([1, 2], [1, 2], [0, 0], "p", 3.0),
        Kind.STATE: encode_state([1], [4], [0]),
        Kind.TELEMETRY: encode_telemetry([1], {"x": [float("nan")]}),
        Kind.STATUS: encode_status(1.0, "online"),
        Kind.KPI: encode_kpi({"ts": 1.0, "good": 0, "reject": 0, "planned_s": 0.0, "run_s": 0.0,
                              "availability": float("nan"), "performance": float("nan"),
                              "quality": float("nan"), "oee": float("nan")}),
    }
    for kind, payload in samples.items():
        jsonschema.validate(json.loads(payload), schema(kind))
