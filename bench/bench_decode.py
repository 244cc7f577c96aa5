"""Decoding telemetry in-process, without a broker: JSON against the binary form, per message.

The payloads are bench_broker.py's (100 machines, 10 signals, 10 or 100 rows per message, 2,000 each),
decoded once per pass (``contract.decode``), then handed to the real gateway's
``_on_message`` (decode + route + queue; no broker, no tick). Both forms decode to the same arrays,
which is checked before anything is timed. Medians of 5 passes. Run:

    .venv/bin/python bench/bench_decode.py
"""
from __future__ import annotations

import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_broker import build  # noqa: E402
from contract import Kind, decode  # noqa: E402
from contract.mqtt import BrokerUrl  # noqa: E402
from gateway.service import Gateway  # noqa: E402


def per_message(fn, items, passes: int = 5) -> float:
    """Median µs per item of ``fn(item)`` over ``passes`` passes."""
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - t) / len(items) * 1e6)
    return statistics.median(times)


def main() -> None:
    print(f"Python {platform.python_version()}, numpy {version('numpy')}, orjson {version('orjson')}, "
          f"paho-mqtt {version('paho-mqtt')}\n")
    print("| rows x signals | form | bytes | decode µs per message | gateway _on_message µs per message |")
    print("|---|---|---:|---:|---:|")
    for rows in (10, 100):
        msgs = {form: [(t, p) for t, p, _ in build(rows, 10, 2000, list(range(100)), form) if t.endswith("/telemetry")]
                for form in ("json", "binary")}
        for (_, a), (_, b) in zip(*msgs.values()):  # the same data either way, checked before timing
            a, b = decode(Kind.TELEMETRY, a), decode(Kind.TELEMETRY, b)
            assert np.array_equal(a.ts, b.ts) and list(a.signals) == list(b.signals)
            assert all(np.array_equal(a.signals[k], b.signals[k]) for k in a.signals)
        for form, pairs in msgs.items():
            gw = Gateway(BrokerUrl("127.0.0.1", 1), publish_s=3600)  # never started: only its ingest is used
            messages = []
            for t, p in pairs:
                m = paho.MQTTMessage(topic=t.encode())
                m.payload = p
                messages.append(m)
            dec = per_message(lambda m: decode(Kind.TELEMETRY, m.payload), messages)
            ing = per_message(lambda m: gw._on_message(None, None, m), messages)
            assert gw.stats["dead_letters"] == 0
            print(f"| {rows} x 10 | {form} | {len(pairs[0][1]):,} | {dec:.1f} | {ing:.1f} |")

if __name__ == "__main__":
    main()
