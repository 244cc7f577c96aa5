"""The gateway's engine, fed the machines' events, computes exactly what their ledgers say.

Three days of all four demo machines (breakdowns, jams, shortages, changeovers, start-up rejects),
folded hour by hour as the live gateway does, with the site convention that reason 301 is setup
(docs/examples/site.yaml); the ledger's stops, classified by the documented rules (docs/oee.md),
give every expected number.
"""
import pytest

from gateway import oee
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from tests.helpers import advance_machines, start_machines
from simulators.machine import DEMO_MACHINES, EXECUTE, REASON_CHANGEOVER, Machine

T0 = 1_800_000_000.0
HOURS = 72


def feed(conventions: oee.Conventions):
    engine = KpiEngine(SiteConfig(conventions=conventions))
    machines = [Machine(spec, T0, seed=40 + i) for i, spec in enumerate(DEMO_MACHINES)]
    ids = start_machines(engine, machines, T0)
    for h in range(1, HOURS + 1):
        advance_machines(engine, ids, machines, T0 + 3600.0 * h)
        engine.fold()
    return engine.snapshot()["since_start"], [m.ledger_now().to_dict() for m in machines]


def expected(truth: dict, conv: oee.Conventions) -> dict:
    """The documented conventions applied to what really happened."""
    stops = truth["stops"]
    # starved / blocked (a machine in a line): external, whatever its length (docs/oee.md)
    external = [st for st in stops if conv.reasons.get(st["reason_code"]) == oee.EXTERNAL]
    unplanned = [st for st in stops if st["reason_code"] != REASON_CHANGEOVER and st not in external]
    small = [st for st in unplanned if st["duration_s"] < conv.micro_stop_s]
    long_held = [st["duration_s"] for st in unplanned
                 if st["state"] == "Held" and st["duration_s"] >= conv.micro_stop_s]
    long_suspended = [st["duration_s"] for st in unplanned
                      if st["state"] == "Suspended" and st["duration_s"] >= conv.micro_stop_s]
    return {
        "run_s": truth["run_s"], "good": truth["good"], "reject": truth["reject"], "ideal_s": truth["ideal_s"],
        "setup_s": truth["setup_s"], "startup_reject": truth["startup_rejects"],
        "small_stop_s": sum(st["duration_s"] for st in small), "breakdown_s": sum(long_held),
        "stopped_s": sum(long_suspended), "external_s": sum(st["duration_s"] for st in external),
        "failures": len(long_held), "planned_s": truth["elapsed_s"],
        "not_scheduled_s": 0.0,
    }


def test_engine_agrees_with_the_ledgers_to_the_millisecond():
    conv = oee.Conventions(reasons={**oee.DEFAULT_REASONS, REASON_CHANGEOVER: oee.SETUP})
    k, ledgers = feed(conv)
    for i, truth in enumerate(ledgers):
        name = DEMO_MACHINES[i].name
        want = expected(truth, conv)
        assert truth["elapsed_s"] == HOURS * 3600.0
        assert truth["changeovers"] > 0 and truth["micro_stops"] > 0 and truth["startup_rejects"] > 0, name
        assert want["failures"] > 0 and want["small_stop_s"] > 0, name
        for key in ("good", "reject", "failures", "startup_reject"):
            assert int(k[key][i]) == want[key], (name, key)
        for key in ("run_s", "setup_s", "small_stop_s", "breakdown_s", "stopped_s", "planned_s", "not_scheduled_s"):
            assert k[key][i] == pytest.approx(want[key], abs=1e-3), (name, key)
        assert k["ideal_s"][i] == pytest.approx(want["ideal_s"], rel=1e-12)
        assert k["mttr_s"][i] == pytest.approx(want["breakdown_s"] / want["failures"], abs=1e-3)
        # every second is in exactly one category
        assert k["known_s"][i] == pytest.approx(truth["elapsed_s"], abs=1e-3)


def test_without_the_setup_reason_run_time_counts_and_failures_still_agree():
    """With the gateway's default conventions (no reason mapped to setup) a changeover is not booked as
    setup, but nothing else changes: run time, parts and failures are the ledger's."""
    k, ledgers = feed(oee.DEFAULT)
    for i, truth in enumerate(ledgers):
        want = expected(truth, oee.DEFAULT)
        assert (int(k["good"][i]), int(k["reject"][i]), int(k["failures"][i])) == (
            want["good"], want["reject"], want["failures"])
        assert k["run_s"][i] == pytest.approx(truth["state_s"]["Execute"], abs=1e-3)
        assert truth["state_s"]["Execute"] == truth["run_s"] and EXECUTE == 4
