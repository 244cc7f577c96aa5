"""The chaos suite's table for docs/RELIABILITY.md: runs tests/chaos (real Mosquitto, gateway and simulated
machines with their edge publishers; faults injected at observable points; the simulators' ledger as ground
truth) and prints one row per scenario. Run:

    .venv/bin/python bench/chaos.py           # the CI subset (each fault twice), about 3.5 minutes
    .venv/bin/python bench/chaos.py --full    # every scenario, each fault 5 times, longer runs (15-20 minutes)

Exit code: pytest's (non-zero if any scenario failed its assertions; the table shows what was measured).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (("scenario", "scenario"), ("injected", "injected"), ("times", "times"), ("produced", "parts made"),
           ("lost", "lost"), ("duplicated", "counted twice"), ("run_s_error", "run-time error (s)"),
           ("dead_letters", "dead letters"), ("recovery_s", "recovery (s)"))


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            if key == "recovery_s" and v is None and r.get("detected_s") is not None:
                v = f"detected in {r['detected_s']}"
            cells.append("–" if v is None else f"{v:g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="every scenario (tests/chaos/conftest.py FULL_ONLY too), each "
                   "fault 5 times instead of 2, longer runs")
    p.add_argument("pytest_args", nargs="*", help="passed to pytest, e.g. -k broker")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "chaos.jsonl"
        env = {**os.environ, "FIELDLAB_CHAOS_REPORT": str(report), **({"FIELDLAB_CHAOS": "full"} if a.full else {})}
        code = subprocess.call([sys.executable, "-m", "pytest", "tests/chaos", "-q", "-p", "no:cacheprovider",
                                *a.pytest_args], cwd=ROOT, env=env)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print()
    print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
