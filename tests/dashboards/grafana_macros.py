"""What Grafana does to an InfluxQL target before it sends it, done by hand for the tests.

Grafana's InfluxDB data source replaces ``$timeFilter`` with the dashboard's time range
(``time >= …ms and time <= …ms``), ``$__interval`` with an interval that fits the panel's width,
and ``$var`` with the variable's value: in a regex (``/^$machine$/``) a multi-value or "All"
selection becomes ``(a|b)``, each value with regex characters escaped.
"""
from __future__ import annotations


import re

VAR = re.compile(r"\$(\w+)")
MACROS = {"timeFilter", "__interval", "tag_machine", "tag_line", "col"}  # what expand() handles, and aliases
_REGEX_CHARS = re.compile(r"([\\^$*+?.()|\[\]{}/])")


def regex_value(values: list[str]) -> str:
    escaped = [_REGEX_CHARS.sub(r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(query: str, chosen: dict[str, list[str]], start_ms: int, end_ms: int, interval: str = "10s") -> str:
    q = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    q = q.replace("$__interval", interval)
    for name, values in sorted(chosen.items(), key=lambda kv: -len(kv[0])):
        q = q.replace(f"${name}", regex_value(values))
    left = set(VAR.findall(q)) - MACROS
    assert not left, f"not substituted: {left} in {q}"
    return q


def variables(model: dict) -> list[dict]:
    return model["templating"]["list"]


def used_variables(text: str) -> set[str]:
    return set(VAR.findall(text)) - MACROS


def choices(model: dict, run_query) -> list[dict[str, list[str]]]:
    """Every selection a user can make: each value of a single-value variable, all values of a multi-value
    one (as "All" does), resolving the chained variable queries in order with ``run_query(text) -> values``.
    Raises AssertionError if a variable query returns nothing."""
    combos: list[dict[str, list[str]]] = [{}]
    for var in variables(model):
        out = []
        for chosen in combos:
            if var["type"] == "custom":
                values = [o["value"] for o in var["options"]]
            else:
                q = expand(var["query"], chosen, 0, 0)
                values = run_query(q)
                assert values, f"variable {var['name']}: {q} returned nothing"
            picks = [values] if var.get("multi") else [[v] for v in values]
            out += [{**chosen, var["name"]: p} for p in picks]
        combos = out
    return combos


def panel_targets(model: dict):
    for p in model["panels"]:
        for t in p.get("targets", []):
            yield p, t



