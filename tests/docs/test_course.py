"""The course kit (docs/course/): every answer key is what the engine computes, in both languages.

Each lesson (docs/course/<nl|en>/<lesson>/lesson.md) holds one or more fenced ```answers blocks (YAML).
A block names what the exercise is backed by and the answers the trainees should find:

- ``source: docs/course/data/FILE.csv``: an event log, computed with ``fieldlab oee FILE --json`` (the
  command the trainees run); ``scenario: NAME``: a shipped scenario, run headless into the gateway's
  KpiEngine (default site configuration, as ``fieldlab demo --scenario NAME``) and its machines' ledgers.
- ``machines: {name: {kpi: value}}`` with kpi one of the ratios (availability, performance, quality,
  oee: fractions), counts (good, reject, failures), minutes (planned_min, run_min, mtbf_min, mttr_min,
  loss_<loss>_min, and from a scenario's ledger blocked_min, starved_min), OEE points (loss_<loss>_pp)
  or ``biggest_loss``; ``bottleneck`` (scenario with a line: the machine that waits least, starved +
  blocked, in its ledger) and ``line_output`` (the last machine's good parts).
- ``tolerance: {ratio: ..., minutes: ..., points: ...}``: half the last digit shown to the trainees.
- ``topics: {machine: site/area/line/machine, <kind>: topic}`` (contract.topics), ``edge_config`` with
  ``lamps: {"red+green": Held, ...}`` (edge.config, the stack light), ``plant`` with ``users`` and
  ``acl: [{user, topic, publish|subscribe: bool}]`` (fieldlab.deploy's ACL).

Also: nl and en have the same files and identical answer keys, every lesson has a one-page handout,
and every ``./run ...`` / ``fieldlab ...`` command line in the course parses with the CLI.
Runs in about 2 s.
"""
import contextlib
import functools
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from paho.mqtt.client import topic_matches_sub

from contract import PACKML
from contract.topics import Kind, MachineRef
from edge.config import load as load_edge_config
from fieldlab import cli
from fieldlab.deploy import acl_text, load_plant
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from simulators import scenario as sc
from tests.helpers import advance_machines, start_machines

ROOT = Path(__file__).resolve().parents[2]
COURSE = ROOT / "docs" / "course"
LANGS = ("nl", "en")
T0 = 1_800_000_000.0
RATIOS = ("availability", "performance", "quality", "oee")
COUNTS = ("good", "reject", "failures")
LOSSES = ("unplanned_stops", "planned_stops", "small_stops", "slow_cycles", "production_rejects", "startup_rejects")
MINUTES = {"planned_min": "planned_s", "run_min": "run_s", "mtbf_min": "mtbf_s", "mttr_min": "mttr_s",
           **{f"loss_{x}_min": f"loss_{x}_s" for x in LOSSES}}
LEDGER_MINUTES = {"blocked_min": "blocked_s", "starved_min": "starved_s"}
POINTS = {f"loss_{x}_pp" for x in LOSSES}  # OEE points, as the dashboard shows the losses
BLOCK_KEYS = ("source", "scenario", "tolerance", "machines", "bottleneck", "line_output", "topics", "edge_config",
              "lamps", "plant", "users", "acl")
BLOCK = re.compile(r"^```answers\n(.*?)^```", re.S | re.M)


def lessons(lang: str = "en") -> list[str]:
    return sorted(p.parent.name for p in (COURSE / lang).glob("*/lesson.md"))


def answer_blocks(path: Path) -> list[dict]:
    return [yaml.safe_load(b) for b in BLOCK.findall(path.read_text(encoding="utf-8"))]


def blocks_of(lang: str) -> list[tuple[str, int, dict]]:
    return [(ls, i, b) for ls in lessons(lang) for i, b in enumerate(answer_blocks(COURSE / lang / ls / "lesson.md"))]


# ------------------------------------------------------------------------------- the engine's answers
@functools.lru_cache(maxsize=None)
def oee_report(source: str) -> dict[str, dict]:
    """``fieldlab oee SOURCE --json``, the command the trainees run; {machine: row} of its one window."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["oee", str(ROOT / source), "--json"]) == 0
    rows = json.loads(out.getvalue())
    return {r["machine"]: r for r in rows if r["machine"]}


@functools.lru_cache(maxsize=None)
def scenario_run(name: str) -> tuple[dict[str, dict], dict[str, dict], list[str], bool]:
    """The scenario run headless into the gateway's engine (as tests/simulators/test_scenarios.py):
    ({machine: KPIs since the start}, {machine: ledger}, machine order, is a line)."""
    s = sc.load(name)
    engine = KpiEngine(SiteConfig())
    machines = s.machines(T0)
    ids = start_machines(engine, machines, T0)
    end, t = T0 + s.duration_s, T0
    while t < end:
        t = min(end, t + 3600.0)
        advance_machines(engine, ids, machines, t)
        engine.fold()
    snap = engine.snapshot()["since_start"]
    names = [m.spec.name for m in machines]
    rows = {}
    for i, name in enumerate(names):
        rows[name] = {k: (None if np.isnan(v[i]) else float(v[i])) for k, v in snap.items()
                      if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "fiu"}
    ledgers = {m.spec.name: m.ledger_now().to_dict() for m in machines}
    return rows, ledgers, names, bool(s.line)


def computed(block: dict) -> tuple[dict[str, dict], dict[str, dict], list[str], bool]:
    if "source" in block:
        rows = oee_report(block["source"])
        return rows, {}, list(rows), False
    return scenario_run(block["scenario"])


def machine_value(kpi: str, row: dict, ledger: dict):
    if kpi in RATIOS or kpi in COUNTS:
        return row[kpi]
    if kpi in MINUTES:
        return None if row[MINUTES[kpi]] is None else row[MINUTES[kpi]] / 60
    if kpi in POINTS:
        return row[kpi]
    if kpi in LEDGER_MINUTES:
        return ledger[LEDGER_MINUTES[kpi]] / 60
    if kpi == "biggest_loss":
        return max(LOSSES, key=lambda x: row[f"loss_{x}_s"])
    known = RATIOS + COUNTS + tuple(MINUTES) + tuple(sorted(POINTS)) + tuple(LEDGER_MINUTES) + ("biggest_loss",)
    raise AssertionError(f"unknown answer key {kpi!r}; use one of {', '.join(known)}")


def tolerance(tol: dict, kpi: str) -> float:
    return tol["ratio"] if kpi in RATIOS else tol["points"] if kpi in POINTS else tol["minutes"]


def check_block(block: dict) -> list[str]:
    """One line per answer that differs from what the code computes."""
    misses = [f"unknown key {k!r}; an answers block has {', '.join(BLOCK_KEYS)}" for k in block if k not in BLOCK_KEYS]
    if "source" in block or "scenario" in block:
        rows, ledgers, order, is_line = computed(block)
        tol = {"ratio": 0.0005, "minutes": 0.05, "points": 0.05, **block.get("tolerance", {})}
        for name, want in block.get("machines", {}).items():
            assert name in rows, f"{name}: not a machine of {block.get('source') or block.get('scenario')}"
            for kpi, value in want.items():
                got = machine_value(kpi, rows[name], ledgers.get(name, {}))
                if isinstance(value, str) or kpi in COUNTS:
                    ok = got == value
                else:
                    ok = got is not None and abs(got - value) <= tolerance(tol, kpi) + 1e-9
                if not ok:
                    misses.append(f"{name} {kpi}: the key says {value}, the engine computes {got}")
        if "bottleneck" in block:
            assert is_line, "bottleneck: only for a scenario with a line"
            got = min(order, key=lambda m: ledgers[m]["starved_s"] + ledgers[m]["blocked_s"])
            if got != block["bottleneck"]:
                misses.append(f"bottleneck: the key says {block['bottleneck']}, the ledgers say {got}")
        if "line_output" in block:
            got = int(rows[order[-1]]["good"])
            if got != block["line_output"]:
                misses.append(f"line_output: the key says {block['line_output']}, the engine computes {got}")
    if "topics" in block:
        topics = dict(block["topics"])
        ref = MachineRef.parse(topics.pop("machine"))
        for kind, topic in topics.items():
            if ref.topic(Kind(kind)) != topic:
                misses.append(f"topics {kind}: the key says {topic}, the contract says {ref.topic(Kind(kind))}")
    if "edge_config" in block:
        cfg = load_edge_config(ROOT / block["edge_config"])
        light = next(t.options["light_spec"] for t in cfg.tags if t.name == "state")
        for lamps, state in block["lamps"].items():
            lit = set() if lamps == "off" else set(lamps.split("+"))
            got = PACKML[light.state(lit)]
            if got != state:
                misses.append(f"lamps {lamps}: the key says {state}, the edge agent sends {got}")
    if "plant" in block:
        plant = load_plant(ROOT / block["plant"])
        if "users" in block and sorted(plant.users) != sorted(block["users"]):
            misses.append(f"users: the key says {sorted(block['users'])}, deploy makes {sorted(plant.users)}")
        grants: dict[str, list[tuple[str, str]]] = {}
        user = None
        for line in acl_text(plant).splitlines():
            if line.startswith("user "):
                user = line.split()[1]
            elif line.startswith("topic "):
                _, access, pattern = line.split()
                grants.setdefault(user, []).append((access, pattern))
        for rule in block.get("acl", []):
            for action, need in (("publish", ("write", "readwrite")), ("subscribe", ("read", "readwrite"))):
                if action in rule:
                    got = any(a in need and topic_matches_sub(p, rule["topic"])
                              for a, p in grants.get(rule["user"], []))
                    if got != rule[action]:
                        misses.append(f"acl {rule['user']} {action} {rule['topic']}: the key says {rule[action]}, "
                                      f"the ACL says {got}")
    return misses


# ---------------------------------------------------------------------------------------- the tests
def test_both_languages_have_the_same_lessons_files_and_answer_keys():
    files = {lang: sorted(str(p.relative_to(COURSE / lang)) for p in (COURSE / lang).rglob("*.md")) for lang in LANGS}
    assert files["nl"] == files["en"]
    assert "README.md" in files["en"] and 5 <= len(lessons()) <= 6
    for ls in lessons():
        assert (COURSE / "en" / ls / "handout.md").exists(), f"{ls}: no handout.md"
        en, nl = (answer_blocks(COURSE / lang / ls / "lesson.md") for lang in ("en", "nl"))
        assert en, f"{ls}: no ```answers block"
        assert en == nl, f"{ls}: the answer keys of nl and en differ"


@pytest.mark.parametrize("lang", LANGS)
def test_every_answer_key_is_what_the_engine_computes(lang):
    misses = [f"{lang}/{ls} block {i + 1}: {m}" for ls, i, b in blocks_of(lang) for m in check_block(b)]
    assert misses == []


def test_every_exercise_is_backed_by_a_file_or_scenario_in_the_repo():
    for ls, i, b in blocks_of("en"):
        assert set(b) & {"source", "scenario", "topics", "edge_config", "plant"}, f"{ls} block {i + 1}: backed by what?"
        for key in ("source", "edge_config", "plant"):
            if key in b:
                assert (ROOT / b[key]).is_file(), f"{ls}: {b[key]} does not exist"
        if "scenario" in b:
            assert b["scenario"] in sc.available()


def corrupted(block: dict):
    """Every answer of the block, one at a time, made wrong by one display digit (or another name)."""
    tol = {"ratio": 0.0005, "minutes": 0.05, "points": 0.05, **block.get("tolerance", {})}
    for name, kpis in block.get("machines", {}).items():
        for kpi, value in kpis.items():
            if isinstance(value, str):
                bad = next(x for x in LOSSES if x != value)
            elif kpi in COUNTS:
                bad = value + 1
            else:
                bad = value + 2 * tolerance(tol, kpi)
            yield f"{name} {kpi}", {**block, "machines": {name: {kpi: bad}}}
    if "bottleneck" in block:
        yield "bottleneck", {**block, "bottleneck": "filler-01" if block["bottleneck"] != "filler-01" else "moulder-01"}
    if "line_output" in block:
        yield "line_output", {**block, "line_output": block["line_output"] - 1}
    for kind in set(block.get("topics", {})) - {"machine"}:
        yield f"topic {kind}", {"topics": {**block["topics"], kind: block["topics"][kind].replace("cnc-01", "cnc-02")}}
    for lamps, state in block.get("lamps", {}).items():
        yield f"lamps {lamps}", {**block, "lamps": {lamps: "Execute" if state != "Execute" else "Held"}}
    if "users" in block:
        yield "users", {**block, "users": block["users"][1:]}
    for i, rule in enumerate(block.get("acl", [])):
        action = "publish" if "publish" in rule else "subscribe"
        yield f"acl[{i}]", {"plant": block["plant"], "acl": [{**rule, action: not rule[action]}]}


def test_a_wrong_answer_is_caught():
    """The check itself can fail: each answer of every key, made wrong by one display digit (a wrong loss,
    bottleneck, topic, lamp, user or ACL rule), is reported."""
    n = 0
    for ls, i, block in blocks_of("en"):
        assert check_block(block) == []
        for what, wrong in corrupted(block):
            assert check_block(wrong), f"{ls} block {i + 1}: a wrong {what} is not caught"
            n += 1
    assert n >= 30


def command_lines() -> list[tuple[str, list[str]]]:
    """Every ``./run ...`` or ``fieldlab ...`` command in the course's Markdown (code blocks and `inline`)."""
    out = []
    for path in sorted(COURSE.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        snippets = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
        lines = [ln for s in snippets for ln in s.splitlines()] + re.findall(r"`([^`\n]+)`", text)
        for ln in lines:
            ln = ln.strip().lstrip("$ ").strip()
            m = re.match(r"(?:\./run|(?:\.venv/bin/)?fieldlab)\s+(.*)", ln)
            if m:
                args = shlex.split(m.group(1), comments=True)
                if args and args[0] != "test":  # ./run test is the run script's own, not a fieldlab command
                    out.append((f"{path.relative_to(ROOT)}: {ln}", args))
    return out


def test_every_command_in_the_course_parses_with_the_cli():
    cmds = command_lines()
    assert len(cmds) >= 10
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and "oee" in a.choices).choices
    for where, args in cmds:
        if len(args) == 1 and args[0] in sub:  # the name of a command in the text ("`fieldlab deploy` writes ...")
            continue
        try:
            a = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"does not parse: {where}")
        for value in vars(a).values():  # a file of the repo named on the command line exists
            if isinstance(value, str) and value.startswith("docs/"):
                assert (ROOT / value).is_file(), f"{where}: {value} does not exist"
        if getattr(a, "scenario", None) and not a.scenario.endswith(".yaml"):  # a shipped one, by name
            assert a.scenario in sc.available(), where


@pytest.mark.parametrize("lang", LANGS)
def test_every_handout_fits_one_a4_page(lang):
    for ls in lessons(lang):
        text = (COURSE / lang / ls / "handout.md").read_text(encoding="utf-8")
        lines = text.rstrip().splitlines()
        assert len(lines) <= 60 and len(text) <= 3800, f"{lang}/{ls}/handout.md: {len(lines)} lines, {len(text)} chars"
