"""Shift report: the current shift (or today) per line and machine, for the hand-over at shift change."""
from __future__ import annotations

from .losses import six_losses_total
from .model import (APQ, barchart, bargauge, dashboard, HIDE_TIME, kpi_table, ratio, site_line_machine, stat, targets,
                    timeseries, unit, where, window_variable)

UID = "fieldlab-shift"

M = ("site", "line", "machine")


def build() -> dict:
    line = where("site", "line", window="$window")
    kpi = where(*M, window="$window")
    panels = [
        stat("Line OEE", "OEE of each line in the shift (or today): from the line's summed times and counts.",
             targets(f'SELECT last("oee") FROM "line_kpi" {line} GROUP BY "line"', aliases=["$tag_line"]),
             ratio(), w=8, h=5),
        stat("Line parts", "Good and rejected parts of each line in the shift (or today).",
             targets(f'SELECT last("good") AS "good", last("reject") AS "reject" FROM "line_kpi" {line} '
                     'GROUP BY "line"', aliases=["$tag_line $col"]),
             unit("none", 0), w=8, h=5),
        stat("Line MTBF, MTTR", "Of each line in the shift (or today).",
             targets(f'SELECT last("mtbf_s") AS "MTBF", last("mttr_s") AS "MTTR" FROM "line_kpi" {line} '
                     'GROUP BY "line"', aliases=["$tag_line $col"]),
             unit("s"), w=8, h=5),
        kpi_table("Machines", "Per machine in the shift (or today): the gateway's KPIs.", kpi,
                  [*APQ, ("good", "good", "count"), ("reject", "reject", "count"), ("planned_s", "planned", "seconds"),
                   ("run_s", "run", "seconds"), ("breakdown_s", "breakdowns", "seconds"),
                   ("setup_s", "setup", "seconds"), ("failures", "failures", "count")]),
        bargauge("Good parts against the target", "Good parts of each machine and its target at ideal speed "
                 "without losses in the planned time (good / OEE).",
                 targets(f'SELECT last("good") AS "good", last("good") / last("oee") AS "target" FROM "kpi" {kpi} '
                         'GROUP BY "site", "area", "line", "machine"', aliases=["$tag_machine $col"]),
                 unit("none", 0, min=0), w=12, h=9),
        barchart("Six big losses", "Seconds lost in the shift (or today), summed over the selected machines.",
                 targets(six_losses_total("$window"), table=True), unit("s"),
                 transformations=[HIDE_TIME,
                                  {"id": "reduce", "options": {"mode": "seriesToRows", "reducers": ["lastNotNull"]}},
                                  {"id": "sortBy", "options": {"sort": [{"field": "Last *", "desc": True}]}}],
                 w=12, h=9),
        timeseries("Line OEE through the shift", "How the line's shift (or today) OEE developed.",
                   targets(f'SELECT last("oee") FROM "line_kpi" {line} GROUP BY time($__interval), "line" fill(none)',
                           aliases=["$tag_line"]),
                   ratio(), w=24, h=8),
    ]
    return dashboard(UID, "fieldlab: shift report",
                     "The current shift or today, per line and machine: for the shift hand-over. Set the time "
                     "range to cover the shift. docs/dashboards.md",
                     [*site_line_machine(), window_variable("shift", ("shift", "today"))], panels,
                     refresh="1m", time_from="now-12h")
