"""Through the broker: a bare paho subscriber vs the gateway's ingest, side by side in one run.

A private Mosquitto on a free port. Per configuration and run, phases one after the other: publisher
processes send the same pre-built contract messages (columnar telemetry batches on
``MachineRef(...).topic(Kind.TELEMETRY)``, plus counts and state) at QoS 1 as fast as the broker takes
them, to (1) a bare paho subscriber (own process, QoS 1, counts messages and bytes), (2) the gateway's
own MQTT client (contract.mqtt.connect) counting only, (3) the real ``gateway.service.Gateway`` (own
process, publish_s=1.0, no sinks) and, with ``--gateways N``, (4) N gateway processes that split the
lines by ``--scope``. Rates run from the first message to the last (for a gateway: to the end of the
fold after the last). CPU is utime + stime of the subscriber process (os.times; for the gateway also
per thread: paho's, which decodes, and the ticks) and of Mosquitto (/proc/PID/stat) over the phase.
With ``--drain`` every message is published first (the broker queues them for the subscriber's
persistent session) and then drained, so no publisher competes for the CPU. Run:

    .venv/bin/python bench/bench_broker.py              # 2 configurations x 2 encodings x 3 runs
    .venv/bin/python bench/bench_broker.py --runs 1 --scale 0.3
    .venv/bin/python bench/bench_broker.py --profile    # also: cProfile of the gateway's ingest thread
    .venv/bin/python bench/bench_broker.py --drain --gateways 2   # publish first, then drain; also 2 gateways
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract import ROOT as ROOT_TOPIC, Kind, MachineRef, encode_counts, encode_state, encode_telemetry, encode_telemetry_binary, subscription  # noqa: E402,E501
from fieldlab.broker import PrivateMosquitto  # noqa: E402

CONFIGS = {  # name: (rows per telemetry batch, signals, telemetry messages)
    "100 rows x 10 signals (1,000 samples/msg)": (100, 10, 10_000),
    "10 rows x 10 signals (100 samples/msg)": (10, 10, 30_000),
}
MACHINES = 100
FILTERS = [(subscription(k), 1) for k in (Kind.STATE, Kind.COUNTS, Kind.TELEMETRY, Kind.STATUS)]


def build(rows: int, signals: int, n_tel: int, machines: list[int], encoding: str = "json"
          ) -> list[tuple[str, bytes, int]]:
    """(topic, payload, samples as the gateway counts them); per machine in time order. ``encoding``: of the
    telemetry batches, "json" or "binary" (docs/contract.md); counts and state are JSON either way."""
    encode = encode_telemetry_binary if encoding == "binary" else encode_telemetry
    rng = np.random.default_rng(1)
    pool = [np.round(rng.normal(50, 5, (signals, rows)), 3) for _ in range(8)]
    refs = {m: MachineRef("bench", "hall", f"line-{m // 10}", f"m{m:03d}") for m in range(MACHINES)}
    out, good = [], {m: 0 for m in machines}
    for k in range(n_tel // MACHINES):
        for m in machines:
            ts = 1.8e9 + (k * rows + np.arange(rows)) * 0.1
            sig = {f"s{j}": pool[(k + m) % 8][j] for j in range(signals)}
            out.append((refs[m].topic(Kind.TELEMETRY), encode(ts, sig), rows * signals))
            if k % 10 == 0:  # counts: one row per telemetry row
                g = good[m] + np.arange(1, rows + 1)
                good[m] = int(g[-1])
                out.append((refs[m].topic(Kind.COUNTS), encode_counts(ts, g, g // 50, "p", 0.1), rows))
            if k % 50 == 0:  # a state change now and then
                out.append((refs[m].topic(Kind.STATE), encode_state(ts[:1], [4 if k % 100 == 0 else 12]), 1))
    return out


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def cpu_self() -> float:
    return sum(os.times()[:2])  # user + system, all threads of this process


def paho_client(name: str):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{os.getpid()}")


def register_session(port: int, client_id: str, filters=FILTERS) -> None:
    """Drain mode: make the broker keep a session with our subscriptions, then leave, so that it queues
    every message for us while the publishers run; the subscriber connects only once they are done."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed = threading.Event()
    c.on_subscribe = lambda *args: subscribed.set()
    c.on_connect = lambda cl, *args: cl.subscribe(list(filters))
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("no SUBACK")
    c.disconnect()
    c.loop_stop()


def cpu_pid(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- child roles

def role_pub(a) -> None:
    msgs = build(a.rows, a.signals, a.n_tel, list(range(a.index, MACHINES, a.of)), a.encoding)
    acked, done = [0], threading.Event()

    def on_publish(c, u, mid, rc, props):
        acked[0] += 1
        if acked[0] == len(msgs):
            done.set()

    c = paho_client(f"pub-{a.index}")
    c.max_inflight_messages_set(1000), c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", a.port)
    c.loop_start()
    per_line: dict[str, list[int]] = {}  # line -> [messages, samples]: what each scoped gateway should get
    for topic, _, n in msgs:
        got = per_line.setdefault(topic.split("/")[4], [0, 0])
        got[0], got[1] = got[0] + 1, got[1] + n
    emit(ready=True, messages=len(msgs), samples=sum(s for _, _, s in msgs), per_line=per_line)
    if not sys.stdin.readline():  # "go", or the parent is gone
        return
    t = time.monotonic()
    for topic, payload, _ in msgs:
        c.publish(topic, payload, qos=1)
    done.wait(300)
    emit(seconds=time.monotonic() - t, acked=acked[0])
    c.disconnect(), c.loop_stop()


def role_bare(a) -> None:
    st = {"n": 0, "bytes": 0}
    subscribed, finished = threading.Event(), threading.Event()

    def on_message(c, u, msg):
        if st["n"] == 0:
            st["t0"], st["cpu0"] = time.monotonic(), cpu_self()
        st["n"] += 1
        st["bytes"] += len(msg.payload)
        if st["n"] == a.n:
            st["t1"], st["cpu1"] = time.monotonic(), cpu_self()
            finished.set()

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    client_id = f"bench-{a.role}-{os.getpid()}"
    if a.drain:
        register_session(a.port, client_id)
        emit(ready=True)
        if not sys.stdin.readline():  # "go": the publishers are done, everything waits in the broker
            return
    if a.role == "client":  # the gateway's own MQTT client (contract.mqtt.connect), counting only
        from contract.mqtt import BrokerUrl, connect
        c = connect(BrokerUrl("127.0.0.1", a.port), client_id, on_message=on_message, persistent=a.drain,
                    subscriptions=FILTERS)
    else:  # stock paho, as simple as it gets
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not a.drain)
        c.on_message = on_message
        c.on_subscribe = lambda *args: subscribed.set()
        c.on_connect = lambda cl, *args: cl.subscribe(FILTERS)
        c.connect("127.0.0.1", a.port)
        c.loop_start()
        subscribed.wait(10)
    if not a.drain:
        emit(ready=True)
    finished.wait(a.timeout)
    wall = st.get("t1", time.monotonic()) - st.get("t0", 0.0)
    emit(messages=st["n"], bytes=st["bytes"], seconds=wall, cpu=st.get("cpu1", cpu_self()) - st.get("cpu0", 0.0))
    c.disconnect(), c.loop_stop()


def role_gateway(a) -> None:
    import cProfile, pstats  # noqa: E401
    from contract.mqtt import BrokerUrl
    from gateway.service import Gateway

    class BenchGateway(Gateway):
        t0 = cpu0 = prof = None
        tick_log: list = []

        ingest_cpu0 = ingest_cpu = tick_cpu = 0.0
        all_in = threading.Event()  # set by paho's thread with the last message

        def _on_message(self, client, userdata, msg):
            if self.t0 is None:
                self.t0, self.cpu0 = time.monotonic(), cpu_self()
                self.ingest_cpu0 = time.thread_time()  # CPU of paho's network thread (the ingest) alone
                if a.profile:  # cProfile sees only the thread that enables it: paho's network thread
                    self.prof = cProfile.Profile()
                    self.prof.enable()
            super()._on_message(client, userdata, msg)
            if self.stats["messages"] + self.stats["dead_letters"] >= a.n and not self.all_in.is_set():
                self.ingest_cpu = time.thread_time() - self.ingest_cpu0
                if self.prof:
                    self.prof.disable()
                self.all_in.set()

        def tick(self):
            cpu = time.thread_time()
            rows = super().tick()
            if self.t0 is not None:
                self.tick_cpu += time.thread_time() - cpu
            self.tick_log.append(self.tick_seconds)
            return rows

    async def main():
        client_id = f"bench-gw-{os.getpid()}"
        scope = [f"bench/hall/{name}" for name in a.scope.split(",")] if a.scope else None
        if a.drain:  # the gateway's own subscriptions (its scope's lines only)
            register_session(a.port, client_id, [(f"{ROOT_TOPIC}/{s}/+/{k.value}", 1) for s in (scope or ["+/+/+"])
                                                 for k in (Kind.STATE, Kind.COUNTS, Kind.TELEMETRY, Kind.STATUS)])
            emit(ready=True)
            if not await asyncio.to_thread(sys.stdin.readline):
                return
        gw = BenchGateway(BrokerUrl("127.0.0.1", a.port), publish_s=a.publish_s, client_id=client_id, sinks=[],
                          scope=scope)
        await gw.start()
        if not a.drain:
            emit(ready=True)
        # waiting in a thread costs nothing; polling the count every few ms took the GIL from paho's thread
        await asyncio.to_thread(gw.all_in.wait, a.timeout)
        gw.tick()  # fold what came since the last tick: the window ends with everything folded
        t1, cpu1 = time.monotonic(), cpu_self()
        emit(messages=gw.stats["messages"], dead_letters=gw.stats["dead_letters"], samples=gw.stats["samples"],
             seconds=t1 - (gw.t0 or t1), cpu=cpu1 - (gw.cpu0 or cpu1), machines=len(gw.machines),
             ingest_cpu=gw.ingest_cpu, tick_cpu=gw.tick_cpu, t0=gw.t0 or t1, t1=t1,
             tick_median=statistics.median(gw.tick_log), tick_max=max(gw.tick_log))
        if gw.prof:
            pstats.Stats(gw.prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        await gw.stop()

    asyncio.run(main())


# ----------------------------------------------------------------------------- parent

def spawn(procs: list, *args) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, __file__, *map(str, args)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    procs.append(p)
    return p


def line(p: subprocess.Popen) -> dict:
    text = p.stdout.readline()
    if not text:
        raise RuntimeError(f"child {p.args[2:]} ended early (exit {p.wait()})")
    return json.loads(text)


def phase(broker: PrivateMosquitto, kind: str, cfg: tuple, a, procs: list) -> dict:
    rows, signals, n_tel, encoding = cfg
    n_tel = int(n_tel * a.scale) // MACHINES * MACHINES
    pubs = [spawn(procs, "pub", broker.port, "--rows", rows, "--signals", signals, "--n-tel", n_tel,
                  "--index", i, "--of", a.publishers, "--encoding", encoding) for i in range(a.publishers)]
    ready = [line(p) for p in pubs]
    n, samples = sum(r["messages"] for r in ready), sum(r["samples"] for r in ready)
    extra = (["--profile"] if a.profile and kind == "gateway" else []) + (["--drain"] if a.drain else []) + (
        ["--publish-s", a.publish_s] if kind.startswith("gateway") else [])
    if kind == "gateways":  # scale-out: a.gateways processes, each owning every a.gateways-th line (--scope)
        per_line: dict[str, int] = {}
        for r in ready:
            for name, (msgs, _) in r["per_line"].items():
                per_line[name] = per_line.get(name, 0) + msgs
        names = sorted(per_line)
        shares = [names[i::a.gateways] for i in range(a.gateways)]
        subs = [spawn(procs, "gateway", broker.port, "--n", sum(per_line[x] for x in share), "--timeout", a.timeout,
                      "--scope", ",".join(share), *extra) for share in shares]
    else:
        subs = [spawn(procs, kind, broker.port, "--n", n, "--timeout", a.timeout, *extra)]
    for sub in subs:
        line(sub)
    cpu_b, t = cpu_pid(broker.proc.pid), time.monotonic()
    for p in pubs:
        p.stdin.write("go\n"), p.stdin.flush()
    if a.drain:  # everything is in the broker before the subscriber connects: it alone sets the pace
        pub_seconds = max(line(p)["seconds"] for p in pubs)
        cpu_b, t = cpu_pid(broker.proc.pid), time.monotonic()
        for sub in subs:
            sub.stdin.write("go\n"), sub.stdin.flush()
    results = [line(sub) for sub in subs]
    res = results[0]
    if len(results) > 1:  # the window runs from the first gateway's first message to the last one's end
        res = {"messages": sum(r["messages"] for r in results), "samples": sum(r["samples"] for r in results),
               "dead_letters": sum(r["dead_letters"] for r in results),
               "seconds": max(r["t1"] for r in results) - min(r["t0"] for r in results),
               **{k: sum(r[k] for r in results) for k in ("cpu", "ingest_cpu", "tick_cpu")},
               "tick_median": statistics.median(r["tick_median"] for r in results),
               "tick_max": max(r["tick_max"] for r in results)}
    res["broker_cpu"] = (cpu_pid(broker.proc.pid) - cpu_b) / (time.monotonic() - t)
    res["pub_seconds"] = pub_seconds if a.drain else max(line(p)["seconds"] for p in pubs)
    for p in [*pubs, *subs]:
        p.wait(30)
        procs.remove(p)
    res.update(expected=n, expected_samples=samples)
    if res["messages"] != n or res.get("dead_letters", 0):
        raise SystemExit(f"{kind}: got {res['messages']} of {n} messages, dead letters "
                         f"{res.get('dead_letters', 0)}: the numbers would not be honest")
    if kind.startswith("gateway") and res["samples"] != samples:
        raise SystemExit(f"gateway counted {res['samples']} samples, {samples} were sent")
    return res


def facts() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = int(open("/proc/meminfo").readline().split()[1]) / 2**20
    mosq = subprocess.run([PrivateMosquitto().binary, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM, {platform.platform()}; Python "
            f"{platform.python_version()}, paho-mqtt {version('paho-mqtt')}, numpy {version('numpy')}, {mosq}; "
            f"load average before: {os.getloadavg()[0]:.2f}")


def parent(a) -> None:
    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on kill, too
    broker = PrivateMosquitto(extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    kinds = ("bare", "client", "gateway") + (("gateways",) if a.gateways > 1 else ())
    encodings = ("json", "binary") if a.encoding == "both" else (a.encoding,)
    configs = {f"{name}, {enc}": (*cfg, enc) for name, cfg in CONFIGS.items() for enc in encodings}
    results = {name: {kind: [] for kind in kinds} for name in configs}
    print(facts(), flush=True)
    try:
        broker.start()
        for run in range(a.runs):
            for name, cfg in configs.items():
                for kind in kinds:
                    r = phase(broker, kind, cfg, a, procs)
                    results[name][kind].append(r)
                    per = (f" = {r['cpu'] / r['expected'] * 1e6:.0f} us/msg" + (
                        f" (paho thread {r['ingest_cpu'] / r['expected'] * 1e6:.0f}, ticks "
                        f"{r['tick_cpu'] / r['expected'] * 1e6:.0f})" if kind.startswith("gateway") else ""))
                    print(f"run {run + 1} {name} {kind}: {r['expected'] / r['seconds']:,.0f} msg/s "
                          f"{r['expected_samples'] / r['seconds']:,.0f} samples/s cpu {r['cpu'] / r['seconds']:.0%}"
                          f"{per} broker {r['broker_cpu']:.0%} (publish {r['pub_seconds']:.2f} s)", flush=True)
    finally:
        for p in procs:
            p.kill(), p.wait()
        broker.cleanup()
    med = statistics.median

    def rng(xs, f):
        return f"{f(med(xs))} ({f(min(xs))}–{f(max(xs))})"
    print(f"\nMedians of {a.runs} run(s), range in brackets; publishers: {a.publishers} process(es)"
          f"{'; drain mode (published first, then drained)' if a.drain else ''}\n")
    print("| config | messages | bare paho msgs/s | our MQTT client alone msgs/s | gateway msgs/s | gateway samples/s "
          "| gateway / bare | gateway / client | CPU µs per message: bare / client / gateway (paho thread + ticks) "
          "| gateway samples per CPU-second | tick ms (median / max) | broker CPU % (bare / client / gateway phase) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    k, mi = "{:,.0f}".format, lambda x: f"{x / 1e6:.2f} M"  # noqa: E731
    for name, r in results.items():
        b, c, g = r["bare"], r["client"], r["gateway"]
        bm, cm, gm = ([x["expected"] / x["seconds"] for x in xs] for xs in (b, c, g))
        gs = [x["samples"] / x["seconds"] for x in g]
        us = [med([x["cpu"] / x["expected"] * 1e6 for x in xs]) for xs in (b, c, g)]
        parts = [med([x[key] / x["expected"] * 1e6 for x in g]) for key in ("ingest_cpu", "tick_cpu")]
        print(f"| {name} | {b[0]['expected']:,} | {rng(bm, k)} | {rng(cm, k)} | {rng(gm, k)} | {mi(med(gs))} "
              f"| {med(gm) / med(bm):.0%} | {med(gm) / med(cm):.0%} "
              f"| {us[0]:.0f} / {us[1]:.0f} / {us[2]:.0f} ({parts[0]:.0f} + {parts[1]:.0f}) "
              f"| {rng([x['samples'] / x['cpu'] for x in g], mi)} "
              f"| {med([x['tick_median'] for x in g]) * 1e3:.1f} / {max(x['tick_max'] for x in g) * 1e3:.1f} "
              f"| {med([x['broker_cpu'] for x in b]):.0%} / {med([x['broker_cpu'] for x in c]):.0%} / "
              f"{med([x['broker_cpu'] for x in g]):.0%} |")
    if a.gateways > 1:
        print(f"\n{a.gateways} gateway processes, each owning 1/{a.gateways} of the lines (--scope), side by side "
              f"with the single gateway and the bare subscriber of the same runs:\n")
        print("| config | 1 gateway msgs/s | gateways msgs/s | gateways samples/s | gateways / 1 gateway "
              "| gateways / bare | gateways CPU µs per message | broker CPU % |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            b, g, gg = r["bare"], r["gateway"], r["gateways"]
            bm, gm, ggm = (med([x["expected"] / x["seconds"] for x in xs]) for xs in (b, g, gg))
            print(f"| {name} | {k(gm)} | {rng([x['expected'] / x['seconds'] for x in gg], k)} "
                  f"| {mi(med([x['samples'] / x['seconds'] for x in gg]))} | {ggm / gm:.2f}× | {ggm / bm:.0%} "
                  f"| {med([x['cpu'] / x['expected'] * 1e6 for x in gg]):.0f} "
                  f"| {med([x['broker_cpu'] for x in gg]):.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", default="parent", choices=["parent", "pub", "bare", "client", "gateway"])
    ap.add_argument("port", nargs="?", type=int)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    ap.add_argument("--publishers", type=int, default=1, help="publisher processes")
    ap.add_argument("--profile", action="store_true", help="cProfile the gateway's ingest thread (stderr)")
    ap.add_argument("--gateways", type=int, default=1,
                    help="also run this many gateway processes side by side, splitting the lines by --scope")
    ap.add_argument("--publish-s", type=float, default=1.0, help="the gateway's tick interval (default 1 s)")
    ap.add_argument("--scope", help=argparse.SUPPRESS)  # a gateway child's lines, comma-separated
    ap.add_argument("--drain", action="store_true",
                    help="publish everything first (the broker queues it for the subscriber's session), then let "
                         "the subscriber drain it: no publisher competes for the CPU while it is measured")
    ap.add_argument("--encoding", choices=["json", "binary", "both"], default="both",
                    help="of the telemetry batches (docs/contract.md); both: each configuration in each")
    ap.add_argument("--timeout", type=float, default=300.0)
    for opt in ("--rows", "--signals", "--n-tel", "--index", "--of", "--n"):
        ap.add_argument(opt, type=int)
    a = ap.parse_args()
    {"parent": parent, "pub": role_pub, "bare": role_bare, "client": role_bare, "gateway": role_gateway}[a.role](a)


if __name__ == "__main__":
    main()
