import json

import numpy as np
import pytest

from contract import (
    ContractError, decode, decode_counts, decode_state, decode_status, decode_telemetry, encode_counts,
    Kind, encode_state, encode_status, encode_telemetry,
)

from .test_schemas import VALID

T = 1764547200.0  # 2025-12-01T00:00:00Z: a plausible time (contract.TS_MIN to TS_MAX)


def test_counts_round_trip_into_numpy():
    b = decode_counts(encode_counts([T, T + 1.5], [10, 11], [0, 1], "bracket-A", 40.0))
    assert b.ts.dtype == np.float64 and b.good.dtype == np.int64
    np.testing.assert_array_equal(b.good, [10, 11])
    np.testing.assert_array_equal(b.total, [10, 12])
    assert (b.product, b.ideal_cycle_s) == ("bracket-A", 40.0)


def test_telemetry_nulls_become_nan():
    b = decode_telemetry(encode_telemetry([T, T + 1, T + 2], {"temp": [20.5, float("nan"), 21]}, {"temp": "degC"}))
    assert np.isnan(b.signals["temp"][1]) and b.signals["temp"][2] == 21.0
    assert b.units == {"temp": "degC"}


def test_state_round_trip():
    b = decode_state(encode_state([T, T + 1], [4, 15], [0, 101]))
    np.testing.assert_array_equal(b.state, [4, 15])
    np.testing.assert_array_equal(b.reason, [0, 101])
    assert b.model == "packml"


def good_counts(**change):
    obj = {"v": 1, "ts": [T, T + 1, T + 2], "good": [1, 2, 3], "reject": [0, 0, 1]}
    obj.update(change)
    return json.dumps(obj)


@pytest.mark.parametrize("payload, message", [
    (b"\xff\xfe", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (good_counts(v=2), r"counts\.v: expected schema version 1, got 2"),
    (good_counts(ts=[T, T + 2, T + 1]), r"counts\.ts\[2\] = 1764547201.0: timestamps must not go backwards"),
    (good_counts(ts=[]), "empty batch"),
    (good_counts(good=[1, 2]), r"counts\.good: length 2 differs from ts length 3"),
    (good_counts(good=[1, -2, 3]), r"counts\.good\[1\] = -2: counters are whole numbers >= 0"),
    (good_counts(good=[1, 2.5, 3]), r"counts\.good\[1\] = 2.5"),
    (good_counts(good=[1, "2", 3]), r"counts\.good\[1\] = '2': must be a number"),
    (good_counts(reject=None), r"counts\.reject: required array"),
    (good_counts(total=[1, 2, 3]), r"counts\.total\[2\] = 3: must equal good \+ reject \(3 \+ 1\)"),
    (good_counts(ideal_cycle_s=0), r"counts\.ideal_cycle_s: must be a number > 0"),
])
def test_malformed_counts_are_rejected_precisely(payload, message):
    with pytest.raises(ContractError, match=message):
        decode_counts(payload)


def test_state_codes_must_belong_to_the_model():
    with pytest.raises(ContractError, match=r"state\.state\[1\] = 17: not a state of this model"):
        decode_state(json.dumps({"v": 1, "ts": [T, T + 1], "state": [4, 17]}))
    with pytest.raises(ContractError, match=r"state\.state\[0\] = 5: not a state"):
        decode_state(json.dumps({"v": 1, "model": "simple", "ts": [T], "state": [5]}))
    with pytest.raises(ContractError, match="state.model"):
        decode_state(json.dumps({"v": 1, "model": "isa88", "ts": [T], "state": [1]}))


def test_telemetry_rejects_text_values():
    with pytest.raises(ContractError, match=r"telemetry\.signals\.temp\[1\] = 'hot': must be a number or null"):
        decode_telemetry(json.dumps({"v": 1, "ts": [T, T + 1], "signals": {"temp": [1, "hot"]}}))


def test_status():
    s = decode_status(encode_status(T + 12.5, "offline", reason="connection lost"))
    assert (s.ts, s.status, s.info) == (T + 12.5, "offline", {"reason": "connection lost"})
    with pytest.raises(ContractError, match="status.status"):
        decode("status", json.dumps({"v": 1, "ts": T, "status": "sleeping"}))


def _per_signal(payload: str):
    """The per-signal decoding (one conversion per signal) that the whole-message fast path must equal."""
    from contract import payloads
    from contract.errors import ContractError

    obj = json.loads(payload)
    n = len(obj["ts"])
    try:
        return {k: payloads._numbers(obj["signals"], k, "telemetry.signals", n, allow_null=True).astype(float)
                for k in obj["signals"]}
    except ContractError as e:
        return str(e)


@pytest.mark.parametrize("signals", [
    {"a": [1.5, 2.5, 3.5], "b": [4, 5, 6]},  # floats and ints: the fast path
    {"a": [1.5, None, 3.5], "b": [None, None, 6]},  # sparse rows: nulls become NaN
    {"a": [0.0, 1.0, 2.0], "b": [1, 0, 7]},  # zeros and ones: the fast path too, the same result
    {"a": [True, 2.5, 3.5], "b": [4.0, 5.0, 6.0]},  # a boolean among numbers: refused
    {"a": [True, False, True], "b": [4.0, 5.0, 6.0]},  # a signal of booleans: refused as before
    {"a": [True, None, 3.5], "b": [4.0, 5.0, 6.0]},  # a boolean next to a null: refused as before
    {"a": [1.5, "2.5", 3.5], "b": [4.0, 5.0, 6.0]},  # text
    {"a": [1.5, "x", None], "b": [4.0, 5.0, 6.0]},  # text next to a null
    {"a": [[1.5, 2.5], [1.0, 2.0], [3.0, 4.0]], "b": [[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]},  # nested arrays
    {"a": [[1.5], 2.5, 3.5], "b": [4.0, 5.0, 6.0]},
    {"a": [1.5, 2.5], "b": [4.0, 5.0, 6.0]},  # a length that differs from ts
    {"a": [1.5, {"x": 1}, 3.5], "b": [4.0, 5.0, 6.0]},
    {"a": [2**64 - 1, 1.5, 3.5], "b": [4.0, 5.0, 6.0]},  # the largest integer orjson reads
])
def test_whole_message_decoding_equals_per_signal_decoding(signals):
    from contract.errors import ContractError

    payload = json.dumps({"v": 1, "ts": [T, T + 1, T + 2], "signals": signals})
    expected = _per_signal(payload)
    try:
        got = decode_telemetry(payload.encode()).signals
    except ContractError as e:
        assert str(e) == expected
        return
    assert not isinstance(expected, str), f"accepted what the per-signal rules refuse: {expected}"
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].dtype == np.float64
        np.testing.assert_array_equal(got[k], expected[k])


def test_zeros_and_ones_take_the_fast_path_and_booleans_the_per_signal_one():
    """An idle machine's zeros must not cost the slow path; a JSON true among numbers still goes there."""
    from contract import payloads

    fast = payloads._signal_matrix({"power": [0.0, 0.0, 2.5], "flag": [1, 0, 1]}, 3)
    assert fast is not None and fast.tolist() == [[0.0, 0.0, 2.5], [1.0, 0.0, 1.0]]
    assert payloads._signal_matrix({"power": [True, 0.0, 2.5], "flag": [1, 0, 1]}, 3) is None


# ----------------------------------------------------------------------------- binary telemetry

def _json_and_binary(ts, signals, units=None):
    from contract import encode_telemetry_binary
    return decode_telemetry(encode_telemetry(ts, signals, units)), \
        decode_telemetry(encode_telemetry_binary(ts, signals, units))


@pytest.mark.parametrize("ts, signals, units", [
    ([T], {"t": [1.5]}, None),  # one row, one signal
    ([T, T + 1, T + 1, T + 2.5], {"t": [20.0, np.nan, 21.0, 22.5], "power": [0.0, 1.0, np.nan, 3.0]},
     {"t": "degC", "power": "kW"}),  # missing samples, an equal time, units
    (1.8e9 + np.arange(1000) * 0.1, {f"s{i}": np.linspace(i, i + 1, 1000) for i in range(12)}, None),
])
def test_binary_telemetry_decodes_to_what_the_json_form_gives(ts, signals, units):
    from contract import BINARY_MAGIC, encode_telemetry_binary

    payload = encode_telemetry_binary(ts, signals, units)
    assert payload[:4] == BINARY_MAGIC
    header = int.from_bytes(payload[10:12], "little")
    assert (12 + header) % 8 == 0  # padded: the arrays start aligned
    js, binary = _json_and_binary(ts, signals, units)
    np.testing.assert_array_equal(binary.ts, js.ts)
    assert list(binary.signals) == list(js.signals) and binary.units == js.units
    for name in js.signals:
        assert binary.signals[name].dtype == np.float64
        np.testing.assert_array_equal(binary.signals[name], js.signals[name])  # NaN where JSON has null


def _binary(ts, signals, head=None, extra=b""):
    """A binary telemetry payload built by hand from the documented layout (docs/contract.md)."""
    import struct
    names = list(signals)
    text = json.dumps(head if head is not None else {"v": 1, "signals": names}).encode()
    rows = len(ts)
    body = np.array([ts] + [signals[n] for n in names], dtype="<f8").tobytes()
    return b"FLT1" + struct.pack("<IHH", rows, len(names), len(text)) + text + body + extra


def test_the_documented_layout_decodes_without_padding():
    got = decode_telemetry(_binary([T, T + 1], {"a": [3.0, 4.0], "b": [np.nan, 6.0]}))
    assert got.ts.tolist() == [T, T + 1] and got.signals["a"].tolist() == [3.0, 4.0]
    assert np.isnan(got.signals["b"][0]) and got.units == {}


@pytest.mark.parametrize("payload, says", [
    (b"FLT1\x01\x00", "shorter than its 12-byte header"),
    (_binary([T, T + 1], {"a": [3.0, 4.0]}, extra=b"\x00" * 8), "its header says"),
    (_binary([T, T + 1], {"a": [3.0, 4.0]})[:-1], "its header says"),
    (b"FLT1" + bytes(8), "0 rows, must be 1-100000"),
    (_binary([T], {"a": [3.0]}, head={"v": 2, "signals": ["a"]}), "telemetry header.v: expected schema version 1"),
    (_binary([T], {"a": [3.0]}, head={"v": 1, "signals": ["a", "b"]}), "signals: required array of the 1"),
    (_binary([T], {"a": [3.0], "b": [4.0]}, head={"v": 1, "signals": ["a", "a"]}), "unique"),
    (_binary([T], {"a": [3.0]}, head={"v": 1, "signals": ["a"], "units": {"a": 5}}), "unit string"),
    (_binary([T + 1, T], {"a": [3.0, 4.0]}), f"telemetry.ts[1] = {T}: times must be finite and never go backwards"),
    (_binary([T, np.nan, T - 1], {"a": [3.0, 4.0, 5.0]}), "telemetry.ts[1] = nan"),  # a NaN between finite ends
    (_binary([T, np.inf], {"a": [3.0, 4.0]}), "telemetry.ts[1] = inf"),
    (_binary([T, T + 1], {"a": [3.0, 4.0], "b": [5.0, -np.inf]}), "telemetry.signals.b[1] = -inf: must be a number"),
])
def test_malformed_binary_telemetry_is_refused_with_the_reason(payload, says):
    from contract.errors import ContractError

    with pytest.raises(ContractError, match=None) as e:
        decode_telemetry(payload)
    assert says in str(e.value), str(e.value)


def test_a_known_header_does_not_vouch_for_a_different_one():
    """Headers are checked once and remembered; a message with another header is checked afresh."""
    from contract.errors import ContractError

    decode_telemetry(_binary([T], {"a": [3.0]}))
    with pytest.raises(ContractError, match="unique"):
        decode_telemetry(_binary([T], {"a": [3.0], "b": [4.0]}, head={"v": 1, "signals": ["a", "a"]}))
    got = decode_telemetry(_binary([T], {"a": [7.0]}))
    assert got.signals["a"].tolist() == [7.0]


# ----------------------------------------------------------------------------- fast paths of the JSON decoder

def test_orjson_refuses_numbers_that_overflow_a_double():
    """The telemetry decoder does not look for infinities (it cost microseconds a message) because the
    parser cannot produce one: pinned here, so an orjson that changes this fails loudly."""
    from contract.errors import ContractError

    for number in ("1e400", "-1e400", "9" * 400):
        with pytest.raises(ContractError, match="not valid JSON"):
            decode_telemetry(f'{{"v": 1, "ts": [{T}], "signals": {{"a": [{number}]}}}}'.encode())


@pytest.mark.parametrize("n, back", [(5, 3), (300, 299), (300, 1)])  # short lists: sorted(); long: NumPy
def test_times_going_backwards_are_found_in_short_and_long_batches(n, back):
    from contract.errors import ContractError

    ts = [T + i for i in range(n)]
    ts[back] = T - 0.5
    with pytest.raises(ContractError, match=rf"telemetry.ts\[{back}\] = {T - 0.5}: timestamps must not go backwards"):
        decode_telemetry(json.dumps({"v": 1, "ts": ts, "signals": {"a": [1.0] * n}}).encode())
    ok = decode_telemetry(json.dumps({"v": 1, "ts": sorted(ts), "signals": {"a": [1.0] * n}}).encode())
    assert ok.ts.size == n


@pytest.mark.parametrize("name", ["", "x" * 129])
def test_bad_signal_names_are_named(name):
    from contract.errors import ContractError

    with pytest.raises(ContractError, match="must be 1-128 characters"):
        decode_telemetry(json.dumps({"v": 1, "ts": [T], "signals": {"ok": [1.0], name: [2.0]}}).encode())


def test_the_binary_encoder_refuses_what_the_form_cannot_carry():
    from contract import encode_telemetry_binary
    from contract.errors import ContractError

    with pytest.raises(ContractError, match="5000 signals; the binary form carries 1-4096"):
        encode_telemetry_binary([T], {f"s{i}": [1.0] for i in range(5000)})
    with pytest.raises(ContractError, match="header holds at most 65,535"):
        encode_telemetry_binary([T], {"x" * 120 + str(i): [1.0] for i in range(600)})
    with pytest.raises(ContractError, match="infinite"):
        encode_telemetry_binary([1.0, 2.0], {"a": [1.0, float("inf")]})
    with pytest.raises(ValueError):  # the JSON encoder refuses infinities too
        encode_telemetry([1.0, 2.0], {"a": [1.0, float("inf")]})


def test_the_same_header_text_with_another_signal_count_is_checked_again():
    from contract.errors import ContractError

    decode_telemetry(_binary([T], {"a": [3.0]}))  # its header is now remembered
    with pytest.raises(ContractError, match="required array of the 2 signal names"):
        decode_telemetry(_binary([T], {"a": [3.0], "b": [4.0]}, head={"v": 1, "signals": ["a"]}))


def test_remembered_headers_are_bounded():
    from contract import payloads

    for i in range(3000):  # producers that vary their header: 3,000 x 40 names = 120,000 names
        decode_telemetry(_binary([T], {f"m{i}-s{j}": [1.0] for j in range(40)}))
        assert payloads._HEADER_NAMES[0] <= 100_000
    assert sum(len(names) + len(units) for names, units in payloads._HEADERS.values()) == payloads._HEADER_NAMES[0]


@pytest.mark.parametrize("decoder, payload", [
    ("telemetry", {"v": 1, "ts": [T, [1]], "signals": {"a": [1.0, 2.0]}}),
    ("counts", {"v": 1, "ts": [T, [1]], "good": [1, 2], "reject": [0, 0]}),
    ("state", {"v": 1, "ts": [T, [1, 2]], "state": [4, 4]}),
])
def test_a_nested_array_among_the_times_is_a_contract_error(decoder, payload):
    from contract import decode
    from contract.errors import ContractError

    with pytest.raises(ContractError, match=r"ts\[1\] = \[1"):
        decode(decoder, json.dumps(payload).encode())


# ----------------------------------------------------------------------------- plausible times (issue 13)

def _timed(kind, ts):
    """A valid JSON message of ``kind`` with the given times."""
    n = len(ts) if isinstance(ts, list) else 1
    return json.dumps({
        "telemetry": {"v": 1, "ts": ts, "signals": {"a": [1.0] * n}},
        "state": {"v": 1, "ts": ts, "state": [4] * n},
        "counts": {"v": 1, "ts": ts, "good": [1] * n, "reject": [0] * n},
        "status": {"v": 1, "ts": ts, "status": "online"},
        "kpi": {**VALID[Kind.KPI], "ts": ts},  # a whole KPI message (contract/schemas/kpi.json)
    }[kind])


MS = 1765432100123  # Date.now() on 2025-12-11
SAYS = [  # (time, what the error says after "<field> = <time>")
    (MS, " is milliseconds since 1970 (JavaScript Date.now()); send seconds: divide by 1000"),
    (MS * 1000, " is microseconds since 1970; send seconds: divide by 1,000,000"),
    (MS * 1000_000, " is nanoseconds since 1970; send seconds: divide by 1,000,000,000"),
    (0, ": not a plausible time; send Unix time in seconds from 946684800 (2000-01-01) to before 4102444800 "
        "(2100-01-01), from a set clock (not seconds since boot)"),
    (12.5, ": not a plausible time; send Unix time in seconds from 946684800"),
    (4102444800.0, ": not a plausible time"),
    (946684799.5, ": not a plausible time"),
]


def test_a_javascript_date_now_is_refused_as_milliseconds():
    """Issue 13, defect 2: the most common mistake of a Node-RED producer, schema-valid until then."""
    with pytest.raises(ContractError) as e:
        decode("state", '{"v":1,"ts":[1765432100123],"state":[4]}')
    assert str(e.value) == ("state.ts[0] = 1765432100123 is milliseconds since 1970 (JavaScript Date.now()); "
                            "send seconds: divide by 1000")


@pytest.mark.parametrize("kind", ["telemetry", "state", "counts"])
@pytest.mark.parametrize("t, says", SAYS)
def test_implausible_times_in_a_batch_are_named_with_their_index(kind, t, says):
    for ts, i in (([t], 0), ([T, T + 1, t], 2) if t > T else ([t, T, T + 1], 0), ([int(T), t], 1) if t > T else
                  ([t, int(T)], 0)):  # the fast path (floats), and the slow one (an int among the times)
        with pytest.raises(ContractError) as e:
            decode(kind, _timed(kind, ts))
        assert str(e.value).startswith(f"{kind}.ts[{i}] = {t!r}{says}"), str(e.value)


@pytest.mark.parametrize("t, says", SAYS)
def test_implausible_single_times_are_named(t, says):
    with pytest.raises(ContractError) as e:
        decode("kpi", _timed("kpi", t))
    assert str(e.value).startswith(f"kpi.ts = {t!r}{says}"), str(e.value)


@pytest.mark.parametrize("t", [0, 12.5, 1765432100123, T])
def test_a_status_takes_any_time_from_0_as_it_is_stamped_on_arrival(t):
    """Issue 13, defect 4: a last will carries its connect time, third-party wills often 0; the gateway stamps
    a status when it arrives, so its own time only has to be a number (a dead-lettered will would leave the
    machine online for ever)."""
    assert decode("status", _timed("status", t)).ts == t
    for bad in (-1, True, None, "now"):
        with pytest.raises(ContractError, match=r"^status\.ts: "):
            decode("status", _timed("status", bad))


def test_kpi_needs_its_time_as_the_schema_says():
    body = json.loads(_timed("kpi", T))
    assert decode("kpi", json.dumps(body))["ts"] == T
    for bad in ({}, {"ts": None}, {"ts": "2025-12-01"}, {"ts": True}):
        body.pop("ts", None)
        with pytest.raises(ContractError, match=r"^kpi\.ts: required number \(Unix time in seconds\)"):
            decode("kpi", json.dumps({**body, **bad}))


@pytest.mark.parametrize("t, says", [(float(t), says) for t, says in SAYS])
def test_implausible_times_in_binary_telemetry_are_named(t, says):
    for ts, i in (([t], 0), ([T, t], 1) if t > T else ([t, T], 0)):
        with pytest.raises(ContractError) as e:
            decode_telemetry(_binary(ts, {"a": [1.0] * len(ts)}))
        assert str(e.value).startswith(f"telemetry.ts[{i}] = {t!r}{says}"), str(e.value)


@pytest.mark.parametrize("kind", ["telemetry", "state", "counts", "kpi", "binary"])
def test_the_plausible_range_includes_ts_min_and_excludes_ts_max(kind):
    from contract import TS_MAX, TS_MIN

    def ok(ts):
        if kind == "binary":
            return decode_telemetry(_binary(ts, {"a": [1.0] * len(ts)}))
        return decode(kind, _timed(kind, ts if kind not in ("status", "kpi") else ts[0]))

    batch = kind not in ("status", "kpi")
    for ts in ([TS_MIN], [TS_MAX - 0.001]) + batch * ([TS_MIN, TS_MIN], [TS_MIN, TS_MAX - 0.001]):
        ok(ts)
    for ts in ([TS_MAX], [TS_MIN - 0.001]) + batch * ([TS_MIN, TS_MAX], [TS_MIN - 0.001, TS_MIN]):
        with pytest.raises(ContractError, match="not a plausible time"):
            ok(ts)


# ----------------------------------------------------------------------------- booleans and wrong types

@pytest.mark.parametrize("n", [3, 200])  # short lists: the element types; long ones: only when a 0 or 1 is there
@pytest.mark.parametrize("kind, key", [("telemetry", "signals.a"), ("state", "state"), ("state", "reason"),
                                       ("counts", "good"), ("counts", "reject"), ("telemetry", "ts")])
@pytest.mark.parametrize("bool_", [True, False])
def test_a_json_boolean_among_numbers_is_refused_by_name_and_index(n, kind, key, bool_):
    doc = json.loads(_timed(kind, [T + i for i in range(n)]))
    values = [4] * n if key in ("state", "reason") else [T + i for i in range(n)] if key == "ts" else [0] * n
    values[n - 2] = bool_
    if key == "signals.a":
        doc["signals"]["a"] = values
    else:
        doc[key] = values
    with pytest.raises(ContractError, match=rf"^{kind}\.{key}\[{n - 2}\] = {str(bool_).lower()}: must be a number"):
        decode(kind, json.dumps(doc))


def test_schema_version_true_is_not_1():
    with pytest.raises(ContractError, match=r"^counts\.v: expected schema version 1, got True"):
        decode_counts(good_counts(v=True))
    assert decode_counts(good_counts(v=1.0)).good.tolist() == [1, 2, 3]  # as the schema's "const": 1


# ----------------------------------------------------------------------------- limits, exactly at and one past

@pytest.mark.parametrize("change, error", [
    # counters: whole numbers below 2**53 (MAX_COUNTER), exact in a float64
    ({"good": [2**53 - 1] * 3}, None),
    ({"good": [1, 2**53, 3]}, r"counts\.good\[1\] = 9007199254740992: counters are whole numbers >= 0 "
                              r"and below 2\*\*53"),
    ({"reject": [0, 0, 2**53]}, r"counts\.reject\[2\] = 9007199254740992"),
    ({"reject": [0.0, 0.0, 2.0**53]}, r"counts\.reject\[2\] = 9007199254740992.0"),
    ({"good": [2**64 - 1] * 3}, r"counts\.good\[0\] = 18446744073709551615: counters"),
    ({"good": [0, 0, 0]}, None),
    ({"good": [0, -1, 0]}, r"counts\.good\[1\] = -1: counters are whole numbers >= 0"),
    ({"good": [1.0, 2.0, 3.0]}, None),
    ({"good": [1, 2, 3.5]}, r"counts\.good\[2\] = 3.5: counters are whole numbers"),
    # equal times are allowed, on the fast path (floats) and the slow one (integers)
    ({"ts": [T, T, T]}, None),
    ({"ts": [int(T)] * 3}, None),
    ({"ts": [int(T), int(T) + 1, int(T)]}, r"counts\.ts\[2\] = 1764547200.0: timestamps must not go backwards"),
    # the product's name: 1-128 characters
    ({"product": "x" * 128}, None),
    ({"product": "x" * 129}, r"counts\.product: must be a non-empty string of at most 128 characters"),
    ({"product": ""}, r"counts\.product: must be a non-empty string"),
    ({"product": ["p"]}, r"counts\.product: must be a non-empty string"),
])
def test_counts_limits(change, error):
    if error is None:
        decode_counts(good_counts(**change))
    else:
        with pytest.raises(ContractError, match="^" + error):
            decode_counts(good_counts(**change))


@pytest.mark.parametrize("change, error", [
    ({"state": [4, 16]}, None),
    ({"state": [4.0, 16.0]}, None),
    ({"state": [4, 4.5]}, r"state\.state\[1\] = 4.5: codes are whole numbers"),  # not taken as 4
    ({"state": [0, -1]}, r"state\.state\[1\] = -1: codes are whole numbers >= 0"),
    ({"reason": [0, 101]}, None),
    ({"reason": [0.0, 2**53 - 1]}, None),
    ({"reason": [0, 101.5]}, r"state\.reason\[1\] = 101.5: codes are whole numbers"),
    ({"reason": [0, -1]}, r"state\.reason\[1\] = -1: codes are whole numbers >= 0"),
    ({"reason": [-0.5, 0]}, r"state\.reason\[0\] = -0.5: codes are whole numbers >= 0"),
    ({"reason": [0.0, -1.0]}, r"state\.reason\[1\] = -1.0: codes are whole numbers >= 0"),
    ({"reason": [0, 2**53]}, r"state\.reason\[1\] = 9007199254740992: codes are whole numbers >= 0 and below 2\*\*53"),
    ({"reason": [0, 1e20]}, r"state\.reason\[1\] = 1e\+20: codes are whole numbers"),  # not a wrapped int64
    ({"reason": [0, 2**64 - 1]}, r"state\.reason\[1\] = 18446744073709551615: codes"),
])
def test_state_code_limits(change, error):
    doc = json.dumps({"v": 1, "ts": [T, T + 1], "state": [4, 15], **change})
    if error is None:
        decode_state(doc)
    else:
        with pytest.raises(ContractError, match="^" + error):
            decode_state(doc)


def test_every_state_model_numbers_its_states_from_0_without_gaps():
    """The decoder checks a state code against the model's highest one (faster than a set lookup)."""
    from contract import STATE_MODELS

    for name, model in STATE_MODELS.items():
        assert sorted(model) == list(range(len(model))), name
        decode_state(json.dumps({"v": 1, "model": name, "ts": [T] * len(model), "state": sorted(model)}))
        with pytest.raises(ContractError, match=rf"state\.state\[0\] = {len(model)}: not a state of this model"):
            decode_state(json.dumps({"v": 1, "model": name, "ts": [T], "state": [len(model)]}))


def test_batch_size_limit_exactly_at_and_one_past():
    from contract import MAX_BATCH

    ts = (T + np.arange(MAX_BATCH + 1) / 1000).tolist()
    for kind in ("counts", "state", "telemetry"):
        decode(kind, _timed(kind, ts[:MAX_BATCH]))
        with pytest.raises(ContractError, match=rf"^{kind}\.ts: 100001 samples, at most 100000 per message"):
            decode(kind, _timed(kind, ts))
    decode("counts", _timed("counts", [int(T)] * MAX_BATCH))  # the slow path: integer times
    assert decode_telemetry(_binary(ts[:MAX_BATCH], {"a": ts[:MAX_BATCH]})).ts.size == MAX_BATCH
    with pytest.raises(ContractError, match=r"^telemetry\.rows: 100001 rows, must be 1-100000"):
        decode_telemetry(_binary(ts, {"a": ts}))


@pytest.mark.parametrize("kind", ["state", "counts", "telemetry", "status"])
def test_a_value_nested_a_thousand_levels_deep_is_a_contract_error(kind):
    """orjson parses 1,024 levels; describing such a value for the error overflowed Python's stack, and the
    gateway dead-lettered it as an internal error (found by the system fuzz, tests/chaos/test_fuzz.py)."""
    with pytest.raises(ContractError, match=rf"^{kind}: a value is nested too deeply"):
        decode(kind, b'{"v":' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}")
