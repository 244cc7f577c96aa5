"""Stops classified afterwards and rejects counted by hand (contract kind operator, gateway/classify.py) in the
KpiEngine: the loss moves from "unclassified" to its reason, nothing else changes; refusals say why. Fast
(pure NumPy, well under a second), and through the gateway on a real Mosquitto with restarts (about 1.2 s)."""
import time

import numpy as np
import pytest

from contract import (
    DEADLETTER_TOPIC, CountsBatch, Kind, MachineRef, OperatorEntry, StateBatch, encode_counts, encode_operator,
    encode_state,
)
from gateway import oee
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from gateway.service import Gateway
from tests.conftest import Recorder
from tests.helpers import wait_until

EXECUTE, HELD, IDLE = 4, 15, 2
T = 1_800_000_000.0  # a time inside the default all-day shift
#: a reason code the default conventions map to no category: the stop keeps its category
PLAIN = next(r for r in (102, 101) if r not in oee.DEFAULT.reasons)
TOTALS = ("planned_s", "run_s", "operating_s", "good", "reject", "total", "availability", "performance",
          "quality", "oee")


def states(ts, codes, reasons=None):
    return StateBatch(np.array(ts, float), np.array(codes, np.int64),
                      np.array(reasons or [0] * len(ts), np.int64))


def counts(ts, good, reject=None, ideal=1.0):
    return CountsBatch(np.array(ts, float), np.array(good, np.int64), np.array(reject or [0] * len(ts), np.int64),
                       "p", ideal)


def engine(*machines, conv=None, tail=600.0):
    """An engine with one machine per list of state changes (run, a 10 min breakdown, run ...) and parts; the
    machine's latest data ``tail`` seconds after its last state change."""
    config = SiteConfig() if conv is None else SiteConfig(conventions=conv)
    e = KpiEngine(config)
    for ts, codes in machines:
        m = e.add_machine()
        e.add_state(m, states(ts, codes))
        e.add_counts(m, counts([T, ts[-1] + tail], [0, 1000]))
    e.fold()
    return e


def reasons(e, m=0):
    return {(r["category"], r["reason"]): r["seconds"] for r in e.snapshot()["shift"]["stop_reasons"][m]}


def kpis(e, window="shift"):
    k = e.snapshot()[window]
    return {name: k[name].copy() for name in TOTALS + oee.CATEGORIES[1:] if name in k} | {"tot": k["totals"]}


def entry(ts, reason=None, reject=None):
    return OperatorEntry(float(ts), "anna", reason=reason, reject=reject)


def test_a_classified_breakdown_moves_from_unclassified_to_its_reason_and_nothing_else_changes():
    e = engine(([T, T + 600, T + 1200, T + 1500], [EXECUTE, HELD, EXECUTE, HELD]),
               ([T, T + 300, T + 1500], [EXECUTE, HELD, EXECUTE]))
    before = reasons(e)
    assert before[("breakdown", 0)] == 600 + e.timeline.now[0] - (T + 1500)
    other, totals = reasons(e, 1), kpis(e)
    e.add_operator(0, entry(T + 600, reason=101))  # the first breakdown, at its start
    e.fold()
    assert not e.refused
    after = reasons(e)
    assert after[("breakdown", 101)] == 600.0
    assert after[("breakdown", 0)] == before[("breakdown", 0)] - 600.0  # the open one is still unclassified
    assert reasons(e, 1) == other  # the other machine is untouched
    for name, value in kpis(e).items():
        np.testing.assert_array_equal(value, totals[name], err_msg=name)


def test_any_time_inside_the_stop_names_it_and_an_open_stop_can_be_classified():
    e = engine(([T, T + 600], [EXECUTE, HELD]), tail=400.0)  # the breakdown has lasted 400 s
    totals = kpis(e)
    e.add_operator(0, entry(T + 700, reason=PLAIN))
    e.fold()
    assert not e.refused and reasons(e) == {("breakdown", PLAIN): 400.0}
    for name, value in kpis(e).items():
        np.testing.assert_array_equal(value, totals[name], err_msg=name)
    # it goes on and ends: the whole stop keeps the reason, the failure counts once
    e.add_state(0, states([T + 1300], [EXECUTE]))
    e.fold()
    assert reasons(e) == {("breakdown", PLAIN): 700.0}
    assert e.snapshot()["shift"]["failures"][0] == 1


def test_every_piece_of_the_stop_gets_the_reason():
    """Holding -> Held -> Unholding is one breakdown: all its pieces get the reason."""
    e = engine(([T, T + 600, T + 650, T + 1100, T + 1200], [EXECUTE, 14, HELD, 16, EXECUTE]))
    e.add_operator(0, entry(T + 600, reason=102))
    e.fold()
    assert reasons(e) == {("breakdown", 102): 600.0}


def test_a_mapped_reason_moves_the_seconds_to_its_category():
    """A site mapping reason 301 (changeover) to setup: a classified breakdown becomes setup time; planned time,
    run time and counts stay; it is no failure any more and its end starts the start-up reject window."""
    e = engine(([T, T + 600, T + 1200, T + 1800], [EXECUTE, HELD, EXECUTE, EXECUTE]))
    before = e.snapshot()["shift"]
    assert before["totals"][0][oee.FAILURES] == 1
    e.add_operator(0, entry(T + 900, reason=301))
    e.fold()
    assert not e.refused and reasons(e) == {("setup", 301): 600.0}
    after = e.snapshot()["shift"]
    tot = after["totals"][0]
    assert tot[oee.SETUP] == 600.0 and tot[oee.BREAKDOWN] == 0.0 and tot[oee.FAILURES] == 0
    for name in ("planned_s", "run_s", "good", "reject"):
        assert after[name][0] == before[name][0], name
    assert e.timeline.u.fill[0] == 1  # a setup end, at T + 1200


def test_refusals_say_why_and_change_nothing():
    e = engine(([T, T + 600, T + 630, T + 1200, T + 1500], [EXECUTE, HELD, EXECUTE, IDLE, EXECUTE]))
    snap = reasons(e)
    cases = {
        T + 100: "ran",  # while it ran
        T + 610: "small stop",  # a 30 s breakdown: a small stop
        T - 100: "before",  # before its first state
        T + 99_999: "after the machine's latest data",  # not there yet
    }
    for ts, why in cases.items():
        e.add_operator(0, entry(ts, reason=101))
    e.fold()
    assert [w for _, _, w in e.refused] and all(why in w for (_, _, w), why in zip(e.refused, cases.values())), \
        e.refused
    assert reasons(e) == snap


def test_a_stop_older_than_the_history_kept_is_refused():
    e = engine(([T, T + 600, T + 1200], [EXECUTE, HELD, EXECUTE]))
    e.timeline.kept_from[0] = T + 1000  # as prune leaves it
    e.add_operator(0, entry(T + 600, reason=101))
    e.fold()
    assert "before the history the gateway keeps" in e.refused[0][2]


def test_the_list_shows_unclassified_stops_longer_than_the_micro_stop_threshold():
    e = engine(([T, T + 600, T + 630, T + 1200, T + 1500, T + 2000, T + 2400],
                [EXECUTE, HELD, EXECUTE, IDLE, EXECUTE, HELD, EXECUTE]))
    listed = e.stops(0, T, T + 3000)
    assert [(s["start"], s["seconds"], s["category"]) for s in listed] == [
        (T + 1200, 300.0, "stopped"), (T + 2000, 400.0, "breakdown")]
    assert [s["start"] for s in e.stops(0, T, T + 3000, min_s=350)] == [T + 2000]
    e.add_operator(0, entry(T + 1200, reason=201))
    e.fold()
    assert [s["start"] for s in e.stops(0, T, T + 3000)] == [T + 2000]


def test_rejects_counted_by_hand_move_parts_from_good_to_reject():
    e = engine(([T, T + 1200], [EXECUTE, EXECUTE]))
    before = e.snapshot()["shift"]
    e.add_operator(0, entry(T + 600, reject=7))
    e.fold()
    after = e.snapshot()["shift"]
    assert (after["good"][0], after["reject"][0]) == (before["good"][0] - 7, before["reject"][0] + 7)
    for name in ("planned_s", "run_s", "total", "performance", "availability"):
        assert after[name][0] == before[name][0], name
    assert after["quality"][0] < before["quality"][0]
    # later counter samples go on from there
    e.add_counts(0, counts([T + 1900], [1100]))
    e.fold()
    assert e.snapshot()["shift"]["good"][0] == before["good"][0] - 7 + 100
    e.add_operator(0, entry(T + 600, reject=10_000))  # more than were made
    e.fold()
    assert "good parts were counted" in e.refused[-1][2]


def test_a_reject_entry_delivered_twice_counts_once():
    """QoS 1 may deliver a message twice: an entry that says when it was made (``at``) counts once; two equal
    entries without ``at`` may be two real ones and both count."""
    e = engine(([T, T + 1200], [EXECUTE, EXECUTE]))
    good = e.snapshot()["shift"]["good"][0]
    twice = OperatorEntry(T + 600, "anna", reject=2, at=T + 700)
    e.add_operator(0, twice)
    e.fold()
    e.add_operator(0, OperatorEntry(T + 600, "anna", reject=2, at=T + 700))
    e.add_operator(0, OperatorEntry(T + 600, "anna", reject=2, at=T + 701))  # another entry
    e.fold()
    assert e.snapshot()["shift"]["good"][0] == good - 4
    for _ in range(2):
        e.add_operator(0, entry(T + 600, reject=1))
    e.fold()
    assert e.snapshot()["shift"]["good"][0] == good - 6 and not e.refused


def test_a_forgotten_machine_drops_its_waiting_entries():
    e = engine(([T, T + 600, T + 1200], [EXECUTE, HELD, EXECUTE]))
    e.add_operator(0, entry(T + 600, reason=101))
    e.forget(0)
    e.fold()
    assert not e.refused and e.timeline.p.fill[0] == 0


@pytest.mark.parametrize("reason", [0, 101])
def test_reason_0_takes_a_reason_back(reason):
    e = engine(([T, T + 600, T + 1200], [EXECUTE, HELD, EXECUTE]))
    e.add_operator(0, entry(T + 600, reason=101))
    e.add_operator(0, entry(T + 600, reason=reason))
    e.fold()
    assert reasons(e) == {("breakdown", reason): 600.0}


# ----------------------------------------------------------------------------- through the gateway (real Mosquitto)

def _shift_reasons(gw, ref):
    row = gw.row_of(ref)
    return {(r["category"], r["reason"]): r["seconds"] for r in row["windows"]["shift"]["stop_reasons"]} if row else {}


def _crash(gw):
    """Stop without the clean stop's checkpoint: what a kill -9 leaves (the journal holds what came since)."""
    for task in (gw._task, gw._status_task):
        task.cancel()
    gw._client.disconnect()
    gw._client.loop_stop()
    gw._release_state()


async def _a_ten_minute_breakdown(pub, gw, ref, t0) -> None:
    """Run from t0, Held (reason 0) from t0 + 60 for 600 s, 500 parts by t0 + 900; until the gateway has it."""
    pub.publish(ref.topic(Kind.STATE), encode_state([t0, t0 + 60, t0 + 660], [EXECUTE, HELD, EXECUTE]))
    pub.publish(ref.topic(Kind.COUNTS), encode_counts([t0, t0 + 900], [0, 500], [0, 0], "p", 1.0))
    assert await wait_until(lambda: _shift_reasons(gw, ref).get(("breakdown", 0)) == 600.0
                            and gw.row_of(ref)["good"] == 500)


@pytest.mark.parametrize("how", ["checkpoint", "journal"])
async def test_a_classification_goes_through_mqtt_and_survives_a_restart(mosquitto, site, tmp_path, how):
    """A breakdown of reason 0, then an operator entry on the machine's operator topic: the shift's Pareto moves
    the seconds to its reason, the totals stay; after a restart (from the checkpoint of a clean stop, or from the
    journal after a crash) it still does. Bad entries are dead letters. About 0.6 s."""
    ref = MachineRef(site, "a", "l", "press-01")
    now = time.time()
    t0 = now - (now % 3600) + 60  # inside the current shift (the default shifts are 8 h from 06:00 UTC)
    pub = Recorder(mosquitto.url, [DEADLETTER_TOPIC])
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path,
                 checkpoint_s=3600)
    await gw.start()
    try:
        await _a_ten_minute_breakdown(pub, gw, ref, t0)
        before = {k: gw.row_of(ref)[k] for k in ("planned_s", "run_s", "good", "reject", "oee", "breakdown_s")}
        assert [s["start"] for s in gw.stops(ref)] == [t0 + 60]
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 60, "anna", reason=PLAIN, at=now))
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 300, "anna", reason=999))  # not a site reason
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 700, "anna", reason=101))  # it ran then
        assert await wait_until(lambda: _shift_reasons(gw, ref) == {("breakdown", PLAIN): 600.0})
        assert {k: gw.row_of(ref)[k] for k in before} == before
        assert gw.stops(ref) == []
        assert await wait_until(lambda: len(pub.got(DEADLETTER_TOPIC)) == 2)
        errors = sorted(d["error"] for d in pub.got(DEADLETTER_TOPIC))
        assert "not a reason code of this site" in errors[0] and "the machine ran at" in errors[1], errors
        if how == "journal":
            _crash(gw)
        else:
            await gw.stop()
        gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", state_dir=tmp_path)
        await gw.start()
        assert await wait_until(lambda: _shift_reasons(gw, ref) == {("breakdown", PLAIN): 600.0}), \
            _shift_reasons(gw, ref)
        assert {k: gw.row_of(ref)[k] for k in before} == before
    finally:
        await gw.stop()
        pub.close()


async def test_storage_gets_the_entry_and_the_stop_s_state_points_its_reason(mosquitto, site, influxdb):
    """InfluxDB (real, 1.x): an ``operator`` point per applied entry (who, which reason / how many rejects), and the
    classified stop's ``state`` points carry its reason, so a Pareto over ``state`` (the Grafana losses dashboard)
    moves the seconds too; a refused entry is not written. About 1 s."""
    from gateway.influx import InfluxV1Sink

    db = f"classify_{site}"
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=100)
    ref = MachineRef(site, "a", "l", "press-01")
    now = time.time()
    t0 = now - now % 3600 + 60
    pub = Recorder(mosquitto.url)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", sinks=[sink], store_kpis_s=3600)
    await gw.start()
    try:
        await _a_ten_minute_breakdown(pub, gw, ref, t0)
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 60, "anna", reason=201))
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 700, "anna", reason=101))  # it ran: refused
        pub.publish(ref.topic(Kind.OPERATOR), encode_operator(t0 + 900, "bram", reject=4))
        assert await wait_until(lambda: gw.row_of(ref)["reject"] == 4)
    finally:
        await gw.stop()
        pub.close()
    state = influxdb.query(f'SELECT "state", "reason" FROM "state" WHERE "machine" = \'{ref.machine}\'', db)
    assert [row[1:] for row in state[0]["values"]] == [[EXECUTE, 0], [HELD, 201], [EXECUTE, 0]]
    entries = influxdb.query('SELECT "reason", "reject", "by" FROM "operator"', db)[0]["values"]
    assert [row[1:] for row in entries] == [[201, None, "anna"], [None, 4, "bram"]]
