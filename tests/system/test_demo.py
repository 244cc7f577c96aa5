"""The whole chain, as a user runs it: `fieldlab demo` in its own process.

Simulated machines -> OPC UA -> edge agents -> Mosquitto -> gateway -> retained KPIs,
checked against what the simulator says really happened (its ledger).
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from fieldlab.broker import free_port
from tests.helpers import validate_all
from gateway.oee import DEFAULT


def fieldlab(*args, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args and args[0] == "demo" and "--help" not in args and "--http-port" not in args:
        args = (*args, "--http-port", str(free_port()))  # never the default 8080: tests must not collide
    return subprocess.run([sys.executable, "-m", "fieldlab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_kpis_on_mqtt_agree_with_what_the_machines_did(own_mosquitto, recorder, tmp_path):
    mosquitto = own_mosquitto  # a broker of its own: every message on it is this run's (all are validated below)
    ledger_file = tmp_path / "ledger.json"
    opc = free_port(count=3)
    # everything the chain publishes, for the schemas; a retained message in milliseconds provokes a dead letter
    everything = recorder(mosquitto.url, "fieldlab/v1/#")
    bad = "fieldlab/v1/demo/hall-1/line-1/bad-01/counts"
    everything.publish(bad, b'{"v": 1, "ts": [1765432100123], "good": [1], "reject": [0]}', retain=True)
    # 12 s at 300x: an hour of production, with breakdowns and material shortages
    r = fieldlab("demo", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--duration", "12", "--speed", "300",
                 "--opcua-port", str(opc), "--seed", "3", "--ledger", str(ledger_file))
    assert r.returncode == 0, r.stderr
    assert "final KPIs" in r.stdout and "Traceback" not in r.stderr
    ledger = json.loads(ledger_file.read_text())
    rec = recorder(mosquitto.url, "fieldlab/v1/demo/+/+/+/kpi")  # retained: the last KPI of each machine
    assert rec.wait_for(lambda r: len(r.messages) == 4)  # and of their line (.../_line/kpi)
    line = [json.loads(p) for t, p, _ in rec.messages if "/_line/" in t]
    assert len(line) == 1 and line[0]["n_machines"] == 3
    assert (line[0]["good"], line[0]["reject"]) == (sum(v["good"] for v in ledger.values()),
                                                    sum(v["reject"] for v in ledger.values()))
    rec.messages[:] = [m for m in rec.messages if "/_line/" not in m[0]]
    kpis = {t.split("/", 2)[2].rsplit("/", 1)[0]: json.loads(p) for t, p, retained in rec.messages if retained}
    assert set(kpis) == set(ledger) and len(kpis) == 3
    stops = 0
    for path, truth in ledger.items():
        k = kpis[path]
        stops += truth["breakdowns"] + truth["shortages"]
        # counts are exact: monotonic counters over QoS 1, nothing lost, nothing invented
        assert (k["good"], k["reject"]) == (truth["good"], truth["reject"]), path
        assert k["ideal_s"] == pytest.approx(truth["ideal_s"])
        # times come from machine timestamps: equal to the ledger within float rounding
        assert k["run_s"] == pytest.approx(truth["run_s"], abs=1e-3), path
        assert k["planned_s"] == pytest.approx(truth["elapsed_s"], abs=1e-3), path
        # the documented conventions (docs/oee.md), applied to what really happened: stops shorter
        # than the micro-stop threshold are small stops (performance loss), longer Held ones failures
        small = sum(st["duration_s"] for st in truth["stops"] if st["duration_s"] < DEFAULT.micro_stop_s)
        long_held = [st["duration_s"] for st in truth["stops"]
                     if st["state"] == "Held" and st["duration_s"] >= DEFAULT.micro_stop_s]
        operating = truth["run_s"] + small
        availability = operating / truth["elapsed_s"]
        performance = truth["ideal_s"] / operating
        quality = truth["good"] / (truth["good"] + truth["reject"])
        assert k["operating_s"] == pytest.approx(operating, abs=1e-3), path
        assert k["availability"] == pytest.approx(availability, rel=1e-6)
        assert k["performance"] == pytest.approx(performance, rel=1e-6)
        assert k["quality"] == pytest.approx(quality, rel=1e-9)
        assert k["oee"] == pytest.approx(availability * performance * quality, rel=1e-6)
        assert k["failures"] == len(long_held), path
        if long_held:
            assert k["mttr_s"] == pytest.approx(sum(long_held) / len(long_held), abs=1e-3)
        assert truth["elapsed_s"] > 3000  # about an hour of simulated time really passed
    assert stops > 0  # availability losses were part of the run, not only the happy path
    # the table shows every machine
    for path in ledger:
        assert path in r.stdout
    # every message the whole chain published validates against its schema (docs/contract.md), by topic
    seen = validate_all([m for m in everything.messages if m[0] != bad])
    assert {"state.json", "counts.json", "status.json", "kpi.json", "gateway-status.json", "dead-letter.json"} <= \
        set(seen) and ("telemetry.json" in seen or "telemetry (binary)" in seen), seen
    assert seen["kpi.json"] > 4  # machines' and the line's, every tick
    (letter,) = everything.got("fieldlab/v1/_sys/deadletter")
    assert letter["topic"] == bad and "is milliseconds since 1970" in letter["error"]
    with pytest.raises(AssertionError, match="do not validate"):  # the schema refuses it too
        validate_all([m for m in everything.messages if m[0] == bad])


@pytest.mark.parametrize("impl", ["mosquitto", "amqtt"])
def test_demo_starts_its_own_broker(impl):
    r = fieldlab("demo", "--duration", "4", "--speed", "60", "--broker-impl", impl,
                 "--mqtt-port", str(free_port()), "--opcua-port", str(free_port(count=3)))
    assert r.returncode == 0, r.stderr
    assert f"(private {'Mosquitto' if impl == 'mosquitto' else 'Amqtt'})" in r.stdout
    table = r.stdout.split("final KPIs")[1]
    for name in ("cnc-01", "moulder-01", "filler-01"):
        assert name in table
    assert "Traceback" not in r.stderr


def test_taken_port_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = fieldlab("demo", "--duration", "2", "--mqtt-port", str(taken), "--opcua-port", str(free_port(count=3)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fieldlab demo: error: port {taken} on 127.0.0.1 is taken, so the MQTT broker cannot start there; "
        "stop what uses it or choose another port with --mqtt-port"]


def test_taken_opcua_port_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = fieldlab("demo", "--duration", "2", "--broker", "mqtt://127.0.0.1:1", "--opcua-port", str(taken))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {taken} on 127.0.0.1 is taken" in lines[0] and "--opcua-port" in lines[0]


def test_unreachable_broker_is_one_clear_line():
    port = free_port()
    r = fieldlab("demo", "--duration", "2", "--broker", f"mqtt://127.0.0.1:{port}", "--opcua-port", str(free_port(count=3)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fieldlab demo: error: cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: Connection refused"]


def test_help_speaks_to_trainers():
    r = fieldlab("--help")
    assert r.returncode == 0
    for word in ("demo", "sim", "edge", "gateway", "OEE"):
        assert word in r.stdout
    r = fieldlab("demo", "--help")
    assert "--speed" in r.stdout and "one hour per minute" in r.stdout


def test_the_readme_mosquitto_sub_line_shows_the_kpis(mosquitto, tmp_path):
    """The demo prints a mosquitto_sub command for watching KPIs; it must work as printed."""
    import re
    import shlex
    import shutil

    r = fieldlab("demo", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--duration", "3",
                 "--opcua-port", str(free_port(count=3)))
    assert r.returncode == 0, r.stderr
    line = re.search(r"KPIs on MQTT: (mosquitto_sub .*)", r.stdout).group(1)
    assert shutil.which("mosquitto_sub"), "install it with: sudo apt-get install -y mosquitto-clients"
    sub = subprocess.run(shlex.split(line) + ["-C", "3", "-W", "10"], capture_output=True, text=True, timeout=20)
    assert sub.returncode == 0, sub.stderr
    got = [ln.split(" ", 1) for ln in sub.stdout.strip().splitlines()]
    assert sorted(t.rsplit("/", 2)[1] for t, _ in got) == ["cnc-01", "filler-01", "moulder-01"]
    assert all(json.loads(p)["v"] == 1 for _, p in got)


def test_ctrl_c_stops_cleanly_with_the_final_table():
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "fieldlab", "demo", "--mqtt-port", str(free_port()),
                          "--http-port", str(free_port()),
                          "--opcua-port", str(free_port(count=3))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "Stop with Ctrl-C" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
        time.sleep(2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "final KPIs" in out and "filler-01" in out.split("final KPIs")[1]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_the_hints_name_a_command_that_works_from_here(tmp_path, monkeypatch):
    """After `./run demo` the bare `fieldlab` is not on PATH: the demo's hints say ./run (issue 14)."""
    from pathlib import Path

    from fieldlab.demo import command_name

    root = Path(__file__).resolve().parents[2]
    venv_bin = str(root / ".venv" / "bin")
    monkeypatch.chdir(root)
    bare = {"PATH": "/usr/bin:/bin"}
    assert command_name(".venv/bin/fieldlab", bare) == "./run"  # what ./run execs, from the checkout
    assert command_name(".venv/bin/fieldlab", {"PATH": venv_bin}) == "fieldlab"  # an activated venv
    assert command_name("/x/fieldlab/__main__.py", bare) == f"{sys.executable} -m fieldlab"
    assert command_name(".venv/bin/fieldlab", {**bare, "FIELDLAB_RUN": "./run"}) == "./run"
    monkeypatch.chdir(tmp_path)  # elsewhere, no run script: the path that was used
    assert command_name(f"{venv_bin}/fieldlab", bare) == f"{venv_bin}/fieldlab"
