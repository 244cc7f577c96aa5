"""Soak: 10 machines at 10 Hz for 30 minutes of wall time; RSS, CPU, queue sizes and tick time sampled; no upward trend.

What runs, each its own process on free loopback ports, everything in one temp dir (kept, printed):

- a private Mosquitto with persistence on (fieldlab.broker.PrivateMosquitto);
- ``fieldlab gateway`` (the chaos suite's command, tests/chaos/conftest.py gateway_cmd: --state-dir in the
  temp dir, a checkpoint every second, --http-port);
- the producers: one ``fieldlab sim --machines 10 --one-server --publish`` (the chaos suite's sim_cmd):
  10 simulated machines and, in the same process, one edge agent per machine (EdgeAgent with its disk
  outbox, in the temp dir, fed by SimulationTap) publishing state, counts and telemetry (temperature,
  power, vibration) as a real agent does.

Where the 10 Hz comes from: the simulation ticks every 100 ms of wall time (simulators.opcua.Simulation,
tick_s 0.1) and samples every machine's process values once per tick, at any --speed; SimulationTap hands
each tick to the machine's agent. The 100 ms sleep comes after the tick's work, so the rate achieved is a
little under 10 Hz (about 9.6 Hz on the 2-core test machine). The run measures it with a subscriber that
counts the telemetry values reaching the broker (bench_edge.Telemetry) and fails below 90 % of 10 Hz.
``fieldlab sim`` has no other rate, so --hz takes only 10.

Every --every seconds (10) it samples RSS (VmRSS) and CPU (utime + stime) of gateway, broker and producers;
the gateway's /metrics (tick_seconds: the last KPI computation, messages, samples, dead letters, machines,
tick failures, healthy) and /healthz; the edge outbox backlog (sum of info.backlog of the agents' retained
status, refreshed by their 30 s heartbeat); the load average. At the end: least-squares slopes over the
second half of the run (the first half is warm-up), CPU % per process, tick time median/p95/max, messages/s;
a Markdown table; the raw samples as CSV (--csv).

Exit code 1 if the gateway's RSS grows by more than --max-slope MiB/h (default 5) over the second half,
if there was any dead letter or tick failure, if /healthz ever answered other than 200, if telemetry
fell below 90 % of 10 Hz, or if a process died. Why 5 MiB/h: what the gateway legitimately keeps
growing at --speed 1 is today's history of state changes and counts (gateway/engine.py keeps every row
until the day and shift windows move on): its checkpoint after 30 minutes held 0.5 MiB of arrays, so
about 1 MiB/h. The gateway takes about 21 messages/s, so 5 MiB/h is about 70 bytes kept per message: a
leak of one small object per message (or per tick, HTTP request or checkpoint) shows. The children
inherit the environment, so allocator settings can be compared: at glibc's defaults the gateway's (and
the producers') RSS creeps in a malloc arena while the Python heap does not grow (tracemalloc); with
``MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/soak.py`` (a fixed threshold) it was flat.

Speed and pruning: the machines run in real time (--speed 1), so 30 minutes are 30 minutes of machine
time and the gateway never prunes (KpiEngine.prune cuts only history older than the day and shift
windows less 2 h). Pruning, with its memory over a week of data, is measured by bench/bench_memory.py
(the engine in-process). --speed 60 keeps telemetry at 10 Hz of wall time (the tick is wall time) and
makes 30 minutes into 30 hours of machine time, so the real gateway prunes once the day changes; but
then today's history grows 60 times faster for most of the run, and the RSS slope measures that
retention rather than a leak: read it as a run of the pruning path, not against --max-slope. Run:

    .venv/bin/python bench/soak.py                           # 30 minutes, about 31 in all
    .venv/bin/python bench/soak.py --minutes 2 --csv /tmp/soak.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_edge import ROOT, Processes, Telemetry, cpu_ticks, machine_facts, status_kib

from fieldlab.broker import PrivateMosquitto, free_port
from simulators.machine import UNITS

sys.path.insert(0, str(ROOT))  # the chaos suite's helpers (tests/ is not an installed package)
from tests.chaos.conftest import gateway_cmd, http_json, metric, poll, retained, sim_cmd  # noqa: E402

SITE = "bench"  # the site bench_edge.Telemetry counts
METRICS = ("tick_seconds", "messages_total", "samples_total", "dead_letters_total", "machines",
           "tick_failures_total", "healthy")
PROCS = {"gateway": "gateway (fieldlab gateway)", "broker": "broker (Mosquitto)",
         "producers": "producers (fieldlab sim --publish)"}


def start(tmp: Path, procs: Processes, port: int, counter: Telemetry, a) -> int:
    """Gateway and producers up, every machine's data at the gateway and the counter; the gateway's HTTP port."""
    os.environ["TMPDIR"] = str(tmp)  # the producers' outboxes (fieldlab sim makes a temp dir for them)
    http, lifetime = free_port(), a.minutes * 60 + 300  # they stop by themselves should we die
    procs.start("gateway", gateway_cmd(port, http, tmp / "state", SITE, "--duration", str(lifetime)))
    procs.start("producers", sim_cmd(port, SITE, tmp / "ledger.json", lifetime, a.machines, a.speed))
    up = poll(lambda: metric(http, "fieldlab_gateway_machines") == a.machines and len(counter.values) == a.machines
              or any(p.poll() is not None for p in procs.procs.values()), timeout=120, every=0.5)
    if not up or any(p.poll() is not None for p in procs.procs.values()):
        raise RuntimeError("not up in 120 s:\n" + "\n".join(f"--- {n}\n{procs.log(n)[-1500:]}" for n in procs.procs))
    return http


def sample(t: float, pids: dict[str, int], http: int, broker_port: int, counter: Telemetry) -> dict:
    row = {"t_s": round(t, 1), "load1": os.getloadavg()[0]}
    for name, pid in pids.items():
        row[f"rss_{name}_mib"] = status_kib(pid, "VmRSS") / 1024
        row[f"cpu_{name}_s"] = cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")
    for name in METRICS:
        row[name] = metric(http, f"fieldlab_gateway_{name}")
    row["healthz"], body = http_json(f"http://127.0.0.1:{http}/healthz")
    row["healthz_status"] = body.get("status") if isinstance(body, dict) else None
    status = retained(broker_port, f"fieldlab/v1/{SITE}/+/+/+/status", settle=0.3)
    row["backlog"] = sum(s.get("info", {}).get("backlog", 0) for s in status.values())
    row["telemetry_values"] = sum(counter.count(m) for m in list(counter.values))
    return row


def soak(a, tmp: Path, procs: Processes, rows: list[dict]) -> None:
    """Start everything and append a sample to ``rows`` every ``a.every`` seconds for ``a.minutes``."""
    (tmp / "mosquitto").mkdir()
    broker = PrivateMosquitto(workdir=tmp / "mosquitto", persistence=True).start()
    counter = None
    try:
        counter = Telemetry(broker.port)
        http = start(tmp, procs, broker.port, counter, a)
        pids = {"gateway": procs.procs["gateway"].pid, "broker": broker.proc.pid,
                "producers": procs.procs["producers"].pid}
        print(f"all {a.machines} machines at the gateway; sampling every {a.every:g} s for {a.minutes:g} min",
              file=sys.stderr)
        t0, k = time.monotonic(), 0
        while k * a.every <= a.minutes * 60:
            time.sleep(max(0.0, t0 + k * a.every - time.monotonic()))
            dead = [n for n, p in procs.procs.items() if p.poll() is not None]
            if dead or broker.proc.poll() is not None:
                print(f"died: {dead or ['broker']}", file=sys.stderr)
                rows.append({"t_s": time.monotonic() - t0, "died": ",".join(dead or ["broker"])})
                break
            rows.append(sample(time.monotonic() - t0, pids, http, broker.port, counter))
            if k % 30 == 0:
                r = rows[-1]
                print(f"{r['t_s']:6.0f} s  gateway {r['rss_gateway_mib']:.1f} MiB  tick {r['tick_seconds']}  "
                      f"backlog {r['backlog']}  load {r['load1']:.2f}", file=sys.stderr)
            k += 1
    finally:
        if counter is not None:
            counter.close()
        procs.stop_all()
        broker.stop()


def slope(rows: list[dict], key: str, scale: float = 1.0) -> float:
    """Least squares slope of ``key`` per hour over the second half of the run (times ``scale``)."""
    half = rows[-1]["t_s"] / 2
    pts = [(r["t_s"] / 3600, r[key] * scale) for r in rows if r["t_s"] >= half and r.get(key) is not None]
    return float(np.polyfit(*zip(*pts), 1)[0]) if len(pts) >= 3 else float("nan")


def summary(rows: list[dict], a) -> tuple[str, list[str]]:
    """(Markdown tables, failed checks)."""
    died = rows[-1].get("died")
    rows = [r for r in rows if "died" not in r]
    if len(rows) < 2:
        return "", [f"{died or 'nothing'} died before the second sample"]
    first, last = rows[0], rows[-1]
    wall = last["t_s"] - first["t_s"]
    for prev, r in zip(rows, rows[1:]):  # CPU % of one core per interval, for its trend
        for name in PROCS:
            r[f"cpu_{name}_pct"] = 100 * (r[f"cpu_{name}_s"] - prev[f"cpu_{name}_s"]) / (r["t_s"] - prev["t_s"])
    out = ["| process | RSS MiB start → end | RSS slope, 2nd half (MiB/h) | CPU % of one core | "
           "CPU slope, 2nd half (points/h) |", "|---|---:|---:|---:|---:|"]
    for name, label in PROCS.items():
        cpu = 100 * (last[f"cpu_{name}_s"] - first[f"cpu_{name}_s"]) / wall
        out.append(f"| {label} | {first[f'rss_{name}_mib']:.1f} → {last[f'rss_{name}_mib']:.1f} | "
                   f"{slope(rows, f'rss_{name}_mib'):+.2f} | {cpu:.1f} | {slope(rows, f'cpu_{name}_pct'):+.2f} |")
    ticks = np.array([r["tick_seconds"] for r in rows if r["tick_seconds"] is not None]) * 1000
    hz = (last["telemetry_values"] - first["telemetry_values"]) / len(UNITS) / a.machines / wall
    healthz_ok = sum(r["healthz"] == 200 for r in rows)
    figures = [
        ("samples (every %g s)" % a.every, len(rows)),
        ("machines at the gateway (last)", f"{last['machines']:.0f}"),
        ("telemetry per machine, delivered (Hz)", f"{hz:.2f}"),
        ("gateway messages/s", f"{(last['messages_total'] - first['messages_total']) / wall:.1f}"),
        ("gateway samples/s", f"{(last['samples_total'] - first['samples_total']) / wall:.0f}"),
        ("tick time median / p95 / max (ms)",
         f"{np.median(ticks):.1f} / {np.percentile(ticks, 95):.1f} / {ticks.max():.1f}"),
        ("tick time slope, 2nd half (ms/h)", f"{slope(rows, 'tick_seconds', 1000):+.2f}"),
        ("outbox backlog max / last (all agents)", f"{max(r['backlog'] for r in rows)} / {last['backlog']}"),
        ("dead letters", f"{last['dead_letters_total']:.0f}"),
        ("tick failures", f"{last['tick_failures_total']:.0f}"),
        ("/healthz 200", f"{healthz_ok} of {len(rows)}"),
        ("samples with fieldlab_gateway_healthy 0", sum(r["healthy"] != 1 for r in rows)),
        ("load average (1 min) start / end", f"{first['load1']:.2f} / {last['load1']:.2f}"),
    ]
    out += ["", "| gateway and edge | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in figures]
    failed = [f"{name} died" for name in (died.split(",") if died else [])]
    if slope(rows, "rss_gateway_mib") > a.max_slope:
        failed.append(f"gateway RSS grows {slope(rows, 'rss_gateway_mib'):.2f} MiB/h > {a.max_slope:g}")
    if last["dead_letters_total"] or last["tick_failures_total"]:
        failed.append("dead letters or tick failures")
    if healthz_ok < len(rows):
        failed.append("/healthz did not always answer 200")
    if hz < 0.9 * a.hz:
        failed.append(f"telemetry {hz:.2f} Hz < 90 % of {a.hz:g} Hz")
    return "\n".join(out), failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="sampled wall time (default 30)")
    ap.add_argument("--machines", type=int, default=10, help="simulated machines (default 10)")
    ap.add_argument("--hz", type=float, default=10.0, choices=[10.0],
                    help="telemetry rate per machine: fieldlab sim's fixed 100 ms tick (default 10)")
    ap.add_argument("--speed", type=float, default=1.0, help="machine time / wall time (default 1; see above)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--max-slope", type=float, default=5.0, help="gateway RSS MiB/h allowed (default 5)")
    ap.add_argument("--csv", help="raw samples to this file (default: soak.csv in the temp dir)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop every process
    tmp = Path(tempfile.mkdtemp(prefix="fieldlab-soak-"))
    print(f"temp dir (kept: logs, state, CSV): {tmp}; load average {os.getloadavg()}", file=sys.stderr)
    procs, rows, path = Processes(tmp), [], Path(a.csv or tmp / "soak.csv")
    try:
        soak(a, tmp, procs, rows)
    finally:  # the samples so far, even if interrupted
        procs.stop_all()
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            w.writeheader()
            w.writerows(rows)
    text, failed = summary(rows, a)
    print(f"\n{a.machines} machines, telemetry {a.hz:g} Hz, --speed {a.speed:g}, {a.minutes:g} min sampled every "
          f"{a.every:g} s; {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{text}\n\n{machine_facts()}\nraw samples: {path}")
    print("\nFAILED: " + "; ".join(failed) if failed else "\nall checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
