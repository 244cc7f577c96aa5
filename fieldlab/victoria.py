"""A private VictoriaMetrics (Debian's ``victoria-metrics`` package): a server that accepts InfluxDB 2.x's
``/api/v2/write``, for testing the 2.x sink (gateway/influx.py) without an InfluxDB 2.x.

``victoria-metrics -storageDataPath <tmp>/data -httpListenAddr 127.0.0.1:port`` in a temp dir, a retention of
100 years (so replayed or old machine time is kept, not silently dropped) and warnings only in its log.
Ready when ``/health`` answers 200. VictoriaMetrics ignores org, bucket and token; every field of a line
becomes a metric ``<measurement>_<field>`` with the line's tags as labels (string fields lose their text).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from contract.errors import ServiceError

from .broker import ChildServer, check_port_free, free_port, http_ok

INSTALL_HINT = "install it with: sudo apt-get install -y victoria-metrics"


def victoria_binary() -> str | None:
    return shutil.which("victoria-metrics") or next((p for p in ("/usr/bin/victoria-metrics",
                                                                 "/usr/sbin/victoria-metrics") if Path(p).exists()), None)


class PrivateVictoriaMetrics(ChildServer):
    def __init__(self, port: int | None = None, workdir: str | Path | None = None):
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fieldlab-victoria-")
        self.dir = Path(workdir or self._tmp.name)
        self.binary = victoria_binary()
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "PrivateVictoriaMetrics":
        if not self.binary:
            raise ServiceError(f"no victoria-metrics binary found; {INSTALL_HINT}")
        check_port_free(self.port, "VictoriaMetrics", "PrivateVictoriaMetrics(port=...)")
        cmd = [self.binary, f"-storageDataPath={self.dir / 'data'}", f"-httpListenAddr=127.0.0.1:{self.port}",
               "-retentionPeriod=100y", "-loggerLevel=WARN"]
        self._launch(cmd, self.dir / "victoria-metrics.log", lambda: http_ok(f"{self.url}/health"),
                     f"victoria-metrics did not start on port {self.port}", timeout)
        return self

    def flush(self) -> None:
        """Make what was written so far searchable (VictoriaMetrics buffers new rows for about a second)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as r:
            r.read()

    def export(self, match: str, samples: int = 0, timeout: float = 10.0) -> list[dict]:
        """The raw samples of every series the selector matches (e.g. ``{__name__=~"telemetry_.*"}``), from
        ``/api/v1/export``: ``[{"metric": {"__name__": …, label: value}, "values": [...], "timestamps": [ms]}]``,
        sorted by metric name and labels. New series take up to about a second to become searchable: with
        ``samples``, wait (up to ``timeout``) until at least that many samples are there."""
        deadline = time.monotonic() + timeout
        data = urllib.parse.urlencode({"match[]": match}).encode()
        while True:
            self.flush()
            with urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/v1/export", data=data),
                                        timeout=10) as r:
                rows = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
            if sum(len(s["values"]) for s in rows) >= samples or time.monotonic() > deadline:
                return sorted(rows, key=lambda s: sorted(s["metric"].items()))
            time.sleep(0.05)

