"""Machine detail: one machine's A/P/Q over time, its states, process values, parts against the target."""
from __future__ import annotations

from .model import (dashboard, override, ratio, site_line_machine, stat, state_timeline, targets, timeseries, unit,
                    where, window_variable)

UID = "fieldlab-machine"

M = ("site", "line", "machine")


def build() -> dict:
    kpi = where(*M, window="$window")
    panels = [
        stat("OEE, availability, performance, quality", "The chosen KPI window of this machine (measurement kpi).",
             targets(f'SELECT last("oee") AS "OEE", last("availability") AS "availability", '
                     f'last("performance") AS "performance", last("quality") AS "quality" FROM "kpi" {kpi}'),
             ratio(), w=12, h=5),
        stat("Parts and target", "Good and rejected parts in the chosen window, and the target: the good parts "
             "this machine would have made at its ideal cycle time without any loss in its planned time "
             "(good / OEE, since OEE = good x ideal cycle time / planned time).",
             targets(f'SELECT last("good") AS "good", last("reject") AS "reject", '
                     f'last("good") / last("oee") AS "target" FROM "kpi" {kpi}'),
             unit("none", 0), w=6, h=5),
        stat("MTBF, MTTR", "Mean time between failures (operating time / breakdowns) and mean time to repair "
             "in the chosen window; empty while the machine has not failed.",
             targets(f'SELECT last("mtbf_s") AS "MTBF", last("mttr_s") AS "MTTR", last("failures") AS "failures" '
                     f'FROM "kpi" {kpi}'),
             unit("s"), w=6, h=5),
        state_timeline("State", "PackML state of the machine over the time range (measurement state).",
                       targets(f'SELECT "state_name" AS "state" FROM "state" {where(*M)}')),
        timeseries("Availability, performance, quality over time", "The rolling hour (window last_1h), as the "
                   "gateway computed it every 10 s.",
                   targets(f'SELECT last("availability") AS "availability", last("performance") AS "performance", '
                           f'last("quality") AS "quality", last("oee") AS "OEE" FROM "kpi" '
                           f'{where(*M, window="last_1h")} GROUP BY time($__interval) fill(none)'),
                   ratio(), w=12, h=8),
        timeseries("Good parts against the target", "Good parts in the chosen window against the target at "
                   "ideal speed (good / OEE): the gap is the OEE loss, in parts.",
                   targets(f'SELECT last("good") AS "good", last("good") / last("oee") AS "target" FROM "kpi" {kpi} '
                           'GROUP BY time($__interval) fill(none)'),
                   unit("none", 0), w=12, h=8,),
        timeseries("Parts per interval", "Good and rejected parts made in each interval, from the machine's "
                   "counters (non-negative difference: a counter reset is not a negative count).",
                   targets(f'SELECT non_negative_difference(last("good")) AS "good", '
                           f'non_negative_difference(last("reject")) AS "reject" FROM "counts" {where(*M)} '
                           'GROUP BY time($__interval) fill(none)'),
                   unit("none", 0), w=12, h=8, bars=True),
        timeseries("Temperature", "Process value temperature (measurement telemetry).",
                   targets(f'SELECT mean("temperature") AS "temperature" FROM "telemetry" {where(*M)} '
                           'GROUP BY time($__interval) fill(none)'),
                   unit("celsius", 1), w=12, h=8),
        timeseries("Power", "Electrical power (measurement telemetry).",
                   targets(f'SELECT mean("power") AS "power" FROM "telemetry" {where(*M)} '
                           'GROUP BY time($__interval) fill(none)'),
                   unit("kwatt", 2), w=12, h=8),
        timeseries("Vibration", "Vibration velocity (measurement telemetry).",
                   targets(f'SELECT mean("vibration") AS "vibration" FROM "telemetry" {where(*M)} '
                           'GROUP BY time($__interval) fill(none)'),
                   unit("velocitymms", 2), w=12, h=8),
    ]
    panels[2]["fieldConfig"]["overrides"] = [override("failures", unit="none", decimals=0)]
    return dashboard(UID, "fieldlab: machine detail",
                     "One machine: OEE and its factors over time, states, parts against the target, process "
                     "values. docs/dashboards.md",
                     [*site_line_machine(machine_multi=False, line_multi=False), window_variable()], panels)
