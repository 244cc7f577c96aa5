"""Mutated messages of every kind: ``decode`` returns or raises ContractError, never anything else (which
the gateway would dead-letter as an "internal error"). Derandomized: the same examples on every run."""
import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import MAX_BATCH, TS_MAX, TS_MIN, ContractError, Kind, decode, encode_telemetry_binary

from .test_schemas import T, VALID

FIXED = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                 suppress_health_check=[HealthCheck.too_slow])
EDGES = [0, 1, -1, 4.5, T, TS_MIN, TS_MAX, 2**53, 2**63, 2**64 - 1, 1765432100123, MAX_BATCH, "", "packml", "x" * 129]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4), st.sampled_from(EDGES))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["v", "ts", "a", "model", "", "x" * 129]) | st.text(max_size=3), inner, max_size=3), max_leaves=5)
KEYS = ["v", "ts", "model", "state", "reason", "good", "reject", "total", "product", "ideal_cycle_s", "signals",
        "units", "status", "info", "cmd", "args", "temp"]


def paths(doc, at=()):
    """Every place in a JSON document, as the keys and indexes leading to it."""
    yield at
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from paths(v, at + (k,))


def mutate(doc, at, how, value, key):
    if not at:
        return value if how == "set" else doc
    parent = doc
    for k in at[:-1]:
        parent = parent[k]
    last = at[-1]
    if how == "set":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif isinstance(parent, list):
        parent.insert(last, value)
    else:
        parent[key] = value
    return doc


@FIXED
@given(st.data())
def test_mutated_json_messages_decode_or_raise_a_contract_error(data):
    kind = data.draw(st.sampled_from(list(Kind)))
    doc = copy.deepcopy(VALID[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(list(paths(doc))))
        doc = mutate(doc, at, data.draw(st.sampled_from(["set", "set", "delete", "add"])), data.draw(VALUES),
                     data.draw(st.sampled_from(KEYS)))
    try:
        decode(kind, json.dumps(doc).encode())
    except ContractError:
        pass


BINARY = encode_telemetry_binary([T, T + 1, T + 2], {"temp": [20.5, float("nan"), 21.0], "power": [1.0, 0.0, 2.0]},
                                 {"temp": "degC"})


@FIXED
@given(st.data())
def test_mutated_binary_telemetry_decodes_or_raises_a_contract_error(data):
    payload = bytearray(BINARY)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload)))
        chunk = data.draw(st.binary(min_size=1, max_size=9))
        how = data.draw(st.sampled_from(["overwrite", "insert", "delete"]))
        if how == "overwrite":
            payload[i:i + len(chunk)] = chunk
        elif how == "insert":
            payload[i:i] = chunk
        else:
            del payload[i:i + len(chunk)]
    try:
        decode(Kind.TELEMETRY, bytes(payload))
    except ContractError:
        pass
