"""KPIs per line: the machines' additive totals summed, then derived (never an average of percentages)."""
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import contract
from contract import (
    ContractError, Kind, LineRef, MachineRef, decode, decode_kpi, encode_counts, encode_state, encode_status,
    line_subscription, parse_line_topic, parse_topic,
)
from gateway import oee, storage
from gateway.engine import KpiEngine, group_snapshot
from gateway.service import Gateway, LineIndex, kpi_row, kpi_rows, line_kpi_row, line_kpi_rows
from tests.helpers import KeepLines, wait_until

# Hand-worked example, default conventions (stops of 2 min or more are not small stops).
# line-1, machine A: 0..450 s Execute, 450..600 s Held (150 s breakdown): planned 600 s, run 450 s;
#   140 parts x 3 s ideal = 420 s, 10 rejects: good 130 -> ideal x good 390 s.
#   A 0.75, P 0.9333, Q 0.9286, OEE 390 / 600 = 0.65
# line-1, machine B: 0..800 s Execute, 800..1000 s Suspended (200 s stopped): planned 1000 s, run 800 s;
#   350 parts x 2 s ideal = 700 s, 20 rejects: good 330 -> ideal x good 660 s.
#   A 0.8, P 0.875, Q 0.9429, OEE 660 / 1000 = 0.66
# line-1 from the sums: planned 1600 s, run 1250 s, ideal 1120 s, ideal x good 1050 s, good 460, reject 30:
#   A = 1250 / 1600 = 0.78125, P = 1120 / 1250 = 0.896, Q = 1050 / 1120 = 0.9375 (ideal-weighted: not
#   460 / 490), OEE = 1050 / 1600 = 0.65625 = A x P x Q (the mean of the machines' OEE would be 0.655)
# line-2, machine C: 0..300 s Execute, 300..500 s Held: planned 500, run 300, 100 parts x 3 s, 10 rejects:
#   A 0.6, P 1.0, Q 0.9, OEE 0.54
MACHINES = {
    ("line-1", "A"): ([0.0, 450.0], [4, 15], [0.0, 600.0], [0, 130], [0, 10], 3.0),
    ("line-1", "B"): ([0.0, 800.0], [4, 12], [0.0, 1000.0], [0, 330], [0, 20], 2.0),
    ("line-2", "C"): ([0.0, 300.0], [4, 15], [0.0, 500.0], [0, 90], [0, 10], 3.0),
}
SCHEMAS = Path(contract.__file__).parent / "schemas"
T0 = 1_700_092_800.0  # the times above are seconds after it: 2023-11-16T00:00:00Z, midnight of a Thursday as 1970-01-01
LINE_1 = {"planned_s": 1600.0, "run_s": 1250.0, "good": 460, "reject": 30, "ideal_s": 1120.0,
          "availability": 0.78125, "performance": 0.896, "quality": 0.9375, "oee": 0.65625}
LINE_2 = {"planned_s": 500.0, "run_s": 300.0, "good": 90, "reject": 10, "ideal_s": 300.0,
          "availability": 0.6, "performance": 1.0, "quality": 0.9, "oee": 0.54}


def refs(site="s"):
    return [MachineRef(site, "hall", line, m) for line, m in MACHINES]


def check(kpi: dict, expected: dict):
    for k, v in expected.items():
        assert kpi[k] == pytest.approx(v, rel=1e-12), k
    assert kpi["oee"] == pytest.approx(kpi["availability"] * kpi["performance"] * kpi["quality"], rel=1e-12)
    # OEE = good x ideal / planned, from the summed totals
    assert kpi["oee"] == pytest.approx((kpi["ideal_s"] - kpi["losses"]["production_rejects"]["s"]
                                        - kpi["losses"]["startup_rejects"]["s"]) / kpi["planned_s"], rel=1e-12)


def engine_with_data():
    e = KpiEngine()
    for i, (st, code, ct, good, rej, ideal) in enumerate(MACHINES.values()):
        e.add_machine()
        e.add_state(i, decode(Kind.STATE, encode_state([T0 + t for t in st], code)))
        e.add_counts(i, decode(Kind.COUNTS, encode_counts([T0 + t for t in ct], good, rej, "p", ideal)))
    e.fold()
    return e


def test_line_kpis_come_from_summed_totals():
    e = engine_with_data()
    snap = e.snapshot()
    index = LineIndex()
    group = index.update(refs())
    assert group.tolist() == [0, 0, 1]
    assert index.refs == [LineRef("s", "hall", "line-1"), LineRef("s", "hall", "line-2")]
    lsnap = group_snapshot(snap, group, len(index.refs), e.conv)
    rows = [line_kpi_row(lsnap, j, index.names[j]) for j in range(2)]
    check(rows[0], LINE_1)
    check(rows[1], LINE_2)
    assert (rows[0]["machines"], rows[0]["n_machines"]) == (["A", "B"], 2)
    assert (rows[1]["machines"], rows[1]["n_machines"]) == (["C"], 1)
    # the machines themselves, as worked by hand, and the line is not the mean of their percentages
    a, b = kpi_row(snap, 0), kpi_row(snap, 1)
    assert (a["oee"], b["oee"]) == (pytest.approx(0.65), pytest.approx(0.66))
    assert rows[0]["oee"] != pytest.approx((a["oee"] + b["oee"]) / 2)
    # the line's window starts with its earliest machine and ends with its latest
    assert rows[0]["window"] == {"name": "since_start", "start": T0, "end": T0 + 1000.0}
    assert rows[0]["ts"] == T0 + 1000.0
    # every window: the line's totals are the sums of its machines' totals for that window
    assert set(rows[0]["windows"]) == {"last_15min", "last_1h", "shift", "today"}
    for name, w in rows[0]["windows"].items():
        for k in ("planned_s", "run_s", "good", "reject"):
            assert w[k] == pytest.approx(a["windows"][name][k] + b["windows"][name][k]), (name, k)
    # B's last 15 min are 100..1000 s: 900 planned, 700 run; A's whole 600 s
    assert rows[0]["windows"]["last_15min"]["planned_s"] == 1500.0
    assert rows[0]["windows"]["last_15min"]["run_s"] == 1150.0
    # the six big losses add up to 100 - OEE points, for the line too
    pp = sum(v["pp"] for v in rows[0]["losses"].values())
    assert pp == pytest.approx(100 * (1 - rows[0]["oee"]))
    # the line message is a valid kpi message (decoder and JSON schema)
    body = contract.encode_kpi({**rows[0], "tick_ts": T0 + 1001.0})  # as the tick publishes it, with its clock
    decode_kpi(body)
    schema = json.loads((SCHEMAS / "kpi.json").read_text())
    jsonschema.validate(json.loads(body), schema)


def test_group_snapshot_is_vectorised_over_many_machines():
    """Random totals for 500 machines on 40 lines: equal to a plain per-line sum."""
    rng = np.random.default_rng(7)
    n, g = 500, 40
    tot = rng.uniform(0, 100, (n, oee.N_TOT))
    group = rng.integers(0, g, n)
    fake = {"since_start": {"totals": tot, "start": rng.uniform(0, 10, n), "end": rng.uniform(10, 20, n)}}
    out = group_snapshot(fake, group, g)["since_start"]
    for j in range(g):
        sel = group == j
        assert out["totals"][j] == pytest.approx(tot[sel].sum(axis=0))
        assert out["start"][j] == fake["since_start"]["start"][sel].min()
        assert out["end"][j] == fake["since_start"]["end"][sel].max()
        assert out["machines"][j] == sel.sum()


def test_no_machines_no_lines():
    e = KpiEngine()
    lsnap = group_snapshot(e.snapshot(), np.zeros(0, np.int64), 0)
    assert lsnap["since_start"]["oee"].shape == (0,)
    assert storage.kpi_lines([], e.snapshot(), np.zeros(0), [], lsnap) == []


def test_storage_lines_for_lines():
    e = engine_with_data()
    snap = e.snapshot()
    index = LineIndex()
    group = index.update(refs())
    lsnap = group_snapshot(snap, group, 2, e.conv)
    out = storage.kpi_lines(refs(), snap, e.now_ts[:3], index.refs, lsnap)
    machine = [ln for ln in out if ln.startswith("kpi,")]
    line = [ln for ln in out if ln.startswith("line_kpi,")]
    assert len(machine) == 3 * 5 and len(line) == 2 * 5  # per machine / line and window
    ss = next(ln for ln in line if "line=line-1," in ln and "window=since_start" in ln)
    assert ss.startswith("line_kpi,area=hall,line=line-1,site=s,window=since_start ")  # tags sorted
    assert "machine=" not in ss.split(" ")[0]
    fields = dict(kv.split("=") for kv in ss.split(" ")[1].split(","))
    assert fields["machines"] == "2i" and fields["good"] == "460i" and fields["reject"] == "30i"
    assert float(fields["oee"]) == pytest.approx(0.65625)
    assert float(fields["planned_s"]) == 1600.0
    assert ss.endswith(f" {int(T0 + 1000) * 1000}")  # the line's latest time (B's 1000 s), in ms


def test_a_machine_named_line_is_still_refused():
    with pytest.raises(ContractError, match="machine '_line'"):
        MachineRef("s", "a", "l", "_line")
    with pytest.raises(ContractError, match="reserved for line KPIs"):
        parse_topic("fieldlab/v1/s/a/l/_line/counts")
    with pytest.raises(ContractError, match="reserved for line KPIs"):
        parse_topic("fieldlab/v1/s/a/l/_line/kpi")
    line = LineRef("s", "a", "l")
    assert line.topic(Kind.KPI) == "fieldlab/v1/s/a/l/_line/kpi"
    assert parse_line_topic(line.topic()) == line
    assert line_subscription("s") == "fieldlab/v1/s/+/+/_line/kpi"
    with pytest.raises(ContractError, match="only kpi"):
        line.topic(Kind.COUNTS)
    with pytest.raises(ContractError):
        LineRef("s", "a", "_l")
    with pytest.raises(ContractError):
        parse_line_topic("fieldlab/v1/s/a/l/m1/kpi")


# ----------------------------------------------------------------------------- against a real broker


async def test_line_kpis_published_retained_and_stored(mosquitto, site, publisher, recorder):
    sink = KeepLines()
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[sink])
    live = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    await gw.start()
    try:
        for ref, (st, code, ct, good, rej, ideal) in zip(refs(site), MACHINES.values()):
            publisher(ref.topic(Kind.STATUS), encode_status(T0, "online"))
            publisher(ref.topic(Kind.STATE), encode_state([T0 + t for t in st], code))
            publisher(ref.topic(Kind.COUNTS), encode_counts([T0 + t for t in ct], good, rej, "p", ideal))
        # machine B goes offline: its line still counts it
        publisher(refs(site)[1].topic(Kind.STATUS), encode_status(T0 + 1000.0, "offline"))
        assert await wait_until(lambda: gw.stats["messages"] == 10)
        gw.tick()
    finally:
        await gw.stop()
    line1, line2 = LineRef(site, "hall", "line-1"), LineRef(site, "hall", "line-2")
    assert [r["line"] for r in gw.line_rows] == [line1, line2]
    assert gw.rows[1]["status"] == "offline"
    # live: the line messages come after the machines' KPIs of the same tick
    assert live.wait_for(lambda r: len(r.json("/_line/kpi")) >= 2)
    kpi_topics = [t for t, _, _ in live.messages if t.endswith("/kpi")]
    assert kpi_topics[:5] == [ref.topic(Kind.KPI) for ref in refs(site)] + [line1.topic(), line2.topic()]
    # a subscriber that comes later still gets each line's last KPI (retained)
    rec = recorder(mosquitto.url, line_subscription(site))
    assert rec.wait_for(lambda r: len(r.messages) == 2)
    assert all(retained for _, _, retained in rec.messages)
    got = {parse_line_topic(t): json.loads(p) for t, p, _ in rec.messages}
    check(got[line1], LINE_1)
    check(got[line2], LINE_2)
    assert (got[line1]["machines"], got[line1]["n_machines"]) == (["A", "B"], 2)
    # stored: line_kpi points for both lines and every window
    stored = [ln for ln in sink.lines if ln.startswith("line_kpi,")]  # stored at our tick and at stop
    assert len({ln.split(" ")[0] for ln in stored}) == 2 * 5
    assert any(ln.startswith(f"line_kpi,area=hall,line=line-1,site={site},window=since_start ")
               and "machines=2i" in ln for ln in stored)


def test_line_windows_end_at_the_lines_latest_time_not_each_machines():
    """A machine that went quiet two days ago adds nothing to its line's last hour (its own last hour is old)."""
    e = KpiEngine()
    a, b = e.add_machine(), e.add_machine()
    t = 1_800_000_000.0
    e.add_state(a, decode(Kind.STATE, encode_state([t], [4])))
    e.add_counts(a, decode(Kind.COUNTS, encode_counts([t, t + 3600], [0, 500], [0, 0], "p", 7.0)))
    later = t + 2 * 86400
    e.add_state(b, decode(Kind.STATE, encode_state([later], [4])))
    e.add_counts(b, decode(Kind.COUNTS, encode_counts([later, later + 3600], [0, 10], [0, 0], "p", 7.0)))
    e.fold()
    machines = e.snapshot()
    assert machines["last_1h"]["good"].tolist() == [500, 10]  # each machine's own last hour
    line = e.line_snapshot(np.array([0, 0]), 1)
    assert line["last_1h"]["good"].tolist() == [10]
    assert line["last_1h"]["end"].tolist() == [later + 3600]
    assert line["since_start"]["good"].tolist() == [510]


def test_kpi_rows_of_a_tick_equal_the_rows_made_one_by_one():
    """The tick converts each KPI array once (kpi_rows, line_kpi_rows); the messages are the ones that
    kpi_row / line_kpi_row build value by value: same keys in the same order, same values, None for NaN."""
    e = engine_with_data()
    e.add_machine()  # a machine without data yet: undefined ratios, no state
    snap = e.snapshot()
    index = LineIndex()
    group = index.update(refs() + [MachineRef("s", "hall", "line-3", "D")])
    lsnap = group_snapshot(snap, group, len(index.refs), e.conv)
    one_by_one = [kpi_row(snap, i) for i in range(e.n)]
    assert json.dumps(kpi_rows(snap)) == json.dumps(one_by_one)
    assert one_by_one[3]["oee"] is None and one_by_one[3]["state"] is None
    assert json.dumps(line_kpi_rows(lsnap, index.names)) == json.dumps(
        [line_kpi_row(lsnap, j, index.names[j]) for j in range(len(index.refs))])
