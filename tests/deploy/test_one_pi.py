"""`fieldlab deploy --layout pi`: broker, gateway and an edge agent per machine on one Pi (docs/one-pi.md).

systemd does not run in this container (PID 1 is not systemd), so the units are never started by systemd here.
What is tested instead: `systemd-analyze verify` accepts every generated unit; every ExecStart, with the values
systemd puts in for ${CREDENTIALS_DIRECTORY}, %d and ${STATE_DIRECTORY}, is a valid fieldlab command line; and
the doc's steps run as the units would run them: a real Mosquitto with the generated configuration (as a
drop-in next to Debian's), the gateway with the generated arguments and web login, `fieldlab sim` as the
machine and the edge agent with the generated mapping file, until KPIs arrive over MQTT, /healthz answers 200,
a stop shows with its reason, and an operator logs in with the generated PIN and enters a hand-counted reject.
"""
from __future__ import annotations

import json
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
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from contract.errors import ServiceError
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.passwords import hash_matches
from fieldlab import cli, deploy, onepi
from fieldlab.broker import ConfiguredMosquitto, free_port, mosquitto_binary
from gateway.auth import read_users
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parents[2]
FIELDLAB = [sys.executable, "-m", "fieldlab"]
SAMPLE = (ROOT / "deploy" / "pi" / "plant.yaml").read_text()  # the plant file docs/one-pi.md starts from


def _uncomment(text: str, *keys: str) -> str:
    for key in keys:
        assert f"  # {key}" in text, key
        text = text.replace(f"  # {key}", f"  {key}")
    return text


PLANT = SAMPLE.split("\npi:\n")[0] + "\n"  # without its pi: section
PLAIN = _uncomment(SAMPLE, "tls: false")  # no TLS, no InfluxDB
SECURE = _uncomment(SAMPLE, "influx:", "http_port:").replace("http_port: 8080", "http_port: 8081")  # TLS (default)
MACHINE = "fieldlab/v1/acme/hall-1/line-1/cnc-01"


def _shared_dir(prefix: str) -> Path:
    """A directory the broker's user may enter, as /etc/fieldlab is (pytest's own are private to root, and
    Mosquitto started as root reads its files as user mosquitto)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def made():
    """`fieldlab deploy PLANT --layout pi --out DIR` for both plant files, as the doc runs it: {name: (dir, run)}."""
    base = _shared_dir("fieldlab-pi-")
    out = {}
    for name, text in (("plain", PLAIN), ("secure", SECURE)):
        (base / f"{name}.yaml").write_text(text)
        r = subprocess.run([*FIELDLAB, "deploy", str(base / f"{name}.yaml"), "--layout", "pi", "--out",
                            str(base / name)], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        out[name] = (base / name, r)
    yield out
    shutil.rmtree(base)


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def _as_systemd(unit: Path, creds: Path, state: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's command line and Environment= as systemd starts it: each LoadCredential= copied into ``creds``
    (its $CREDENTIALS_DIRECTORY, %d), ${STATE_DIRECTORY} = ``state``."""
    creds.mkdir(exist_ok=True)
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("LoadCredential="):
            name, source = line.removeprefix("LoadCredential=").split(":", 1)
            shutil.copyfile(source, creds / name)
        elif line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value.replace("%d", str(creds))
    args = [a.replace("${CREDENTIALS_DIRECTORY}", str(creds)).replace("${STATE_DIRECTORY}", str(state))
            for a in _exec_start(unit)]
    assert not any("$" in a or "%" in a for a in [*args, *env.values()]), (args, env)
    return args, env


# --- the generated files ---

@pytest.mark.parametrize("name", ["plain", "secure"])
def test_systemd_accepts_every_generated_unit(made, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd", pytrace=False)
    out, _ = made[name]
    units = sorted((out / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["fieldlab-edge-cnc-01.service", "fieldlab-gateway.service"]
    r = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr  # unknown keys are only warnings: none allowed


def test_the_gateway_runs_without_influxdb_and_tls_where_the_plant_file_says_so(made, tmp_path, monkeypatch):
    for name in ("plain", "secure"):
        out, _ = made[name]
        unit = out / "systemd" / "fieldlab-gateway.service"
        args, env = _as_systemd(unit, tmp_path / name, tmp_path / "state")
        assert args[0] == str(Path(sys.executable).with_name("fieldlab")) and Path(args[0]).exists()
        a = cli.build_parser().parse_args(args[1:])
        url = cli._broker(a)  # on the Pi itself: plain MQTT over loopback, whatever the network gets
        assert (url.host, url.port, url.tls, url.username) == ("127.0.0.1", 1883, False, "gateway")
        assert url.password == (out / "credentials" / "gateway").read_text().strip()
        assert (a.site, a.http_host, cli._state_dir(a.state_dir)) == ("acme", "0.0.0.0", tmp_path / "state")
        assert "mqtts://" not in unit.read_text()
        # the web login: the key and users files reach the gateway through %d, and the users file is valid
        assert read_users(env["FIELDLAB_WEB_USERS"])["anna"][0] == {"operator"}
        assert Path(env["FIELDLAB_WEB_KEY_FILE"]).read_text().strip()
        if name == "plain":
            assert "--influx" not in args and "influx" not in unit.read_text()
            assert a.http_port == 8080 and cli._influx_sink(a) is None
        else:
            assert a.influx == "http://127.0.0.1:8086" and a.http_port == 8081
            assert f"EnvironmentFile=-{out}/gateway.env" in unit.read_text()
            monkeypatch.setenv("FIELDLAB_INFLUX_PASSWORD", "from-gateway-env")
            assert cli._influx_sink(a).database == "fieldlab"


def test_the_edge_unit_runs_the_generated_mapping_file(made, tmp_path):
    out, _ = made["plain"]
    unit = out / "systemd" / "fieldlab-edge-cnc-01.service"
    args, _ = _as_systemd(unit, tmp_path / "creds", tmp_path / "state")
    a = cli.build_parser().parse_args(args[1:])
    assert (a.command, a.config, a.buffer) == ("edge", str(out / "edge" / "cnc-01.yaml"), str(tmp_path / "state" /
                                                                                              "outbox.db"))
    mapping = Path(a.config).read_text()
    # the password file the mapping names is where systemd puts this unit's credential
    assert f"password_file: /run/credentials/{unit.name}/mqtt-password" in mapping
    copy = tmp_path / "edge.yaml"
    copy.write_text(mapping.replace(f"/run/credentials/{unit.name}", str(tmp_path / "creds")))
    r = subprocess.run([*FIELDLAB, "edge", "--config", str(copy), "--check"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "acme/hall-1/line-1/cnc-01" in r.stdout and "as edge-cnc-01 with password" in r.stdout


def test_plain_mqtt_for_the_network_only_where_the_plant_file_says_so(made):
    plain, run = made["plain"]
    conf = (plain / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 1883\n" in conf and "listener 8883" not in conf
    assert "warning: plain MQTT on 0.0.0.0:1883 is open to the network" in run.stderr
    secure, run = made["secure"]
    conf = (secure / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 1883 127.0.0.1\n" in conf and "listener 8883\n" in conf and "certfile" in conf
    assert "plain MQTT" not in run.stderr
    assert "persistence" not in conf  # a drop-in: Debian's own mosquitto.conf sets it


def test_secrets_are_in_files_of_mode_0600_and_nowhere_else(made):
    for name in ("plain", "secure"):
        out, run = made[name]
        secret_files = [*(out / "credentials").iterdir(), out / "web" / "key", out / "web" / "users",
                        *(out / "web" / "pins").iterdir()]
        assert {f.stat().st_mode & 0o777 for f in secret_files} == {0o600}
        assert {(out / d).stat().st_mode & 0o777 for d in ("credentials", "web", "web/pins")} == {0o700}
        pin = (out / "web" / "pins" / "anna").read_text().strip()
        assert len(pin) == onepi.PIN_DIGITS and pin.isdigit()
        assert hash_matches(read_users(str(out / "web" / "users"))["anna"][1], pin)
        values = [f.read_text().strip() for f in [*(out / "credentials").iterdir(), out / "web" / "key"]] + [pin]
        public = [*(out / "systemd").iterdir(), *(out / "edge").iterdir()]
        for f in public:
            assert f.stat().st_mode & 0o777 == 0o644
            assert not any(v in f.read_text() for v in values), f
        assert not any(v in run.stdout + run.stderr for v in values)


def test_running_it_again_keeps_passwords_pins_and_edited_mapping_files(made, tmp_path):
    out = _shared_dir("fieldlab-pi-again-")
    try:
        plant = tmp_path / "plant.yaml"
        plant.write_text(PLAIN)
        before = {}
        for step in range(2):
            r = subprocess.run([*FIELDLAB, "deploy", str(plant), "--layout", "pi", "--out", str(out)],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert r.returncode == 0, r.stderr
            now = {f.relative_to(out): f.read_text() for f in out.rglob("*") if f.is_file()}
            if step == 0:
                before = now
                (out / "edge" / "cnc-01.yaml").write_text("# my own mapping\n")
                plant.write_text(PLAIN.replace("[cnc-01]", "[cnc-01, press-02]").replace("[anna]", "[piet]"))
        assert now[Path("credentials/edge-cnc-01")] == before[Path("credentials/edge-cnc-01")]
        assert now[Path("web/key")] == before[Path("web/key")]
        assert now[Path("edge/cnc-01.yaml")] == "# my own mapping\n" and Path("edge/press-02.yaml") in now
        assert Path("systemd/fieldlab-edge-press-02.service") in now
        assert Path("web/pins/anna") not in now and Path("web/pins/piet") in now
        assert "mapping file kept" in r.stdout and "starter mapping file" in r.stdout
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("section, message", [
    ("pi:\n  tls: no-thanks\n", "pi.tls: write true"),
    ("pi:\n  influx: 'http://gateway:secret@127.0.0.1:8086'\n", "no password in the address"),
    ("pi:\n  influx: localhost:8086\n", "write InfluxDB's address"),
    ("pi:\n  http_port: 80800\n", "port number between 1 and 65535"),
    ("pi:\n  grafana: true\n", "unknown key; the keys are tls, influx, http_port"),
])
def test_a_wrong_pi_section_names_the_key_and_the_fix(tmp_path, section, message):
    plant = tmp_path / "plant.yaml"
    plant.write_text(PLANT + section)
    r = subprocess.run([*FIELDLAB, "deploy", str(plant), "--layout", "pi", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and message in r.stderr and "plant.yaml:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_each_starter_mapping_reads_the_simulators_machine_at_its_place(tmp_path):
    """A second machine in the plant file (test-01) reads the simulator's second machine (moulder-01, port 4841),
    not an object named after itself that `fieldlab sim --machines 2` does not have (the agent stopped with 78)."""
    import yaml

    from fieldlab.demo import demo_machines

    (tmp_path / "plant.yaml").write_text(PLAIN.replace("[cnc-01]", "[cnc-01, test-01, oven-9]"))
    plant = deploy.load_plant(tmp_path / "plant.yaml")
    simulated = [m.spec.name for m in demo_machines(3, 0.0, 1)]
    for i, name in enumerate(["cnc-01", "test-01", "oven-9"]):
        mapping = yaml.safe_load(onepi.edge_mapping(plant, i))
        assert mapping["machine"] == f"acme/hall-1/line-1/{name}"
        assert mapping["source"]["root"] == simulated[i]
        assert mapping["source"]["endpoint"] == f"opc.tcp://127.0.0.1:{onepi.SIM_PORT + i}/fieldlab/"


def test_the_pi_layout_keeps_the_local_listener_on_loopback(tmp_path):
    """Its services reach the broker on 127.0.0.1: another --plain-bind would cut them off, so it is refused."""
    plant = tmp_path / "plant.yaml"
    plant.write_text(PLAIN)
    r = subprocess.run([*FIELDLAB, "deploy", str(plant), "--layout", "pi", "--out", str(tmp_path / "out"),
                        "--plain-bind", "192.168.1.10"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "--plain-bind: with --layout pi" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_every_fieldlab_command_in_the_doc_is_valid():
    """docs/one-pi.md's command lines (continuations joined), parsed by fieldlab's own parser."""
    text = (ROOT / "docs" / "one-pi.md").read_text().replace("\\\n", " ")
    commands = [line.split("/opt/fieldlab/venv/bin/fieldlab ", 1)[1].split("#")[0] for line in text.splitlines()
                if "/opt/fieldlab/venv/bin/fieldlab " in line]
    assert len(commands) >= 5
    for command in commands:
        args = shlex.split(command)
        if args == ["--help"]:
            continue
        if args[0] == "deploy":
            assert args[1:] == ["/etc/fieldlab/plant.yaml", "--layout", "pi"], command
        cli.build_parser().parse_args(args)  # SystemExit (and argparse's message) on a wrong option


# --- the set running: broker, gateway, machine, edge agent ---

@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    """The files of `--layout pi` (plain) on free ports, and a real Mosquitto on them as Debian runs it:
    its own mosquitto.conf including conf.d, where the generated one is linked."""
    if not mosquitto_binary():
        pytest.fail("mosquitto not found; install it with: sudo apt-get install -y mosquitto", pytrace=False)
    base = _shared_dir("fieldlab-pi-run-")
    port, http = free_port(), free_port()
    (base / "plant.yaml").write_text(_uncomment(PLAIN, "http_port:").replace("http_port: 8080", f"http_port: {http}"))
    plant, out = deploy.load_plant(base / "plant.yaml"), base / "etc-fieldlab"
    deploy.generate(plant, out, tls=False, layout="debian", ports=(port, 8883),
                    broker_user=deploy.default_broker_user("debian"))
    onepi.generate(plant, out, plain_port=port)
    (base / "conf.d").mkdir()
    (base / "conf.d" / "fieldlab.conf").symlink_to(out / "mosquitto" / "mosquitto.conf")
    (base / "data").mkdir()
    if os.geteuid() == 0:
        shutil.chown(base / "data", "mosquitto", "mosquitto")
    (base / "mosquitto.conf").write_text(f"persistence true\npersistence_location {base}/data/\n"
                                         f"log_dest stderr\ninclude_dir {base}/conf.d\n")
    broker = ConfiguredMosquitto(base / "mosquitto.conf", [port], base / "mosquitto.log").start()
    yield out, port, http, tmp_path_factory.mktemp("run")
    broker.cleanup()
    shutil.rmtree(base)


def _login(out: Path, port: int, user: str | None) -> BrokerUrl:
    return BrokerUrl("127.0.0.1", port, user, (out / "credentials" / user).read_text().strip() if user else None)


def test_the_generated_broker_lets_each_user_do_only_its_part(pi):
    out, port, _, _ = pi
    with pytest.raises(ServiceError, match="not authorised"):
        connect(_login(out, port, None), "anonymous")
    got: queue.Queue = queue.Queue()
    gw = connect(_login(out, port, "gateway"), "gateway", subscriptions=[("fieldlab/v1/acme/#", 1)],
                 on_message=lambda c, u, m: got.put(m.topic))
    edge = connect(_login(out, port, "edge-cnc-01"), f"e-{uuid.uuid4().hex[:6]}")
    try:
        other = "fieldlab/v1/acme/hall-1/line-1/press-02/counts"
        # refused ones are dropped silently (MQTT 3.1.1): the allowed one after them shows they did not arrive
        assert wait_published([edge.publish(t, b"{}", qos=1) for t in (other, f"{MACHINE}/kpi", f"{MACHINE}/counts")],
                              5.0)
        assert got.get(timeout=5) == f"{MACHINE}/counts"
        assert got.empty()
    finally:
        for c in (gw, edge):
            c.disconnect()
            c.loop_stop()


def test_walk_through_broker_gateway_machine_edge_agent_to_kpis_and_the_dashboard(pi):
    """docs/one-pi.md, steps 3-6, with the units' command lines run by hand as systemd would run them."""
    out, port, http, run = pi
    opcua = free_port()
    procs, logs = [], {}

    def start(name, args, env=None):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        logs[name] = []
        threading.Thread(target=lambda: logs[name].extend(p.stdout), daemon=True).start()
        procs.append(p)
        return p

    def tails() -> str:
        return "\n".join(f"--- {name}\n{''.join(lines[-30:])}" for name, lines in logs.items())

    kpis: queue.Queue = queue.Queue()
    entries: queue.Queue = queue.Queue()
    watcher = connect(_login(out, port, "anna"), "anna", subscriptions=[(f"{MACHINE}/kpi", 1),
                                                                       (f"{MACHINE}/operator", 1)],
                      on_message=lambda c, u, m: (entries if m.topic.endswith("/operator") else kpis).put(m.payload))
    try:
        # the machine: `fieldlab sim --machines 1` (the starter mapping reads it over OPC UA); the agent starts
        # once it serves (systemd would restart an agent that came too early, 5 s later)
        start("sim", [*FIELDLAB, "sim", "--machines", "1", "--speed", "60", "--opcua-port", str(opcua)])
        args, env = _as_systemd(out / "systemd" / "fieldlab-gateway.service", run / "gw-creds", run / "gw-state")
        start("gateway", args, env)
        deadline = time.monotonic() + 15
        while not any("cnc-01: opc.tcp://" in line for line in logs["sim"]):
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("the simulator did not start:\n" + tails(), pytrace=False)
            time.sleep(0.05)
        args, _ = _as_systemd(out / "systemd" / "fieldlab-edge-cnc-01.service", run / "edge-creds", run / "edge-state")
        mapping = Path(args[args.index("--config") + 1])
        copy = run / "cnc-01.yaml"  # systemd's credentials directory and the simulator's free port, else as made
        copy.write_text(mapping.read_text().replace("/run/credentials/fieldlab-edge-cnc-01.service",
                                                    str(run / "edge-creds"))
                        .replace(f"127.0.0.1:{onepi.SIM_PORT}/", f"127.0.0.1:{opcua}/"))
        args[args.index("--config") + 1] = str(copy)
        start("edge", args)
        deadline, kpi = time.monotonic() + 40, None
        while time.monotonic() < deadline:
            try:
                k = json.loads(kpis.get(timeout=1) or b"null")
            except queue.Empty:
                k = None
            if k and k.get("good", 0) > 0 and k.get("oee") is not None:
                kpi = k
                break
            if any(p.poll() is not None for p in procs):
                pytest.fail("a process stopped:\n" + tails(), pytrace=False)
        if kpi is None:
            pytest.fail("no KPIs with OEE within 40 s:\n" + tails(), pytrace=False)
        assert 0 < kpi["oee"] <= 1.2
        base = f"http://127.0.0.1:{http}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/api/machines", timeout=5) as r:
            machines = json.loads(r.read())
        ids = [m["id"] for m in (machines["machines"] if isinstance(machines, dict) else machines)]
        assert ids == ["acme/hall-1/line-1/cnc-01"], machines
        # a stop with its reason: the doc's `fieldlab sim inject` (5 simulated minutes, 5 s at --speed 60)
        r = subprocess.run([*FIELDLAB, "sim", "inject", "cnc-01", "breakdown", "--minutes", "5", "--opcua",
                            f"opc.tcp://127.0.0.1:{opcua}/fieldlab/"], capture_output=True, text=True, timeout=30,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr
        deadline, reasons = time.monotonic() + 15, []
        while time.monotonic() < deadline and not any(x.get("reason") == 101 for x in reasons):
            time.sleep(0.5)
            with urllib.request.urlopen(f"{base}/api/machines/{urllib.parse.quote(ids[0], safe='')}/losses",
                                        timeout=5) as r:
                reasons = json.loads(r.read())["stop_reasons"]
        assert any(x.get("reason") == 101 and x["seconds"] > 0 for x in reasons), reasons  # 101: breakdown
        # an operator logs in with the generated PIN; a wrong PIN is refused

        def login(pin):
            req = urllib.request.Request(f"{base}/login", json.dumps({"user": "anna", "pin": pin}).encode(),
                                         {"Content-Type": "application/json", "Origin": base})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.headers.get("Set-Cookie", "")
            except urllib.error.HTTPError as e:
                return e.code, ""

        pin = (out / "web" / "pins" / "anna").read_text().strip()
        status, cookie = login(pin)
        assert status == 200 and cookie.startswith("fieldlab_session=")
        assert login(f"{(int(pin) + 1) % 10 ** onepi.PIN_DIGITS:0{onepi.PIN_DIGITS}d}")[0] == 401
        # ... and enters a part found bad by hand: the web app publishes it through the generated ACL, the gateway
        # counts it (the operator terminal, docs/web.md)
        before = kpi["reject"]
        req = urllib.request.Request(f"{base}/api/machines/{urllib.parse.quote(ids[0], safe='')}/rejects",
                                     json.dumps({"count": 1}).encode(), {"Content-Type": "application/json",
                                     "Origin": base, "Cookie": cookie.split(";")[0]})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.read()
        entry = json.loads(entries.get(timeout=5))  # on the broker: the generated ACL let the web app publish it
        assert (entry["by"], entry["reject"]) == ("anna", 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                k = json.loads(kpis.get(timeout=1) or b"null")
            except queue.Empty:
                continue
            if k and k["reject"] > before:
                break
        else:
            pytest.fail(f"the hand-counted reject never reached the KPIs (reject stayed {before}):\n" + tails(),
                        pytrace=False)
        # the gateway keeps its checkpoint where the unit says: /var/lib/fieldlab-gateway (its StateDirectory)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        terminate(*reversed(procs))
    assert procs[1].returncode == 0, "".join(logs["gateway"][-20:])
    assert any(f.name.endswith(".checkpoint.npz") for f in (run / "gw-state").iterdir())


def test_deploy_runs_with_only_the_core_packages(tmp_path):
    """`fieldlab deploy` is documented to need only the core install (docs/deploy.md): the Pi layout must not
    pull in the edge or gateway extras (naming the simulator's machines once imported the demo, and with it
    aiohttp and asyncua)."""
    (tmp_path / "plant.yaml").write_text(PLAIN.replace("[cnc-01]", "[cnc-01, test-01]"))
    blocked = ("aiohttp", "asyncua", "pymodbus", "influxdb_client", "gpiozero", "lgpio", "google")
    code = f"""
import builtins, sys
real = builtins.__import__
def only_core(name, *a, **k):
    if name.split(".")[0] in {blocked!r}:
        raise ModuleNotFoundError(f"No module named {{name!r}} (not in the core install)")
    return real(name, *a, **k)
builtins.__import__ = only_core
from fieldlab import cli
sys.exit(cli.main(["deploy", {str(tmp_path / 'plant.yaml')!r}, "--layout", "pi", "--out", {str(tmp_path / 'out')!r}]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "root: moulder-01" in (tmp_path / "out" / "edge" / "test-01.yaml").read_text()
