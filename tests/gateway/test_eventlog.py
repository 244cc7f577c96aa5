"""`fieldlab oee` on event logs: the documented examples give the published numbers; bad rows
name the file, the line and the field."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import eventlog, oee

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def fieldlab_oee(*args):
    return subprocess.run([sys.executable, "-m", "fieldlab", "oee", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_the_oee_com_example_file_gives_the_published_numbers():
    r = fieldlab_oee(EXAMPLES / "oee-com-shift.jsonl", "--json")
    assert r.returncode == 0, r.stderr
    press = next(row for row in json.loads(r.stdout) if row["machine"] == "press-1")
    assert (round(100 * press["availability"], 2), round(100 * press["performance"], 2),
            round(100 * press["quality"], 2), round(100 * press["oee"], 2)) == (88.81, 86.11, 97.80, 74.79)
    assert press["stop_reasons"] == [{"category": "breakdown", "reason": 101, "seconds": 2820.0}]
    table = fieldlab_oee(EXAMPLES / "oee-com-shift.jsonl").stdout
    assert "press-1" in table and "74.8%" in table and "88.8%" in table


def test_the_csv_example_worked_by_hand():
    """docs/oee.md works this file out step by step; these are its numbers."""
    rows = json.loads(fieldlab_oee(EXAMPLES / "two-machines.csv", "--json").stdout)
    mill = next(r for r in rows if r["machine"] == "mill-1")
    line = next(r for r in rows if r["machine"] is None)
    assert (mill["planned_s"], mill["run_s"], mill["small_stop_s"], mill["setup_s"]) == (27000, 23910, 90, 1800)
    assert mill["availability"] == pytest.approx(400 / 450)
    assert mill["performance"] == pytest.approx(587 * 40 / 24000)
    assert mill["quality"] == pytest.approx(580 / 587)
    assert (mill["startup_reject"], mill["failures"], mill["mttr_s"]) == (3, 1, 1200)
    # the line: summed times and counts, not averaged percentages
    filler = next(r for r in rows if r["machine"] == "filler-1")
    assert line["oee"] == pytest.approx((mill["ideal_good_s"] + filler["ideal_good_s"]) / (2 * 27000))


def test_every_hour_gives_a_window_each():
    rows = json.loads(fieldlab_oee(EXAMPLES / "two-machines.csv", "--every", "1h", "--json").stdout)
    assert len({(r["window"]["start"], r["window"]["end"]) for r in rows}) == 8
    mills = [r for r in rows if r["machine"] == "mill-1"]
    assert sum(r["good"] for r in mills) == 580  # the hours add up to the shift


def test_conventions_from_the_command_line():
    rows = json.loads(fieldlab_oee(EXAMPLES / "two-machines.csv", "--micro-stop", "1m", "--setup-as", "excluded",
                                   "--json").stdout)
    mill = next(r for r in rows if r["machine"] == "mill-1")
    assert mill["small_stop_s"] == 0 and mill["failures"] == 1 and mill["planned_s"] == 27000 - 1800


@pytest.mark.parametrize("content, message", [
    ('{"type": "state", "ts": 1, "machine": "m", "state": "Running"}',
     r"x.jsonl:1: field 'state' = 'Running' is not a packml state; write one of: 0 Stopped"),
    ('{"type": "count", "ts": 1, "machine": "m", "good": -1, "reject": 0}',
     r"x.jsonl:1: field 'good' = -1; write a whole number >= 0"),
    ('{"type": "count", "ts": "yesterday", "machine": "m", "good": 1, "reject": 0}',
     r"x.jsonl:1: field 'ts': 'yesterday' is not a time"),
    ('{"type": "count", "ts": 1, "good": 1, "reject": 0}', r"x.jsonl:1: field 'machine' is missing"),
    ('{"type": "shift"}', r"x.jsonl:1: field 'type' = 'shift'; write one of state, count, planned, end"),
    ('{"type": "planned", "start": 10, "end": 5}', r"x.jsonl:1: field 'end' is not after 'start'"),
    ('{"type": "count", "ts": 1, "machine": "m", "good": 1, "reject": 0, "ideal_cycle_s": 0}',
     r"x.jsonl:1: field 'ideal_cycle_s' = 0; write the seconds per part"),
    ("not json", r"x.jsonl:1: not a JSON object"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, message):
    f = tmp_path / "x.jsonl"
    f.write_text(content + "\n")
    with pytest.raises(eventlog.EventLogError, match=message):
        eventlog.read(f)


def test_bad_csv_row_names_its_line(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("type,ts,machine,good,reject\ncount,1,m,1,0\ncount,2,m,two,0\n")
    with pytest.raises(eventlog.EventLogError, match=r"x.csv:3: field 'good' = 'two'"):
        eventlog.read(f)
    f.write_text("type,ts,machine,goods\n")
    with pytest.raises(eventlog.EventLogError, match=r"x.csv:1: the header .* \(unknown: goods\)"):
        eventlog.read(f)


def test_cli_reports_a_bad_file_in_one_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"type": "count", "ts": 1, "machine": "m", "good": 1.5, "reject": 0}\n')
    r = fieldlab_oee(f)
    assert r.returncode == 2
    assert r.stderr.strip() == f"fieldlab oee: error: {f}:1: field 'good' = 1.5; write a whole number >= 0"


def test_conventions_reject_nonsense():
    with pytest.raises(ValueError, match="micro_stops_as"):
        oee.Conventions(micro_stops_as="quality")
