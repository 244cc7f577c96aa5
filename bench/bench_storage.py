"""Storage: line protocol serialisers side by side, and the InfluxDB sink against a bare HTTP writer, in one run.

1. Serialisation of decoded contract telemetry batches (500 rows each) to line protocol: ours
   (gateway.storage.batch_lines), influxdb-client's Point objects (.to_line_protocol()), and a naive
   per-row f-string join; dense (every row has every signal) and sparse (~30 % per row, as OPC UA
   delivers them). All three must give the same lines (parsed back, floats compared as numbers).
2. A private InfluxDB 1.x (fieldlab.influxd): two bare writers (POSTs of pre-built 5,000-line bodies,
   sequential: urllib with a new connection per POST, and http.client on one kept-alive connection)
   versus gateway.influx.InfluxV1Sink(batch_lines=5000), sink only (accept the pre-built lines) and
   serialise + sink (batch_lines then accept, batch by batch). A fresh database per run, started once
   influxd is idle; every line is counted back; influxd's CPU from /proc/PID/stat.
   Medians of 3 runs. Run:

    .venv/bin/python bench/bench_storage.py            # about 2 minutes
    .venv/bin/python bench/bench_storage.py --quick    # smaller
"""
from __future__ import annotations

import argparse
import asyncio
import http.client as httpclient
import os
import platform
import signal
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from importlib.metadata import version

import numpy as np
from influxdb_client import Point, WritePrecision

from contract import Kind, MachineRef, decode_telemetry, encode_telemetry
from fieldlab.influxd import PrivateInfluxDB
from gateway.influx import InfluxV1Sink
from gateway.storage import batch_lines, tags

SIGNALS = ("temperature", "power", "vibration", "pressure", "speed", "current", "voltage", "flow", "torque",
           "humidity")
BATCH = 500  # rows per contract message
POST = 5000  # lines per HTTP write


def make_batches(machines: int, rows: int, signals: int, density: float, seed: int = 1):
    """Decoded telemetry batches, 10 Hz, in arrival order (time slice by time slice, all machines)."""
    rng = np.random.default_rng(seed)
    refs = [MachineRef("acme", "hall-1", f"line-{m % 4 + 1}", f"m{m:03d}") for m in range(machines)]
    data = []
    for m in range(machines):
        ts = 1.8e9 + m * 0.003 + np.arange(rows) * 0.1
        vals = np.round(rng.normal(50.0, 5.0, (signals, rows)), 3)
        if density < 1:
            keep = rng.random((signals, rows)) < density
            keep[rng.integers(0, signals, rows), np.arange(rows)] = True  # no empty rows
            vals[~keep] = np.nan
        data.append((ts, vals))
    out = []
    for i in range(0, rows, BATCH):
        for m, (ts, vals) in enumerate(data):
            sig = {SIGNALS[j]: vals[j, i:i + BATCH] for j in range(signals)}
            out.append((refs[m], decode_telemetry(encode_telemetry(ts[i:i + BATCH], sig))))
    return out


def ours(batches):
    out = []
    for ref, b in batches:
        out += batch_lines(ref, Kind.TELEMETRY, b)
    return out


def _rows(b):
    names = sorted(b.signals)
    return names, [b.signals[k].tolist() for k in names], np.round(b.ts * 1000.0).astype(np.int64).tolist()


def point(batches):
    """influxdb-client's idiomatic path: one Point per row, only the values the row has."""
    out = []
    for ref, b in batches:
        t = tags(ref)
        names, cols, stamps = _rows(b)
        for i, stamp in enumerate(stamps):
            p = Point("telemetry")
            for k, v in t.items():
                p.tag(k, v)
            for k, c in zip(names, cols):
                if c[i] == c[i]:
                    p.field(k, c[i])
            line = p.time(stamp, WritePrecision.MS).to_line_protocol()
            if line:
                out.append(line)
    return out


def naive(batches):
    """A per-row f-string join (no escaping)."""
    out = []
    for ref, b in batches:
        prefix = f"telemetry,area={ref.area},line={ref.line},machine={ref.machine},site={ref.site}"
        names, cols, stamps = _rows(b)
        for i, stamp in enumerate(stamps):
            fields = ",".join(f"{k}={c[i]}" for k, c in zip(names, cols) if c[i] == c[i])
            if fields:
                out.append(f"{prefix} {fields} {stamp}")
    return out


def normalise(lines):
    out = []
    for line in lines:
        head, fields, ts = line.split(" ")
        out.append((head, tuple(sorted((k, float(v)) for k, v in (f.split("=") for f in fields.split(",")))), int(ts)))
    return out


def median_time(fn, *args):
    times = []
    for _ in range(3):
        t = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_idle(pid: int, limit_s: float = 15.0) -> None:
    """Until influxd is done with the previous run (it snapshots its cache for about a second after)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        c = cpu_s(pid)
        time.sleep(0.25)
        if cpu_s(pid) - c < 0.0125:  # under 5 % of one core
            return


def http(url: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        assert r.status in (200, 204), r.status


def influxql(db: PrivateInfluxDB, q: str) -> None:
    http(f"{db.url}/query", urllib.parse.urlencode({"q": q}).encode(), "application/x-www-form-urlencoded")


def bare(db, name, bodies):
    url = f"{db.url}/write?db={name}&precision=ms"
    t = time.perf_counter()
    for body in bodies:
        http(url, body)
    return time.perf_counter() - t, None


def bare_keepalive(db, name, bodies):
    """The same POSTs on one kept-alive connection (http.client): the best a plain sequential writer does."""
    conn = httpclient.HTTPConnection(db.url.split("//", 1)[1].split("/")[0], timeout=60)
    path = f"/write?db={name}&precision=ms"
    t = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body, {"Content-Type": "text/plain; charset=utf-8"})
        r = conn.getresponse()
        r.read()
        assert r.status in (200, 204), r.status
    elapsed = time.perf_counter() - t
    conn.close()
    return elapsed, None


async def sink(db, name, lines, batches=None):
    s = InfluxV1Sink(db.url, name, batch_lines=POST, max_lines=len(lines) + 1, create_database=False)
    await s.start()
    t = time.perf_counter()
    if batches is None:  # sink only: the lines are ready, accepted 500 at a time as they were made
        for i in range(0, len(lines), BATCH):
            s.accept(lines[i:i + BATCH])
    else:  # serialise + sink: what the gateway does per message, yielding to the writer in between
        for ref, b in batches:
            s.accept(batch_lines(ref, Kind.TELEMETRY, b))
            await asyncio.sleep(0)
    while s.stats["written"] < len(lines):
        assert not s.stats["retries"] and not s.stats["rejected"], s.stats
        await asyncio.sleep(0.01)  # at 1 ms this loop's own wake-ups cost the sink several per cent
    elapsed = time.perf_counter() - t
    await s.stop()
    return elapsed, s.stats["write_seconds"] / elapsed


def timed_run(db, method, name, n_lines, first_field):
    """One run into a fresh database: seconds, influxd CPU (% of one core), share of the time in POSTs."""
    influxql(db, f'CREATE DATABASE "{name}"')
    wait_idle(db.proc.pid)
    c0, w0 = cpu_s(db.proc.pid), time.perf_counter()
    elapsed, in_post = method(name)
    cpu = (cpu_s(db.proc.pid) - c0) / (time.perf_counter() - w0) * 100
    n = db.query(f'SELECT count("{first_field}") FROM telemetry', db=name)[0]["values"][0][1]
    assert n == n_lines, (name, n, n_lines)  # every line arrived (the first field is in every line)
    influxql(db, f'DROP DATABASE "{name}"')
    return elapsed, cpu, in_post


def bodies_of(lines):
    return [("\n".join(lines[i:i + POST]) + "\n").encode() for i in range(0, len(lines), POST)]


def machine_facts() -> str:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    influxd = subprocess.run(["influxd", "version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} CPUs ({model}), {mem:.1f} GiB, load average {os.getloadavg()[0]:.2f} at start; Python "
            f"{platform.python_version()}, NumPy {np.__version__}, influxdb-client {version('influxdb-client')}, {influxd}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows to serialise (20 machines)")
    ap.add_argument("--lines", type=int, default=500_000, help="lines per sink run (50 machines)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.lines = 20_000, 100_000
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # raise, so that `finally` stops influxd
    print(machine_facts() + "\n")

    print("| data | method | lines | values | seconds | lines/s | values/s | ours is × faster |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, density in (("dense, 10 signals", 1.0), ("sparse, ~30 % of 10 signals", 0.23)):
        batches = make_batches(20, a.rows // 20, 10, density)
        values = sum(int(np.isfinite(v).sum()) for _, b in batches for v in b.signals.values())
        results = {name: median_time(fn, batches) for name, fn in
                   (("ours: batch_lines", ours), ("influxdb-client Point", point), ("naive f-string", naive))}
        reference = normalise(results["ours: batch_lines"][1])
        for name, (_, out) in results.items():  # honest comparison: the same lines from all three
            assert normalise(out) == reference, name
        t_ours = results["ours: batch_lines"][0]
        for name, (t, out) in results.items():
            print(f"| {label} | {name} | {len(out):,} | {values:,} | {t:.3f} | {len(out) / t / 1e3:,.0f} k "
                  f"| {values / t / 1e6:.2f} M | {t / t_ours:.1f} |")

    db = PrivateInfluxDB().start()
    try:
        warm = ours(make_batches(10, 5000, 10, 1.0, seed=9))
        timed_run(db, lambda name: bare(db, name, bodies_of(warm)), "warmup", len(warm), "current")
        print("\n| lines | method | seconds (range) | lines/s | values/s | influxd CPU % of one core "
              "| sink in POST % | vs bare | vs bare kept-alive |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, signals in (("10 fields", 10), ("1 field", 1)):
            batches = make_batches(50, a.lines // 50, signals, 1.0, seed=2)
            lines = ours(batches)
            bodies = bodies_of(lines)
            methods = (("bare HTTP writer (pre-built bodies)", lambda name: bare(db, name, bodies)),
                       ("bare HTTP writer, kept-alive connection", lambda name: bare_keepalive(db, name, bodies)),
                       ("InfluxV1Sink, sink only", lambda name: asyncio.run(sink(db, name, lines))),
                       ("InfluxV1Sink, serialise + sink", lambda name: asyncio.run(sink(db, name, lines, batches))))
            runs: dict[str, list] = {m: [] for m, _ in methods}
            for r in range(3):
                for k in range(len(methods)):  # rotate the order from run to run
                    name, fn = methods[(k + r) % len(methods)]
                    runs[name].append(timed_run(db, fn, f"bench_{signals}_{r}_{k}", len(lines),
                                                sorted(SIGNALS[:signals])[0]))
            t_bare = statistics.median(x[0] for x in runs[methods[0][0]])
            t_keep = statistics.median(x[0] for x in runs[methods[1][0]])
            for name, res in runs.items():
                t = statistics.median(x[0] for x in res)
                cpu = statistics.median(x[1] for x in res)
                post = "–" if res[0][2] is None else f"{statistics.median(x[2] for x in res) * 100:.0f}"
                spread = f"{min(x[0] for x in res):.2f}–{max(x[0] for x in res):.2f}"
                print(f"| {len(lines):,} × {label} | {name} | {t:.2f} ({spread}) | {len(lines) / t / 1e3:,.0f} k "
                      f"| {len(lines) * signals / t / 1e6:.2f} M | {cpu:.0f} | {post} | {t_bare / t * 100:.0f} % "
                      f"| {t_keep / t * 100:.0f} % |")
    finally:
        db.cleanup()


if __name__ == "__main__":
    main()
