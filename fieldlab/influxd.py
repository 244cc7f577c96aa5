"""A private InfluxDB 1.x (Debian's ``influxdb`` package) for the tests and the demo.

``influxd -config <tmp>/influxdb.conf`` with its meta, data and WAL directories in a temp
dir, HTTP on 127.0.0.1:port, the RPC bind address on another free port, no usage
reporting and no ``_internal`` monitoring database (it costs CPU and SD-card writes).
Ready when ``/ping`` answers 204.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from contract.errors import ServiceError

from .broker import ChildServer, check_port_free, free_port, http_ok

INSTALL_HINT = "install it with: sudo apt-get install -y influxdb"


def influxd_binary() -> str | None:
    return shutil.which("influxd") or next((p for p in ("/usr/bin/influxd", "/usr/sbin/influxd")
                                            if Path(p).exists()), None)


class PrivateInfluxDB(ChildServer):
    def __init__(self, port: int | None = None, workdir: str | Path | None = None):
        self.port = port or free_port()
        self.rpc_port = free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fieldlab-influxdb-")
        self.dir = Path(workdir or self._tmp.name)
        self.binary = influxd_binary()
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "PrivateInfluxDB":
        if not self.binary:
            raise ServiceError(f"no influxd binary found; {INSTALL_HINT}")
        check_port_free(self.port, "InfluxDB", "--influx-port")
        d = self.dir
        conf = d / "influxdb.conf"
        conf.write_text(f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
""")
        self._launch([self.binary, "-config", str(conf)], d / "influxd.log", lambda: http_ok(f"{self.url}/ping", 204),
                     f"influxd did not start on port {self.port}", timeout)
        return self

    def query(self, q: str, db: str | None = None) -> list[dict]:
        """Run InfluxQL; the series of the first statement as [{name, tags, columns, values}]."""
        params = {"q": q, "epoch": "ms", **({"db": db} if db else {})}
        req = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            result = json.load(r)["results"][0]
        if "error" in result:
            raise ServiceError(f"InfluxQL {q!r}: {result['error']}")
        return result.get("series", [])

