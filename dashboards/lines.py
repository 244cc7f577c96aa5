"""Lines: line OEE from the machines' summed times and counts, the bottleneck of each line, and per machine its
own losses against the time the line starved or blocked it (external, docs/oee.md)."""
from __future__ import annotations

from .model import (HIDE_TIME, bargauge, barchart, dashboard, override, plain, ratio, site_line_machine, stat, table,
                    targets, timeseries, unit, where, window_variable)

UID = "fieldlab-lines"

M = ("site", "line", "machine")


def own_and_external(window: str) -> str:
    """Seconds per machine: its own losses (planned time - good parts at ideal speed - external) and the time
    the line starved or blocked it (external_s); together planned x (1 - OEE)."""
    return (f'SELECT last("planned_s") * (1 - last("oee")) - last("external_s") AS "own losses", '
            f'last("external_s") AS "external (line)" FROM "kpi" {where(*M, window=window)} '
            'GROUP BY "site", "area", "line", "machine"')


def build() -> dict:
    line = where("site", "line", window="$window")
    panels = [
        stat("Line OEE", "OEE of each line in the chosen KPI window, from the line's summed times and counts "
             "(line_kpi).", targets(f'SELECT last("oee") FROM "line_kpi" {line} GROUP BY "line"',
                                    aliases=["$tag_line"]), ratio(), w=8, h=6),
        table("Bottleneck per line", "The machine of each line that is least often starved or blocked in the "
              "chosen window (the active-period method, docs/oee.md: the share of its planned time not waiting "
              "for the line is the highest); empty while no machine of the line waited. The line's OEE and its "
              "time lost to waiting next to it.",
              targets(f'SELECT last("bottleneck") AS "bottleneck", last("oee") AS "line OEE", '
                      f'last("external_s") AS "starved or blocked" FROM "line_kpi" {line} '
                      'GROUP BY "site", "area", "line"', table=True),
              ratio(), overrides=[plain("starved or blocked", unit="s"),
                                  override("line OEE", custom__cellOptions={"type": "color-background"})],
              transformations=[HIDE_TIME], w=16, h=6),
        barchart("Own losses and external time per machine", "Per machine in the chosen window, in seconds: its "
                 "own losses (breakdowns, setup, small stops, slow cycles, rejects) and the time the line starved "
                 "or blocked it (external: not its fault). A machine after the bottleneck is starved, one before "
                 "it blocked.", targets(own_and_external("$window"), table=True), unit("s"),
                 x_field="machine", stacking="normal", transformations=[HIDE_TIME], w=14, h=9),
        bargauge("Share of planned time not waiting", "Per machine: (planned - external) / planned time in the "
                 "chosen window. The highest of a line is its bottleneck: it waits for nobody, the others wait "
                 "for it.", targets(f'SELECT 1 - last("external_s") / last("planned_s") FROM "kpi" '
                                    f'{where(*M, window="$window")} GROUP BY "site", "area", "line", "machine"',
                                    aliases=["$tag_line $tag_machine"]), ratio(), w=10, h=9),
        timeseries("Starved and blocked time, rolling hour", "External time per machine in its last hour (window "
                   "last_1h): waiting moves along the line when a machine stops.",
                   targets(f'SELECT last("external_s") FROM "kpi" {where(*M, window="last_1h")} '
                           'GROUP BY time($__interval), "machine" fill(none)', aliases=["$tag_machine"]),
                   unit("s"), w=12, h=8),
        timeseries("Buffer levels", "Parts in each machine's input buffer over the time range (telemetry "
                   "buffer_in of a simulated line, docs/simulators.md): an empty buffer starves the machine, a "
                   "full one blocks the machine before it.",
                   targets(f'SELECT last("buffer_in") FROM "telemetry" {where(*M)} '
                           'GROUP BY time($__interval), "machine" fill(none)', aliases=["into $tag_machine"]),
                   unit("none", 0, min=0), w=12, h=8),
    ]
    return dashboard(UID, "fieldlab: lines",
                     "Line OEE, the bottleneck of each line, and per machine its own losses against the time the "
                     "line starved or blocked it. docs/dashboards.md", [*site_line_machine(), window_variable()],
                     panels)
