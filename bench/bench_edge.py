"""Edge agent footprint at 100 tags x 10 Hz: CPU and RSS of the real agent process, OPC UA and Modbus.

In one run, one phase after the other (each: warm-up, then a measured window):

1. OPC UA: a private Mosquitto, an asyncua server (own process) with 100 Double variables that all
   change 10 times a second (plus State and GoodCount), and ``python -m fieldlab edge --config FILE``.
2. Baseline: a bare asyncua client subscribing to the same variables (100 ms), doing nothing else.
3. Modbus: a pymodbus TCP server with 100 holding registers changing at 10 Hz, and the agent polling
   them every 100 ms.

A plain paho subscriber counts the telemetry values that reach the broker, so the run proves the
data is delivered. CPU is utime + stime from /proc/PID/stat over the window (% of one core); RSS is
VmRSS from /proc/PID/status sampled every second (mean), peak is VmHWM. Run:

    .venv/bin/python bench/bench_edge.py               # 60 s windows, about 4 minutes in all
    .venv/bin/python bench/bench_edge.py --seconds 20  # shorter
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from contract import Kind, decode_telemetry, subscription
from fieldlab.broker import PrivateMosquitto, free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
N = 100  # process values
NAMESPACE = "urn:fieldlab:bench"

OPCUA_SERVER = r'''
import asyncio, datetime as dt, math, random, sys
from asyncua import Server, ua
async def main(port, n):
    s = Server()
    await s.init()
    s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await s.register_namespace("urn:fieldlab:bench")
    obj = await s.nodes.objects.add_object(idx, "bench-machine")
    V = ua.VariantType
    state = await obj.add_variable(idx, "State", ua.Variant(4, V.Int32))  # PackML Execute
    good = await obj.add_variable(idx, "GoodCount", ua.Variant(0, V.UInt64))
    pvs = [await obj.add_variable(idx, f"PV{i:03d}", ua.Variant(0.0, V.Double)) for i in range(n)]
    def dv(value, vtype, now):
        return ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now)
    async with s:
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        await s.write_attribute_value(state.nodeid, dv(4, V.Int32, dt.datetime.now(dt.timezone.utc)))
        print("ready", flush=True)
        while True:  # every 100 ms: a new part and a new value for every variable, one timestamp
            k += 1
            now = dt.datetime.now(dt.timezone.utc)
            await s.write_attribute_value(good.nodeid, dv(k, V.UInt64, now))
            for i, node in enumerate(pvs):
                v = 50 + 10 * math.sin(k / 10 + i) + random.gauss(0, 0.5)
                await s.write_attribute_value(node.nodeid, dv(v, V.Double, now))
            await asyncio.sleep(max(0.0, t0 + k * 0.1 - loop.time()))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
'''

BARE_CLIENT = r'''
import asyncio, sys
from pathlib import Path
from asyncua import Client
class Handler:
    values = 0
    def datachange_notification(self, node, val, data):
        if isinstance(val, float):
            Handler.values += 1
async def main(url, n, out):
    async with Client(url) as c:
        idx = await c.get_namespace_index("urn:fieldlab:bench")
        obj = await c.nodes.objects.get_child(f"{idx}:bench-machine")
        names = ["State", "GoodCount"] + [f"PV{i:03d}" for i in range(n)]
        nodes = [await obj.get_child(f"{idx}:{name}") for name in names]
        sub = await c.create_subscription(100, Handler())
        await sub.subscribe_data_change(nodes, queuesize=10_000)
        while True:  # the count of process values received, for the parent
            await asyncio.sleep(1)
            Path(out).write_text(str(Handler.values))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
'''

MODBUS_SERVER = r'''
import asyncio, math, random, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
n = int(sys.argv[2])
words = [4, 0, 0] + [0] * n  # state (PackML Execute), good (uint32, high word first), n values
async def serve(function_code, start_address, address, count, registers, set_values):
    registers[:len(words)] = words  # every read sees the latest words (the block starts at 0)
async def main(port):
    global words
    dev = SimDevice(id=1, action=serve, simdata=[SimData(0, values=[0] * len(words), datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(dev, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    t0, k = loop.time(), 0
    while True:
        k += 1
        words = [4, k >> 16 & 0xFFFF, k & 0xFFFF] + [
            round(500 + 100 * math.sin(k / 10 + i) + random.gauss(0, 5)) for i in range(n)]
        await asyncio.sleep(max(0.0, t0 + k * 0.1 - loop.time()))
asyncio.run(main(int(sys.argv[1])))
'''


def opcua_config(tmp: Path, broker_port: int, opc_port: int) -> str:
    tags = ["  - {tag: state, node: State}", "  - {tag: good, node: GoodCount}"]
    tags += [f"  - {{tag: pv{i:03d}, node: PV{i:03d}, unit: degC}}" for i in range(N)]
    return (f"machine: bench/hall-1/line-1/opcua-agent\nbroker: {{url: 'mqtt://127.0.0.1:{broker_port}'}}\n"
            f"buffer: {{path: '{tmp / 'opcua-outbox.db'}'}}\npublish: {{flush: 500ms}}\n"
            f"source:\n  type: opcua\n  endpoint: 'opc.tcp://127.0.0.1:{opc_port}/bench/'\n"
            f"  namespace: '{NAMESPACE}'\n  root: bench-machine\n  publishing_interval: 100ms\n"
            "tags:\n" + "\n".join(tags) + "\n")


def modbus_config(tmp: Path, broker_port: int, mb_port: int) -> str:
    tags = ["  - {tag: state, address: 0, table: holding}",
            "  - {tag: good, address: 1, table: holding, type: uint32}"]
    tags += [f"  - {{tag: pv{i:03d}, address: {3 + i}, table: holding, type: uint16, scale: 0.1, unit: degC}}"
             for i in range(N)]
    return (f"machine: bench/hall-1/line-1/modbus-agent\nbroker: {{url: 'mqtt://127.0.0.1:{broker_port}'}}\n"
            f"buffer: {{path: '{tmp / 'modbus-outbox.db'}'}}\npublish: {{flush: 500ms}}\n"
            f"source: {{type: modbus, host: 127.0.0.1, port: {mb_port}, unit_id: 1, poll: 100ms}}\n"
            "tags:\n" + "\n".join(tags) + "\n")


class Processes:
    """Every child we start, in its own session, logging to a file; all stopped by stop_all()."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready" not in self.log(name):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log(name)[-2000:]}")
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


class Telemetry:
    """A bare paho subscriber: process values (timestamps x signals, NaN not counted) per machine."""

    def __init__(self, port: int):
        self.values: dict[str, int] = {}
        self._lock, ready = threading.Lock(), threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-edge-counter")
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(subscription(Kind.TELEMETRY, site="bench"), 1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the counting subscriber got no SUBACK")
        self.client = c

    def _on_message(self, c, u, msg):
        batch = decode_telemetry(msg.payload)
        n = int(sum(np.count_nonzero(~np.isnan(v)) for v in batch.signals.values()))
        machine = msg.topic.split("/")[5]
        with self._lock:
            self.values[machine] = self.values.get(machine, 0) + n

    def count(self, machine: str) -> int:
        with self._lock:
            return self.values.get(machine, 0)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(pids: dict[str, int], seconds: float, counters: dict) -> dict[str, dict]:
    """CPU % of one core, mean and peak RSS (MiB) per process, values/s per counter, over one window."""
    tick = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), {k: f() for k, f in counters.items()}
    cpu0 = {k: cpu_ticks(p) for k, p in pids.items()}
    rss: dict[str, list[int]] = {k: [] for k in pids}
    while time.monotonic() - t0 < seconds:
        for k, p in pids.items():
            rss[k].append(status_kib(p, "VmRSS"))
        time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
    wall = time.monotonic() - t0
    out = {k: {"cpu": 100 * (cpu_ticks(p) - cpu0[k]) / tick / wall, "rss": sum(rss[k]) / len(rss[k]) / 1024,
               "peak": status_kib(p, "VmHWM") / 1024} for k, p in pids.items()}
    for k, f in counters.items():
        out.setdefault(k, {})["rate"] = (f() - c0[k]) / wall
    return out


def machine_facts() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    mosq = subprocess.run([mosquitto_binary() or "mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    libs = ", ".join(f"{p} {version(p)}" for p in ("asyncua", "pymodbus", "paho-mqtt", "numpy", "PyYAML"))
    return (f"Python {platform.python_version()}, {libs}, {mosq[0] if mosq else 'mosquitto ?'}; "
            f"{os.cpu_count()} CPUs ({model}), {int(mem) / 2**20:.1f} GiB RAM, Linux {platform.release()}")


def phase(procs: Processes, label: str, name: str, argv: list[str], count, context: dict[str, int],
          warmup: float, seconds: float) -> dict[str, dict]:
    """Start one measured process, wait until its values arrive, warm up, measure it (and ``context``)."""
    p = procs.start(name, argv)
    deadline = time.monotonic() + 30
    while count() == 0:
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no values from {name}:\n{procs.log(name)[-2000:]}")
        time.sleep(0.2)
    print(f"{label}: values arrive; warm-up {warmup:g} s, then {seconds:g} s measured", file=sys.stderr)
    time.sleep(warmup)
    rows = measure({label: p.pid, **context}, seconds, {label: count})
    procs.stop(name)
    return rows


def run(seconds: float, warmup: float, tmp: Path, procs: Processes) -> dict[str, dict]:
    py, rows = sys.executable, {}
    agent = [py, "-m", "fieldlab", "edge", "--config"]
    (tmp / "mosquitto").mkdir()
    broker = PrivateMosquitto(workdir=tmp / "mosquitto").start()
    counter = None
    try:
        counter = Telemetry(broker.port)
        # OPC UA agent, with the server and the broker for context
        opc_port = free_port()
        server = procs.start("opcua-server", [py, "-c", OPCUA_SERVER, str(opc_port), str(N)])
        procs.wait_ready("opcua-server")
        cfg = tmp / "edge-opcua.yaml"
        cfg.write_text(opcua_config(tmp, broker.port, opc_port))
        rows |= phase(procs, "OPC UA agent", "opcua-agent", agent + [str(cfg)], lambda: counter.count("opcua-agent"),
                      {"OPC UA server (asyncua)": server.pid, "broker (Mosquitto)": broker.proc.pid}, warmup, seconds)
        # baseline: a bare asyncua subscriber to the same variables
        out = tmp / "bare-count"
        rows |= phase(procs, "bare asyncua subscriber", "bare-client",
                      [py, "-c", BARE_CLIENT, f"opc.tcp://127.0.0.1:{opc_port}/bench/", str(N), str(out)],
                      lambda: int(out.read_text() or 0) if out.exists() else 0, {}, warmup, seconds)
        procs.stop("opcua-server")
        # Modbus agent, with its server
        try:
            mb_port = free_port()
            server = procs.start("modbus-server", [py, "-c", MODBUS_SERVER, str(mb_port), str(N)])
            procs.wait_ready("modbus-server")
            cfg = tmp / "edge-modbus.yaml"
            cfg.write_text(modbus_config(tmp, broker.port, mb_port))
            rows |= phase(procs, "Modbus agent", "modbus-agent", agent + [str(cfg)],
                          lambda: counter.count("modbus-agent"), {"Modbus server (pymodbus)": server.pid},
                          warmup, seconds)
        except (RuntimeError, OSError) as e:
            print(f"Modbus part failed: {e}", file=sys.stderr)
            rows["Modbus agent"] = {"error": str(e).splitlines()[0]}
    finally:
        if counter is not None:
            counter.close()
        procs.stop_all()
        broker.stop()
    return rows


ORDER = ["OPC UA agent", "bare asyncua subscriber", "Modbus agent", "OPC UA server (asyncua)",
         "Modbus server (pymodbus)", "broker (Mosquitto)"]


def table(rows: dict[str, dict], order: list[str] = ORDER, rate: str = "values/s delivered") -> str:
    """A Markdown table of measured processes (bench_sim.py uses it too, with its own rows and rate)."""
    lines = [f"| process | CPU % of one core | RSS MiB (mean) | peak RSS MiB (VmHWM) | {rate} |",
             "|---|---:|---:|---:|---:|"]
    for name in order:
        r = rows.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | |")
            continue
        value = f"{r['rate']:,.0f}" if "rate" in r else "–"
        lines.append(f"| {name} | {r['cpu']:.1f} | {r['rss']:.1f} | {r['peak']:.1f} | {value} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window per phase (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="warm-up before each window (default 10)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below cleans up
    with tempfile.TemporaryDirectory(prefix="fieldlab-bench-edge-") as d:
        procs = Processes(Path(d))
        try:
            rows = run(a.seconds, a.warmup, Path(d), procs)
        except KeyboardInterrupt:
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    print(f"{N} process values x 10 Hz (+ State, GoodCount); publishing 100 ms / poll 100 ms, flush 500 ms; "
          f"warm-up {a.warmup:g} s, window {a.seconds:g} s per phase\n")
    print(table(rows))
    print(f"\n{machine_facts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
