"""The site configuration: clear errors naming file, key and fix; shifts, breaks and the live windows."""
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import CountsBatch, StateBatch
from gateway import config, oee
from gateway.engine import KpiEngine

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "site.yaml"


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def test_the_example_file_loads():
    cfg = config.load(EXAMPLE)
    assert cfg.timezone == "Europe/Amsterdam"
    assert [s.name for s in cfg.shifts] == ["early", "late"]
    assert cfg.conventions.packml == {2: oee.SETUP} and cfg.conventions.reasons == {**oee.DEFAULT_REASONS, 301: oee.SETUP}


@pytest.mark.parametrize("text, message", [
    ("shift: []", r"x.yaml: shift: unknown key; the keys are timezone, shifts, breaks, conventions"),
    ("timezone: Mars/Olympus", r"x.yaml: timezone = 'Mars/Olympus': write a zone name like Europe/Amsterdam"),
    ("shifts: [{name: early, start: '6 am', end: '14:00'}]",
     r"x.yaml: shifts\[0\].start = '6 am': write a time of day as \"HH:MM\""),
    ("shifts: [{start: '06:00', end: '14:00'}]", r"x.yaml: shifts\[0\].name: give the shift a name"),
    ("breaks: [{start: '10:00', end: '10:00'}]", r"x.yaml: breaks\[0\]: start and end are equal"),
    ("conventions: {micro_stop: soon}", r"x.yaml: conventions.micro_stop = 'soon': write a duration like 90s"),
    ("conventions: {setup_as: never}", r"x.yaml: conventions.setup_as = 'never': use availability or excluded"),
    ("conventions: {packml: {Running: run}}", r"x.yaml: conventions.packml: 'Running' is not a state; use one of"),
    ("conventions: {packml: {Idle: coffee}}", r"x.yaml: conventions.packml.Idle: 'coffee' is not a category"),
    ("shifts: [\n  {name: a, start: '06:00', end: '14:00'\n", r"x.yaml:\d+: not valid YAML"),
])
def test_mistakes_name_file_key_and_fix(tmp_path, text, message):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(f)


def test_unquoted_clock_times_are_read_as_times():
    cfg = config.parse({"shifts": [{"name": "early", "start": 360, "end": 840}]})  # YAML 1.1 reads 06:00 as 360
    assert (cfg.shifts[0].start_min, cfg.shifts[0].end_min) == (360, 840)


def test_calendar_has_breaks_and_time_outside_shifts():
    cfg = config.parse({"timezone": "UTC", "shifts": [{"name": "day", "start": "06:00", "end": "14:00"}],
                        "breaks": [{"start": "10:00", "end": "10:30"}]})
    cal = cfg.calendar(utc("2026-03-02T00:00:00"), utc("2026-03-03T00:00:00"))
    on_day = [(s, e) for s, e in zip(cal[0::2], cal[1::2]) if s < utc("2026-03-02T23:59:00")
              and e > utc("2026-03-02T00:00:00")]
    assert (utc("2026-03-02T10:00:00"), utc("2026-03-02T10:30:00")) in on_day
    assert any(s <= utc("2026-03-02T03:00:00") and e == utc("2026-03-02T06:00:00") for s, e in on_day)
    assert any(s == utc("2026-03-02T14:00:00") for s, e in on_day)


def test_shift_and_day_windows_in_the_local_zone():
    cfg = config.parse({"timezone": "Europe/Amsterdam",
                        "shifts": [{"name": "early", "start": "06:00", "end": "14:00"},
                                   {"name": "late", "start": "14:00", "end": "22:00"}]})
    now = np.array([utc("2026-03-02T12:00:00")])  # 13:00 in Amsterdam (CET, UTC+1)
    assert cfg.shift_start(now)[0] == utc("2026-03-02T05:00:00")
    assert cfg.day_start(now)[0] == utc("2026-03-01T23:00:00")


def test_live_engine_books_breaks_as_planned_downtime_and_reports_shift_and_today():
    cfg = config.parse({"timezone": "UTC", "shifts": [{"name": "early", "start": "06:00", "end": "14:00"},
                                                      {"name": "late", "start": "14:00", "end": "22:00"}],
                        "breaks": [{"start": "10:00", "end": "10:30"}]})
    e = KpiEngine(cfg)
    m = e.add_machine()
    t0 = utc("2026-03-02T13:00:00")
    e.add_state(m, StateBatch(np.array([t0 - 7 * 3600]), np.array([4]), np.array([0])))  # 06:00, running
    e.add_counts(m, CountsBatch(np.array([t0 - 7 * 3600, t0 + 2 * 3600]), np.array([0, 100]), np.array([0, 0]),
                                "p", 60.0))
    e.fold()
    snap = e.snapshot()  # now = 15:00
    since = snap["since_start"]
    assert since["planned_s"][0] == 9 * 3600 - 1800  # 06:00-15:00 minus the break
    assert since["not_scheduled_s"][0] == 1800
    shift = snap["shift"]  # the late shift began at 14:00
    assert (shift["start"][0], shift["planned_s"][0]) == (utc("2026-03-02T14:00:00"), 3600)
    assert snap["today"]["start"][0] == utc("2026-03-02T06:00:00")  # no data before 06:00: not invented


def test_oee_command_takes_the_config(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"type": "state", "ts": "2026-03-02T06:00:00Z", "machine": "m", "state": "Idle"},
        {"type": "state", "ts": "2026-03-02T07:00:00Z", "machine": "m", "state": "Execute"},
        {"type": "count", "ts": "2026-03-02T06:00:00Z", "machine": "m", "good": 0, "reject": 0, "ideal_cycle_s": 1},
        {"type": "count", "ts": "2026-03-02T14:00:00Z", "machine": "m", "good": 20000, "reject": 0},
    ]) + "\n")
    site = tmp_path / "site.yaml"
    site.write_text("timezone: UTC\nbreaks: [{start: '10:00', end: '10:30'}]\nconventions: {packml: {Idle: setup}}\n")
    r = subprocess.run([sys.executable, "-m", "fieldlab", "oee", str(log), "--config", str(site), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)[0]
    assert (k["planned_s"], k["setup_s"], k["run_s"]) == (7.5 * 3600, 3600, 6.5 * 3600)
    r = subprocess.run([sys.executable, "-m", "fieldlab", "oee", str(log), "--config", str(site),
                        "--setup-as", "excluded", "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)[0]["planned_s"] == 6.5 * 3600  # the option overrides the file


def test_one_machine_years_from_the_others_does_not_cost_every_computation(monkeypatch):
    """Issue 13, defect 9: the shift starts were laid out for every day from the earliest machine's time to the
    latest, in every computation: one machine in 2099 beside the rest (a plausible time, but wrong) made every
    tick take 0.5 s. Now only the days around the times asked for are computed, and the answers are the same."""
    from gateway.config import Period, SiteConfig

    cfg = SiteConfig(timezone="Europe/Amsterdam",
                     shifts=[Period("early", 6 * 60, 14 * 60), Period("late", 14 * 60, 22 * 60),
                             Period("night", 22 * 60, 6 * 60)])
    near, far = 1_800_000_000.0, 4_000_000_000.0  # 2027 and 2096
    calls = []
    real = cfg._at
    monkeypatch.setattr(cfg, "_at", lambda day, minutes: calls.append(day) or real(day, minutes))
    both = cfg.shift_start(np.array([near, far, np.nan]))
    assert len(calls) < 100  # days around each time asked for, not 25,000 days in between
    assert both[0] == cfg.shift_start(np.array([near]))[0] and both[1] == cfg.shift_start(np.array([far]))[0]
    assert np.isnan(both[2])
    assert both[0] <= near < both[0] + 8 * 3600 and both[1] <= far < both[1] + 8 * 3600
