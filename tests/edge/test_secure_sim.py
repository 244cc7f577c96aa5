"""The edge agent's secure OPC UA mode end to end, as docs/edge-on-a-pi.md tells a user to try it: a `fieldlab sim
--opcua-security sign,sign-encrypt --opcua-user agent` process, the agent's certificate made with the docs' own
openssl command, the agent from its mapping file (`fieldlab edge --config`) publishing to a real Mosquitto, and
`fieldlab edge check --online` naming what is wrong.

One simulator process serves the module: ~4-6 s start-up (Python, asyncua, a new RSA key), then ~1 s per check
and ~4 s for the agent's run.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from contract import Kind, MachineRef
from fieldlab import cli
from fieldlab.broker import free_port
from tests.contract.test_mqtt_security import _need, _run
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "agent", "pw-sim-agent"


def docs_openssl_command() -> str:
    """The `openssl req ...` command of docs/edge-on-a-pi.md ("Try the secure mode against the simulator")."""
    text = (ROOT / "docs" / "edge-on-a-pi.md").read_text()
    m = re.search(r"^openssl req (?:.*\\\n)*.*$", text, re.M)
    assert m, "docs/edge-on-a-pi.md lost its openssl command for the agent's certificate"
    return m.group(0)


@pytest.fixture(scope="module")
def secure_sim(tmp_path_factory):
    """`fieldlab sim` with security (cnc-01 at 60x), its password file and cert dir; the agent's certificate."""
    d = tmp_path_factory.mktemp("secure-sim")
    (d / "opcua-password").write_text(PASSWORD + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--speed", "60",
                             "--opcua-port", str(port), "--opcua-security", "sign,sign-encrypt",
                             "--opcua-user", USER, "--opcua-password-file", str(d / "opcua-password"),
                             "--opcua-cert-dir", str(d / "pki")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _need("openssl")
        _run("sh", "-c", docs_openssl_command(), cwd=d)  # while the simulator starts
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if line.startswith("OPC UA security:") or not line:
                break
        if not seen[-1].startswith("OPC UA security:"):
            pytest.fail("fieldlab sim did not start:\n" + "".join(seen))
    except BaseException:
        terminate(proc)
        raise
    yield SimpleNamespace(endpoint=f"opc.tcp://127.0.0.1:{port}/fieldlab/", dir=d, said="".join(seen))
    terminate(proc)


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    monkeypatch.setattr("fieldlab.logs.setup", lambda *a, **kw: None)  # keep pytest's logging as it is


def mapping(tmp_path, sim, mosquitto, site, security: str | None = "Basic256Sha256,SignAndEncrypt",
            user: str | None = USER, password: str = PASSWORD) -> Path:
    """The shipped docs/examples/edge-opcua.yaml, pointed at the secured simulator as the docs say."""
    (tmp_path / "opcua-password").write_text(password + "\n")
    opts = [f"security: {security}", f"certificate: {sim.dir / 'opcua-cert.pem'}",
            f"private_key: {sim.dir / 'opcua-key.pem'}"] if security else []
    opts += [f"username: {user}", f"password_file: {tmp_path / 'opcua-password'}"] if user else []
    text = (ROOT / "docs" / "examples" / "edge-opcua.yaml").read_text()
    for old, new in {"demo/hall-1/line-1/cnc-01": f"{site}/a/l/cnc-01",
                     "mqtt://localhost:1883": f"mqtt://127.0.0.1:{mosquitto.port}",
                     "endpoint: opc.tcp://127.0.0.1:4840/fieldlab/": f"endpoint: {sim.endpoint}",
                     "  publishing_interval: 100ms\n": "".join(f"  {o}\n" for o in ["publishing_interval: 100ms",
                                                                                      *opts])}.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def check(path: Path, capsys) -> tuple[int, str]:
    code = cli.main(["edge", "check", str(path), "--online", "--timeout", "3"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_simulator_says_how_it_is_secured(secure_sim):
    assert (f"OPC UA security: Basic256Sha256 Sign and SignAndEncrypt; user {USER} only; any client certificate "
            f"accepted; server certificate {secure_sim.dir / 'pki' / 'server-cert.der'}") in secure_sim.said
    assert (secure_sim.dir / "pki" / "server-key.pem").is_file()


def test_agent_from_its_mapping_file_publishes_over_an_encrypted_session(secure_sim, mosquitto, recorder, site,
                                                                          tmp_path, capsys):
    ref = MachineRef(site, "a", "l", "cnc-01")
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    path = mapping(tmp_path, secure_sim, mosquitto, site)
    code = cli.main(["edge", "--config", str(path), "--buffer", str(tmp_path / "q.db"), "--duration", "3"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"edge agent for {site}/a/l/cnc-01: opcua {secure_sim.endpoint}" in out.out
    assert rec.wait_for(lambda r: r.got(ref.topic(Kind.STATUS)) and r.got(ref.topic(Kind.STATUS))[-1]["status"]
                        == "offline", timeout=5)
    states = rec.got(ref.topic(Kind.STATE))
    counts = rec.got(ref.topic(Kind.COUNTS))
    telemetry = rec.got(ref.topic(Kind.TELEMETRY))
    assert states and counts and telemetry, json.dumps([t for t, _, _ in rec.messages])
    assert counts[0]["product"] and any("temperature" in t["signals"] for t in telemetry)  # read through it all


def test_sign_mode_and_the_servers_certificate_pinned(secure_sim, mosquitto, site, tmp_path, capsys):
    """Basic256Sha256,Sign, with the simulator's certificate given to the agent (no endpoint lookup first)."""
    pinned = f"Basic256Sha256,Sign\n  server_certificate: {secure_sim.dir / 'pki' / 'server-cert.der'}"
    code, out = check(mapping(tmp_path, secure_sim, mosquitto, site, pinned), capsys)
    assert code == 0, out
    assert re.search(rf"^OPC UA server\s+{re.escape(secure_sim.endpoint)}\s+connected as {USER}\s+OK", out, re.M), out
    assert re.search(r"^tag good\s+GoodCount\s+\d+\s+OK", out, re.M), out


def test_a_wrong_password_is_refused_and_named(secure_sim, mosquitto, site, tmp_path, capsys):
    path = mapping(tmp_path, secure_sim, mosquitto, site, password="not-it")
    code, out = check(path, capsys)
    assert code == 78, out  # a mistake in the credentials, not an unreachable server
    assert "(BadUserAccessDenied) (check the OPC UA username and password)" in out
    code = cli.main(["edge", "--config", str(path), "--buffer", str(tmp_path / "q.db"), "--duration", "3"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot connect to the OPC UA server at {secure_sim.endpoint}: " in err
    assert "(check the OPC UA username and password)" in err


@pytest.mark.parametrize("security, user, says", [
    ("Basic256Sha256,SignAndEncrypt", None, "(BadIdentityTokenRejected) (check the OPC UA username and password)"),
    (None, USER, "No matching endpoints: 1, http://opcfoundation.org/UA/SecurityPolicy#None"),
])
def test_anonymous_and_security_none_are_refused(secure_sim, mosquitto, site, tmp_path, capsys, security, user,
                                                 says):
    code, out = check(mapping(tmp_path, secure_sim, mosquitto, site, security, user), capsys)
    assert code == 78 and says in out, out  # both are mistakes in the mapping file, not an unreachable server
    assert "OPC UA server" in out and "connected" not in out


def test_inject_over_opcua_says_the_simulator_is_secured(secure_sim, capsys):
    code = cli.main(["sim", "inject", "cnc-01", "reset", "--opcua", secure_sim.endpoint])
    err = capsys.readouterr().err
    assert code == 2 and "refused an unsecured, anonymous session" in err and "(--broker)" in err, err
