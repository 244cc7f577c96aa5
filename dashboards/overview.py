"""Shop-floor overview: OEE per line and per machine, A/P/Q, who is running now, edge agents."""
from __future__ import annotations

from contract import REASONS

from .model import (APQ, bargauge, dashboard, HIDE_TIME, kpi_table, override, ratio, site_line_machine, stat,
                    state_mappings, table, targets, timeseries, unit, where, window_variable)

UID = "fieldlab-overview"

# a line's KPIs are the gateway's, from its machines' summed times and counts (line_kpi): never a mean of
# machines' OEE (docs/storage.md)
LINE = where("site", "line", window="$window")
MACHINE = where("site", "line", "machine", window="$window")


def build() -> dict:
    panels = [
        stat("Line OEE", "OEE of each line in the chosen KPI window, from the line's summed times and counts "
             "(measurement line_kpi).",
             targets(f'SELECT last("oee") FROM "line_kpi" {LINE} GROUP BY "line"', aliases=["$tag_line"]),
             ratio(), w=8, h=6),
        bargauge("Line availability, performance, quality", "A, P and Q of each line (line_kpi).",
                 targets(f'SELECT last("availability") AS "availability", last("performance") AS "performance", '
                         f'last("quality") AS "quality" FROM "line_kpi" {LINE} GROUP BY "line"',
                         aliases=["$tag_line $col"]),
                 ratio(), w=16, h=6),
        bargauge("OEE per machine", "OEE of each machine in the chosen KPI window (measurement kpi).",
                 targets(f'SELECT last("oee") FROM "kpi" {MACHINE} GROUP BY "site", "area", "line", "machine"', aliases=["$tag_machine"]),
                 ratio(), w=10, h=9),
        table("Who is running now", "Each machine's latest state in the time range, its reason code "
              "(" + ", ".join(f"{c} {n}" for c, n in REASONS.items() if c) + "; 0 none) and when it entered it.",
              targets(f'SELECT last("state_name") AS "state", last("reason") AS "reason" FROM "state" '
                      f'{where("site", "line", "machine")} GROUP BY "site", "area", "line", "machine"', table=True),
              {"thresholds": {"mode": "absolute", "steps": [{"color": "text", "value": None}]}},
              w=14, h=9, overrides=[override("state", mappings=state_mappings(),
                                             custom__cellOptions={"type": "color-background"})],
              transformations=[HIDE_TIME]),
        kpi_table("A, P, Q per machine", "The chosen KPI window per machine: the gateway's numbers, as in its "
                  "MQTT KPI messages and its live page.", MACHINE,
                  [*APQ, ("good", "good", "count"), ("reject", "reject", "count"), ("run_s", "run time", "seconds")]),
        timeseries("OEE per machine, rolling hour", "OEE of each machine over its last hour (window last_1h), "
                   "as the gateway computed it every 10 s.",
                   targets(f'SELECT last("oee") FROM "kpi" {where("site", "line", "machine", window="last_1h")} '
                           'GROUP BY time($__interval), "machine" fill(none)', aliases=["$tag_machine"]),
                   ratio(), w=12, h=8),
        timeseries("OEE per line, rolling hour", "OEE of each line over its last hour (line_kpi, window last_1h).",
                   targets(f'SELECT last("oee") FROM "line_kpi" {where("site", "line", window="last_1h")} '
                           'GROUP BY time($__interval), "line" fill(none)', aliases=["$tag_line"]),
                   ratio(), w=12, h=8),
        table("Edge agents", "Each edge agent's latest heartbeat: online (1) or offline (0), data waiting in its "
              "disk outbox (backlog), data lost to a full outbox (dropped), broker reconnects.",
              targets(f'SELECT last("online") AS "online", last("backlog") AS "backlog", last("dropped") AS "dropped", '
                      f'last("reconnects") AS "reconnects" FROM "agent" {where("site", "line", "machine")} '
                      'GROUP BY "site", "area", "line", "machine"', table=True),  # one row per full path
              unit("none", 0),
              overrides=[override("online", mappings=[{"type": "value", "options": {
                  "1": {"text": "online", "color": "green", "index": 0},
                  "0": {"text": "offline", "color": "red", "index": 1}}}],
                  custom__cellOptions={"type": "color-text"})],
              transformations=[HIDE_TIME], w=24, h=6),
    ]
    return dashboard(UID, "fieldlab: shop-floor overview",
                     "OEE per line and machine, availability, performance and quality, machine states and edge "
                     "agents. docs/dashboards.md", [*site_line_machine(), window_variable()], panels)
