"""Losses: the six big losses, downtime reasons as a Pareto, MTBF and MTTR."""
from __future__ import annotations

from contract import REASONS as CONTRACT_REASONS

from .model import (barchart, bargauge, dashboard, HIDE_TIME, override, site_line_machine, table, target, targets,
                    timeseries, unit, where, window_variable)

UID = "fieldlab-losses"

M = ("site", "line", "machine")

#: reason codes of docs/contract.md (contract.REASONS, what the simulators send); a site with its own codes adds them here
REASONS = {code: name for code, name in CONTRACT_REASONS.items() if code}  # the downtime reasons (0 is none)


def six_losses_per_machine(window: str) -> str:
    """The six big losses (docs/oee.md) in seconds per machine, from the stored kpi fields.

    Stored directly: setup_s, small_stop_s, external_s (starved or blocked by the line: shown apart from the
    machine's own stops). Derived, with operating = availability x planned and Σ(ideal x parts) =
    performance x operating: unplanned stops = planned - operating - setup - external; slow
    cycles = run - Σ(ideal x parts); rejects (production and start-up together: the split is not
    stored) = Σ(ideal x parts) x (1 - quality). They add up to planned - Σ(ideal x good), as the
    gateway's own six losses do. With small stops booked as availability loss (site option),
    "unplanned stops" includes them and "small stops" is counted twice: keep the default."""
    ideal = 'last("planned_s") * last("availability") * last("performance")'
    return (f'SELECT last("planned_s") * (1 - last("availability")) - last("setup_s") - last("external_s") '
            f'AS "unplanned stops", last("external_s") AS "external (line)", '
            f'last("setup_s") AS "planned stops (setup)", last("small_stop_s") AS "small stops", '
            f'last("run_s") - {ideal} AS "slow cycles", {ideal} * (1 - last("quality")) AS "rejects" '
            f'FROM "kpi" {where(*M, window=window)} GROUP BY "site", "area", "line", "machine"')


LOSSES = ("unplanned stops", "external (line)", "planned stops (setup)", "small stops", "slow cycles", "rejects")


def six_losses_total(window: str) -> str:
    """The same, summed over the selected machines (seconds add up; ratios would not)."""
    sums = ", ".join(f'sum("{name}") AS "{name}"' for name in LOSSES)
    return f'SELECT {sums} FROM ({six_losses_per_machine(window)})'


def downtime(reason: int) -> str:
    """Seconds spent in states entered with this reason code, over the dashboard's time range.

    InfluxQL cannot group by a field (reason is one), and a state's duration is the time to the next
    state change; so per machine (the inner GROUP BY) each state change gets the duration of the state
    before it (elapsed) and that state's reason: the mean of the two last reasons minus half their
    difference. A state still lasting at the end of the range is not counted yet."""
    return ('SELECT sum("seconds") FROM (SELECT elapsed("reason", 1ms) / 1000.0 AS "seconds", '
            'moving_average("reason", 2) - difference("reason") / 2 AS "previous_reason" '
            f'FROM "state" {where(*M)} GROUP BY "site", "area", "line", "machine") WHERE "previous_reason" = {reason} AND $timeFilter')


def build() -> dict:
    panels = [
        barchart("Six big losses", "Seconds lost in the chosen KPI window, summed over the selected machines, "
                 "largest first. Production and start-up rejects are shown together (the split is in the "
                 "gateway's MQTT message, not in InfluxDB).",
                 targets(six_losses_total("$window"), table=True), unit("s"),
                 transformations=[HIDE_TIME,
                                  {"id": "reduce", "options": {"mode": "seriesToRows", "reducers": ["lastNotNull"]}},
                                  {"id": "sortBy", "options": {"sort": [{"field": "Last *", "desc": True}]}}],
                 w=12, h=9),
        barchart("Downtime reasons (Pareto)", "Time in states entered with each reason code over the time range, "
                 "summed over the selected machines, largest first: " +
                 ", ".join(f"{c} {n}" for c, n in REASONS.items()) + ".",
                 [target(downtime(code), chr(ord("A") + i), f"{code} {name}") for i, (code, name)
                  in enumerate(REASONS.items())], unit("s"),
                 transformations=[{"id": "reduce", "options": {"mode": "seriesToRows", "reducers": ["sum"]}},
                                  {"id": "sortBy", "options": {"sort": [{"field": "Total", "desc": True}]}}],
                 w=12, h=9),
        barchart("Losses per machine", "The six big losses of each machine in the chosen window (seconds).",
                 targets(six_losses_per_machine("$window"), table=True), unit("s"), x_field="machine",
                 stacking="normal", transformations=[HIDE_TIME],
                 w=24, h=9),
        table("MTBF and MTTR", "Per machine in the chosen window: breakdowns (small stops are not failures), "
              "mean time between failures (operating time / failures), mean time to repair (breakdown time / "
              "failures), time in breakdowns.",
              targets(f'SELECT last("failures") AS "failures", last("mtbf_s") AS "MTBF", last("mttr_s") AS "MTTR", '
                      f'last("breakdown_s") AS "breakdowns" FROM "kpi" {where(*M, window="$window")} '
                      'GROUP BY "site", "area", "line", "machine"', table=True),
              unit("s"), overrides=[override("failures", unit="none", decimals=0)],
              transformations=[HIDE_TIME], w=12, h=8),
        bargauge("Time to repair per machine", "Mean time to repair in the chosen window.",
                 targets(f'SELECT last("mttr_s") FROM "kpi" {where(*M, window="$window")} GROUP BY "site", "area", "line", "machine"',
                         aliases=["$tag_machine"]), unit("s", min=0), w=12, h=8),
        timeseries("Unplanned stop time, rolling hour", "Breakdown time and small-stop time per machine in its "
                   "last hour (window last_1h): a rising line is a machine getting worse.",
                   targets(f'SELECT last("breakdown_s") AS "breakdowns", last("small_stop_s") AS "small stops" '
                           f'FROM "kpi" {where(*M, window="last_1h")} GROUP BY time($__interval), "machine" fill(none)',
                           aliases=["$tag_machine $col"]),
                   unit("s"), w=24, h=8),
    ]
    return dashboard(UID, "fieldlab: losses",
                     "Where the OEE goes: the six big losses, downtime reasons, MTBF and MTTR. docs/dashboards.md",
                     [*site_line_machine(), window_variable()], panels)
