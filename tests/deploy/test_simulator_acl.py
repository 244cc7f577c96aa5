"""Plant key ``simulators:``: a simulator (``fieldlab sim --broker``) on a deployed broker reads its machines'
commands and its own start command, and announces its scenario and machines on ``fieldlab/v1/_sys/sim/<site>/...``,
which gateways and operators read; viewers and edge agents cannot announce a simulator. End to end: a real
``fieldlab sim --broker`` and ``fieldlab sim inject --broker`` as an operator (which refuses to send when no
simulator has announced its machines: what it did with the simulator as a viewer, the compose stack's plant file
before ``simulators:``). A real Mosquitto on the generated files (the stack of test_secure_broker.py); about 5 s.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from contract.sim import scenario_topic, sim_command_topic
from contract.topics import sim_machines_topic
from contract.yamlfile import ConfigError
from fieldlab import deploy
from fieldlab.broker import free_port
from tests.deploy.test_secure_broker import PLANT, Listener, _publish, _send, _topic, _url, stack  # noqa: F401
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
SCENARIO, MACHINES, START = scenario_topic("acme"), sim_machines_topic("acme", "hall-1", "line-1"), \
    sim_command_topic("acme")


@pytest.fixture(scope="module")
def plant_file(tmp_path_factory) -> Path:  # the stack of test_secure_broker.py, with a simulator user
    p = tmp_path_factory.mktemp("plant") / "plant.yaml"
    p.write_text(PLANT + "simulators: [simulator]\n")
    return p


def test_only_the_simulator_announces_itself_and_operators_and_gateways_read_it(stack):
    operator = Listener(_url(stack, "trainer"), "fieldlab/v1/_sys/sim/#")
    gateway = Listener(_url(stack, "gateway"), "fieldlab/v1/_sys/sim/#")
    try:
        # a viewer, an edge agent, an operator: refused; then the simulator's own, which arrive first
        _publish(_url(stack, "node-red"), SCENARIO, MACHINES)
        _publish(_url(stack, "edge-cnc-01"), SCENARIO, MACHINES)
        _send(operator.client, SCENARIO, MACHINES, START)  # (one connection per user: the listener's own)
        _send(gateway.client, SCENARIO, MACHINES)  # the gateway sends the start command only (below)
        _publish(_url(stack, "simulator"), START, SCENARIO, MACHINES)  # its own start command: refused too
        assert [operator.next(), operator.next()] == [SCENARIO, MACHINES]
        assert [gateway.next(), gateway.next()] == [SCENARIO, MACHINES]
    finally:
        operator.close()
        gateway.close()


def test_the_simulator_reads_commands_and_sends_nothing_else(stack):
    sim = Listener(_url(stack, "simulator"), "fieldlab/v1/#")
    try:
        # machine data and KPIs are not for the simulator; a machine's cmd and the start command are
        _publish(_url(stack, "edge-cnc-01"), _topic("cnc-01", "telemetry"))
        _publish(_url(stack, "gateway"), _topic("cnc-01", "kpi"), START)
        assert sim.next() == START
        _publish(_url(stack, "trainer"), _topic("cnc-01", "cmd"))
        assert sim.next() == _topic("cnc-01", "cmd")
        # it forges no machine data, commands, KPIs or operator entries
        gw = Listener(_url(stack, "gateway"), "fieldlab/v1/acme/#")
        try:
            _send(sim.client, _topic("cnc-01", "telemetry"), _topic("cnc-01", "cmd"), _topic("cnc-01", "kpi"),
                  _topic("cnc-01", "operator"))
            _publish(_url(stack, "edge-cnc-01"), _topic("cnc-01", "state"))
            assert gw.next() == _topic("cnc-01", "state")
        finally:
            gw.close()
        assert sim.got.empty()
    finally:
        sim.close()


def test_a_central_broker_grants_every_sites_simulation_topics(tmp_path):
    (tmp_path / "plant.yaml").write_text("sites: [acme]\nsimulators: [sim]\noperators: [trainer]\n")
    acl = deploy.acl_text(deploy.load_plant(tmp_path / "plant.yaml"))
    sim = acl[acl.index("user sim\n"):]
    assert "topic read fieldlab/v1/_sys/sim/+/cmd\ntopic write fieldlab/v1/_sys/sim/+/scenario\n" in sim
    assert "topic read fieldlab/v1/_sys/sim/+/#\n" in acl[acl.index("user trainer\n"):acl.index("user sim\n")]


@pytest.mark.parametrize("text, where", [
    ("simulators: simulator\n", "plant.yaml:7: simulators: write a list of user names, like [simulator]"),
    ("simulators: [edge-cnc-01]\n", "plant.yaml:7: simulators: user edge-cnc-01 is listed twice"),
])
def test_simulators_mistakes_name_the_line_and_the_fix(tmp_path, text, where):
    (tmp_path / "plant.yaml").write_text("site: acme\nmachines:\n  hall-1/line-1: [cnc-01]\nbroker:\n"
                                         "  hostnames: [localhost]\noperators: [trainer]\n" + text)
    with pytest.raises(ConfigError, match=re.escape(where)):
        deploy.load_plant(tmp_path / "plant.yaml")


def _fieldlab(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fieldlab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _sim_and_inject(stack, user: str) -> tuple[int, str, str]:
    """``fieldlab sim --broker`` as ``user`` and, once it listens, ``fieldlab sim inject`` as the operator:
    (inject's exit code, its output, the simulator's output)."""
    out, ports, _, _ = stack
    levels = ["--site", "acme", "--area", "hall-1", "--line", "line-1"]
    sim = _fieldlab("sim", "--machines", "1", "--speed", "60", "--opcua-port", str(free_port()), "-v", *levels,
                    "--broker", f"mqtt://{user}@127.0.0.1:{ports[0]}", "--password-file", str(out / "credentials" / user))
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(sim.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while not any("fault commands:" in x for x in said):
            assert time.monotonic() < deadline and sim.poll() is None, "".join(said)
            time.sleep(0.1)
        inject = subprocess.run([sys.executable, "-m", "fieldlab", "sim", "inject", "cnc-01", "breakdown",
                                 "--minutes", "1", *levels, "--broker", f"mqtt://trainer@127.0.0.1:{ports[0]}",
                                 "--password-file", str(out / "credentials" / "trainer")],
                                capture_output=True, text=True, cwd=ROOT, timeout=30)
        if inject.returncode == 0:  # the simulator applies it (it logs the command it took)
            deadline = time.monotonic() + 5
            while not any("command on " + _topic("cnc-01", "cmd") in x for x in said):
                assert time.monotonic() < deadline, "".join(said)
                time.sleep(0.1)
    finally:
        terminate(sim)
    assert sim.returncode == 0, "".join(said)
    return inject.returncode, inject.stdout + inject.stderr, "".join(said)


def test_fieldlab_sim_inject_as_an_operator_reaches_a_deployed_simulator(stack):
    # (with the simulator as a viewer, as before simulators:, inject said "no simulator takes commands for
    # acme/hall-1/line-1" and exited 1: a viewer cannot announce its machines, see the first test)
    code, said, _ = _sim_and_inject(stack, "simulator")
    assert code == 0 and f"sent breakdown (minutes 1) to {_topic('cnc-01', 'cmd')}" in said, said
