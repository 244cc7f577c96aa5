"""`fieldlab demo --scenario NAME` end to end, as a trainer runs it, in its own process.

The line scenario (three machines coupled by buffers, two scripted breakdowns) runs accelerated through
OPC UA -> edge agents -> a private Mosquitto -> gateway. It must stop at exactly the scenario's end, the
simulator's ledger must hold the counts written in the file, and the gateway's KPIs on MQTT must be the
file's expected KPIs within its tolerance and agree with the ledger.
"""
import json

import pytest

from fieldlab.broker import free_port
from gateway.oee import DEFAULT
from simulators import scenario as sc
from tests.system.test_demo import fieldlab

NAME = "bottleneck-line"


def test_demo_runs_a_line_scenario_to_its_expected_kpis(own_mosquitto, recorder, tmp_path):
    s = sc.load(NAME)
    assert s.line and s.events
    ledger_file = tmp_path / "ledger.json"
    speed = s.duration_s / 16  # 8 simulated hours in 16 s
    url = f"mqtt://127.0.0.1:{own_mosquitto.port}"
    r = fieldlab("demo", "--scenario", NAME, "--speed", str(speed), "--broker", url,
                 "--opcua-port", str(free_port(count=3)), "--ledger", str(ledger_file), timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"scenario {NAME}" in r.stdout and "final KPIs" in r.stdout and "expected (scenario" in r.stdout
    ledger = {k.rsplit("/", 1)[1]: v for k, v in json.loads(ledger_file.read_text()).items()}
    assert list(ledger) == [sp.name for sp in s.specs]
    for name, truth in ledger.items():
        # the run stopped at exactly the scenario's end, not a tick later
        assert truth["elapsed_s"] == pytest.approx(s.duration_s, abs=1e-6), name
        # the ledger holds the counts written in the file (the same seed, the same parts)
        want = s.expected[name]
        assert abs(truth["good"] - want["good"]) <= s.count_tolerance, name
        assert abs(truth["reject"] - want["reject"]) <= s.count_tolerance, name
        # the scripted faults arrived at their simulated times and were really applied (a stop waits for
        # Execute, so it may start later than it arrived, never earlier)
        starts = [f["received"] - truth["start"] for f in truth["faults"]]
        assert starts == pytest.approx([e.at_s for e in s.events if e.machine == name])
        assert all(f["applied"] is not None and f["applied"] >= f["received"] for f in truth["faults"]), name
        assert truth["line"]["line"] == NAME
    assert ledger["assembly-01"]["starved_s"] > 600 and ledger["assembly-01"]["blocked_s"] > 60
    rec = recorder(own_mosquitto.url, "fieldlab/v1/demo/+/+/+/kpi")
    assert rec.wait_for(lambda r: len(r.messages) == 4)
    kpis = {t.split("/")[-2]: json.loads(p) for t, p, _ in rec.messages}
    got = {("line" if m == "_line" else m): k for m, k in kpis.items()}
    # the gateway's KPIs are the file's expected KPIs
    assert s.check(got) == [], s.check(got)
    # and agree with what the machines really did (counts exact, times to the millisecond)
    for name, truth in ledger.items():
        k = kpis[name]
        assert (k["good"], k["reject"]) == (truth["good"], truth["reject"]), name
        assert k["run_s"] == pytest.approx(truth["run_s"], abs=1e-3), name
        # short stops are small stops, except starved and blocked: an external loss (availability), never small
        small = sum(st["duration_s"] for st in truth["stops"]
                    if st["duration_s"] < DEFAULT.micro_stop_s and st["reason_code"] not in (202, 203))
        assert k["operating_s"] == pytest.approx(truth["run_s"] + small, abs=1e-3), name
