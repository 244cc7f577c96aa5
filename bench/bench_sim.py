"""Simulator footprint: CPU and RSS of `fieldlab sim` with 10 machines at 10 Hz.

The real command runs as its own process: ``python -m fieldlab sim --machines 10 --speed 1`` (one typed
asyncua server per machine, ticking every 100 ms: 10 machines x 10 Hz). Two phases, one after the other
(each: warm-up, then a measured window):

1. alone: nobody connected (the cost of simulating and writing the address spaces);
2. watched: a client process subscribed to every variable of every machine (State, counters, process
   values and the kind's own values; sampling and publishing 100 ms, one session per server), counting
   the notifications it receives, so the run proves the values are served.

Optionally (``--line``) the machines are one line with buffers of 20 (``--buffers 20``), and
(``--one-server``) all served by one OPC UA server (``fieldlab sim --one-server``). CPU is
utime + stime from /proc/PID/stat over the window (% of one core); RSS is VmRSS sampled every second
(mean); peak is VmHWM. The helpers are those of bench/bench_edge.py. Run:

    .venv/bin/python bench/bench_sim.py                # 30 s windows, about 2.5 minutes in all
    .venv/bin/python bench/bench_sim.py --one-server   # all machines behind one OPC UA server
    .venv/bin/python bench/bench_sim.py --seconds 60 --line
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_edge import Processes, machine_facts, measure
from bench_edge import table as edge_table

from fieldlab.broker import free_port

MACHINES = 10

WATCHER = r'''
import asyncio, sys, time
from asyncua import Client, ua

async def variables(client, idx, node, out):
    for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HierarchicalReferences):
        if ref.BrowseName.NamespaceIndex != idx:
            continue  # EngineeringUnits, EURange, method arguments: properties in namespace 0
        child = client.get_node(ref.NodeId)
        if ref.NodeClass == ua.NodeClass.Variable:
            out.append(child)
        elif ref.NodeClass == ua.NodeClass.Object:
            await variables(client, idx, child, out)

class Count:
    n = 0
    def datachange_notification(self, node, val, data):
        Count.n += 1

async def main(endpoints, out):
    clients, total = [], 0
    for ep in endpoints:
        c = Client(ep)
        await c.connect()
        clients.append(c)
        idx = await c.get_namespace_index("urn:fieldlab:sim")
        found = []
        for obj in await c.nodes.objects.get_children():
            if obj.nodeid.NamespaceIndex == idx:
                await variables(c, idx, obj, found)
        sub = await c.create_subscription(100, Count())
        await sub.subscribe_data_change(found, queuesize=1000, sampling_interval=100)
        total += len(found)
    print(f"ready: {total} variables on {len(endpoints)} servers", flush=True)
    while True:
        await asyncio.sleep(1)
        open(out, "w").write(str(Count.n))

asyncio.run(main(sys.argv[2:], sys.argv[1]))
'''


def run(seconds: float, warmup: float, line: bool, one: bool, tmp: Path, procs: Processes) -> tuple[dict, str]:
    py, port = sys.executable, free_port(count=MACHINES)
    argv = [py, "-m", "fieldlab", "sim", "--machines", str(MACHINES), "--speed", "1", "--opcua-port", str(port)]
    if line:
        argv += ["--buffers", "20"]
    if one:
        argv += ["--one-server"]
    sim = procs.start("sim", argv)
    deadline = time.monotonic() + 120
    while procs.log("sim").count("opc.tcp://") < MACHINES:
        if sim.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fieldlab sim did not start:\n{procs.log('sim')[-2000:]}")
        time.sleep(0.2)
    endpoints = [f"opc.tcp://127.0.0.1:{port + (0 if one else i)}/fieldlab/" for i in range(1 if one else MACHINES)]
    print(f"sim up ({MACHINES} servers); warm-up {warmup:g} s, then {seconds:g} s alone", file=sys.stderr)
    time.sleep(warmup)
    rows = {"fieldlab sim, nobody connected": measure({"s": sim.pid}, seconds, {})["s"]}
    out = tmp / "count"
    watcher = procs.start("watcher", [py, "-c", WATCHER, str(out), *endpoints])
    procs.wait_ready("watcher", timeout=60)
    ready = next(ln for ln in procs.log("watcher").splitlines() if ln.startswith("ready"))
    print(f"{ready}; warm-up {warmup:g} s, then {seconds:g} s watched", file=sys.stderr)
    time.sleep(warmup)
    got = measure({"sim": sim.pid, "client": watcher.pid}, seconds,
                  {"client": lambda: int(out.read_text() or 0) if out.exists() else 0})
    rows["fieldlab sim, a client subscribed to every variable"] = got["sim"]
    rows[f"that client (asyncua, {len(endpoints)} session{'s' if len(endpoints) > 1 else ''})"] = got["client"]
    procs.stop_all()
    return rows, ready


def table(rows: dict[str, dict]) -> str:
    return edge_table(rows, list(rows), rate="notifications/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per phase (default 30)")
    ap.add_argument("--warmup", type=float, default=10.0, help="warm-up before each window (default 10)")
    ap.add_argument("--line", action="store_true", help="the 10 machines as one line with buffers of 20")
    ap.add_argument("--one-server", action="store_true", help="fieldlab sim --one-server: one OPC UA server")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        procs = Processes(Path(tmp))
        try:
            rows, ready = run(a.seconds, a.warmup, a.line, a.one_server, Path(tmp), procs)
        finally:
            procs.stop_all()
    how = (" as one line" if a.line else "") + (", one OPC UA server" if a.one_server else ", one server each")
    print(f"\n{MACHINES} machines at 10 Hz{how}, {a.seconds:g} s windows; {ready}\n")
    print(table(rows))
    print(f"\n{machine_facts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
