"""Presenter mode in a deployed gateway (#15 item 2, #14): `fieldlab gateway --presenter` with the users file of
`fieldlab deploy` (plant file `presenters:`), on a real Mosquitto started with exactly the generated files.

A presenter logs in with the generated PIN and a fault button's `POST /api/presenter/inject` reaches the broker as
a cmd message on the machine's cmd topic (the generated ACL lets the gateway's user write it); an operator's PIN
gets 403 there. No all-scope token is printed to the service's log when a users file is configured. The web app
sends through the gateway's own connection: the generated broker allows one connection per user
(`use_username_as_clientid`), and a second connection as `gateway` took the gateway's session over a few times a
second (seen before the fix: the broker's log said "Client gateway already connected" at every turn).

The one-Pi case end to end (#15 review): the `fieldlab sim` command of docs/web.md's recipe (a viewer's MQTT login,
the plant's site, area and line) as the machine, the edge agent of the generated starter mapping file reading it
over OPC UA, the gateway with `--presenter`: a presenter's Breakdown makes the simulated machine break down, seen in
the gateway's state and stop reasons. A users file without presenters makes the gateway warn, naming the fix; the
page says the scenario is unknown where the gateway hears none (Chromium).
About 3 s, 9 s, 0.1 s and 2 s.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote
from pathlib import Path

import pytest

from contract import decode_command
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.passwords import mosquitto_hash
from contract.payloads import encode_state
from fieldlab import deploy, onepi
from fieldlab.broker import ConfiguredMosquitto, free_port, mosquitto_binary
from gateway.auth import Auth, read_users
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "acme/hall-1/line-1/cnc-01"
PLANT = """\
site: acme
machines:
  hall-1/line-1: [cnc-01]
viewers: [simulator]
operators: [anna]
presenters: [trainer]
"""


@pytest.fixture
def deployed():
    """`fieldlab deploy` (standalone, plain MQTT on loopback) and a Mosquitto running on the generated files."""
    if not mosquitto_binary():
        pytest.fail("mosquitto not found; install it with: sudo apt-get install -y mosquitto", pytrace=False)
    out = Path(tempfile.mkdtemp(prefix="fieldlab-presenter-"))  # a directory the broker's user may enter
    out.chmod(0o755)
    (out / "plant.yaml").write_text(PLANT)
    plant, port = deploy.load_plant(out / "plant.yaml"), free_port()
    deploy.generate(plant, out / "s", ports=(port, free_port()), plain_bind="127.0.0.1",
                    broker_user=deploy.default_broker_user("standalone"))
    deploy.web_login(plant, out / "s")
    broker = ConfiguredMosquitto(out / "s" / "mosquitto" / "mosquitto.conf", [port], out / "mosquitto.log").start()
    yield out / "s", port, broker
    broker.cleanup()
    shutil.rmtree(out)


def _url(out: Path, port: int, user: str) -> BrokerUrl:
    return BrokerUrl("127.0.0.1", port, user, (out / "credentials" / user).read_text().strip())


def _request(base: str, path: str, body: dict | None = None, cookie: str = "") -> tuple[int, dict, str]:
    headers = {"Content-Type": "application/json", "Origin": base, **({"Cookie": cookie} if cookie else {})}
    req = urllib.request.Request(base + path, json.dumps(body).encode() if body is not None else None, headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null"), r.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), ""


def test_a_presenter_pin_injects_a_fault_through_the_generated_acl_and_an_operator_pin_is_refused(deployed):
    out, port, broker = deployed
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    cmds: queue.Queue = queue.Queue()
    simulator = connect(_url(out, port, "simulator"), "simulator", on_message=lambda c, u, m: cmds.put(m),
                        subscriptions=[("fieldlab/v1/acme/+/+/+/cmd", 1)])
    gw = subprocess.Popen(
        [sys.executable, "-m", "fieldlab", "gateway", "--broker", f"mqtt://gateway@127.0.0.1:{port}",
         "--password-file", str(out / "credentials" / "gateway"), "--site", "acme", "--http-port", str(http),
         "--state-dir", "none", "--presenter"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "FIELDLAB_WEB_USERS": str(out / "web" / "users"),
             "FIELDLAB_WEB_KEY_FILE": str(out / "web" / "key")})
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(gw.stdout), daemon=True).start()
    edge = connect(_url(out, port, "edge-cnc-01"), "edge-cnc-01")
    try:
        # the machine exists for the gateway once it has sent something (its edge agent, as the ACL allows)
        deadline, known = time.monotonic() + 15, []
        while MACHINE not in known:
            assert time.monotonic() < deadline and gw.poll() is None, "".join(said)
            assert wait_published([edge.publish(f"fieldlab/v1/{MACHINE}/state", encode_state([time.time()], [4]),
                                                qos=1)], 5.0)
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"{base}/api/machines", timeout=2) as r:
                    body = json.loads(r.read())
                known = [m["id"] for m in (body["machines"] if isinstance(body, dict) else body)]
            except OSError:
                pass
        pins = {f.name: f.read_text().strip() for f in (out / "web" / "pins").iterdir()}
        fault = {"machine": MACHINE, "fault": "breakdown", "args": {"minutes": 5}}

        status, who, cookie = _request(base, "/login", {"user": "anna", "pin": pins["anna"]})
        assert status == 200 and who["scopes"] == ["operator"]
        status, answer, _ = _request(base, "/api/presenter/inject", fault, cookie.split(";")[0])
        assert status == 403, answer
        assert _request(base, "/api/presenter/inject", fault)[0] == 401  # no login at all

        status, who, cookie = _request(base, "/login", {"user": "trainer", "pin": pins["trainer"]})
        assert status == 200 and who["scopes"] == ["presenter"]
        status, answer, _ = _request(base, "/api/presenter/inject", fault, cookie.split(";")[0])
        assert status == 200, answer
        msg = cmds.get(timeout=5)  # on the broker, through the generated ACL, for a simulator that takes faults
        assert msg.topic == f"fieldlab/v1/{MACHINE}/cmd"
        command = decode_command(msg.payload)
        assert (command.cmd, command.args) == ("breakdown", {"minutes": 5})
        assert cmds.empty()  # the refused ones sent nothing

        text = "".join(said)
        assert f"presenter mode: {base}/presenter" in text and "token=" not in text, text
        # one connection as gateway: nothing took its session over (use_username_as_clientid)
        assert "already connected" not in broker.log_text(), broker.log_text()[-2000:]
    finally:
        terminate(gw)
        for c in (simulator, edge):
            c.disconnect()
            c.loop_stop()
    assert gw.returncode == 0, "".join(said)


async def test_presenter_mode_prints_the_token_only_without_a_users_file_and_needs_no_second_login(capsys,
                                                                                                  tmp_path):
    """With a users file a service's log gets no all-scope token; with a user name for MQTT (a broker of fieldlab
    deploy: one connection per user) no connection of its own is made. (No broker is contacted here.)"""
    (tmp_path / "users").write_text("trainer:presenter:" + mosquitto_hash("123456") + "\n")
    for users, token_shown in ((read_users(str(tmp_path / "users")), False), (None, True)):
        gw = Gateway(BrokerUrl("127.0.0.1", free_port(), "gateway", "x"), site="acme")
        http = HttpEndpoint(gw, "127.0.0.1", 0, auth=Auth(token="tok-123", users=users), presenter=True)
        await http.start()
        try:
            assert http._mqtt is None and not http.hears_scenario
            said = capsys.readouterr().out
            assert ("tok-123" in said) is token_shown, said
            assert (f"presenter mode: {http.url}/presenter" in said) is not token_shown, said
        finally:
            await http.stop()


async def test_presenter_mode_with_a_users_file_without_presenters_warns_and_names_the_fix(caplog, capsys, tmp_path):
    """No presenter in the users file and no token printed: nobody could present. The log says so and what to do."""
    from gateway.http import log as http_log

    (tmp_path / "users").write_text("anna:operator:" + mosquitto_hash("123456") + "\n")
    http = HttpEndpoint(Gateway(BrokerUrl("127.0.0.1", free_port(), "gateway", "x"), site="acme"), "127.0.0.1", 0,
                        auth=Auth(users=read_users(str(tmp_path / "users"))), presenter=True)
    with caplog.at_level(logging.WARNING, logger=http_log.name):
        await http.start()
        await http.stop()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "no user of the web login file (FIELDLAB_WEB_USERS) is a presenter" in warned[0]
    assert "add presenters: [trainer] to the plant file and run fieldlab deploy again" in warned[0]
    said = capsys.readouterr().out
    assert "presenter's name and PIN" not in said and "token=" not in said, said


def _doc_simulator() -> tuple[list[str], dict[str, str], str]:
    """docs/web.md's one-Pi recipe: the fieldlab arguments of its `systemd-run ... fieldlab sim` line, its
    LoadCredential= (name -> source) and its unit name."""
    text = (ROOT / "docs" / "web.md").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if "systemd-run --unit fieldlab-sim" in x and "fieldlab sim " in x)
    words = shlex.split(line)
    unit = words[words.index("--unit") + 1]
    props = [words[i + 1] for i, w in enumerate(words) if w == "-p"]
    assert "DynamicUser=yes" in props, props
    creds = dict(p.removeprefix("LoadCredential=").split(":", 1) for p in props if p.startswith("LoadCredential="))
    return words[words.index("/opt/fieldlab/venv/bin/fieldlab") + 1:], creds, unit


def test_a_presenters_breakdown_stops_the_simulated_machine_of_the_one_pi_recipe(deployed, tmp_path):
    out, port, broker = deployed
    plant = deploy.load_plant(out.parent / "plant.yaml")
    http, opcua = free_port(), free_port()
    base = f"http://127.0.0.1:{http}"
    # the simulator as docs/web.md runs it, with the credential where systemd would put it, on this test's ports
    args, creds, unit = _doc_simulator()
    assert creds == {"mqtt-password": "/etc/fieldlab/credentials/simulator"}
    run_creds = tmp_path / "credentials"
    run_creds.mkdir()
    shutil.copyfile(out / "credentials" / "simulator", run_creds / "mqtt-password")
    password_file = args[args.index("--password-file") + 1]
    assert password_file == f"/run/credentials/{unit}.service/mqtt-password"
    args[args.index("--password-file") + 1] = str(run_creds / "mqtt-password")
    assert "mqtt://simulator@127.0.0.1:1883" in args and args[:3] == ["sim", "--machines", "1"], args
    args = [a.replace("127.0.0.1:1883", f"127.0.0.1:{port}") for a in args]
    # the edge agent of the generated starter mapping file (systemd's credential path and the port changed)
    mapping = onepi.edge_mapping(plant, 0, plain_port=port)
    edge_unit = "fieldlab-edge-cnc-01.service"
    assert f"/run/credentials/{edge_unit}/mqtt-password" in mapping and "127.0.0.1:4840/" in mapping
    (tmp_path / "cnc-01.yaml").write_text(
        mapping.replace(f"/run/credentials/{edge_unit}/mqtt-password", str(out / "credentials" / "edge-cnc-01"))
        .replace("127.0.0.1:4840/", f"127.0.0.1:{opcua}/"))
    procs, logs = {}, {}

    def start(name, argv, env=None):
        procs[name] = subprocess.Popen([sys.executable, "-m", "fieldlab", *argv], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        logs[name] = []
        threading.Thread(target=lambda: logs[name].extend(procs[name].stdout), daemon=True).start()

    def tails() -> str:
        return "\n".join(f"--- {name}\n{''.join(lines[-20:])}" for name, lines in logs.items())

    def get(path: str):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return json.loads(r.read())

    def machine() -> dict:
        try:
            body = get("/api/machines")
        except OSError:
            return {}
        rows = body["machines"] if isinstance(body, dict) else body
        return next((m for m in rows if m["id"] == MACHINE), {})

    def until(what, timeout: float, why: str):
        deadline = time.monotonic() + timeout
        while not (found := what()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                pytest.fail(f"{why}:\n{tails()}", pytrace=False)
            time.sleep(0.2)
        return found

    try:
        start("sim", [*args, "--speed", "60", "--opcua-port", str(opcua), "-v"])
        start("gateway", ["gateway", "--broker", f"mqtt://gateway@127.0.0.1:{port}", "--password-file",
                          str(out / "credentials" / "gateway"), "--site", "acme", "--http-port", str(http),
                          "--state-dir", "none", "--presenter"],
              {"FIELDLAB_WEB_USERS": str(out / "web" / "users"), "FIELDLAB_WEB_KEY_FILE": str(out / "web" / "key")})
        until(lambda: any("fault commands: fieldlab/v1/acme/hall-1/line-1/<machine>/cmd" in x for x in logs["sim"]),
              20, "the simulator did not listen for commands")
        start("edge", ["edge", "--config", str(tmp_path / "cnc-01.yaml"), "--buffer", str(tmp_path / "outbox.db")])
        until(lambda: machine().get("state_name") == "Execute", 30, "the machine did not reach the gateway")
        assert not any(x.get("reason") == 101 for x in get(f"/api/machines/{quote(MACHINE, safe='')}/losses")
                       ["stop_reasons"])  # no breakdown of its own so far

        pin = (out / "web" / "pins" / "trainer").read_text().strip()
        status, _, cookie = _request(base, "/login", {"user": "trainer", "pin": pin})
        assert status == 200
        status, answer, _ = _request(base, "/api/presenter/inject", {"machine": MACHINE, "fault": "breakdown",
                                                                    "args": {"minutes": 5}}, cookie.split(";")[0])
        assert status == 200, answer
        assert get("/api/presenter")["hears_scenario"] is False  # a deployed gateway: the scenario is unknown
        # the simulator took it for its cnc-01 and the machine broke down: Holding, Held (reason 101), as the
        # gateway sees it through the edge agent
        until(lambda: machine().get("state_name") in ("Holding", "Held"), 10, "the machine did not break down")
        reasons = until(lambda: [x for x in get(f"/api/machines/{quote(MACHINE, safe='')}/losses")["stop_reasons"]
                                 if x.get("reason") == 101 and x["seconds"] > 0], 10, "no breakdown among the stops")
        assert reasons, reasons
        assert any("command on fieldlab/v1/acme/hall-1/line-1/cnc-01/cmd" in x and "breakdown" in x.lower()
                   for x in logs["sim"]), tails()
    finally:
        terminate(*reversed(list(procs.values())))
    assert {name: p.returncode for name, p in procs.items()} == {"sim": 0, "gateway": 0, "edge": 0}, tails()
