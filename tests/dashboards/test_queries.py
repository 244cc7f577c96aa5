"""Every query of every dashboard, run against a real InfluxDB filled by the real chain, returns data.

The chain (tests/dashboards/chain.py): simulated machines -> EdgeAgent -> Mosquitto -> Gateway ->
InfluxV1Sink -> influxd. Grafana's macros and variables are substituted as Grafana would
(grafana_macros.py), for every choice a user can make (each value of a single-value variable, "All"
of a multi-value one, every KPI window), over the time range the data really covers (the demo's
accelerated time runs ahead of the wall clock).
"""
import json

import pytest

from dashboards import losses
from dashboards.build import dashboards

from .grafana_macros import choices, expand, panel_targets

MODELS = dashboards()


def run(influxdb, db):
    return lambda text: influxdb.query(text, db)


def tag_values(query):
    return lambda text: [row[1] for s in query(text) for row in s["values"]]


def non_null(series) -> bool:
    return any(v is not None for s in series for row in s["values"] for v in row[1:])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_panel_query_returns_data_for_every_choice(name, filled, influxdb):
    model = MODELS[name]
    query = run(influxdb, filled.db)
    combos = choices(model, tag_values(query))  # also: every variable query returns values
    assert all(c["site"] == [filled.site] for c in combos), "the site variable should find the test's site only"
    problems = []
    for panel, target in panel_targets(model):
        columns: dict[str, bool] = {}
        for chosen in combos:
            text = expand(target["query"], chosen, filled.start_ms, filled.end_ms)
            series = query(text)
            if not non_null(series):
                problems.append(f"{panel['title']!r} {target['refId']}: no data for {chosen}:\n    {text}")
            for s in series:
                for i, col in enumerate(s["columns"][1:], 1):
                    columns[col] = columns.get(col, False) or any(row[i] is not None for row in s["values"])
        # a misspelt field inside last()/mean() gives a column of nulls next to good ones: catch it
        for col in (c for c, ok in columns.items() if not ok):
            problems.append(f"{panel['title']!r} {target['refId']}: column {col!r} is null for every choice:\n"
                            f"    {target['query']}")
    assert not problems, f"{len(problems)} dashboard queries return nothing:\n" + "\n".join(problems)


def test_variables_chain_down_to_the_machines_of_each_line(filled, influxdb):
    """Choosing a line offers exactly that line's machines (the chained SHOW TAG VALUES)."""
    query = tag_values(run(influxdb, filled.db))
    by_line = {}
    for line, machine in filled.machines:
        by_line.setdefault(line, []).append(machine)
    machine_var = next(v for v in MODELS["machine"]["templating"]["list"] if v["name"] == "machine")
    for line, machines in by_line.items():
        got = query(expand(machine_var["query"], {"site": [filled.site], "line": [line]}, 0, 0))
        assert sorted(got) == sorted(machines)


def test_six_losses_equal_the_gateways_own(filled, influxdb, mosquitto, recorder):
    """The losses dashboard derives unplanned stops, slow cycles and rejects from the stored fields: they
    must be the numbers the gateway itself publishes (its retained KPI message, window since_start)."""
    rec = recorder(mosquitto.url, f"fieldlab/v1/{filled.site}/+/+/+/kpi")
    assert rec.wait_for(lambda r: len(r.json("/kpi")) >= len(filled.machines)), "no retained KPI messages"
    published = {t.split("/")[-2]: json.loads(p) for t, p, _ in rec.messages}
    text = expand(losses.six_losses_per_machine("since_start"),
                  {"site": [filled.site], "line": sorted({ln for ln, _ in filled.machines}),
                   "machine": [m for _, m in filled.machines]}, filled.start_ms, filled.end_ms)
    rows = {s["tags"]["machine"]: dict(zip(s["columns"], s["values"][0])) for s in influxdb.query(text, filled.db)}
    assert sorted(rows) == sorted(m for _, m in filled.machines)
    for machine, row in rows.items():
        lost = published[machine]["losses"]
        expected = {"unplanned stops": lost["unplanned_stops"]["s"], "external (line)": lost["external"]["s"],
                    "planned stops (setup)": lost["planned_stops"]["s"],
                    "small stops": lost["small_stops"]["s"], "slow cycles": lost["slow_cycles"]["s"],
                    "rejects": lost["production_rejects"]["s"] + lost["startup_rejects"]["s"]}
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, abs=0.01), (machine, name, row, lost)


def test_downtime_pareto_equals_the_simulators_ledger(filled, influxdb):
    """Seconds per reason code from the stored state changes = the stops the simulated machines booked.

    A stop still going on at the end counts with the states of it that have ended (the query cannot
    know how long the current state will last)."""
    chosen = {"site": [filled.site], "line": sorted({ln for ln, _ in filled.machines}),
              "machine": [m for _, m in filled.machines]}
    end_s = filled.end_ms / 1000
    last_change = {s["tags"]["machine"]: s["values"][0][0] / 1000 for s in influxdb.query(
        f'SELECT last("state") FROM "state" WHERE "site" = \'{filled.site}\' GROUP BY "machine"', filled.db)}
    for code in losses.REASONS:
        text = expand(losses.downtime(code), chosen, filled.start_ms, filled.end_ms)
        series = influxdb.query(text, filled.db)
        got = series[0]["values"][0][1] if series else 0.0
        stops = []
        for machine, led in filled.ledgers.items():
            for start, end, _main, reason, *_ in led.stops:  # (…, fault, cause)
                if reason == code:
                    ongoing = end is None or end > end_s
                    stops.append((start, last_change[machine] if ongoing else end))
        assert stops, f"the run should contain stops with reason {code}"
        expected = sum(max(0.0, e - b) for b, e in stops)
        # stored times are whole milliseconds: at most 1 ms off per state change
        assert got == pytest.approx(expected, abs=0.002 * 6 * len(stops)), (code, got, expected, len(stops))
