"""Text tables for ``fieldlab oee``: KPIs per machine and line, then the six big losses and external (line) time."""
from __future__ import annotations

from .table import pct, sim_time

LOSSES = (("unplanned_stops", "unplanned"), ("external", "external"), ("planned_stops", "setup"), ("small_stops", "small"),
          ("slow_cycles", "slow"), ("production_rejects", "rejects"), ("startup_rejects", "start-up"))


def _min(seconds) -> str:
    return "     –" if seconds is None else f"{seconds / 60:6.1f}"


def _name(r: dict) -> str:
    return r["machine"] if r["machine"] else f"line {r['line']} (total)"


def render(rows: list[dict]) -> str:
    out = []
    windows = []
    for r in rows:
        if r["window"] not in windows:
            windows.append(r["window"])
    for w in windows:
        rs = [r for r in rows if r["window"] == w]
        out.append(f"window {sim_time(w['start'])} -> {sim_time(w['end'])} ({(w['end'] - w['start']) / 60:.0f} min)")
        head = (f"{'machine':<24} {'planned':>7} {'run':>6} {'avail':>6} {'perf':>6} {'qual':>6} {'OEE':>6} "
                f"{'TEEP':>6} {'good':>7} {'reject':>6} {'fail':>4} {'MTBF':>6} {'MTTR':>6}")
        out += [head, f"{'':<24} {'min':>7} {'min':>6} {'':>41}{'':>19} {'min':>6} {'min':>6}", "-" * len(head)]
        for r in rs:
            out.append(f"{_name(r):<24} {_min(r['planned_s']):>7} {_min(r['run_s'])} {pct(r['availability'])} "
                       f"{pct(r['performance'])} {pct(r['quality'])} {pct(r['oee'])} {pct(r['teep'])} "
                       f"{r['good']:>7.0f} {r['reject']:>6.0f} {r['failures']:>4.0f} {_min(r['mtbf_s'])} "
                       f"{_min(r['mttr_s'])}")
        out.append("")
        head = f"{'losses, min (OEE points)':<34}" + "".join(f"{label:>15}" for _, label in LOSSES)
        out += [head, "-" * len(head)]
        for r in rs:
            cells = "".join(
                f"{'–':>15}" if r[f'loss_{k}_s'] is None else
                f"{r[f'loss_{k}_s'] / 60:>7.1f} ({r[f'loss_{k}_pp']:>4.1f})" if r[f'loss_{k}_pp'] is not None else
                f"{r[f'loss_{k}_s'] / 60:>15.1f}" for k, _ in LOSSES)
            out.append(f"{_name(r):<34}{cells}")
        out.append("")
    return "\n".join(out)
