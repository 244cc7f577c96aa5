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
    Kind.KPI: None,  # KPI below: a whole message, as the gateway sends it
    Kind.CMD: {"v": 1, "cmd": "breakdown", "args": {"minutes": 5}},
    Kind.OPERATOR: {"v": 1, "ts": T, "reason": 101, "by": "anna", "at": T + 600},
}


def _brief(**change):
    """One of a KPI message's windows in brief (``windows``)."""
    return {"start": T, "end": T + 900.0, "planned_s": 900.0, "run_s": 600.0, "good": 200, "reject": 3,
            "availability": 0.6667, "performance": 1.015, "quality": 0.9852, "oee": 0.6667, **change}


_MAIN = {"planned_s": 900.0, "run_s": 600.0, "operating_s": 600.0, "not_scheduled_s": 0.0, "breakdown_s": 300.0,
         "stopped_s": 0.0, "setup_s": 0.0, "small_stop_s": 0.0, "external_s": 0.0, "good": 200, "reject": 3, "total": 203,
         "startup_reject": 0, "ideal_s": 609.0, "parts_without_ideal": 0, "availability": 0.6667,
         "performance": 1.015, "quality": 0.9852, "oee": 0.6667, "oee_simple": 0.6667, "utilisation": 1.0,
         "teep": 0.6667, "failures": 1, "mtbf_s": 600.0, "mttr_s": None,
         "losses": {"unplanned_stops": {"s": 300.0, "pp": 33.33}, "external": {"s": 0.0, "pp": 0.0},
                    "planned_stops": {"s": 0.0, "pp": 0.0},
                    "small_stops": {"s": 0.0, "pp": 0.0}, "slow_cycles": {"s": -9.0, "pp": -1.0},
                    "production_rejects": {"s": 9.0, "pp": 1.0}, "startup_rejects": {"s": None, "pp": None}}}
#: A machine's KPI message (taken from the gateway's output: gateway/service.py kpi_rows, encode_kpi).
VALID[Kind.KPI] = {
    "v": 1, "ts": T + 900.0, "window": {"name": "since_start", "start": T, "end": T + 900.0},
    "state": 4, "state_name": "Execute", **_MAIN,
    "windows": {"last_15min": _brief(), "last_1h": _brief(), "today": _brief(),
                "shift": _brief(stop_reasons=[{"category": "breakdown", "reason": 101, "seconds": 300.0}])},
    "status": "online", "tick_ts": T + 901.5}
#: A line's KPI message (…/<line>/_line/kpi).
LINE_KPI = {
    "v": 1, "ts": T + 900.0, "window": {"name": "since_start", "start": T, "end": T + 900.0},
    "machines": ["A", "B"], "n_machines": 2, "bottleneck": "B", **_MAIN,
    "windows": {"last_15min": _brief(), "last_1h": _brief(), "today": _brief(), "shift": _brief()},
    "tick_ts": T + 901.5}

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
    (Kind.OPERATOR, {"v": 1, "ts": T, "by": "anna"}),  # neither reason nor reject
    (Kind.OPERATOR, {"v": 1, "ts": T, "by": "anna", "reason": 101, "reject": 2}),  # both
    (Kind.OPERATOR, {"v": 1, "ts": T * 1000, "by": "anna", "reason": 101}),  # milliseconds
    (Kind.OPERATOR, {"v": 1, "ts": T, "by": "anna", "reject": 0}),
    (Kind.OPERATOR, {"v": 1, "ts": T, "by": "", "reason": 101}),
    (Kind.OPERATOR, {"v": 1, "ts": T, "by": "anna", "reason": 101, "who": "x"}),  # a typo of a field
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
        Kind.KPI: encode_kpi({**{k: v for k, v in VALID[Kind.KPI].items() if k != "v"},
                              **dict.fromkeys(("availability", "performance", "quality", "oee"), float("nan"))}),
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


# ----------------------------------------------------------------------------- issue 16: where they disagreed

def _drop(doc, key):
    return {k: v for k, v in doc.items() if k != key}


AGREED = [  # (kind, message, accepted): both schema and decoder
    (Kind.STATE, {"v": 1, "model": "simple", "ts": [T], "state": [5]}, False),
    (Kind.STATE, {"v": 1, "model": "simple", "ts": [T], "state": [4]}, True),
    (Kind.STATE, {"v": 1, "ts": [T], "state": [16]}, True),
    (Kind.STATE, {"v": 1, "ts": [T], "state": [4], "reason": []}, False),
    (Kind.COUNTS, {"v": 1, "ts": [T], "good": [1], "reject": [0], "product": None, "ideal_cycle_s": None}, True),
    (Kind.TELEMETRY, {"v": 1, "ts": [T], "signals": {"": [1.0]}}, False),
    (Kind.TELEMETRY, {"v": 1, "ts": [T], "signals": {"x" * 129: [1.0]}}, False),
    (Kind.TELEMETRY, {"v": 1, "ts": [T], "signals": {"x" * 128: [1.0]}}, True),
    (Kind.KPI, LINE_KPI, True),
    (Kind.KPI, {**VALID[Kind.KPI], "stop_s": 0.0}, False),  # listed by the old schema, never sent
    (Kind.KPI, {**VALID[Kind.KPI], "extra": 1}, False),
    (Kind.KPI, _drop(VALID[Kind.KPI], "windows"), False),
    (Kind.KPI, _drop(VALID[Kind.KPI], "tick_ts"), False),
    (Kind.KPI, _drop(VALID[Kind.KPI], "status"), False),
    (Kind.KPI, {**VALID[Kind.KPI], "status": None, "state": None, "state_name": None}, True),
    (Kind.KPI, {**LINE_KPI, "state": 4}, False),  # a line has no state
    (Kind.KPI, {**VALID[Kind.KPI], "n_machines": 1}, False),
    (Kind.KPI, {**VALID[Kind.KPI], "losses": _drop(VALID[Kind.KPI]["losses"], "slow_cycles")}, False),
    (Kind.KPI, {**VALID[Kind.KPI], "good": 2.5}, False),
    (Kind.KPI, {**LINE_KPI, "windows": VALID[Kind.KPI]["windows"]}, False),  # stop reasons: machines only
    (Kind.KPI, {**VALID[Kind.KPI], "windows": LINE_KPI["windows"]}, False),
]


@pytest.mark.parametrize("kind, doc, accepted", AGREED)
def test_schema_and_decoder_agree_where_they_used_to_differ(kind, doc, accepted):
    assert jsonschema.Draft202012Validator(schema(kind)).is_valid(doc) is accepted
    if accepted:
        decode(kind, json.dumps(doc))
    else:
        with pytest.raises(ContractError):
            decode(kind, json.dumps(doc))


def _letter(**change):
    return {"v": 1, "topic": "fieldlab/v1/s/a/l/m/counts", "error": "counts.good[0] = -1: ...", "ts": T,
            "payload": '{"v": 1}', **change}


@pytest.mark.parametrize("doc, ok", [
    (_letter(), True),
    (_drop(_letter(payload_base64="RkxUMQ=="), "payload"), True),
    (_letter(payload_base64="RkxUMQ=="), False),  # one or the other
    (_drop(_letter(), "payload"), False),
    (_drop(_letter(), "error"), False),
    (_letter(extra=1), False),
    (_letter(payload="x" * 1025), False),
])
def test_the_dead_letter_schema(doc, ok):
    s = json.loads((SCHEMAS / "dead-letter.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    assert jsonschema.Draft202012Validator(s).is_valid(doc) is ok
