"""Gateway ingest: columnar batches decoded into NumPy and folded for all machines, versus
the naive way (one JSON message per sample, handled in a Python loop), in one run.

Measures the gateway's own work only (JSON decode, validation, fold, KPI snapshot);
the broker is not involved. Run:

    .venv/bin/python bench/bench_ingest.py            # 200 machines x 1 hour of 1 s samples
    .venv/bin/python bench/bench_ingest.py --quick    # a smaller run
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from contract import decode_counts, decode_state, decode_telemetry, encode_counts, encode_state, encode_telemetry
from gateway.engine import KpiEngine


def make_batches(machines: int, seconds: int, batch: int, seed: int = 1):
    """Per machine: 1 Hz telemetry (3 signals), counters every second, a state change every ~5 min."""
    rng = np.random.default_rng(seed)
    msgs = []
    for m in range(machines):
        ts = 1.8e9 + np.arange(seconds, dtype=np.float64)
        good = np.cumsum(rng.integers(0, 2, seconds))
        reject = np.cumsum(rng.random(seconds) < 0.02)
        sig = {k: np.round(rng.normal(50, 5, seconds), 3) for k in ("temperature", "power", "vibration")}
        change = np.flatnonzero(rng.random(seconds) < 1 / 300)
        change[0:1] = 0
        states = rng.choice([4, 4, 15, 12], change.size)
        for i in range(0, seconds, batch):
            sl = slice(i, i + batch)
            msgs.append((m, "telemetry", encode_telemetry(ts[sl], {k: v[sl] for k, v in sig.items()})))
            msgs.append((m, "counts", encode_counts(ts[sl], good[sl], reject[sl], "p", 1.0)))
            sel = change[(change >= i) & (change < i + batch)]
            if sel.size:
                msgs.append((m, "state", encode_state(ts[sel], states[np.isin(change, sel)])))
    return msgs


def ours(msgs, machines):
    e = KpiEngine()
    for _ in range(machines):
        e.add_machine()
    add = {"telemetry": (decode_telemetry, e.add_telemetry), "counts": (decode_counts, e.add_counts),
           "state": (decode_state, e.add_state)}
    for m, kind, payload in msgs:
        dec, sink = add[kind]
        sink(m, dec(payload))
    e.fold()
    return e.snapshot()["since_start"]


def naive_messages(msgs):
    """The same data as one small JSON message per sample (how many gateways receive it)."""
    out = []
    for m, kind, payload in msgs:
        obj = json.loads(payload)
        if kind == "telemetry":
            for i, t in enumerate(obj["ts"]):
                out.append(json.dumps({"m": m, "kind": kind, "ts": t,
                                       **{k: v[i] for k, v in obj["signals"].items()}}).encode())
        elif kind == "counts":
            for t, g, r in zip(obj["ts"], obj["good"], obj["reject"]):
                out.append(json.dumps({"m": m, "kind": kind, "ts": t, "good": g, "reject": r, "ict": 1.0}).encode())
        else:
            for t, s in zip(obj["ts"], obj["state"]):
                out.append(json.dumps({"m": m, "kind": kind, "ts": t, "state": s}).encode())
    return out


def naive(per_sample):
    """Per-message Python: parse, update a dict per machine."""
    st: dict[int, dict] = {}
    for raw in per_sample:
        msg = json.loads(raw)
        s = st.setdefault(msg["m"], {"now": 0.0, "state": None, "since": None, "run": 0.0, "planned": 0.0,
                                     "good": 0, "reject": 0, "lg": None, "lr": None, "ideal": 0.0})
        s["now"] = max(s["now"], msg["ts"])
        if msg["kind"] == "state":
            if s["state"] is not None:
                d = msg["ts"] - s["since"]
                s["planned"] += d
                s["run"] += d if s["state"] == 4 else 0.0
            s["state"], s["since"] = msg["state"], msg["ts"]
        elif msg["kind"] == "counts":
            if s["lg"] is not None:
                dg = msg["good"] - s["lg"] if msg["good"] >= s["lg"] else msg["good"]
                dr = msg["reject"] - s["lr"] if msg["reject"] >= s["lr"] else msg["reject"]
                s["good"] += dg
                s["reject"] += dr
                s["ideal"] += (dg + dr) * msg["ict"]
            s["lg"], s["lr"] = msg["good"], msg["reject"]
    return st


def timed(fn, *args, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=500, help="samples per columnar message")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.machines, a.seconds = 20, 1200
    msgs = make_batches(a.machines, a.seconds, a.batch)
    per_sample = naive_messages(msgs)
    samples = a.machines * a.seconds * 5  # 3 signals + good/reject counter row counted as 2 values
    t_ours, snap = timed(ours, msgs, a.machines)
    t_naive, st = timed(naive, per_sample)
    # both must agree before their speed means anything
    for m in range(a.machines):
        assert st[m]["good"] == snap["good"][m] and st[m]["reject"] == snap["reject"][m]
    print(f"{a.machines} machines x {a.seconds} s of 1 Hz data = {samples:,} values "
          f"in {len(msgs):,} columnar messages ({a.batch} samples each) or {len(per_sample):,} per-sample messages")
    print(f"{'method':<44}{'seconds':>9}{'values/s':>14}")
    print(f"{'ours: columnar decode + vectorised fold':<44}{t_ours:>9.3f}{samples / t_ours:>14,.0f}")
    print(f"{'naive: per-sample JSON + Python loop':<44}{t_naive:>9.3f}{samples / t_naive:>14,.0f}")
    print(f"ratio: {t_naive / t_ours:.1f}x")


if __name__ == "__main__":
    main()
