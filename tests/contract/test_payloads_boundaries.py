"""Boundary cases of the payload decoder, each pinning a mutant the other tests let through
(bench/mutants.py; docs/RELIABILITY.md, "Mutation testing")."""
import json
import re

import pytest

from contract import (
    TS_MAX, TS_MIN, ContractError, decode_counts, decode_telemetry, encode_telemetry, encode_telemetry_binary,
    payloads,
)

T = 1764547200.0  # 2025-12-01T00:00:00Z


@pytest.mark.parametrize("encode", [encode_telemetry, encode_telemetry_binary])
def test_a_signal_name_of_128_characters_is_accepted_and_one_of_129_refused(encode):
    """Pins contract/payloads.py:451 (JSON) and :387 (binary header): ``> 128`` -> ``> 127``."""
    name = "x" * 128
    assert list(decode_telemetry(encode([T], {name: [1.0]})).signals) == [name]
    with pytest.raises(ContractError, match="1-128 characters"):
        decode_telemetry(encode([T], {name + "x": [1.0]}))


def test_units_count_towards_the_bound_of_remembered_binary_headers():
    """Pins contract/payloads.py:399 (``nsig + len(units)`` -> ``nsig - len(units)``): the remembered
    headers' count of names includes their units, as the 100,000 bound says."""
    names = {"boundary-power": [1.0], "boundary-temp": [2.0]}
    decode_telemetry(encode_telemetry_binary([T], names, {"boundary-power": "kW", "boundary-temp": "degC"}))
    held = sum(len(names) + len(units) for names, units in payloads._HEADERS.values())
    assert held == payloads._HEADER_NAMES[0] and held >= 4


@pytest.mark.parametrize("scale, unit", [(1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds")])
def test_an_implausible_time_is_named_in_a_unit_from_its_ts_min_to_before_its_ts_max(scale, unit):
    """Pins contract/payloads.py:257 (``t < TS_MAX * scale`` -> ``<=``, ``TS_MIN * scale <= t`` -> ``<``): the
    unit a refused time looks like, its range half-open as the plausible one."""
    for t, says in ((TS_MIN * scale, f" is {unit} since 1970"), (TS_MAX * scale, ": not a plausible time")):
        with pytest.raises(ContractError, match=re.escape(f"counts.ts[0] = {t!r}{says}")):
            decode_counts(json.dumps({"v": 1, "ts": [t], "good": [1], "reject": [0]}))
