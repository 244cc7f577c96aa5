"""Builders for the parts of a Grafana dashboard (JSON model of Grafana 10/11, schemaVersion 39).

Plain dicts: what comes out is exactly what Grafana stores, and what ``dashboards/json`` holds.
"""
from __future__ import annotations

from . import DATASOURCE_UID

SCHEMA_VERSION = 39
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
GRID_COLUMNS = 24

#: KPI windows the gateway stores (tag ``window`` of ``kpi`` and ``line_kpi``, docs/storage.md)
WINDOWS = ("shift", "today", "since_start", "last_1h", "last_15min")

#: colours of PackML states (docs/contract.md) on state timelines and tables
STATE_COLOURS = {
    "Execute": "green", "Held": "red", "Holding": "red", "Unholding": "red", "Aborted": "dark-red",
    "Aborting": "dark-red", "Suspended": "orange", "Suspending": "orange", "Unsuspending": "orange",
    "Idle": "yellow", "Starting": "light-green", "Resetting": "yellow", "Completing": "blue", "Complete": "blue",
    "Stopped": "text", "Stopping": "text", "Clearing": "purple",
}

OEE_THRESHOLDS = [(None, "red"), (0.6, "orange"), (0.85, "green")]  # 85 %: the usual "world class" mark


# ----------------------------------------------------------------------------------- queries

def where(*levels: str, window: str | None = None, time: bool = True) -> str:
    """The WHERE clause: each level (site, line, machine) matched against its template variable
    (regex form, so multi-value and "All" selections work), a KPI window, and Grafana's time filter."""
    parts = [f'"{lv}" =~ /^${lv}$/' for lv in levels]
    if window:
        parts.append(f'"window" = \'{window}\'')
    if time:
        parts.append("$timeFilter")
    return "WHERE " + " AND ".join(parts)


def target(query: str, ref: str = "A", alias: str | None = None, table: bool = False) -> dict:
    """A raw InfluxQL target; ``table`` for panels that want rows (format "table")."""
    t = {"refId": ref, "datasource": dict(DATASOURCE), "rawQuery": True, "query": query,
         "resultFormat": "table" if table else "time_series"}
    if alias:
        t["alias"] = alias
    return t


def targets(*queries: str, aliases=(), table: bool = False) -> list[dict]:
    aliases = list(aliases) + [None] * len(queries)
    return [target(q, chr(ord("A") + i), aliases[i], table) for i, q in enumerate(queries)]


# ----------------------------------------------------------------------------------- field config

def thresholds(steps) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def ratio(decimals: int = 1) -> dict:
    """Field defaults for a fraction 0..1 shown as percent, coloured by the OEE thresholds."""
    return {"unit": "percentunit", "min": 0, "max": 1, "decimals": decimals,
            "thresholds": thresholds(OEE_THRESHOLDS), "color": {"mode": "thresholds"}}


def unit(name: str, decimals: int | None = None, **more) -> dict:
    d = {"unit": name, "thresholds": thresholds([(None, "green")]), "color": {"mode": "palette-classic"}}
    if decimals is not None:
        d["decimals"] = decimals
    return {**d, **more}


def state_mappings() -> list[dict]:
    return [{"type": "value", "options": {name: {"color": colour, "index": i}
                                          for i, (name, colour) in enumerate(STATE_COLOURS.items())}}]


# ----------------------------------------------------------------------------------- panels

def panel(type_: str, title: str, description: str, tgts: list[dict], defaults: dict, *, w: int, h: int,
          options: dict | None = None, transformations: list | None = None, overrides: list | None = None) -> dict:
    """One panel; ``w`` x ``h`` grid cells (24 columns), placed by ``layout``."""
    p = {"type": type_, "title": title, "description": description, "datasource": dict(DATASOURCE),
         "targets": tgts, "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
         "options": options or {}, "gridPos": {"w": w, "h": h}}
    if transformations:
        p["transformations"] = transformations
    return p


def reduce_options(calc: str = "lastNotNull") -> dict:
    return {"values": False, "calcs": [calc], "fields": ""}


def stat(title, description, tgts, defaults, *, w=6, h=5, text_mode="value_and_name"):
    return panel("stat", title, description, tgts, defaults, w=w, h=h, options={
        "reduceOptions": reduce_options(), "colorMode": "background", "graphMode": "none",
        "textMode": text_mode, "justifyMode": "auto", "orientation": "auto"})


def bargauge(title, description, tgts, defaults, *, w=12, h=8):
    return panel("bargauge", title, description, tgts, defaults, w=w, h=h, options={
        "reduceOptions": reduce_options(), "orientation": "horizontal", "displayMode": "gradient",
        "showUnfilled": True, "minVizHeight": 16, "maxVizHeight": 40, "namePlacement": "left"})


def timeseries(title, description, tgts, defaults, *, w=12, h=8, bars=False):
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 10,
              "showPoints": "never", "spanNulls": True, "lineInterpolation": "stepAfter" if not bars else "linear"}
    return panel("timeseries", title, description, tgts, {**defaults, "custom": custom}, w=w, h=h, options={
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "none"}})


def state_timeline(title, description, tgts, *, w=24, h=7):
    return panel("state-timeline", title, description, tgts,
                 {"mappings": state_mappings(), "thresholds": thresholds([(None, "text")]),
                  "color": {"mode": "thresholds"}, "custom": {"fillOpacity": 80, "lineWidth": 0}},
                 w=w, h=h, options={"showValue": "auto", "mergeValues": True, "alignValue": "left",
                                    "rowHeight": 0.9, "legend": {"showLegend": False}})


def table(title, description, tgts, defaults, *, w=24, h=8, overrides=None, transformations=None):
    return panel("table", title, description, tgts, defaults, w=w, h=h, overrides=overrides,
                 transformations=transformations,
                 options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}})


def barchart(title, description, tgts, defaults, *, w=12, h=9, x_field="Field", transformations=None,
             stacking="none"):
    return panel("barchart", title, description, tgts, defaults, w=w, h=h, transformations=transformations,
                 options={"orientation": "horizontal", "xField": x_field, "showValue": "auto",
                          "stacking": stacking, "legend": {"displayMode": "list", "placement": "bottom",
                                                           "showLegend": True},
                          "tooltip": {"mode": "single", "sort": "none"}, "barWidth": 0.8, "groupWidth": 0.7})


def override(field: str, **props) -> dict:
    """Field overrides by name: unit="s", displayName="…", "custom.cellOptions"=…"""
    return {"matcher": {"id": "byName", "options": field},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def plain(field: str, **props) -> dict:
    """A table column shown as plain text (no colour scale), e.g. plain("good", unit="none", decimals=0)."""
    return override(field, **props, color={"mode": "fixed", "fixedColor": "text"})


#: Tables of last() values: drop the time column InfluxQL adds
HIDE_TIME = {"id": "organize", "options": {"excludeByName": {"Time": True}}}


#: OEE, availability, performance and quality as columns of a ``kpi_table``
APQ = (("oee", "OEE", "ratio"), ("availability", "availability", "ratio"), ("performance", "performance", "ratio"),
       ("quality", "quality", "ratio"))


def kpi_table(title: str, description: str, where_clause: str, columns, *, w=24, h=8) -> dict:
    """A table of the gateway's KPIs per machine (measurement kpi): ``columns`` are (field, column name,
    kind), kind "ratio" (a 0-1 colour scale; OEE gets a coloured cell), "count" or "seconds"."""
    select = ", ".join(f'last("{field}") AS "{name}"' for field, name, _ in columns)
    return table(title, description,
                 targets(f'SELECT {select} FROM "kpi" {where_clause} GROUP BY "site", "area", "line", "machine"', table=True),
                 ratio(),
                 overrides=[*(plain(name, unit="none", decimals=0) for _, name, kind in columns if kind == "count"),
                            *(plain(name, unit="s") for _, name, kind in columns if kind == "seconds"),
                            override("OEE", custom__cellOptions={"type": "color-background"})],
                 transformations=[HIDE_TIME], w=w, h=h)


# ----------------------------------------------------------------------------------- variables

def query_variable(name: str, label: str, query: str, *, multi: bool = False) -> dict:
    """A variable from ``SHOW TAG VALUES``; refreshed when the dashboard loads and the time range changes
    (machines appear while a demo runs)."""
    return {"name": name, "label": label, "type": "query", "datasource": dict(DATASOURCE), "query": query,
            "definition": query, "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi, "regex": "",
            "hide": 0, "current": {}, "options": []}


def custom_variable(name: str, label: str, values, default: str) -> dict:
    return {"name": name, "label": label, "type": "custom", "query": ",".join(values), "multi": False,
            "includeAll": False, "hide": 0, "current": {"selected": True, "text": default, "value": default},
            "options": [{"selected": v == default, "text": v, "value": v} for v in values]}


def site_line_machine(machine_multi: bool = True, line_multi: bool = True) -> list[dict]:
    """The chained variables: site, then its lines, then the machines of those lines."""
    return [
        query_variable("site", "Site", 'SHOW TAG VALUES FROM "kpi" WITH KEY = "site"'),
        query_variable("line", "Line", 'SHOW TAG VALUES FROM "kpi" WITH KEY = "line" WHERE "site" =~ /^$site$/',
                       multi=line_multi),
        query_variable("machine", "Machine", 'SHOW TAG VALUES FROM "kpi" WITH KEY = "machine" '
                       'WHERE "site" =~ /^$site$/ AND "line" =~ /^$line$/', multi=machine_multi),
    ]


def window_variable(default: str = "shift", values=WINDOWS) -> dict:
    return custom_variable("window", "KPI window", values, default)


# ----------------------------------------------------------------------------------- dashboard

def layout(panels: list[dict]) -> list[dict]:
    """Ids 1, 2, … and grid positions: left to right in the given order, a new row when a panel
    does not fit into the 24 columns (rows are as tall as their tallest panel)."""
    x = y = row_h = 0
    for i, p in enumerate(panels, 1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > GRID_COLUMNS:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_h = x + w, max(row_h, h)
    return panels


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[dict],
              refresh: str = "10s", time_from: str = "now-8h") -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["fieldlab"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "timezone": "browser", "refresh": refresh, "time": {"from": time_from, "to": "now"},
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []},
        "links": [{"title": "fieldlab", "type": "dashboards", "tags": ["fieldlab"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": variables},
        "panels": layout(panels),
    }
