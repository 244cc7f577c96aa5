"""The JSON Schemas and the decoder give the same verdict on generated messages of every kind: valid ones, and
valid ones mutated the way producers get them wrong (lengths, types, order, ranges, extra and missing keys,
booleans, milliseconds). The only allowed difference: a message that breaks one of the rules JSON Schema cannot
express (RULES below, listed in docs/contract.md, "Rules a schema cannot express") passes its schema and is
rejected by the decoder; the schema's description names the rule. Derandomized: the same examples every run."""
import copy
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contract
from contract import TS_MAX, TS_MIN, ContractError, Kind, decode

from .test_decode_fuzz import mutate, paths
from .test_schemas import LINE_KPI, VALID, schema

ROOT = Path(__file__).parents[2]
#: rule -> words the schema's description (and docs/contract.md's list) uses for it
RULES = {
    "length": "as many entries as ts",
    "order": "never goes backwards",
    "total": "total[i] = good[i] + reject[i]",
    "n_machines": "n_machines equals the number of entries in machines",
    "i-json": "I-JSON (RFC 7493)",
}
VALIDATORS = {kind: jsonschema.Draft202012Validator(schema(kind)) for kind in Kind}
ARRAYS = {Kind.STATE: ("state", "reason"), Kind.COUNTS: ("good", "reject", "total")}


def _depth(x) -> int:
    if isinstance(x, dict):
        return 1 + max(map(_depth, x.values()), default=0)
    if isinstance(x, list):
        return 1 + max(map(_depth, x), default=0)
    return 0


def _not_ijson(x) -> bool:
    """A lone surrogate in a string or key, or a number no 64-bit float holds."""
    if isinstance(x, str):
        return bool(re.search("[\ud800-\udfff]", x))
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        try:
            float(x)
        except OverflowError:
            return True
        return False
    if isinstance(x, dict):
        return any(_not_ijson(k) or _not_ijson(v) for k, v in x.items())
    if isinstance(x, list):
        return any(map(_not_ijson, x))
    return False


def broken_rules(kind: Kind, doc: dict) -> set[str]:
    """The inexpressible rules a message that its schema accepts breaks (an oracle apart from the decoder)."""
    broken = set()
    if _not_ijson(doc) or _depth(doc) > 1024:
        broken.add("i-json")
    ts = doc.get("ts")
    if isinstance(ts, list):
        if any(b < a for a, b in zip(ts, ts[1:])):
            broken.add("order")
        arrays = [doc[k] for k in ARRAYS.get(kind, ()) if k in doc]
        arrays += list(doc["signals"].values()) if kind is Kind.TELEMETRY else []
        if any(len(a) != len(ts) for a in arrays):
            broken.add("length")
        elif kind is Kind.COUNTS and "total" in doc and any(
                t != g + r for t, g, r in zip(doc["total"], doc["good"], doc["reject"])):
            broken.add("total")
    if kind is Kind.KPI and "machines" in doc and doc["n_machines"] != len(doc["machines"]):
        broken.add("n_machines")
    return broken


SEEN = Counter()


def check(kind: Kind, doc) -> None:
    """Schema verdict == decoder verdict, but for the inexpressible rules (which only the decoder sees)."""
    text = json.dumps(doc)
    doc = json.loads(text)  # what a producer's JSON library sees
    SEEN["simple model, state 5-16"] += isinstance(doc, dict) and _simple_above_4(kind, doc)
    schema_ok = VALIDATORS[kind].is_valid(doc)
    try:
        decode(kind, text.encode())
        decoder_ok = True
    except ContractError:
        decoder_ok = False
    if not schema_ok:
        assert not decoder_ok, f"the decoder accepts what the {kind.value} schema refuses: {text[:300]}"
        SEEN[kind, "both refuse"] += 1
        return
    broken = broken_rules(kind, doc)
    assert decoder_ok is not bool(broken), (f"{kind.value}: schema accepts, decoder "
                                            f"{'accepts' if decoder_ok else 'refuses'}, rules broken "
                                            f"{sorted(broken)}: {text[:300]}")
    for rule in broken:
        assert RULES[rule] in VALIDATORS[kind].schema["description"], (kind, rule)
        SEEN[rule] += 1
    SEEN[kind, "only the decoder refuses" if broken else "both accept"] += 1


def _simple_above_4(kind, doc) -> bool:
    state = doc.get("state")
    return kind is Kind.STATE and doc.get("model") == "simple" and isinstance(state, list) and any(
        type(x) is int and 4 < x <= 16 for x in state)


# ----------------------------------------------------------------------------- valid messages

TIMES = st.one_of(st.floats(TS_MIN, TS_MAX, exclude_max=True), st.integers(int(TS_MIN), int(TS_MAX) - 1),
                  st.sampled_from([TS_MIN, int(TS_MIN), math.nextafter(TS_MAX, 0)]))
NAMES = st.text(min_size=1, max_size=8) | st.sampled_from(["x" * 128, "temp", "ü"])
WHOLE = st.integers(0, 2**53 - 1) | st.sampled_from([0, 5.0, 2**53 - 1])
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def valid(draw, kind: Kind):
    n = draw(st.integers(1, 4))
    ts = sorted(draw(st.lists(TIMES, min_size=n, max_size=n)))
    if kind is Kind.TELEMETRY:
        names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
        doc = {"v": 1, "ts": ts, "signals": {s: draw(st.lists(st.none() | FLOATS | st.integers(-2**63, 2**64),
                                                               min_size=n, max_size=n)) for s in names}}
        if draw(st.booleans()):
            doc["units"] = {s: draw(st.text(max_size=5)) for s in names[:draw(st.integers(0, len(names)))]}
    elif kind is Kind.STATE:
        model = draw(st.sampled_from([None, "packml", "simple"]))
        top = 4 if model == "simple" else 16
        doc = {"v": 1, "ts": ts, "state": draw(st.lists(st.integers(0, top) | st.sampled_from([0.0, float(top)]),
                                                        min_size=n, max_size=n))}
        if model:
            doc["model"] = model
        if draw(st.booleans()):
            doc["reason"] = draw(st.lists(WHOLE | st.sampled_from([101, 301]), min_size=n, max_size=n))
    elif kind is Kind.COUNTS:
        good = draw(st.lists(st.integers(0, 2**52), min_size=n, max_size=n))
        reject = draw(st.lists(st.integers(0, 2**52), min_size=n, max_size=n))
        doc = {"v": 1, "ts": ts, "good": good, "reject": reject}
        if draw(st.booleans()):
            doc["total"] = [g + r for g, r in zip(good, reject)]
        for key, values in (("product", st.none() | st.text(min_size=1, max_size=128)),
                            ("ideal_cycle_s", st.none() | st.floats(min_value=0, exclude_min=True, allow_infinity=False)
                             | st.integers(1, 2**64))):
            if draw(st.booleans()):
                doc[key] = draw(values)
    elif kind is Kind.STATUS:
        doc = {"v": 1, "ts": draw(st.floats(min_value=0, allow_infinity=False) | st.integers(0, 2**70) | TIMES),
               "status": draw(st.sampled_from(["online", "offline"]))}
        if draw(st.booleans()):
            doc["info"] = draw(st.dictionaries(st.text(max_size=5), st.none() | FLOATS | st.text(max_size=5), max_size=3))
    elif kind is Kind.CMD:
        doc = {"v": 1, "cmd": draw(st.text(min_size=1, max_size=10))}
        if draw(st.booleans()):
            doc["args"] = draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
    elif kind is Kind.OPERATOR:
        doc = {"v": 1, "ts": ts[0], "by": draw(NAMES)}
        if draw(st.booleans()):
            doc["reason"] = draw(WHOLE | st.sampled_from([101, 201]))
        else:
            doc["reject"] = draw(st.integers(1, 1_000_000) | st.sampled_from([1.0, 1_000_000]))
        if draw(st.booleans()):
            doc["at"] = draw(TIMES)
    else:  # a machine's or a line's KPIs, with other values of the right types
        doc = copy.deepcopy(draw(st.sampled_from([VALID[Kind.KPI], LINE_KPI])))
        doc["ts"] = ts[-1]
        for at in draw(st.lists(st.sampled_from([p for p in paths(doc) if p and p[-1] in KPI_NUMBERS]), max_size=4)):
            if at[-1] in KPI_NULLABLE and draw(st.booleans()):
                value = None
            else:
                value = draw(st.integers(0, 10**6) | st.sampled_from([0.0, 7.0]) if at[-1] in KPI_COUNTS else FLOATS)
            doc = mutate(doc, at, "set", value, None)
    return doc


KPI_COUNTS = {"good", "reject", "total", "startup_reject", "parts_without_ideal", "failures", "reason"}
KPI_NULLABLE = {"availability", "performance", "quality", "oee", "oee_simple", "utilisation", "teep", "ideal_s",
                "mtbf_s", "mttr_s", "s", "pp"}
KPI_NUMBERS = KPI_COUNTS | KPI_NULLABLE | {"planned_s", "run_s", "operating_s", "not_scheduled_s", "breakdown_s",
                                           "stopped_s", "setup_s", "small_stop_s", "external_s", "start", "end", "seconds",
                                           "tick_ts"}


# ----------------------------------------------------------------------------- mutations

def _number(t: float):
    """Values producers get wrong where a number belongs."""
    return st.sampled_from([True, False, t * 1000, t * 1e6, TS_MIN - 0.001, TS_MAX, int(TS_MAX), -1, -0.5, 0, 4.5,
                            5, 17, 2**53 - 1, 2**53, 2**63, 2**64, 10**400, None, "5", [t], {}])


ODD = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65), FLOATS, st.text(max_size=3),
                st.sampled_from(["\ud800", "packml", "simple", "online", "x" * 129, "", [], {}, [1.0], 10**400]))
KEYS = ["v", "ts", "model", "state", "reason", "good", "reject", "total", "product", "ideal_cycle_s", "signals",
        "units", "status", "info", "cmd", "args", "extra", "", "\udc00", "x" * 129, "machines", "n_machines",
        "stop_reasons", "stop_s", "windows", "losses", "state_name", "by", "at"]


@st.composite
def mutated(draw, kind: Kind):
    doc = draw(valid(kind))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["length", "length", "order", "order", "number", "number", "odd", "delete",
                                    "add", "total", "total", "code"]))
        arrays = [p for p in paths(doc) if p and isinstance(_at(doc, p), list)]
        numbers = [p for p in paths(doc) if p and isinstance(_at(doc, p), (int, float))]
        if how == "length" and arrays:
            at = draw(st.sampled_from(arrays))
            values = _at(doc, at)
            if values and draw(st.booleans()):
                values.pop(draw(st.integers(0, len(values) - 1)))
            else:
                values.insert(draw(st.integers(0, len(values))), copy.deepcopy(values[0]) if values else TS_MIN)
        elif how == "order" and isinstance(doc.get("ts"), list) and len(doc["ts"]) > 1:
            i = draw(st.integers(1, len(doc["ts"]) - 1))
            a, b = doc["ts"][i - 1], doc["ts"][i]
            if a == b and type(a) in (int, float):
                a += 1
            doc["ts"][i - 1], doc["ts"][i] = b, a  # backwards
        elif how == "number" and numbers:
            at = draw(st.sampled_from(numbers))
            doc = mutate(doc, at, "set", draw(_number(T_OF(doc))), None)
        elif how == "code" and kind is Kind.STATE and isinstance(doc.get("state"), list) and doc["state"]:
            doc["model"] = "simple"  # whose codes end at 4
            doc["state"][draw(st.integers(0, len(doc["state"]) - 1))] = draw(st.sampled_from([4, 5, 16, 17]))
        elif how == "total" and kind is Kind.COUNTS and isinstance(doc.get("good"), list) and doc["good"] and \
                isinstance(doc.get("reject"), list):
            total = doc.setdefault("total", [g + r for g, r in zip(doc["good"], doc["reject"])
                                             if type(g) in (int, float) and type(r) in (int, float)])
            if total and isinstance(total, list) and type(total[0]) in (int, float):
                total[0] += draw(st.sampled_from([1, 2]))  # (negative and fractional ones: "number" above)
        elif [p for p in paths(doc) if p]:
            at = draw(st.sampled_from([p for p in paths(doc) if p]))
            how = "set" if how in ("odd", "number", "length", "order", "total") else how
            doc = mutate(doc, at, how, draw(ODD), draw(st.sampled_from(KEYS)))
    return doc


def _at(doc, at):
    for k in at:
        doc = doc[k]
    return doc


def T_OF(doc) -> float:
    ts = doc.get("ts") if isinstance(doc, dict) else None
    t = ts[0] if isinstance(ts, list) and ts else ts
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) and abs(t) < 1e12 else 1764547200.0


FIXED = settings(derandomize=True, database=None, deadline=None, max_examples=200,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("kind", list(Kind))
def test_schema_and_decoder_agree_on_generated_messages(kind):
    SEEN.clear()

    @FIXED
    @given(st.one_of(valid(kind), mutated(kind), mutated(kind)))
    def run(doc):
        check(kind, doc)

    run()
    # the run saw all three outcomes it may (not only rejects, which any broken generator gives)
    assert SEEN[kind, "both accept"] >= 20 and SEEN[kind, "both refuse"] >= 20, SEEN
    if kind in (Kind.TELEMETRY, Kind.STATE, Kind.COUNTS):
        assert SEEN["length"] and SEEN["order"], SEEN
    if kind is Kind.STATE:
        assert SEEN["simple model, state 5-16"], SEEN
    if kind is Kind.COUNTS:
        assert SEEN["total"], SEEN
    if kind is Kind.KPI:
        assert SEEN["n_machines"], SEEN


# ----------------------------------------------------------------------------- the exceptions, one by one

T = 1764547200.0
EXCEPTIONS = [  # (kind, message, rule): the schema accepts, the decoder refuses
    (Kind.TELEMETRY, {"v": 1, "ts": [T, T + 1], "signals": {"t": [1.0]}}, "length"),
    (Kind.STATE, {"v": 1, "ts": [T], "state": [4], "reason": [0, 101]}, "length"),
    (Kind.COUNTS, {"v": 1, "ts": [T, T + 1], "good": [1, 2], "reject": [0]}, "length"),
    (Kind.COUNTS, {"v": 1, "ts": [T + 1, T], "good": [1, 2], "reject": [0, 0]}, "order"),
    (Kind.COUNTS, {"v": 1, "ts": [T], "good": [5], "reject": [1], "total": [5]}, "total"),
    (Kind.KPI, {**LINE_KPI, "n_machines": 3}, "n_machines"),
    (Kind.STATUS, {"v": 1, "ts": T, "status": "online", "info": {"agent": "\ud800"}}, "i-json"),
    (Kind.STATUS, {"v": 1, "ts": 10**400, "status": "online"}, "i-json"),
]


@pytest.mark.parametrize("kind, doc, rule", EXCEPTIONS)
def test_what_a_schema_cannot_express_the_decoder_refuses_and_the_schema_says(kind, doc, rule):
    assert VALIDATORS[kind].is_valid(json.loads(json.dumps(doc)))
    assert broken_rules(kind, doc) == {rule}
    with pytest.raises(ContractError):
        decode(kind, json.dumps(doc).encode())
    assert RULES[rule] in VALIDATORS[kind].schema["description"]


def test_a_message_nested_deeper_than_1024_levels_passes_its_schema_and_the_decoder_refuses_it():
    def text(lists):  # an object in an object, then ``lists`` arrays: 2 + lists levels
        return '{"v": 1, "cmd": "x", "args": {"a": ' + "[" * lists + "]" * lists + "}}"

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # Python's json module and _depth recurse once per level
    try:
        doc = json.loads(text(1023))
        assert VALIDATORS[Kind.CMD].is_valid(doc) and broken_rules(Kind.CMD, doc) == {"i-json"}
        assert _depth(json.loads(text(1022))) == 1024
    finally:
        sys.setrecursionlimit(limit)
    decode(Kind.CMD, text(1022))  # 1,024 levels: still fine
    with pytest.raises(ContractError, match="nested too deeply|depth"):
        decode(Kind.CMD, text(1023))
    assert "nested at most 1,024 levels" in VALIDATORS[Kind.CMD].schema["description"]


def test_contract_md_lists_every_rule_a_schema_cannot_express_in_one_place():
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text.split("### Rules a schema cannot express", 1)[1].split("\n#", 1)[0]
    for words in RULES.values():
        assert words in section, words
    for name in sorted(p.name for p in (Path(contract.__file__).parent / "schemas").glob("*.json")):
        assert name in section, name
