"""Timeline cost per computation with per-machine row segments (gateway/timeline.py ``_Rows``), against any other
version of the code in a worktree, side by side in one run:

    git worktree add /tmp/fieldlab-before a2a1c71      # the 2-D rows (machines x capacity), before 9cf4c00
    .venv/bin/python bench/bench_timeline_rows.py --other /tmp/fieldlab-before

1,000 machines, 200 computations; each appends 5 state changes and 5 counter readings per machine, then
reads three windows of every machine and the stop reasons since the start (as a gateway tick does). Each
version runs in its own process, alternating, three times; medians in ms per computation.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN = r"""
import sys, time
import numpy as np
from gateway import timeline
rng = np.random.default_rng(0)
n, ticks, k = int(sys.argv[1]), int(sys.argv[2]), 5
tl = timeline.Timeline(machines=n)
ta = tq = 0.0
for step in range(ticks):
    m = np.repeat(np.arange(n), k)
    ts = step * 100 + np.tile(np.arange(k) * 10.0, n) + 1
    cat = rng.integers(0, 3, m.size).astype(np.int8)
    a = time.perf_counter()
    tl.append_states(m, ts, cat, np.zeros(m.size, np.int64))
    tl.append_counts(m, ts + 0.5, np.tile(np.arange(k), n) + step * k, np.zeros(m.size, np.int64), np.ones(m.size))
    b = time.perf_counter()
    tl.set_now(np.arange(n), np.full(n, step * 100 + 60.0))
    tl.windows(np.array([np.zeros(n), np.full(n, step * 50.0), np.full(n, step * 90.0)]),
               np.full((3, n), step * 100 + 60.0))
    tl.stop_reasons(0.0, step * 100 + 60.0)
    tq += time.perf_counter() - b
    ta += b - a
print(ta / ticks * 1e3, tq / ticks * 1e3)
"""


def once(tree: Path, machines: int, ticks: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", RUN, str(machines), str(ticks)], cwd=tree, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    a, q = out.stdout.split()
    return float(a), float(q)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, help="a worktree of another version, run side by side")
    p.add_argument("--machines", type=int, default=1000)
    p.add_argument("--ticks", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    trees = {"this tree": ROOT, **({f"{a.other}": a.other} if a.other else {})}
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(a.repeat):
        for name, tree in trees.items():
            got[name].append(once(tree, a.machines, a.ticks))
    print(f"{a.machines} machines, {a.ticks} computations, median of {a.repeat} (ms per computation)")
    print(f"{'code':<28} {'append':>8} {'read':>8} {'total':>8}")
    for name, runs in got.items():
        ap, rd = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<28} {ap:>8.1f} {rd:>8.1f} {ap + rd:>8.1f}")


if __name__ == "__main__":
    main()
