"""The live terminal table of the demo."""
from __future__ import annotations

import datetime as dt


def pct(x) -> str:
    return "   –  " if x is None else f"{100 * x:5.1f}%"


def render(rows: list[dict], header: str = "") -> str:
    head = f"{'machine':<34} {'state':<10} {'status':<8} {'good':>7} {'reject':>6} {'avail':>6} {'perf':>6} {'qual':>6} {'OEE':>6}"
    lines = [header, head, "-" * len(head)] if header else [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['machine'].path:<34} {(r['state_name'] or '?'):<10} {(r.get('status') or '?'):<8} "
            f"{r['good']:>7} {r['reject']:>6} {pct(r['availability'])} {pct(r['performance'])} "
            f"{pct(r['quality'])} {pct(r['oee'])}"
        )
    if not rows:
        lines.append("(waiting for the first data from the edge agents)")
    return "\n".join(lines)


def sim_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
