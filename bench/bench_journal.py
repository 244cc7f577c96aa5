"""The gateway's journal (gateway/checkpoint.py, Journal): what each fsync policy costs per accepted message.

Appends realistic records (a 42-byte counts topic, a ~300-byte counts payload with 12 readings), as fast
as it can, through ``checkpoint.Journal`` as the gateway does (``append`` under its ingest lock), with:

- no fsync while writing (one at close): what a kill -9 survives, a power cut does not;
- group fsync: a thread of the Journal fsyncs every ``sync_s`` (0.1 s, 0.5 s = the default, 1 s);
- an fsync per record (os.write + os.fsync on the writer's path).

It reports records/s and µs per record on the writer's path (the paho thread in the gateway), how many
fsyncs ran and their median duration, and the replay speed of the journal written (the start-up cost
after a crash). Medians of 3 runs. The directory must be on the disk the gateway uses (tmpfs makes
fsync free; the file system is printed). Run:

    .venv/bin/python bench/bench_journal.py                  # about 40 s
    .venv/bin/python bench/bench_journal.py --dir /var/lib/fieldlab --records 50000
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract import Kind, MachineRef, encode_counts  # noqa: E402
from gateway import checkpoint  # noqa: E402


class TimedJournal(checkpoint.Journal):
    """The gateway's Journal, timing each fsync its thread (or close) does."""

    def __init__(self, path, sync_s):
        self.fsync_s: list[float] = []
        super().__init__(path, sync_s)

    def sync(self) -> None:
        t = time.perf_counter()
        done = self.syncs
        super().sync()
        if self.syncs > done:
            self.fsync_s.append(time.perf_counter() - t)


def messages(n: int) -> list[tuple[str, bytes]]:
    refs = [MachineRef("acme", "hall-1", f"line-{m % 4 + 1}", f"m{m:03d}") for m in range(200)]
    out = []
    for i in range(n):
        ts = 1.8e9 + i + np.arange(12) * 0.25
        out.append((refs[i % len(refs)].topic(Kind.COUNTS),
                    encode_counts(ts.tolist(), list(range(i, i + 12)), [i // 50] * 12, "p-123", 2.5)))
    return out


def run(policy, msgs: list, where: Path) -> dict:
    """One pass: append every message, close; times on the writer's path."""
    path = where / f"bench.journal-{time.monotonic_ns()}"
    if policy == "per record":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsyncs = []
        t = time.perf_counter()
        for topic, payload in msgs:
            os.write(fd, checkpoint.record(topic, payload))
            f = time.perf_counter()
            os.fsync(fd)
            fsyncs.append(time.perf_counter() - f)
        took = time.perf_counter() - t
        os.close(fd)
    else:
        j = TimedJournal(path, policy)
        t = time.perf_counter()
        for topic, payload in msgs:
            j.append(topic, payload)
        took = time.perf_counter() - t
        j.close()
        fsyncs = j.fsync_s
    t = time.perf_counter()
    replayed = checkpoint.replay(path) if policy != "per record" else []
    replay_s = time.perf_counter() - t
    path.unlink()
    assert policy == "per record" or len(replayed) == len(msgs)
    return {"rate": len(msgs) / took, "us": took / len(msgs) * 1e6, "fsyncs": len(fsyncs),
            "fsync_ms": statistics.median(fsyncs) * 1e3 if fsyncs else float("nan"),
            "replay_rate": len(msgs) / replay_s if replayed else float("nan")}


def file_system(path: Path) -> str:
    """The file system type of ``path`` (from /proc/mounts: the longest mount point above it)."""
    best, kind = "", "?"
    path = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fs = line.split()[:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fs
    return f"{kind} on {best}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (default: the temp directory)")
    ap.add_argument("--records", type=int, default=200_000, help="records per pass (default 200,000)")
    ap.add_argument("--per-record", type=int, default=2_000, help="records per pass with an fsync each")
    a = ap.parse_args()
    many = messages(a.records)
    few = many[: a.per_record]
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {file_system(Path(a.dir))}; record "
          f"{len(checkpoint.record(*many[0]))} bytes (topic {len(many[0][0])}, payload {len(many[0][1])}); "
          f"medians of 3 runs")
    print("| policy | records | records/s | µs per record (writer) | fsyncs | ms per fsync (median) | "
          "replay records/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir=a.dir) as d:
        for name, policy, msgs in [("no fsync while writing (one at close)", None, many),
                                   ("group fsync every 0.1 s", 0.1, many),
                                   (f"group fsync every {checkpoint.SYNC_S:g} s (default)", checkpoint.SYNC_S, many),
                                   ("group fsync every 1 s", 1.0, many),
                                   ("fsync per record", "per record", few)]:
            runs = [run(policy, msgs, Path(d)) for _ in range(3)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {name} | {len(msgs):,} | {med['rate']:,.0f} | {med['us']:.2f} | {med['fsyncs']:.0f} | "
                  f"{med['fsync_ms']:.2f} | {med['replay_rate']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
