"""`fieldlab demo --influx URL`: a short demo run (its own process) fills InfluxDB, and the overview and
machine dashboards show it (every query returns data). The exhaustive check of every dashboard is
test_queries.py; this one shows that what a trainer runs is what the dashboards read."""
import os
import subprocess
import sys

from dashboards.build import dashboards
from fieldlab.broker import free_port

from .grafana_macros import choices, expand, panel_targets


def test_demo_stores_into_influxdb_and_the_dashboards_read_it(mosquitto, own_influxdb):
    r = subprocess.run([sys.executable, "-m", "fieldlab", "demo", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
                        "--influx", own_influxdb.url, "--duration", "6", "--speed", "300", "--opcua-port",
                        str(free_port(count=3)), "--http-port", str(free_port())],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    assert f"Stored in InfluxDB {own_influxdb.url}, database fieldlab" in r.stdout

    def query(text):
        return own_influxdb.query(text, "fieldlab")

    start = query('SELECT first("state") FROM "state"')[0]["values"][0][0]
    end = query('SELECT last("oee") FROM "kpi"')[0]["values"][0][0]
    assert end > start
    models = dashboards()
    for name in ("overview", "machine"):
        combos = choices(models[name], lambda q: [row[1] for s in query(q) for row in s["values"]])
        assert {c["site"][0] for c in combos} == {"demo"}
        for panel, target in panel_targets(models[name]):
            for chosen in combos:
                text = expand(target["query"], chosen, start, end)
                assert any(v is not None for s in query(text) for row in s["values"] for v in row[1:]), \
                    f"{name}: {panel['title']!r} returns nothing for {chosen}: {text}"


def test_demo_influx_needs_an_address(capsys):
    from fieldlab.cli import main

    assert main(["demo", "--influx", "localhost:8086", "--duration", "1"]) == 2
    assert "--influx 'localhost:8086': write the database's address like http://localhost:8086" in \
        capsys.readouterr().err
