"""The gateway's HTTP service: the live dashboard, a small REST API, ``/metrics`` and ``/healthz``.

Deliberately small (asyncio streams, GET only, one response per connection, no
framework): ``/`` is the built-in dashboard (gateway/web/index.html: one file, no
assets from the internet), ``/api/...`` the JSON API described by ``/api/openapi.json``,
``/api/events`` a Server-Sent Events stream with every machine's KPIs after each
computation. It serves what the gateway computed; it never computes anything itself.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from contract import MachineRef
from contract.errors import ServiceError

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
MAX_STREAMS = 64  # live event streams at once (each costs a JSON encoding per tick)


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

    def get(summary, schema, params=(), text=None):
        ok = {"description": "OK", "content": {text or "application/json": {"schema": schema}}}
        responses = {"200": ok}
        if any(p["in"] == "path" for p in params):
            responses["404"] = {"description": "no such machine (yet)"}
        if any(p["name"] == "window" for p in params):  # these also wait (at most 2 s) for the machines' state
            responses["400"] = {"description": f"window is not one of {', '.join(WINDOWS)}",
                                "content": {"application/json": {"schema": error}}}
            responses["503"] = {"description": "the KPI computation holds the machines' state; try again",
                                "content": {"application/json": {"schema": error}}}
        return {"get": {"summary": summary, "parameters": list(params), "responses": responses}}

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
            "/api/machines/{id}/timeline": get(
                "the machine's state timeline in a window (categories: run, breakdown, stopped, setup, "
                "not_scheduled, small_stop)",
                {"type": "object", "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                                                  "pieces": {"type": "array", "items": piece}}}, [machine, window]),
            "/api/machines/{id}/losses": get("the six big losses (seconds and OEE points) and the shift's stop "
                                             "reasons", {"type": "object"}, [machine]),
            "/api/machines/{id}/counts": get("good and reject parts per window, and the target at ideal speed",
                                             {"type": "object"}, [machine]),
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
                               "body of /api/machines", {"type": "string"}, text="text/event-stream"),
            "/metrics": get("Prometheus metrics", {"type": "string"}, text="text/plain"),
            "/healthz": {"get": {
                "summary": "health: 200 while the gateway computes and reaches the broker, 503 with the reasons "
                           "when it does not (stale KPIs, MQTT down, a sink dropping data, a client id collision)",
                "parameters": [], "responses": {
                    code: {"description": what, "content": {"application/json": {"schema": health}}}
                    for code, what in (("200", "healthy"), ("503", "failing: see reasons"))}}},
        },
    }


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


class HttpEndpoint:
    def __init__(self, gateway, host: str = "127.0.0.1", port: int = 8080, sse_poll_s: float = 0.2):
        self.gateway, self.host, self.port, self.sse_poll_s = gateway, host, port, sse_poll_s
        self._server: asyncio.base_events.Server | None = None
        self._streams: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._cache: tuple[int, str] = (-1, "")
        self._page = resources.files("gateway").joinpath("web/index.html").read_bytes()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as e:
            raise ServiceError(f"cannot serve HTTP on {self.host}:{self.port}: {e.strerror or e} "
                               "(is the port taken? choose another with --http-port)") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http up url=%s", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _machines_json(self) -> str:
        """/api/machines, encoded once per KPI computation however many clients ask (and every stream)."""
        if self._cache[0] != self.gateway.ticks:
            self._cache = (self.gateway.ticks, _json(machine_rows(self.gateway)))
        return self._cache[1]

    def _machine(self, rest: str) -> tuple[MachineRef | None, str]:
        parts = [p for p in unquote(rest).split("/") if p]  # an OpenAPI client sends the id's slashes as %2F
        if len(parts) < 4:
            return None, ""
        try:
            ref = MachineRef(*parts[:4])
        except ValueError:  # ContractError: not a machine name, so no such machine
            return None, ""
        return ref, "/".join(parts[4:])

    def route(self, path: str, query: dict) -> tuple[str, bytes | str, str]:
        """(status, body, content type) for a GET; also used by the tests without a socket."""
        gw = self.gateway
        if path in ("/", "/index.html"):
            return "200 OK", self._page, "text/html"
        if path == "/metrics":
            return "200 OK", render_metrics(gw), "text/plain; version=0.0.4"
        if path == "/healthz":
            health = gw.health()
            return ("200 OK" if health["status"] == "ok" else "503 Service Unavailable"), _json(health), \
                "application/json"
        if path == "/api/openapi.json":
            return "200 OK", _json(openapi()), "application/json"
        if path in ("/api", "/api/"):
            return "200 OK", _json({"openapi": "/api/openapi.json", "paths": list(openapi()["paths"])}), \
                "application/json"
        if path == "/api/machines":
            return "200 OK", self._machines_json(), "application/json"
        if path == "/api/timelines":
            window = query.get("window", ["last_1h"])[0]
            if window not in WINDOWS:
                return "400 Bad Request", _json({"error": f"window must be one of {', '.join(WINDOWS)}"}), \
                    "application/json"
            return "200 OK", _json({"window": window, "machines": {
                ref.path: tl for ref, tl in gw.timelines(window).items()}}), "application/json"
        if path.startswith("/api/machines/"):
            ref, what = self._machine(path[len("/api/machines/"):])
            found = gw.row_of(ref) if ref else None  # an index lookup, not a scan of every machine
            row = machine_row(found) if found else None
            if row is None:
                return "404 Not Found", _json({"error": f"no machine {path[len('/api/machines/'):]!r}; "
                                                        "see /api/machines"}), "application/json"
            if what == "":
                return "200 OK", _json(row), "application/json"
            if what == "timeline":
                window = query.get("window", ["last_1h"])[0]
                if window not in WINDOWS:
                    return "400 Bad Request", _json({"error": f"window must be one of {', '.join(WINDOWS)}"}), \
                        "application/json"
                return "200 OK", _json(gw.timeline(ref, window=window)), "application/json"
            if what == "losses":
                return "200 OK", _json({"losses": row.get("losses"), "stop_reasons":
                                        row.get("windows", {}).get("shift", {}).get("stop_reasons", [])}), \
                    "application/json"
            if what == "counts":
                return "200 OK", _json(counts(row)), "application/json"
        return "404 Not Found", "not found: try /, /api/openapi.json, /metrics or /healthz\n", "text/plain"

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """(method, target) of a request; its headers are read and ignored (at most MAX_HEADERS lines)."""
        parts = (await reader.readline()).decode("latin-1").split()
        for _ in range(MAX_HEADERS):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
        raise ValueError("too many header lines")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            try:  # the whole request within 10 s, lines within the stream's limit (64 KiB)
                method, target = await asyncio.wait_for(self._read_request(reader), 10)
            except ValueError:
                await self._respond(writer, "431 Request Header Fields Too Large", "request too large\n",
                                    "text/plain")
                return
            try:
                url = urlsplit(target)
            except ValueError:  # e.g. an unclosed IPv6 literal, http://[::1/
                await self._respond(writer, "400 Bad Request", "bad request target\n", "text/plain")
                return
            if method == "GET" and url.path == "/api/events":
                if len(self._streams) >= MAX_STREAMS:
                    await self._respond(writer, "503 Service Unavailable", f"at most {MAX_STREAMS} live "
                                        "streams; use /api/machines or the page with ?poll\n", "text/plain")
                    return
                await self._stream(writer)
                return
            query = parse_qs(url.query, keep_blank_values=True)  # ?window= is a wrong window, not the default
            if method != "GET":
                await self._respond(writer, "405 Method Not Allowed", "only GET\n", "text/plain", "Allow: GET\r\n")
                return
            elif unquote(url.path).endswith(("/timeline", "/timelines")):  # they wait for the engine's lock: not here
                try:
                    status, body, ctype = await asyncio.to_thread(self.route, url.path, query)
                except ServiceError as e:  # the computation holds the state (it hangs, or is very slow)
                    status, body, ctype = "503 Service Unavailable", _json({"error": str(e)}), "application/json"
            else:
                status, body, ctype = self.route(url.path, query)
            await self._respond(writer, status, body, ctype)
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError, asyncio.CancelledError):
            pass  # a client that dawdles or hangs up gets nothing; the gateway carries on
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: str, body: bytes | str, ctype: str,
                       headers: str = "") -> None:
        data = body if isinstance(body, bytes) else body.encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}; charset=utf-8\r\n{headers}"
                     f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                     .encode() + data)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        """Server-Sent Events: the machines' KPIs after every computation, until the client goes."""
        task = asyncio.current_task()
        self._streams.add(task)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                         b"Cache-Control: no-store\r\nConnection: close\r\n\r\nretry: 2000\n\n")
            seen = -1
            while True:
                if self.gateway.ticks != seen:
                    seen = self.gateway.ticks
                    writer.write(f"event: machines\ndata: {self._machines_json()}\n\n".encode())
                    await writer.drain()
                await asyncio.sleep(self.sse_poll_s)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)

    async def stop(self) -> None:
        handlers = list(self._handlers)  # streams and slow clients: closed, so stopping never waits on them
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
