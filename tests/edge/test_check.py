"""`fieldlab edge check --online`, `fieldlab edge read` and the agent's exit 78, against real servers.

One `fieldlab sim` process (cnc-01 over OPC UA and Modbus TCP) and one Mosquitto with a password file and
an ACL serve the whole module; each test writes a mapping file with one mistake and runs the command
in this process (cli.main), as a user would run it. Cost: ~4 s start-up, then ~0.3-1 s per test.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.errors import ServiceError
from fieldlab import cli
from fieldlab.broker import PrivateMosquitto, free_port
from tests.contract.test_mqtt_security import _need, _run
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "edge-cnc-01", "pw-cnc-01"
SITE = "chk"


@pytest.fixture(scope="module")
def machine():
    """`fieldlab sim`: cnc-01 at 60x speed, OPC UA on .opcua, Modbus TCP on .modbus."""
    opcua, modbus = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--speed", "60",
                             "--opcua-port", str(opcua), "--modbus-port", str(modbus)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if line.startswith("cnc-01: opc.tcp://") or not line:
            break
    if not seen[-1].startswith("cnc-01: opc.tcp://"):
        terminate(proc)
        pytest.fail("fieldlab sim did not start:\n" + "".join(seen))
    yield type("Machine", (), {"opcua": opcua, "modbus": modbus})
    terminate(proc)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """Mosquitto with a password file and an ACL: edge-cnc-01 may publish only cnc-01's topics."""
    d = tmp_path_factory.mktemp("check-mosquitto")
    _run(_need("mosquitto_passwd"), "-b", "-c", str(d / "passwd"), USER, PASSWORD, cwd=d)
    (d / "acl").write_text(f"user {USER}\ntopic write fieldlab/v1/{SITE}/a/l/cnc-01/#\n")
    _need("mosquitto")
    try:
        b = PrivateMosquitto(workdir=d, password_file=d / "passwd", acl_file=d / "acl").start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    monkeypatch.setattr("fieldlab.logs.setup", lambda *a, **kw: None)  # keep pytest's logging as it is


def mapping(tmp_path, machine, broker, kind="opcua", password=PASSWORD, **replace) -> Path:
    """The shipped example for ``kind``, pointed at this module's simulator and broker, then ``replace``d."""
    (tmp_path / "mqtt-password").write_text(password + "\n")
    text = (ROOT / "docs" / "examples" / f"edge-{kind}.yaml").read_text()
    text = text.replace("demo/hall-1/line-1/cnc-01", f"{SITE}/a/l/cnc-01") \
        .replace("opc.tcp://127.0.0.1:4840/", f"opc.tcp://127.0.0.1:{machine.opcua}/") \
        .replace("port: 5020", f"port: {machine.modbus}") \
        .replace("url: mqtt://localhost:1883", f"url: mqtt://127.0.0.1:{broker.port}\n  username: {USER}\n"
                                               f"  password_file: {tmp_path / 'mqtt-password'}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def check(path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = cli.main(["edge", "check", str(path), "--online", "--timeout", "3", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def row(out: str, what: str) -> str:
    """A table row and the explanation under it."""
    m = re.search(rf"^{re.escape(what)}\s.*(?:\n\s+-> .*)?", out, re.M)
    assert m, f"no row {what!r} in:\n{out}"
    return m.group(0)


# -- OPC UA

def test_everything_ok_reads_every_tag_and_publishes(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker), capsys)
    assert code == 0, out
    for tag in ("state", "reason", "good", "reject", "product", "ideal_cycle_s", "temperature", "power", "vibration"):
        assert row(out, f"tag {tag}").endswith("OK")
    assert re.search(r"tag temperature\s+Process/Temperature\s+\d+(\.\d+)? degC\s+OK", out), out
    assert "logged in as edge-cnc-01" in row(out, "MQTT broker")
    assert "acknowledged (QoS 1)" in row(out, "MQTT publish")
    assert out.rstrip().endswith("all OK: the agent can start")


def test_wrong_node_id_is_a_mapping_error_naming_the_tag(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, **{"node: GoodCount": "node: ns=2;s=Nope"}), capsys)
    assert code == 78, out
    assert "ERROR" in row(out, "tag good") and "no such variable on the server (BadNodeIdUnknown)" in out
    assert "fieldlab edge discover" in row(out, "tag good")
    assert row(out, "tag reject").endswith("OK")  # the other tags are still read


def test_wrong_opcua_port_is_unreachable(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, **{f":{machine.opcua}/": f":{free_port()}/"}), capsys)
    assert code == 69, out
    assert "check source.endpoint" in row(out, "OPC UA server")
    assert "acknowledged" in row(out, "MQTT publish")  # the broker is still checked


def test_wrong_broker_port_is_unreachable(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, **{f"127.0.0.1:{broker.port}": f"127.0.0.1:{free_port()}"}),
                      capsys)
    assert code == 69, out
    assert "cannot reach the MQTT broker" in row(out, "MQTT broker") and "check broker.url" in out


def test_wrong_broker_password_is_a_config_error(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, password="wrong"), capsys)
    assert code == 78, out
    assert "not authorised" in row(out, "MQTT broker") and "password file" in out


def test_topic_the_acl_denies_is_found_over_mqtt5(machine, broker, tmp_path, capsys):
    """The agent's user may publish cnc-01's topics only: a mapping file for cnc-02 with that user is refused.
    Over MQTT 3.1.1 the broker would acknowledge the publish and drop it; MQTT 5's PUBACK says 135."""
    path = mapping(tmp_path, machine, broker, **{f"{SITE}/a/l/cnc-01": f"{SITE}/a/l/cnc-02"})
    code, out = check(path, capsys)
    assert code == 78, out
    assert "the broker refused it: Not authorized" in row(out, "MQTT publish")
    assert "logged in as edge-cnc-01" in row(out, "MQTT broker")


def test_offline_check_stays_offline(machine, broker, tmp_path, capsys):
    path = mapping(tmp_path, machine, broker, **{f":{machine.opcua}/": ":1/"})
    assert cli.main(["edge", "check", str(path)]) == 0  # without --online nothing connects
    assert f"{path}: OK" in capsys.readouterr().out
    assert cli.main(["edge", "--config", str(path), "--check"]) == 0


def test_agent_exits_78_on_a_wrong_node_id_at_start(machine, broker, tmp_path, capsys):
    """docs/edge-on-a-pi.md: a mistake in the mapping file stops the agent for good (systemd: no restart)."""
    path = mapping(tmp_path, machine, broker, **{"node: GoodCount": "node: ns=2;s=Nope"})
    code = cli.main(["edge", "--config", str(path), "--buffer", str(tmp_path / "q.db"), "--duration", "5"])
    assert code == 78
    assert "no variable ns=2;s=Nope for 'good'" in capsys.readouterr().err


# -- Modbus

def test_modbus_ok_with_raw_and_scaled_values(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, "modbus"), capsys)
    assert code == 0, out
    assert re.search(r"tag temperature\s+input 6 int16\s+-?\d+ -> -?\d+(\.\d+)? degC\s+OK", out), out
    assert "connected, unit 1" in row(out, "Modbus device")


def test_modbus_4xxxx_notation_is_read_as_the_manuals_numbers(machine, broker, tmp_path, capsys):
    """40003 in a manual is holding register 2 (0-based): the good counter of the simulator's map."""
    path = mapping(tmp_path, machine, broker, "modbus",
                   **{"{tag: good, address: 2, table: input, type: uint32}":
                      "{tag: good, address: 40003, type: uint32}"})
    code, out = check(path, capsys)
    assert code == 0, out
    assert "address 40003 is read as the manual's 1-based 4xxxx notation: holding register, 0-based address 2" in out
    assert re.search(r"tag good\s+holding 2 uint32\s+\d+\s+OK", out), out


def test_modbus_address_that_does_not_exist_says_why_and_stops_the_agent_with_78(machine, broker, tmp_path, capsys):
    path = mapping(tmp_path, machine, broker, "modbus", **{"{tag: good, address: 2, table: input, type: uint32}":
                                                           "{tag: good, address: 40003, table: holding, type: uint32}"})
    code, out = check(path, capsys)
    assert code == 78, out
    good = row(out, "tag good")
    assert "Modbus exception 2 (illegal data address)" in good and "1-based 3xxxx/4xxxx number" in good
    assert "table: holding and address: 2" in good  # the fix, spelled out
    code = cli.main(["edge", "--config", str(path), "--buffer", str(tmp_path / "q.db"), "--duration", "5"])
    assert code == 78
    assert "refuses registers of the mapping file" in capsys.readouterr().err


def test_modbus_wrong_unit_id_is_named(machine, broker, tmp_path, capsys):
    code, out = check(mapping(tmp_path, machine, broker, "modbus", **{"unit_id: 1": "unit_id: 7"}), capsys)
    assert code == 78, out
    assert "Modbus exception 4" in row(out, "tag state") and "most often a wrong unit_id (7)" in out


def test_modbus_wrong_port_is_unreachable(machine, broker, tmp_path, capsys):
    path = mapping(tmp_path, machine, broker, "modbus", **{f"port: {machine.modbus}": f"port: {free_port()}"})
    code, out = check(path, capsys)
    assert code == 69, out
    assert "cannot reach the Modbus device" in row(out, "Modbus device")


def test_edge_read_shows_raw_and_scaled_values_count_times(machine, broker, tmp_path, capsys):
    path = mapping(tmp_path, machine, broker, "modbus")
    assert cli.main(["edge", "read", str(path), "--count", "2", "--every", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "read 1 of 2" in out and "read 2 of 2" in out and "read 3" not in out
    assert len(re.findall(r"tag power\s+input 7 uint16\s+\d+ -> \d+(\.\d+)? kW\s+OK", out)) == 2, out


def test_edge_read_is_for_modbus(machine, broker, tmp_path, capsys):
    assert cli.main(["edge", "read", str(mapping(tmp_path, machine, broker))]) == 2
    assert "edge read watches Modbus registers" in capsys.readouterr().err


def test_unknown_namespace_is_named_by_the_check_and_stops_the_agent_with_78(machine, broker, tmp_path, capsys):
    path = mapping(tmp_path, machine, broker, **{"namespace: urn:fieldlab:sim": "namespace: urn:acme:press"})
    code, out = check(path, capsys)
    assert code == 78, out
    assert "the server has no namespace 'urn:acme:press'; it has: " in row(out, "namespace")
    assert "urn:fieldlab:sim" in row(out, "namespace")
    code = cli.main(["edge", "--config", str(path), "--buffer", str(tmp_path / "q.db"), "--duration", "5"])
    assert code == 78
    assert "source.namespace 'urn:acme:press': the OPC UA server has no such namespace" in capsys.readouterr().err


def test_digital_inputs_are_opened(broker, tmp_path, capsys):
    """mock pins (gpiozero's MockFactory): on a Pi the same rows say whether the pins can be opened."""
    (tmp_path / "mqtt-password").write_text(PASSWORD)
    text = (ROOT / "docs" / "examples" / "edge-gpio.yaml").read_text() \
        .replace("demo/hall-1/line-1/press-01", f"{SITE}/a/l/cnc-01") \
        .replace("  type: gpio", "  type: gpio\n  pin_factory: mock") \
        .replace("url: mqtt://localhost:1883", f"url: mqtt://127.0.0.1:{broker.port}\n  username: {USER}\n"
                                               f"  password_file: {tmp_path / 'mqtt-password'}")
    (tmp_path / "edge.yaml").write_text(text)
    code, out = check(tmp_path / "edge.yaml", capsys)
    assert code == 0, out
    assert re.search(r"digital inputs\s+good pin 17, state green pin 22, state orange pin 27, state red pin 23\s+"
                     r"opened \(mock pins\)\s+OK", out), out
