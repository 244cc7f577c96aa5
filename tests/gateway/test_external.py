"""Starved and blocked time as its own category, external (issue 14, item 4; docs/oee.md), and the bottleneck
of a line (the active-period method).

Hand-worked examples through the whole pure path (timeline.build -> Timeline.totals -> oee.derive), the
KPI message of a machine and a line, a checkpoint of format 3 (six categories) read by this version, and the
bottleneck-line scenario run headless through the engine."""
import asyncio
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from contract import decode_kpi, encode_kpi
from contract import MachineRef
from gateway import checkpoint, oee, timeline
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from gateway.service import kpi_rows, line_kpi_rows
from simulators import scenario as sc
from tests.helpers import advance_machines, start_machines

MIN = 60.0
T0 = 1_800_000_000.0
EXECUTE, SUSPENDED, HELD = 4, 12, 15
STARVED, BLOCKED, MATERIAL, BREAKDOWN = 202, 203, 201, 101


def build(machines, end, conv=oee.DEFAULT):
    """machines: per machine (changes [(minute, code, reason)], counts [(minute, good, reject, ideal_s)], model)."""
    sm, sts, smodel, scode, sreason, cm, cts, cg, cr, ci = ([] for _ in range(10))
    for i, (changes, counts, model) in enumerate(machines):
        for t, code, reason in changes:
            sm.append(i), sts.append(t * MIN), smodel.append(model), scode.append(code), sreason.append(reason)
        for t, good, reject, ideal in counts:
            cm.append(i), cts.append(t * MIN), cg.append(good), cr.append(reject), ci.append(ideal)
    a = np.array
    return timeline.build(len(machines), (a(sm), a(sts, float), a(smodel), a(scode), a(sreason, np.int64)),
                          (a(cm), a(cts, float), a(cg, np.int64), a(cr, np.int64), a(ci, float)),
                          [end * MIN] * len(machines), conv=conv)


#: an 8-hour shift (480 min) of a machine in a line, worked by hand:
#: Execute; starved 100-101 (1 min: shorter than the micro-stop threshold, still external); breakdown 200-230;
#: blocked 300-340; a 1-minute Held at 400 (a small stop); 390 good + 10 rejects at 60 s ideal
LINE_MACHINE = ([(0, EXECUTE, 0), (100, SUSPENDED, STARVED), (101, EXECUTE, 0), (200, HELD, BREAKDOWN),
                 (230, EXECUTE, 0), (300, SUSPENDED, BLOCKED), (340, EXECUTE, 0), (400, HELD, 0),
                 (401, EXECUTE, 0)], [(0, 0, 0, 60.0), (480, 390, 10, 60.0)], 0)


def kpis_of(tl, conv=oee.DEFAULT, end=480.0):
    k = oee.derive(tl.totals(0.0, end * MIN), conv)
    return {name: v[0] for name, v in k.items()}


def test_starved_and_blocked_are_external_worked_by_hand():
    k = kpis_of(build([LINE_MACHINE], 480))
    # run 100 + 99 + 70 + 60 + 79 = 408 min; external 1 + 40 = 41 min; breakdown 30; small stop 1
    assert (k["run_s"], k["external_s"], k["breakdown_s"], k["small_stop_s"], k["stopped_s"]) == \
        (408 * MIN, 41 * MIN, 30 * MIN, 1 * MIN, 0.0)
    # external time is in planned time: an availability loss of the machine's own OEE
    assert k["planned_s"] == 480 * MIN and k["operating_s"] == 409 * MIN
    assert k["availability"] == pytest.approx(409 / 480, rel=1e-12)  # 85.2 %
    assert k["performance"] == pytest.approx(400 / 409, rel=1e-12)  # 400 min of ideal time in 409 min
    assert k["quality"] == pytest.approx(390 / 400, rel=1e-12)
    assert k["oee"] == pytest.approx(390 / 480, rel=1e-12) == pytest.approx(k["oee_simple"], rel=1e-12)
    # the losses: the machine's own unplanned stops (the breakdown) apart from external; all add up to 100 - OEE
    assert (k["loss_unplanned_stops_s"], k["loss_external_s"], k["loss_small_stops_s"], k["loss_slow_cycles_s"]) \
        == (30 * MIN, 41 * MIN, 1 * MIN, 8 * MIN)
    assert k["loss_external_pp"] == pytest.approx(100 * 41 / 480)
    names = ("unplanned_stops", "external", "planned_stops", "small_stops", "slow_cycles", "production_rejects",
             "startup_rejects")
    assert sum(k[f"loss_{n}_s"] for n in names) == pytest.approx(90 * MIN)  # 480 - 390 good minutes
    assert sum(k[f"loss_{n}_pp"] for n in names) == pytest.approx(100 * (1 - k["oee"]))
    # never a failure: one breakdown, MTBF = operating time / 1
    assert (k["failures"], k["mtbf_s"], k["mttr_s"]) == (1, 409 * MIN, 30 * MIN)


def test_the_same_shift_before_the_external_category_booked_it_as_the_machines_own():
    """What the machine did is the same; only the booking differs: with Suspended and 202/203 mapped back to
    stopped (the former default) the 1-minute starve is a small stop and the 40-minute block an unplanned stop."""
    old = oee.Conventions(packml={11: oee.STOPPED, 12: oee.STOPPED, 13: oee.STOPPED}, reasons={301: oee.SETUP})
    k = kpis_of(build([LINE_MACHINE], 480, old), old)
    new = kpis_of(build([LINE_MACHINE], 480))
    assert (k["external_s"], k["stopped_s"], k["small_stop_s"]) == (0.0, 40 * MIN, 2 * MIN)
    assert k["oee"] == pytest.approx(new["oee"], rel=1e-12)  # OEE is the same, its split differs
    assert k["availability"] > new["availability"] and k["performance"] < new["performance"]


def test_reasons_202_and_203_are_external_under_any_state_and_material_is_the_machines_own():
    """Simple model: idle with reason 202 or 203 is external; idle without a reason, or a material shortage
    (201, even entered as PackML Suspended), stays the machine's own stop, and so does PackML Suspended without
    a reason (a stack light's orange says nothing about a line; docs/oee.md): a short one is a small stop."""
    simple = ([(0, 1, 0), (10, 2, STARVED), (15, 1, 0), (20, 2, BLOCKED), (30, 1, 0), (40, 2, 0), (50, 1, 0)],
              [(0, 0, 0, 6.0)], 1)
    packml = ([(0, EXECUTE, 0), (10, SUSPENDED, MATERIAL), (20, EXECUTE, 0), (30, SUSPENDED, 0), (31, EXECUTE, 0)],
              [(0, 0, 0, 6.0)], 0)
    tl = build([simple, packml], 60)
    k = oee.derive(tl.totals(0.0, 60 * MIN))
    assert k["external_s"].tolist() == [15 * MIN, 0.0]  # 5 + 10 min; Suspended without a reason is not
    assert k["small_stop_s"].tolist() == [0.0, 1 * MIN]  # ... but the machine's own (short) stop
    assert k["stopped_s"].tolist() == [10 * MIN, 10 * MIN]  # idle without a reason; the material shortage
    stops = {(r["machine"], r["category"], r["reason"]): r["seconds"] for r in tl.stop_reasons(0.0, 60 * MIN)}
    assert stops == {(0, "external", STARVED): 5 * MIN, (0, "external", BLOCKED): 10 * MIN,
                     (0, "stopped", 0): 10 * MIN, (1, "stopped", MATERIAL): 10 * MIN, (1, "small_stop", 0): 1 * MIN}


def test_external_is_never_a_small_stop_and_not_moved_by_the_small_stop_convention():
    avail = oee.Conventions(micro_stops_as="availability")
    for conv in (oee.DEFAULT, avail):
        k = kpis_of(build([LINE_MACHINE], 480, conv), conv)
        assert (k["external_s"], k["small_stop_s"]) == (41 * MIN, 1 * MIN)
    k = kpis_of(build([LINE_MACHINE], 480, avail), avail)
    assert k["availability"] == pytest.approx(408 / 480, rel=1e-12)  # the small stop moves, external stays


def test_an_open_starve_is_external_from_its_first_second():
    """An open episode is judged by its length so far: a stop under 2 min is a small stop while it lasts,
    but a starve is external at once."""
    m = ([(0, EXECUTE, 0), (10, SUSPENDED, STARVED)], [(0, 0, 0, 6.0)], 0)
    h = ([(0, EXECUTE, 0), (10, HELD, 0)], [(0, 0, 0, 6.0)], 0)
    tl = build([m, h], 11)
    k = oee.derive(tl.totals(0.0, 11 * MIN))
    assert k["external_s"].tolist() == [MIN, 0.0] and k["small_stop_s"].tolist() == [0.0, MIN]


def engine_with(machines, end_min, config=None):
    e = KpiEngine(config or SiteConfig())
    from contract import CountsBatch, StateBatch
    for changes, counts, model in machines:
        i = e.add_machine()
        e.add_state(i, StateBatch(np.array([T0 + t * MIN for t, _, _ in changes]), np.array([c for _, c, _ in changes]),
                                  np.array([r for _, _, r in changes]), model=oee.MODELS[model]))
        ts = [T0 + t * MIN for t, *_ in counts] + [T0 + end_min * MIN]
        e.add_counts(i, CountsBatch(np.array(ts), np.array([g for _, g, _, _ in counts] + [counts[-1][1]]),
                                    np.array([r for _, _, r, _ in counts] + [counts[-1][2]]), "p", counts[-1][3]))
    e.fold()
    return e


def test_kpi_messages_carry_external_and_the_line_its_bottleneck():
    upstream = ([(0, EXECUTE, 0), (100, SUSPENDED, BLOCKED), (160, EXECUTE, 0)], [(0, 0, 0, 6.0), (480, 4000, 0, 6.0)], 0)
    e = engine_with([upstream, LINE_MACHINE], 480)
    snap = e.snapshot()
    rows = kpi_rows(snap)
    assert [r["external_s"] for r in rows] == [60 * MIN, 41 * MIN]
    assert [r["losses"]["external"]["s"] for r in rows] == [60 * MIN, 41 * MIN]
    for r in rows:  # as the gateway publishes it: the decoder (and kpi.json) take the new fields
        decode_kpi(encode_kpi({**r, "status": "online", "tick_ts": T0}))
    line = e.line_snapshot(np.zeros(2, np.int64), 1)
    [row] = line_kpi_rows(line, [["moulder", "assembly"]])
    # active share: moulder (480 - 60) / 480, assembly (480 - 41) / 480: the one that waits least
    assert row["bottleneck"] == "assembly" and row["external_s"] == 101 * MIN
    decode_kpi(encode_kpi({**row, "tick_ts": T0}))


def test_bottleneck_per_group_ties_and_lines_without_waiting():
    T = np.zeros((5, oee.N_TOT))
    T[:, oee.RUN] = [400, 300, 480, 480, 100]
    T[:, oee.EXTERNAL] = [80, 180, 0, 0, 0]
    T[:, oee.BREAKDOWN] = [0, 0, 0, 0, 0]
    T[4, oee.NOT_SCHEDULED] = 380  # planned 100, no waiting
    group = np.array([1, 1, 0, 0, 2])  # line 1: machines 0 and 1; line 0: two that never waited; line 2: one
    assert oee.bottleneck(T, group, 4).tolist() == [-1, 0, -1, -1]  # line 3 has no machine at all
    T[2, oee.EXTERNAL], T[2, oee.RUN] = 10, 470
    assert oee.bottleneck(T, group, 4).tolist() == [1, 0, -1, -1]  # position within its line: the second
    T[1] = T[0]
    assert oee.bottleneck(T, group, 4)[1] == 0  # a tie: the first in machine order


def test_a_format_3_checkpoint_gets_a_zero_external_column(tmp_path):
    """Format 3 stored six time categories (``p.pre`` 6 wide, ``tl.base`` 14): this version reads it with
    external time 0 (what was starved or blocked before the upgrade stays booked as stopped or small stop)."""
    e = engine_with([LINE_MACHINE], 480)
    e.timeline.prune(np.array([T0 + 300 * MIN]), e.first_ts[:1])  # totals before a cut: tl.base in play
    machines = [MachineRef("s", "a", "l", "m1")]
    arrays, doc = checkpoint.capture(e, machines, {})
    assert arrays["p.pre"].shape[1] == oee.N_CAT == 7 and arrays["tl.base"].shape[1] == oee.N_TOT
    before = e.snapshot()["since_start"]
    # what a format-3 gateway wrote: no external column (its time booked elsewhere; here moved to stopped)
    old = dict(arrays)
    pre = arrays["p.pre"].copy()
    pre[:, oee.STOPPED] += pre[:, oee.EXTERNAL]
    old["p.pre"] = pre[:, : oee.EXTERNAL]
    base = arrays["tl.base"].copy()
    base[:, oee.STOPPED] += base[:, oee.EXTERNAL]
    old["tl.base"] = np.delete(base, oee.EXTERNAL, axis=1)
    old["p.cat"] = np.where(arrays["p.cat"] == oee.EXTERNAL, np.int8(oee.STOPPED), arrays["p.cat"])
    path = tmp_path / "v3.checkpoint.npz"
    checkpoint.write(path, old, {**doc, "version": 3})
    restored = KpiEngine(SiteConfig())
    assert checkpoint.load(path, restored) == (machines, {})
    after = restored.snapshot()["since_start"]
    assert after["external_s"][0] == 0.0 and after["stopped_s"][0] == before["external_s"][0]
    for name in ("planned_s", "run_s", "availability", "oee", "good", "breakdown_s", "small_stop_s"):
        assert after[name][0] == pytest.approx(before[name][0], rel=1e-12), name
    # and from here on, starved time is external again
    from contract import CountsBatch, StateBatch
    restored.add_state(0, StateBatch(np.array([T0 + 480 * MIN]), np.array([SUSPENDED]), np.array([STARVED])))
    restored.add_counts(0, CountsBatch(np.array([T0 + 490 * MIN]), np.array([390]), np.array([10]), "p", 60.0))
    restored.fold()
    assert restored.snapshot()["since_start"]["external_s"][0] == pytest.approx(10 * MIN)


def test_the_bottleneck_line_scenario_names_assembly_01():
    """The scenario's description: assembly-01 (30 s a part) is the bottleneck, the others are blocked
    (upstream) or starved (downstream). Run headless through the engine, as `fieldlab sim expected` does."""
    s = sc.load("bottleneck-line")
    assert "assembly-01 fits them (30 s: the bottleneck)" in " ".join(s.description.split())
    e = KpiEngine(SiteConfig())
    machines = s.machines(T0)
    ids = start_machines(e, machines, T0)
    for h in range(1, int(s.duration_s // 3600) + 1):
        advance_machines(e, ids, machines, T0 + 3600.0 * h)
        e.fold()
    names = [m.spec.name for m in machines]
    snap = e.snapshot()["since_start"]
    ext = dict(zip(names, snap["external_s"].tolist()))
    # every second the ledgers say a machine waited is external (never a small stop or a breakdown)
    for m in machines:
        led = m.ledger_now().to_dict()
        assert ext[m.spec.name] == pytest.approx(led["starved_s"] + led["blocked_s"], abs=1e-3), m.spec.name
    assert ext["moulder-01"] > 3600 and ext["filler-01"] > 3600 and ext["assembly-01"] < ext["moulder-01"] / 5
    [row] = line_kpi_rows(e.line_snapshot(np.zeros(len(ids), np.int64), 1), [names])
    assert row["bottleneck"] == "assembly-01"
    # every window of the line names it too (the same rule, the window's times)
    line = e.line_snapshot(np.zeros(len(ids), np.int64), 1)
    assert {w: names[int(k["bottleneck"][0])] for w, k in line.items()}["shift"] == "assembly-01"


class Shown(HTMLParser):
    """The text of every element with data-line (the line card it is in), data-kpi, data-loss, data-own or
    data-external, and the machine card it is in: {(card, attribute, value): text}."""

    ATTRS = ("data-kpi", "data-loss", "data-own", "data-external", "data-buffer")

    def __init__(self):
        super().__init__()
        self.shown, self._card, self._key = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-line" in a or "data-id" in a:
            self._card = a.get("data-line") or a["data-id"]
        for attr in self.ATTRS:
            if attr in a:
                self._key = (self._card, attr, a[attr])
                self.shown[self._key] = ""

    def handle_data(self, data):
        if self._key:
            self.shown[self._key] += data

    def handle_endtag(self, tag):
        self._key = None


def scenario_messages(ref_of, t0=T0):
    """The bottleneck-line scenario run headless: per machine, its state and counts as contract messages (one
    of each, as an edge agent's batches would carry them), and its ledger."""
    from contract import Kind, encode_counts, encode_state, encode_telemetry
    s = sc.load("bottleneck-line")
    machines = s.machines(t0)
    start = {m.spec.name: (m.state, m.reason) for m in machines}
    end = t0 + s.duration_s
    events = {m.spec.name: m.advance(end) for m in machines}  # a line advances all its machines together
    out = []
    for m in machines:
        ref, ev = ref_of(m.spec.name), events[m.spec.name]
        st = [(t0, *start[m.spec.name])] + [e[1:4] for e in ev if e[0] == "state"]
        ct = [(t0, 0, 0)] + [e[1:4] for e in ev if e[0] == "count"] + [(end, m.good, m.reject)]
        out.append((ref.topic(Kind.STATE), encode_state([x[0] for x in st], [x[1] for x in st], [x[2] for x in st])))
        out.append((ref.topic(Kind.COUNTS), encode_counts([x[0] for x in ct], [x[1] for x in ct], [x[2] for x in ct],
                                                          m.spec.product, m.spec.ideal_cycle_s)))
        pv = m.process_values(0.0)  # its process values at the end, with its input buffer's level (line machines)
        out.append((ref.topic(Kind.TELEMETRY), encode_telemetry([end], {k: [v] for k, v in pv.items()})))
    return out, {m.spec.name: m.ledger_now().to_dict() for m in machines}


async def test_the_line_view_names_the_bottleneck_and_shows_waiting_as_external(mosquitto, site, publisher, tmp_path):
    """Issue 14, done when: the bottleneck scenario's dashboard names the bottleneck and shows starved/blocked as
    external losses, not as the machines' small stops or breakdowns; in English and Dutch (a screenshot kept)."""
    from gateway.http import HttpEndpoint
    from gateway.service import Gateway
    from tests.gateway.test_dashboard import ARTIFACTS, chromium_args, get, run_chromium
    from tests.helpers import wait_until

    gw = Gateway(mosquitto.url, site=site, publish_s=3600)  # ticks when the test says so
    await gw.start()
    http = HttpEndpoint(gw, "127.0.0.1", 0)
    await http.start()
    try:
        messages, ledgers = scenario_messages(lambda name: MachineRef(site, "hall-1", "line-a", name))
        for topic, payload in messages:
            publisher(topic, payload)
        assert await wait_until(lambda: gw.stats["messages"] == len(messages)), gw.stats
        gw.tick()
        line_id = f"{site}/hall-1/line-a"
        _, _, body = await get(http, "/api/lines")
        [line] = json.loads(body)
        assert (line["id"], line["bottleneck"], line["machines"]) == (
            line_id, "assembly-01", ["moulder-01", "assembly-01", "filler-01"])
        _, _, body = await get(http, "/api/machines")
        rows = {r["machine"]: r for r in json.loads(body)}
        dom = await run_chromium(chromium_args(tmp_path, "--dump-dom", http.url + "/?lang=en"))
        p = Shown()
        p.feed(dom)
        shown = p.shown
        assert shown[(line_id, "data-kpi", "bottleneck")] == "Bottleneck: assembly-01"
        assert shown[(line_id, "data-kpi", "line-oee")] == f"{100 * line['windows']['shift']['oee']:.1f} %"
        for name, led in ledgers.items():
            row = rows[name]
            waited_pp = 100 * (led["starved_s"] + led["blocked_s"]) / row["planned_s"]
            ext = row["losses"]["external"]["pp"]
            assert ext == pytest.approx(waited_pp, abs=1e-6), name  # all the waiting, nothing else
            assert shown[(line_id, "data-external", name)] == f"{ext:.1f} pp"
            own = sum(v["pp"] for k, v in row["losses"].items() if k != "external")
            assert shown[(line_id, "data-own", name)] == f"{own:.1f} pp"
            card = f"{site}/hall-1/line-a/{name}"
            assert shown[(card, "data-loss", "external")] == f"{ext:.1f} pp"
            # the waiting is not in the machine's own small stops or breakdowns (its ledger's own stops are)
            own_stops = sum(st["duration_s"] for st in led["stops"] if st["reason_code"] not in (STARVED, BLOCKED))
            assert row["small_stop_s"] + row["breakdown_s"] + row["stopped_s"] + row["setup_s"] == \
                pytest.approx(own_stops, abs=1e-3)
        assert rows["moulder-01"]["losses"]["external"]["pp"] > 10 and rows["filler-01"]["losses"]["external"]["pp"] > 10
        # buffer levels: each machine's input buffer, from its telemetry (the first machine has none)
        levels = {b["machine"]: (b["level"], b["capacity"]) for b in line["buffers"]}
        assert set(levels) == {"assembly-01", "filler-01"} and all(c == 20.0 for _, c in levels.values())
        assert levels == {k: (ledgers[k]["line"]["input"]["level"], 20.0) for k in levels}
        for name, (level, cap) in levels.items():
            assert shown[(line_id, "data-buffer", name)] == f"buffer in: {level:.0f} of {cap:.0f}"
        assert (line_id, "data-buffer", "moulder-01") not in shown
        # in Dutch, with a screenshot for the trainer's eye
        dom = await run_chromium(chromium_args(tmp_path, "--dump-dom", http.url + "/?lang=nl"))
        p = Shown()
        p.feed(dom)
        assert p.shown[(line_id, "data-kpi", "bottleneck")] == "Knelpunt: assembly-01"
        assert "Extern (lijn)" in dom and "extern (lijn)" in dom
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "line-view-nl.png"
        await run_chromium(chromium_args(tmp_path, f"--screenshot={shot}", http.url + "/?lang=nl"))
        assert shot.stat().st_size > 10_000
    finally:
        await http.stop()
        await gw.stop()


async def test_a_line_machine_serves_its_input_buffer_over_opc_ua():
    """Buffer levels as telemetry (docs/simulators.md): a machine with an input buffer has Process/BufferIn and
    Process/BufferInCapacity in its OPC UA address space, stamped with simulated time; one without has none."""
    from asyncua import Client, ua

    from fieldlab.broker import free_port
    from simulators.opcua import NAMESPACE, SimClock, Simulation

    s = sc.load("bottleneck-line")
    machines = s.machines(T0)
    sim = Simulation(machines, SimClock(T0, speed=3600.0), base_port=free_port(), tick_s=0.05, shared=True)
    await sim.start()
    try:
        sim.run()
        await asyncio.sleep(0.5)  # half an hour of simulated time
        t = await sim.freeze()
        async with Client(sim.servers[0].endpoint) as c:
            idx = await c.get_namespace_index(NAMESPACE)
            for m in machines:
                obj = await c.nodes.objects.get_child(f"{idx}:{m.spec.name}")
                process = await obj.get_child(f"{idx}:Process")
                names = {(await n.read_browse_name()).Name for n in await process.get_children()}
                if m.inbuf is None:
                    assert "BufferIn" not in names, m.spec.name
                    continue
                level = await (await process.get_child(f"{idx}:BufferIn")).read_data_value()
                cap = await process.get_child(f"{idx}:BufferInCapacity")
                assert (level.Value.Value, await cap.read_value()) == (float(m.inbuf.level), 20.0), m.spec.name
                assert level.SourceTimestamp.timestamp() == pytest.approx(t, abs=1e-3)
                assert ua.NodeId(f"{m.spec.name}.Process.BufferIn", idx) == (
                    await process.get_child(f"{idx}:BufferIn")).nodeid
    finally:
        await sim.stop()
