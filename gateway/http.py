"""The gateway's HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz``.

Deliberately tiny (asyncio streams, GET only, one response per connection); the
REST API and the live web dashboard come with the gateway-services issue.
"""
from __future__ import annotations

import asyncio
import logging

from contract.errors import ServiceError

from .oee import plain

log = logging.getLogger("fieldlab.gateway.http")

COUNTERS = (
    ("messages", "Messages decoded and accepted from MQTT."),
    ("samples", "Samples in the accepted messages (telemetry values, state changes, counter readings)."),
    ("dead_letters", "Messages rejected for breaking the contract (see the dead-letter topic)."),
    ("kpi_published", "KPI messages published."),
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


def render_metrics(gateway) -> str:
    """Prometheus text exposition format of the gateway's counters and its machines' KPIs."""
    lines = []
    for name, help_ in COUNTERS:
        lines += [f"# HELP fieldlab_gateway_{name}_total {help_}", f"# TYPE fieldlab_gateway_{name}_total counter",
                  f"fieldlab_gateway_{name}_total {gateway.stats[name]}"]
    lines += ["# HELP fieldlab_gateway_machines Machines the gateway has heard of.",
              "# TYPE fieldlab_gateway_machines gauge", f"fieldlab_gateway_machines {len(gateway.machines)}",
              "# HELP fieldlab_gateway_tick_seconds Duration of the last KPI computation for all machines.",
              "# TYPE fieldlab_gateway_tick_seconds gauge", f"fieldlab_gateway_tick_seconds {gateway.tick_seconds:.6f}"]
    sinks = getattr(gateway, "sinks", [])
    for name, kind, help_ in SINK_METRICS:
        lines += [f"# HELP fieldlab_sink_{name} {help_}", f"# TYPE fieldlab_sink_{name} {kind}"]
        for sink in sinks:
            value = sink.backlog if name == "backlog_lines" else sink.stats[name.removesuffix("_total")]
            lines.append(f'fieldlab_sink_{name}{{sink="{_label(str(sink))}"}} {value}')
    rows = gateway.rows
    for kpi in MACHINE_GAUGES:
        lines += [f"# HELP fieldlab_machine_{kpi} {kpi.capitalize()} since the gateway started (fraction; "
                  "absent while undefined).", f"# TYPE fieldlab_machine_{kpi} gauge"]
        for r in rows:
            v = plain(r.get(kpi))
            if v is None:
                continue
            ref = r["machine"]
            labels = ",".join(f'{k}="{_label(getattr(ref, k))}"' for k in ("site", "area", "line", "machine"))
            lines.append(f"fieldlab_machine_{kpi}{{{labels}}} {v:.6g}")
    return "\n".join(lines) + "\n"


class HttpEndpoint:
    def __init__(self, gateway, host: str = "127.0.0.1", port: int = 8080):
        self.gateway, self.host, self.port = gateway, host, port
        self._server: asyncio.base_events.Server | None = None

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", render_metrics(self.gateway), "text/plain; version=0.0.4"
            elif path == "/healthz":
                status, body, ctype = "200 OK", "ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", "not found: try /metrics or /healthz\n", "text/plain"
            data = body.encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a client that dawdles or hangs up gets nothing; the gateway carries on
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
