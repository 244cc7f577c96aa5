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


# ---------------------------------------------------------------- spreadsheet users (issue 14, item 6)
KPI_KEYS = ("planned_s", "run_s", "availability", "performance", "quality", "oee", "good", "reject")


def test_the_dutch_excel_example_gives_the_same_numbers_as_the_plain_csv():
    """docs/examples/two-machines-excel-nl.csv is two-machines.csv as Excel with Dutch settings saves it: a BOM,
    ; between fields, decimal commas, CRLF, day-month-year local times (Amsterdam, UTC+1 in March)."""
    plain = json.loads(fieldlab_oee(EXAMPLES / "two-machines.csv", "--json").stdout)
    r = fieldlab_oee(EXAMPLES / "two-machines-excel-nl.csv", "--tz", "Europe/Amsterdam", "--json")
    assert r.returncode == 0, r.stderr
    dutch = json.loads(r.stdout)
    assert [(d["machine"], d["window"]) for d in dutch] == [(p["machine"], p["window"]) for p in plain]
    for d, p in zip(dutch, plain):
        assert {k: d[k] for k in KPI_KEYS} == pytest.approx({k: p[k] for k in KPI_KEYS})
    # the table says how it read the times, and nothing to worry about
    text = fieldlab_oee(EXAMPLES / "two-machines-excel-nl.csv", "--tz", "Europe/Amsterdam").stdout
    assert "17 times without an offset were read as Europe/Amsterdam local time" in text and "warning" not in text


def test_times_without_offset_are_utc_unless_told_and_the_report_says_so(tmp_path):
    r = fieldlab_oee(EXAMPLES / "two-machines-excel-nl.csv")
    assert r.returncode == 0, r.stderr
    assert "17 times without an offset were read as UTC" in r.stdout and "--tz Europe/Amsterdam" in r.stdout
    assert "tijden zonder tijdzone" in r.stdout
    # the site's time zone (--config) applies when --tz is not given; summer time is UTC+2
    f = tmp_path / "summer.jsonl"
    f.write_text('{"type": "state", "ts": "2026-07-01T08:00:00", "machine": "m", "state": "Execute"}\n'
                 '{"type": "count", "ts": "2026-07-01 08:00", "machine": "m", "good": 0, "reject": 0, "ideal_cycle_s": 1}\n'
                 '{"type": "count", "ts": "1-7-2026 09:00", "machine": "m", "good": 3600, "reject": 0}\n')
    site = tmp_path / "site.yaml"
    site.write_text("timezone: Europe/Amsterdam\n")
    for args in (("--tz", "Europe/Amsterdam"), ("--config", site)):
        row = json.loads(fieldlab_oee(f, *args, "--json").stdout)[0]
        assert row["window"] == {"start": 1782885600.0, "end": 1782889200.0}, args  # 06:00Z -> 07:00Z
        assert row["performance"] == pytest.approx(1.0)
    bad = fieldlab_oee(f, "--tz", "Europe/Amsterdm")
    assert bad.returncode == 2 and "not a time zone; write an IANA name like Europe/Amsterdam" in bad.stderr


def test_semicolons_and_decimal_commas_are_detected(tmp_path):
    f = tmp_path / "export.csv"
    f.write_text("type;ts;machine;state;model;good;reject;ideal_cycle_s\n"
                 "state;0;m;running;simple;;;\ncount;0;m;;;0;0;1,5\ncount;3600;m;;;2000;400;\n")
    log = eventlog.read(f)
    assert log.dialect == "csv;" and log.counts[0][4] == 1.5
    row = eventlog.report(log, 0.0, 3600.0, None, oee.Conventions())[0]
    assert row["performance"] == pytest.approx(2400 * 1.5 / 3600) and row["quality"] == pytest.approx(2000 / 2400)
    f.write_text("type;ts;machine;good;reject\ncount;0;m;0;0\ncount;1;m;twee;0\n")
    with pytest.raises(eventlog.EventLogError, match=r"export.csv:3: field 'good' = 'twee'"):
        eventlog.read(f)


def test_a_window_without_a_counter_reading_at_its_end_is_explained(tmp_path):
    """The trainer's case: --every 2h with only an end-of-shift counter showed 255 % performance without a word.
    Now every window whose end has no counter reading near it says what it means, in English and Dutch."""
    f = tmp_path / "shift.jsonl"
    rows = [{"type": "state", "ts": 0, "machine": "m", "state": "Execute"},
            {"type": "count", "ts": 0, "machine": "m", "good": 0, "reject": 0, "ideal_cycle_s": 10},
            {"type": "count", "ts": 8 * 3600, "machine": "m", "good": 2000, "reject": 0}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = json.loads(fieldlab_oee(f, "--every", "2h", "--json").stdout)
    assert [len(r["warnings"]) for r in out] == [1, 1, 1, 1]
    assert out[3]["performance"] > 2.5  # all 2000 parts booked in the last window
    assert "too high" in out[3]["warnings"][0]["en"] and "te hoog" in out[3]["warnings"][0]["nl"]
    assert "too low" in out[0]["warnings"][0]["en"] and "at 1970-01-01 08:00 UTC, in the window of 1970-01-01 06:00" in out[0]["warnings"][0]["en"]
    text = fieldlab_oee(f, "--every", "2h").stdout
    assert "warning: m, window 1970-01-01 00:00 UTC -> 1970-01-01 02:00 UTC: no counter reading" in text
    assert "waarschuwing: m, venster" in text and "above 100 % means exactly this" in text
    # counter read at every window end (or close to it): nothing to warn about; the whole shift: nothing either
    rows[2:2] = [{"type": "count", "ts": h * 3600 - 60, "machine": "m", "good": 250 * h, "reject": 0}
                 for h in (2, 4, 6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert all(r["warnings"] == [] for r in json.loads(fieldlab_oee(f, "--every", "2h", "--json").stdout))
    # the counter stops before the report's end: the parts after its last reading are not counted
    out = json.loads(fieldlab_oee(f, "--to", str(10 * 3600), "--every", "2h", "--json").stdout)
    assert "not counted" in out[4]["warnings"][0]["en"] and all(r["warnings"] == [] for r in out[:4])
