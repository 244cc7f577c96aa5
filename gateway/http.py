"""The gateway's web app (aiohttp): the live dashboard, a small REST API, ``/metrics``, ``/healthz``, the login
and the writes of presenter mode.

``/`` is the built-in dashboard (gateway/web/index.html: one file, no assets from the internet; its texts in
gateway/web/i18n/*.json), ``/api/...`` the JSON API described by ``/api/openapi.json`` (``API`` is its route
table), ``/api/events`` a Server-Sent Events stream with every machine's KPIs after each computation. Reading is
open; every write needs a login (gateway/auth.py, ``requires``). It serves what the gateway computed; it never
computes anything itself. docs/web.md has the whole picture.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import uuid
from importlib import resources
from urllib.parse import quote, unquote

from aiohttp import web

from contract import Kind, MachineRef, encode_command, encode_operator
from contract.payloads import MAX_HAND_REJECTS
from contract.errors import ContractError, ServiceError
from contract.sim import FAULT_NAMES, SIM_PREFIX, decode_scenario, encode_start, sim_command_topic

from .auth import COOKIE, SHIFT_S, Auth, check, sign
from .engine import WINDOW_NAMES
from .oee import plain

log = logging.getLogger("fieldlab.gateway.http")

COUNTERS = (
    ("messages", "Messages decoded and accepted from MQTT."),
    ("samples", "Samples in the accepted messages (telemetry values, state changes, counter readings)."),
    ("dead_letters", "Messages rejected for breaking the contract (see the dead-letter topic)."),
    ("kpi_published", "KPI messages published."),
    ("tick_failures", "KPI computations that failed (the log says why; /healthz fails while they go on)."),
    ("mqtt_connects", "Connections made to the MQTT broker (the first one and every reconnect)."),
    ("client_id_collisions", "Reconnects that looked like another process using this gateway's MQTT client id."),
    ("unknown_topics", "Messages on topics the gateway does not understand (outside fieldlab/v1/, no kind): ignored."),
    ("sparkplug_errors", "Sparkplug B messages that could not be used (dead-lettered; docs/contract.md, Sparkplug B)."),
    ("sparkplug_rebirths", "Rebirth requests sent to Sparkplug B edge nodes (a seq gap, an unknown alias or node)."),
)
MACHINE_GAUGES = ("availability", "performance", "quality", "oee")
SINK_METRICS = (
    ("written_total", "counter", "Lines the database accepted."),
    ("dropped_total", "counter", "Lines dropped because the sink's buffer was full (or left at shutdown)."),
    ("rejected_total", "counter", "Lines the database refused as invalid."),
    ("retries_total", "counter", "Writes retried because the database was unreachable or failing."),
    ("backlog_lines", "gauge", "Lines waiting to be written."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(ref) -> str:
    return ",".join(f'{k}="{_label(getattr(ref, k))}"' for k in ("site", "area", "line", "machine"))


def render_metrics(gateway) -> str:
    """Prometheus text exposition format of the gateway's counters and its machines' KPIs."""
    lines = []
    for name, help_ in COUNTERS:
        lines += [f"# HELP fieldlab_gateway_{name}_total {help_}", f"# TYPE fieldlab_gateway_{name}_total counter",
                  f"fieldlab_gateway_{name}_total {gateway.stats[name]}"]
    lines += ["# HELP fieldlab_gateway_machines Machines the gateway has heard of.",
              "# TYPE fieldlab_gateway_machines gauge", f"fieldlab_gateway_machines {len(gateway.machines)}",
              "# HELP fieldlab_gateway_tick_seconds Duration of the last KPI computation for all machines.",
              "# TYPE fieldlab_gateway_tick_seconds gauge", f"fieldlab_gateway_tick_seconds {gateway.tick_seconds:.6f}",
              "# HELP fieldlab_gateway_healthy 1 while /healthz answers ok, 0 while it fails.",
              "# TYPE fieldlab_gateway_healthy gauge",
              f"fieldlab_gateway_healthy {int(gateway.health()['status'] == 'ok')}"]
    last = getattr(gateway, "last_message_at", None)
    if last is not None:  # lag: time() - this, in PromQL
        lines += ["# HELP fieldlab_gateway_last_message_timestamp_seconds When the gateway last accepted a message "
                  "(Unix time, its own clock).", "# TYPE fieldlab_gateway_last_message_timestamp_seconds gauge",
                  f"fieldlab_gateway_last_message_timestamp_seconds {last:.3f}"]
    sinks = getattr(gateway, "sinks", [])
    for name, kind, help_ in SINK_METRICS:
        lines += [f"# HELP fieldlab_sink_{name} {help_}", f"# TYPE fieldlab_sink_{name} {kind}"]
        for sink in sinks:
            value = sink.backlog if name == "backlog_lines" else sink.stats[name.removesuffix("_total")]
            lines.append(f'fieldlab_sink_{name}{{sink="{_label(str(sink))}"}} {value}')
    rows = gateway.rows
    lines += ["# HELP fieldlab_machine_data_timestamp_seconds The machine's latest data (Unix time, the machine's "
              "clock): time() minus it is how far behind the machine's data is.",
              "# TYPE fieldlab_machine_data_timestamp_seconds gauge"]
    for r in rows:
        if r.get("ts") is not None:
            lines.append(f"fieldlab_machine_data_timestamp_seconds{{{_labels(r['machine'])}}} {r['ts']:.3f}")
    for kpi in MACHINE_GAUGES:
        lines += [f"# HELP fieldlab_machine_{kpi} {kpi.capitalize()} since the gateway started (fraction; "
                  "absent while undefined).", f"# TYPE fieldlab_machine_{kpi} gauge"]
        for r in rows:
            v = plain(r.get(kpi))
            if v is None:
                continue
            lines.append(f"fieldlab_machine_{kpi}{{{_labels(r['machine'])}}} {v:.6g}")
    return "\n".join(lines) + "\n"


WINDOWS = WINDOW_NAMES  # the windows of every KPI message (gateway/engine.py)
MAX_HEADERS = 100  # header lines per request
MAX_LINE = 8190  # bytes in the request line and in one header (longer: 400)
MAX_BODY = 64 * 1024  # bytes in a request body (the writes are small JSON objects)
MAX_STREAMS = 64  # live event streams at once (each costs a JSON encoding per tick)
REQUEST_DEADLINE_S = 10  # a request must arrive whole within this after connecting (and idle connections close)
SHUTDOWN_S = 1.0  # stop() waits at most this for requests being answered (streams are cancelled at once)
LANGUAGES = ("en", "nl")
#: presenter mode's buttons per machine: (fault, args) sent as a cmd message (contract/sim.py, FAULT_NAMES)
BUTTONS = (("breakdown", {"minutes": 5}), ("quality", {"reject_rate": 0.3, "minutes": 10}),
           ("microstops", {"count": 5}), ("material", {"minutes": 5}), ("reset", {}))  # gateway/web/i18n/<lang>.json
BOOT = '<script id="boot" type="application/json">{}</script>'  # where a page gets its texts and figures
API_ROUTES = web.AppKey("api_routes", dict)  # the app's API route table: path -> handler
USER = web.RequestKey("user", object)  # the logged-in gateway.auth.User, or None
BODY = web.RequestKey("body", dict)  # a write's JSON body, checked by requires()


def _json(obj) -> str:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, MachineRef):
            return o.path
        return o
    return json.dumps(clean(obj), separators=(",", ":"))


def machine_rows(gateway) -> list[dict]:
    """Every machine's KPI message (docs/contract.md, kpi) with its id and place."""
    return [machine_row(r) for r in gateway.rows]


def line_rows(gateway) -> list[dict]:
    """/api/lines: every line's KPI message (docs/contract.md, kpi of a line) with its id and place."""
    return [{"id": r["line"].path, "site": r["line"].site, "area": r["line"].area, "line": r["line"].line,
             **{k: v for k, v in r.items() if k != "line"}} for r in getattr(gateway, "line_rows", [])]


def machine_row(r: dict) -> dict:
    """One machine's KPI message (a row of ``Gateway.rows``) with its id and place."""
    ref = r["machine"]
    return {"id": ref.path, "site": ref.site, "area": ref.area, "line": ref.line, "machine": ref.machine,
            **{k: v for k, v in r.items() if k != "machine"}}


def openapi() -> dict:
    machine = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "site/area/line/machine, e.g. demo/hall-1/line-1/cnc-01 (slashes as they are, or as %2F)"}
    kpi = {"type": "object", "description": "the KPI message of docs/contract.md (kind kpi) plus id, site, area, "
                                            "line, machine", "additionalProperties": True}

    error = {"type": "object", "properties": {"error": {"type": "string"}}}

    def get(summary, schema, params=(), text=None, more=None):
        ok = {"description": "OK", "content": {text or "application/json": {"schema": schema}}}
        responses = {"200": ok, **{code: {"description": what, "content": {"application/json": {"schema": error}}}
                                   for code, what in (more or {}).items()}}
        if any(p["in"] == "path" for p in params):
            responses["404"] = {"description": "no such machine (yet)"}
        if any(p["name"] == "window" for p in params):  # these also wait (at most 2 s) for the machines' state
            responses["400"] = {"description": f"window is not one of {', '.join(WINDOWS)}",
                                "content": {"application/json": {"schema": error}}}
            responses["503"] = {"description": "the KPI computation holds the machines' state; try again",
                                "content": {"application/json": {"schema": error}}}
        return {"get": {"summary": summary, "parameters": list(params), "responses": responses}}

    def post(summary, body, answers, params=()):
        def content(code):
            return {"application/json": {"schema": {"type": "object"} if code == "200" else error}}
        return {"post": {"summary": summary, "parameters": list(params), "requestBody": {"required": True, "content": {
            "application/json": {"schema": body}}}, "responses": {
            code: {"description": what, "content": content(code)} for code, what in answers.items()}}}

    window = {"name": "window", "in": "query", "required": False,
              "schema": {"type": "string", "enum": list(WINDOWS), "default": "last_1h"}}
    health = {"type": "object", "required": ["status", "reasons"], "properties": {
        "status": {"type": "string", "enum": ["ok", "failing"]},
        "reasons": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": True}
    piece = {"type": "object", "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                                              "category": {"type": "string"}, "reason": {"type": "integer"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "fieldlab gateway", "version": "1",
                 "description": "Live OEE of every machine the gateway hears on MQTT. Times are Unix seconds "
                                "(the machine's own clock); ratios are fractions 0..1, null while undefined."},
        "paths": {
            "/api/machines": get("every machine: id, place, status, state, OEE, A, P, Q",
                                 {"type": "array", "items": kpi}),
            "/api/machines/{id}": get("one machine's KPIs (all windows, losses, stop reasons)", kpi, [machine]),
            "/api/lines": get("every line: id, place, its machines, the bottleneck, and the line's KPIs from its "
                              "machines' summed times and counts (the KPI message of a line, docs/contract.md); "
                              "buffers: the latest level of each machine's input buffer (telemetry buffer_in, "
                              "buffer_in_capacity), [{machine, level, capacity, ts}]",
                              {"type": "array", "items": {"type": "object", "additionalProperties": True}}),
            "/api/machines/{id}/timeline": get(
                "the machine's state timeline in a window (categories: run, breakdown, stopped, setup, "
                "not_scheduled, small_stop, external)",
                {"type": "object", "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                                                  "pieces": {"type": "array", "items": piece}}}, [machine, window]),
            "/api/machines/{id}/losses": get("the six big losses (seconds and OEE points) and the shift's stop "
                                             "reasons", {"type": "object"}, [machine]),
            "/api/machines/{id}/counts": get("good and reject parts per window, and the target at ideal speed",
                                             {"type": "object"}, [machine]),
            "/api/machines/{id}/stops": get(
                "the operator terminal's list: the machine's stops in the current shift that have no reason yet "
                "and last at least min_s (never less than the micro-stop threshold), oldest first; and the reason "
                "codes the site knows", {"type": "object", "properties": {
                    "micro_stop_s": {"type": "number"},
                    "reasons": {"type": "array", "items": {"type": "integer"}},
                    "stops": {"type": "array", "items": {"type": "object", "properties": {
                        "start": {"type": "number"}, "end": {"type": "number"}, "seconds": {"type": "number"},
                        "category": {"type": "string"}, "open": {"type": "boolean"}}}}}},
                [machine, {"name": "min_s", "in": "query", "required": False,
                           "schema": {"type": "number", "minimum": 0, "default": 0}}],
                more={"400": "min_s is not a number of seconds >= 0",
                      "503": "the KPI computation holds the machines' state; try again"}),
            "/api/machines/{id}/classify": post(
                "operator terminal: give the stop that contains ts a reason (an operator message on the machine's "
                "operator topic, by the logged-in user; docs/contract.md, operator). Needs a login with the "
                "operator scope and a same-origin Origin header",
                {"type": "object", "required": ["ts", "reason"], "properties": {
                    "ts": {"type": "number", "description": "the start of the stop (any time inside it)"},
                    "reason": {"type": "integer", "description": "a reason code the site knows"}}},
                {**WRITE_ANSWERS, "400": "ts not a number, or reason not a code of the site",
                 "409": "no unclassified stop at ts (any more)"}, [machine]),
            "/api/machines/{id}/rejects": post(
                "operator terminal: parts found bad by hand (an operator message: they move from good to reject)",
                {"type": "object", "required": ["count"], "properties": {
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_HAND_REJECTS}}},
                {**WRITE_ANSWERS, "400": "count not a whole number from 1", "409": "fewer good parts counted"},
                [machine]),
            "/api/machines/{id}/product": post(
                "operator terminal: switch the machine's product (a set_product cmd message on its cmd topic, "
                "for its edge agent)", {"type": "object", "required": ["product"], "properties": {
                    "product": {"type": "string", "minLength": 1, "maxLength": 128}}},
                {**WRITE_ANSWERS, "400": "product not a name of 1-128 characters"}, [machine]),
            "/api/machines/{id}/forget": post(
                "remove a (test) machine: a forget cmd message on its cmd topic, as `fieldlab gateway forget` "
                "sends; its history and KPIs go until it sends again (docs/contract.md, cmd)",
                {"type": "object", "properties": {}}, WRITE_ANSWERS, [machine]),
            "/api/timelines": get(
                "every machine's state timeline in a window, in one response (what the dashboard shows): "
                "{window, machines: {id: {start, end, pieces}}}",
                {"type": "object", "properties": {
                    "window": {"type": "string"},
                    "machines": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                                                         "pieces": {"type": "array", "items": piece}}}}}},
                [window]),
            "/api/events": get("Server-Sent Events: after every KPI computation an event 'machines' with the "
                               "body of /api/machines and an event 'lines' with the body of /api/lines",
                               {"type": "string"}, text="text/event-stream"),
            "/api/session": get("who is logged in on this browser (the session cookie), and with which scopes",
                                {"type": "object", "required": ["user", "scopes"], "properties": {
                                    "user": {"type": "string", "nullable": True},
                                    "scopes": {"type": "array", "items": {"type": "string"}}}}),
            "/api/reasons": get("the site's own names of stop reasons per language (site configuration "
                                "'reasons:'), {code: {language: text}}; the page's catalogue names the rest",
                                {"type": "object", "additionalProperties": {
                                    "type": "object", "additionalProperties": {"type": "string"}}}),
            "/api/presenter": get("presenter mode: whether it is on, whether it hears the simulation's scenario "
                                  "messages (not in a deployed gateway: the scenario is then unknown), the latest "
                                  "one (contract/sim.py: simulated clock, scenario, next scripted faults) and the "
                                  "fault buttons", {"type": "object",
                                                    "required": ["enabled", "hears_scenario", "scenario", "buttons"],
                                                    "properties": {"enabled": {"type": "boolean"},
                                                                   "hears_scenario": {"type": "boolean"},
                                                                   "scenario": {"type": "object", "nullable": True},
                                                                   "buttons": {"type": "array"}}}),
            "/api/presenter/inject": post(
                "presenter mode: inject a fault into a simulated machine (a cmd message on its cmd topic). Needs a "
                "login with the presenter scope (/login) and a same-origin Origin header",
                {"type": "object", "required": ["machine", "fault"], "properties": {
                    "machine": {"type": "string", "description": "site/area/line/machine"},
                    "fault": {"type": "string", "enum": list(FAULT_NAMES)},
                    "args": {"type": "object", "additionalProperties": {"type": "number"}}}},
                {"200": "sent: the broker took the command", "400": "not a fault, or args not numbers",
                 "401": "not logged in", "403": "another site's page, or no presenter role",
                 "404": "no such machine, or presenter mode is off", "413": "the body is too large",
                 "415": "the body is not JSON",
                 "503": "the broker did not take the command"}),
            "/api/presenter/scenario": post(
                "presenter mode: start another scenario (a start cmd message to the simulator, contract/sim.py): its "
                "machines start afresh and the gateway forgets the old ones' history. Needs a login with the "
                "presenter scope (/login) and a same-origin Origin header",
                {"type": "object", "required": ["scenario"], "properties": {
                    "scenario": {"type": "string", "description": "a name of the scenario message's scenarios"}}},
                {"200": "sent: the broker took the command", "400": "not a scenario the simulator offers",
                 "401": "not logged in", "403": "another site's page, or no presenter role",
                 "404": "presenter mode is off, or no simulation that starts scenarios was heard",
                 "413": "the body is too large", "415": "the body is not JSON",
                 "503": "the broker did not take the command"}),
            "/metrics": get("Prometheus metrics", {"type": "string"}, text="text/plain"),
            "/healthz": {"get": {
                "summary": "health: 200 while the gateway computes and reaches the broker, 503 with the reasons "
                           "when it does not (stale KPIs, MQTT down, a sink dropping data, a client id collision)",
                "parameters": [], "responses": {
                    code: {"description": what, "content": {"application/json": {"schema": health}}}
                    for code, what in (("200", "healthy"), ("503", "failing: see reasons"))}}},
        },
    }


WRITE_ANSWERS = {"200": "sent: the broker took the message", "401": "not logged in",
                 "403": "another site's page, or no operator role", "404": "no such machine",
                 "413": "the body is too large", "415": "the body is not JSON", "503": "the broker did not take it"}


def counts(row: dict) -> dict:
    """Parts per window, and the target: what the planned time would give at the ideal cycle time."""
    out = {}
    for name, w in [("since_start", row)] + list(row.get("windows", {}).items()):
        out[name] = {"good": w.get("good"), "reject": w.get("reject"), "planned_s": w.get("planned_s")}
    ideal_s, total = row.get("ideal_s"), row.get("total")
    cycle = ideal_s / total if ideal_s and total else None
    for w in out.values():
        w["target"] = int(w["planned_s"] / cycle) if cycle and w["planned_s"] is not None else None
    return {"ideal_cycle_s": cycle, "windows": out}


# --- the aiohttp app ---

def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    """A JSON error of one sentence that says what to do (every 4xx and 5xx of the API)."""
    return web.json_response({"error": message}, status=status, headers=headers, dumps=_json)


def _text(body: str | bytes, ctype: str, status: int = 200) -> web.Response:
    data = body if isinstance(body, bytes) else body.encode()
    return web.Response(body=data, status=status, headers={"Content-Type": f"{ctype}; charset=utf-8"})


def _window(request: web.Request) -> str | None:
    window = request.query.get("window", "last_1h")  # ?window= is a wrong window, not the default
    return window if window in WINDOWS else None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _client(request: web.Request) -> str:
    return request.remote or "?"


def requires(scope: str):
    """Guards a write: POST with a JSON object body, from a page of this same server (Origin checked), by a
    logged-in user with ``scope``. The handler finds the body in ``request[BODY]``; every write is logged with
    who, from where and when."""
    def wrap(handler):
        @functools.wraps(handler)
        async def guarded(request: web.Request):
            origin = request.headers.get("Origin")
            if origin != f"{request.scheme}://{request.host}":
                return _error(403, "writes are accepted only from this server's own pages (the Origin header "
                                   "is missing or names another site)")
            user = request[USER]
            if user is None:
                return _error(401, "log in first: open /login with the link the gateway printed, or with your "
                                   "name and PIN")
            if scope not in user.scopes:
                return _error(403, f"{user.name} may not do this: it needs the {scope} role")
            if request.content_type != "application/json":
                return _error(415, "send the request body as JSON (Content-Type: application/json)")
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "the request body is not valid JSON")
            if not isinstance(body, dict):
                return _error(400, "the request body must be a JSON object")
            request[BODY] = body
            response = await handler(request)
            log.info("write user=%s scope=%s path=%s from=%s status=%s body=%s", user.name, scope, request.path,
                     _client(request), response.status, _json(body)[:300])
            return response
        guarded.scope = scope
        return guarded
    return wrap


class HttpEndpoint:
    """The gateway's web app (aiohttp) in the gateway's own event loop: ``start()``, ``stop()``, ``url``."""

    def __init__(self, gateway, host: str = "127.0.0.1", port: int = 8080, sse_poll_s: float = 0.2,
                 auth: Auth | None = None, presenter: bool = False):
        """``presenter``: serve presenter mode (/presenter, its fault buttons). On a broker without logins (the
        demo) the endpoint then has an MQTT connection of its own, to hear the simulation's scenario message and
        send faults as cmd messages (contract/sim.py). With a user name (a broker of ``fieldlab deploy``, which
        allows one connection per user) it sends through the gateway's connection and hears no scenario message:
        a second connection as the gateway's user would take the gateway's session over, again and again."""
        self.gateway, self.host, self.port, self.sse_poll_s = gateway, host, port, sse_poll_s
        self.auth = auth or Auth.from_environment()
        self.presenter = presenter
        self.scenarios: dict[str, dict] = {}  # site -> the latest scenario message (contract/sim.py)
        self._mqtt = None
        self.app = make_app(gateway, self)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task] = set()
        self._cache: tuple[int, str] = (-1, "")
        self._lines_cache: tuple[int, str] = (-1, "")

    @property
    def hears_scenario(self) -> bool:
        """Whether presenter mode hears the simulation's scenario message: only with a connection of its own, which
        a gateway that logs in with a user name (a deployed one) does not get. Otherwise the scenario is unknown."""
        return self.presenter and not getattr(self.gateway.broker, "username", None)

    async def start(self) -> None:
        if self.hears_scenario and self._mqtt is None:
            from contract.mqtt import connect

            site = getattr(self.gateway, "site", "+")
            self._mqtt = await asyncio.to_thread(
                connect, self.gateway.broker, f"fieldlab-presenter-{uuid.uuid4().hex[:8]}", retry=True,
                subscriptions=[(f"{SIM_PREFIX}/{site}/scenario", 1)], on_message=self._on_scenario)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     shutdown_timeout=SHUTDOWN_S, keepalive_timeout=REQUEST_DEADLINE_S,
                                     max_line_size=MAX_LINE, max_field_size=MAX_LINE, max_headers=MAX_HEADERS)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as e:
            await self.stop()
            raise ServiceError(f"cannot serve HTTP on {self.host}:{self.port}: {e.strerror or e} "
                               "(is the port taken? choose another with --http-port)") from None
        self.port = self._runner.addresses[0][1]
        log.info("http up url=%s", self.url)
        if self.presenter and self.auth.users:  # a service: presenters log in with their PIN, no token in its log
            if any("presenter" in scopes for scopes, _ in self.auth.users.values()):
                print(f"presenter mode: {self.url}/presenter (log in on {self.url}/login with a presenter's name and "
                      "PIN)", flush=True)
            else:  # the token is not printed with a users file: nobody could press a button
                log.warning("presenter mode is on, but no user of the web login file (FIELDLAB_WEB_USERS) is a "
                            "presenter, so nobody can log in to present: add presenters: [trainer] to the plant "
                            "file and run fieldlab deploy again (or add a line with the presenter scope, docs/web.md), "
                            "then restart the gateway")
        elif self.presenter:  # as Jupyter does: whoever can read this terminal may present (docs/web.md)
            print(f"presenter login: {self.login_url}", flush=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.url}/login?token={self.auth.token}"

    def machines_json(self) -> str:
        """/api/machines, encoded once per KPI computation however many clients ask (and every stream)."""
        if self._cache[0] != self.gateway.ticks:
            self._cache = (self.gateway.ticks, _json(machine_rows(self.gateway)))
        return self._cache[1]

    def lines_json(self) -> str:
        """/api/lines, encoded once per KPI computation (as ``machines_json``)."""
        if self._lines_cache[0] != self.gateway.ticks:
            self._lines_cache = (self.gateway.ticks, _json(line_rows(self.gateway)))
        return self._lines_cache[1]

    async def stop(self) -> None:
        if self._runner:  # streams are cancelled in on_shutdown: stopping never waits on a client
            await self._runner.cleanup()
            self._runner = None
        client, self._mqtt = self._mqtt, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def _on_scenario(self, client, userdata, msg) -> None:  # paho's thread
        try:
            found = decode_scenario(msg.payload)
        except ContractError as e:
            log.warning("scenario message ignored: %s", e)
            return
        self.scenarios[found["site"]] = found

    async def send_fault(self, ref: MachineRef, fault: str, args: dict) -> bool:
        """Publish a fault as a cmd message (QoS 1) on the machine's cmd topic; whether the broker took it."""
        return await self.send(ref.topic(Kind.CMD), encode_command(fault, **args))

    async def send(self, topic: str, payload: bytes) -> bool:
        """Publish a write (QoS 1) through presenter mode's own connection, else the gateway's; whether the broker
        took it within 5 s. The gateway hears its own operator entries on its subscription, like anyone's."""
        from contract.mqtt import wait_published

        client = self._mqtt or getattr(self.gateway, "_client", None)
        if client is None or not client.is_connected():
            return False
        info = client.publish(topic, payload, qos=1)
        return await asyncio.to_thread(wait_published, [info], 5.0)

    async def _cancel_streams(self, app) -> None:
        for task in list(self._streams):
            task.cancel()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the machines' KPIs after every computation, until the client goes."""
        if len(self._streams) >= MAX_STREAMS:
            return _error(503, f"at most {MAX_STREAMS} live streams are served; use /api/machines or the page "
                               "with ?poll")
        task = asyncio.current_task()
        self._streams.add(task)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            seen = -1
            while request.transport is not None and not request.transport.is_closing():
                if self.gateway.ticks != seen:
                    seen = self.gateway.ticks
                    await response.write(f"event: machines\ndata: {self.machines_json()}\n\n"
                                         f"event: lines\ndata: {self.lines_json()}\n\n".encode())
                await asyncio.sleep(self.sse_poll_s)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)
        return response


def make_app(gateway, endpoint: HttpEndpoint) -> web.Application:
    """The one web app: pages, the API (``API``, as ``openapi()`` describes it), login, and the writes."""
    auth = endpoint.auth

    @web.middleware
    async def session(request: web.Request, handler):
        request[USER] = check(request.cookies.get(COOKIE), time.time(), auth.key)
        try:
            response = await handler(request)
        except web.HTTPException as e:  # aiohttp's own 404, 405 (with Allow), 413 ...: JSON of one sentence
            if e.status < 400:
                raise
            what = {404: "not found: try /, /api/openapi.json, /metrics or /healthz",
                    405: f"{request.method} is not allowed here; use {e.headers.get('Allow', 'GET')}",
                    413: "the request body is too large"}.get(e.status, e.reason)
            response = _error(e.status, what, {k: v for k, v in e.headers.items() if k == "Allow"})
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def machines(request):
        return _text(endpoint.machines_json(), "application/json")

    async def lines(request):
        return _text(endpoint.lines_json(), "application/json")

    async def timelines(request):
        window = _window(request)
        if window is None:
            return _error(400, f"window must be one of {', '.join(WINDOWS)}")
        try:  # it waits for the engine's lock: not in the event loop
            found = await asyncio.to_thread(gateway.timelines, window)
        except ServiceError as e:  # the computation holds the state (it hangs, or is very slow)
            return _error(503, str(e))
        return _text(_json({"window": window, "machines": {ref.path: tl for ref, tl in found.items()}}),
                     "application/json")

    def machine_of(request) -> tuple[MachineRef | None, dict | None, str]:
        rest = request.match_info["rest"]
        parts = [p for p in unquote(rest).split("/") if p]  # an OpenAPI client sends the id's slashes as %2F
        ref = None
        if len(parts) >= 4:
            try:
                ref = MachineRef(*parts[:4])
            except ValueError:  # ContractError: not a machine name, so no such machine
                ref = None
        found = gateway.row_of(ref) if ref else None  # an index lookup, not a scan of every machine
        return ref, (machine_row(found) if found else None), "/".join(parts[4:])

    async def machine(request, ref, row):
        return _text(_json(row), "application/json")

    async def timeline(request, ref, row):
        window = _window(request)
        if window is None:
            return _error(400, f"window must be one of {', '.join(WINDOWS)}")
        try:
            return _text(_json(await asyncio.to_thread(gateway.timeline, ref, window=window)), "application/json")
        except ServiceError as e:
            return _error(503, str(e))

    async def losses(request, ref, row):
        return _text(_json({"losses": row.get("losses"), "stop_reasons":
                            row.get("windows", {}).get("shift", {}).get("stop_reasons", [])}), "application/json")

    async def machine_counts(request, ref, row):
        return _text(_json(counts(row)), "application/json")

    async def stops(request, ref, row):
        try:
            min_s = float(request.query.get("min_s", 0))
        except ValueError:
            min_s = -1.0
        if not 0 <= min_s < float("inf"):
            return _error(400, "min_s must be a number of seconds >= 0")
        try:
            found = await asyncio.to_thread(gateway.stops, ref, min_s)
        except ServiceError as e:
            return _error(503, str(e))
        return _text(_json({"micro_stop_s": gateway.engine.conv.micro_stop_s, "stops": found or [],
                            "reasons": sorted(r for r in gateway.engine.known_reasons() if r)}), "application/json")

    per_machine = {"": machine, "timeline": timeline, "losses": losses, "counts": machine_counts, "stops": stops}

    # --- the operator terminal's writes (issue 15): contract messages on the machine's topics, sent as who is
    # logged in; the gateway journals and folds an operator entry like data (docs/web.md, docs/oee.md)

    async def classify(request, ref, row, body):
        ts, reason = body.get("ts"), body.get("reason")
        if not _number(ts) or type(reason) is not int or reason not in gateway.engine.known_reasons():
            return _error(400, 'send {"ts": <start of the stop>, "reason": <a reason code of /api/reasons or '
                               '/api/machines/{id}/stops>}')
        try:
            found = await asyncio.to_thread(gateway.stops, ref)
        except ServiceError as e:
            return _error(503, str(e))
        if not any(s["start"] <= ts < s["end"] for s in found or []):
            return _error(409, "there is no unclassified stop at that time (any more); reload the list")
        return await sent(ref.topic(Kind.OPERATOR), encode_operator(ts, request[USER].name, reason=reason,
                                                                    at=time.time()), ref)

    async def rejects(request, ref, row, body):
        count = body.get("count")
        if type(count) is not int or not 1 <= count <= MAX_HAND_REJECTS:
            return _error(400, f'send {{"count": <parts found bad, 1 to {MAX_HAND_REJECTS}>}}')
        if row.get("ts") is None or (row.get("good") or 0) < count:
            return _error(409, f"{ref.machine} has counted fewer good parts than {count}")
        return await sent(ref.topic(Kind.OPERATOR), encode_operator(row["ts"], request[USER].name, reject=count,
                                                                    at=time.time()), ref)

    async def product(request, ref, row, body):
        name = body.get("product")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 128:
            return _error(400, 'send {"product": <the product\'s name, 1-128 characters>}')
        return await sent(ref.topic(Kind.CMD), encode_command("set_product", product=name.strip()), ref)

    async def sent(topic: str, payload: bytes, ref: MachineRef) -> web.Response:
        if not await endpoint.send(topic, payload):
            return _error(503, "the broker did not take it in 5 s; check that it runs and try again")
        return _text(_json({"sent": json.loads(payload), "machine": ref.path, "topic": topic}), "application/json")

    async def forget(request, ref, row, body):
        return await sent(ref.topic(Kind.CMD), encode_command("forget", by=request[USER].name), ref)

    writes = {"classify": classify, "rejects": rejects, "product": product, "forget": forget}

    @requires("operator")
    async def machine_write(request):
        ref, row, what = machine_of(request)
        if row is None:
            return _error(404, f"no machine {request.match_info['rest']!r}; see /api/machines")
        if what not in writes:
            return _error(404, f"a machine takes {', '.join(writes)}; see /api/openapi.json")
        return await writes[what](request, ref, row, request[BODY])

    async def one_machine(request):
        ref, row, what = machine_of(request)
        if row is None or what not in per_machine:
            return _error(404, f"no machine {request.match_info['rest']!r}; see /api/machines")
        return await per_machine[what](request, ref, row)

    async def metrics(request):
        return _text(render_metrics(gateway), "text/plain; version=0.0.4")

    async def healthz(request):
        health = gateway.health()
        return _text(_json(health), "application/json", 200 if health["status"] == "ok" else 503)

    async def spec(request):
        return _text(_json(openapi()), "application/json")

    async def api_index(request):
        return _text(_json({"openapi": "/api/openapi.json", "paths": list(openapi()["paths"])}), "application/json")

    async def session_info(request):
        user = request[USER]
        return _text(_json({"user": user.name if user else None, "scopes": sorted(user.scopes) if user else []}),
                     "application/json")

    def reasons_json() -> str:
        config = getattr(getattr(gateway, "engine", None), "config", None)
        return _json({str(k): v for k, v in getattr(config, "reason_names", {}).items()})

    async def reason_names(request):
        return _text(reasons_json(), "application/json")

    # --- pages and login (not part of the API document) ---

    web_dir = resources.files("gateway").joinpath("web")
    catalogues = {lang: web_dir.joinpath(f"i18n/{lang}.json").read_text(encoding="utf-8") for lang in LANGUAGES}
    i18n = "{" + ",".join(f'"{lang}":{text}' for lang, text in catalogues.items()) + "}"

    def page(name: str):
        html = web_dir.joinpath(name).read_text(encoding="utf-8")
        if BOOT not in html:
            raise ValueError(f"gateway/web/{name} lacks {BOOT}")

        async def serve(request):
            """The page with its texts, the site's reason names and the latest figures in it (<script id=boot>)."""
            machines = endpoint.machines_json() if gateway is not None else "[]"
            lines = endpoint.lines_json() if gateway is not None else "[]"
            boot = f'{{"i18n":{i18n},"reasons":{reasons_json()},"machines":{machines},"lines":{lines}}}'.replace(
                "<", "\\u003c")
            return _text(html.replace(BOOT, BOOT.replace("{}", boot)), "text/html")
        return serve

    async def catalogue(request):
        lang = request.match_info["lang"]
        if lang not in LANGUAGES:
            return _error(404, f"no catalogue {lang!r}; there are {', '.join(LANGUAGES)}")
        return _text(catalogues[lang], "application/json")

    script = web_dir.joinpath("i18n.js").read_bytes()

    async def i18n_js(request):
        return _text(script, "text/javascript")

    # --- presenter mode (issue 14): the simulation's clock and script, and faults on a button ---

    async def presenter_info(request):
        site = getattr(gateway, "site", "+")
        found = endpoint.scenarios.get(site) or next(iter(endpoint.scenarios.values()), None)
        return _text(_json({"enabled": endpoint.presenter, "hears_scenario": endpoint.hears_scenario,
                            "scenario": found, "buttons": [{"fault": f, "args": a} for f, a in BUTTONS]}),
                     "application/json")

    @requires("presenter")
    async def inject(request):
        if not endpoint.presenter:
            return _error(404, "presenter mode is off; start the demo or the gateway with --presenter")
        body = request[BODY]
        fault, args, machine_id = body.get("fault"), body.get("args", {}), body.get("machine")
        if fault not in FAULT_NAMES:
            return _error(400, f"fault must be one of {', '.join(FAULT_NAMES)}")
        if not isinstance(args, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in args.values()):
            return _error(400, "args must be an object of numbers, e.g. {\"minutes\": 5}")
        try:
            ref = MachineRef.parse(machine_id) if isinstance(machine_id, str) else None
        except ContractError:
            ref = None
        if ref is None or gateway.row_of(ref) is None:
            return _error(404, f"no machine {machine_id!r}; see /api/machines")
        if not await endpoint.send_fault(ref, fault, args):
            return _error(503, "the broker did not take the command in 5 s; check that it runs and try again")
        return _text(_json({"sent": fault, "args": args, "machine": ref.path, "topic": ref.topic(Kind.CMD)}),
                     "application/json")

    @requires("presenter")
    async def start_scenario(request):
        site = getattr(gateway, "site", "+")
        found = endpoint.scenarios.get(site) or next(iter(endpoint.scenarios.values()), None)
        running = endpoint.presenter and found is not None and found["running"]
        offered = [s["name"] for s in found.get("scenarios", [])] if running else []
        if not offered:
            return _error(404, "no simulation that starts scenarios was heard; start the demo with --presenter")
        name = request[BODY].get("scenario")
        if name not in offered:
            return _error(400, f"scenario must be one of {', '.join(offered)}")
        topic = sim_command_topic(found["site"])
        if not await endpoint.send(topic, encode_start(name, request[USER].name)):
            return _error(503, "the broker did not take the command in 5 s; check that it runs and try again")
        return _text(_json({"sent": "start", "scenario": name, "topic": topic}), "application/json")

    def logged_in(user, request, status: int = 200, to: str | None = None) -> web.Response:
        log.info("login user=%s scopes=%s from=%s", user.name, ",".join(sorted(user.scopes)), _client(request))
        response = web.Response(status=303, headers={"Location": to}) if to else \
            _text(_json({"user": user.name, "scopes": sorted(user.scopes)}), "application/json")
        response.set_cookie(COOKIE, sign(user.name, user.scopes, time.time(), auth.key), max_age=SHIFT_S,
                            path="/", httponly=True, samesite="Strict", secure=request.secure or None)
        return response

    def refused(request, who: str, name: str | None = None) -> None:
        auth.throttle.failed(_client(request), time.time())
        if name:
            auth.user_throttle.failed(name, time.time())
        log.warning("login refused user=%s from=%s", who, _client(request))

    async def login_page(request):
        token = request.query.get("token")
        if token is None:
            return await login_form(request)
        if auth.throttle.blocked(_client(request), time.time()):
            return _error(429, "too many failed logins; wait a minute and try again")
        user = auth.by_token(token)
        if user is None:
            refused(request, "token")
            raise web.HTTPSeeOther("/login?failed=1")
        nxt = request.query.get("next", "/presenter")
        return logged_in(user, request, to=nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")

    login_form = page("login.html")
    terminal = page("operator.html")

    async def operator_page(request):
        """The operator terminal: only with a login that has the operator scope (else to the login page)."""
        user = request[USER]
        if user is None or "operator" not in user.scopes:
            raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe=""))
        return await terminal(request)

    async def login(request):
        if request.headers.get("Origin") != f"{request.scheme}://{request.host}":
            return _error(403, "log in from this server's own login page")
        if auth.throttle.blocked(_client(request), time.time()):
            return _error(429, "too many failed logins; wait a minute and try again")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, 'send {"user": ..., "pin": ...} or {"token": ...} as JSON')
        token, name, pin = (str(body.get(k) or "") for k in ("token", "user", "pin"))
        if not token and name and auth.user_throttle.blocked(name, time.time()):
            log.warning("login refused user=%s from=%s: too many failed logins for this user", name, _client(request))
            return _error(429, "too many failed logins for this name; wait five minutes and try again")
        user = auth.by_token(token) if token else auth.by_pin(name, pin)
        if user is None:
            refused(request, name or "token", None if token else name)
            return _error(401, "wrong name, PIN or token")
        return logged_in(user, request)

    async def logout(request):
        response = _text(_json({"user": None, "scopes": []}), "application/json")
        response.del_cookie(COOKIE, path="/")
        if request[USER]:
            log.info("logout user=%s from=%s", request[USER].name, _client(request))
        return response

    api = {  # path -> handler; tests/gateway/test_http.py checks that openapi() documents exactly these
        "/api/machines": machines,
        "/api/machines/{id}": one_machine,
        "/api/machines/{id}/timeline": one_machine,
        "/api/machines/{id}/losses": one_machine,
        "/api/machines/{id}/counts": one_machine,
        "/api/machines/{id}/stops": one_machine,
        "/api/machines/{id}/classify": machine_write,
        "/api/machines/{id}/rejects": machine_write,
        "/api/machines/{id}/product": machine_write,
        "/api/machines/{id}/forget": machine_write,
        "/api/lines": lines,
        "/api/timelines": timelines,
        "/api/events": endpoint.stream,
        "/api/session": session_info,
        "/api/reasons": reason_names,
        "/api/presenter": presenter_info,
        "/api/presenter/inject": inject,
        "/api/presenter/scenario": start_scenario,
        "/metrics": metrics,
        "/healthz": healthz,
    }
    app = web.Application(middlewares=[session], client_max_size=MAX_BODY)
    app[API_ROUTES] = api
    for path, handler in api.items():
        if "{id}" in path:  # the id has slashes: routed below, see machine_of()
            continue
        if getattr(handler, "scope", None):  # a write
            app.router.add_post(path, handler)
        else:
            app.router.add_get(path, handler)
    app.router.add_get("/api/machines/{rest:.+}", one_machine)
    app.router.add_post("/api/machines/{rest:.+}", machine_write)
    app.router.add_get("/api/openapi.json", spec)
    app.router.add_get("/api", api_index)
    app.router.add_get("/api/", api_index)
    app.router.add_get("/", page("index.html"))
    app.router.add_get("/index.html", page("index.html"))
    app.router.add_get("/presenter", page("presenter.html"))
    app.router.add_get("/operator", operator_page)
    app.router.add_get("/operator/{rest:.+}", operator_page)
    app.router.add_get("/i18n/{lang}.json", catalogue)
    app.router.add_get("/i18n.js", i18n_js)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.on_shutdown.append(endpoint._cancel_streams)
    return app
