"""`fieldlab deploy` against a real Mosquitto started with exactly the files it generated.

No anonymous client gets in; an edge agent may publish only its own machine's data and read only
its own commands; the gateway reads everything; TLS works with the generated CA and refuses a
client that trusts another CA. A message refused by the ACL is dropped silently by the broker (MQTT
3.1.1 has no way to say so), so every "refused" check publishes the refused message and then an
allowed one on the same connection: when the allowed one arrives, the refused one would have arrived
before it.
"""
from __future__ import annotations

import os
import queue
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from contract.errors import ServiceError
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.yamlfile import ConfigError
from fieldlab import cli, deploy
from fieldlab.broker import ConfiguredMosquitto, free_port, mosquitto_binary

PLANT = """\
site: acme
machines:
  hall-1/line-1: [cnc-01, moulder-01]
  hall-2/packing: [filler-01]
broker:
  hostnames: [localhost, 127.0.0.1]
gateways: [gateway, gateway-2]
viewers: [node-red]
operators: [trainer]
"""


def _need_binaries():
    if not mosquitto_binary():
        pytest.fail("mosquitto not found; install it with: sudo apt-get install -y mosquitto", pytrace=False)


@pytest.fixture(scope="module")
def plant_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("plant") / "plant.yaml"
    p.write_text(PLANT)
    return p


@pytest.fixture(scope="module")
def stack(plant_file, tmp_path_factory):
    """The generated files (TLS on) and a Mosquitto running on them."""
    _need_binaries()
    # where an operator would put them (/etc/fieldlab): a directory the broker's user can enter (pytest's
    # own temp dirs are private to root, and Mosquitto started as root reads its files as user mosquitto)
    out = Path(tempfile.mkdtemp(prefix="fieldlab-secrets-"))
    out.chmod(0o755)
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    plant = deploy.load_plant(plant_file)
    deploy.generate(plant, out, tls=True, ports=ports, plain_bind="127.0.0.1",
                    broker_user=deploy.default_broker_user("standalone"))
    broker = ConfiguredMosquitto(out / "mosquitto" / "mosquitto.conf", list(ports), out / "mosquitto.log").start()
    yield out, ports, plant, broker
    broker.cleanup()
    shutil.rmtree(out)


def _url(stack, user: str | None, tls: bool = False, ca: Path | None = None) -> BrokerUrl:
    out, ports, _, _ = stack
    password = (out / "credentials" / user).read_text().strip() if user else None
    if tls:
        return BrokerUrl("127.0.0.1", ports[1], user, password, tls=True, ca_file=str(ca or out / "ca.crt"))
    return BrokerUrl("127.0.0.1", ports[0], user, password)


class Listener:
    """A connected client that records what it receives, in order, and why it was disconnected."""

    def __init__(self, url: BrokerUrl, *topics: str, client_id: str | None = None, persistent: bool = False):
        self.got: queue.Queue = queue.Queue()
        self.client = connect(url, client_id or f"t-{uuid.uuid4().hex[:8]}", subscriptions=[(t, 1) for t in topics],
                              on_message=lambda c, u, m: self.got.put(m.topic), persistent=persistent)
        self.drops: list = []
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.drops.append(str(reason))

    def next(self, timeout: float = 5.0) -> str:
        try:
            return self.got.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout} s" + (
                f"; the broker disconnected this client {len(self.drops)} time(s)" if self.drops else "")) from None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _send(client, *topics: str) -> None:
    assert wait_published([client.publish(t, b"{}", qos=1) for t in topics], 5.0)


def _publish(url: BrokerUrl, *topics: str) -> None:
    """On a connection of its own: not while a Listener of the same user is connected (one connection per user)."""
    c = connect(url, f"p-{uuid.uuid4().hex[:8]}")
    try:
        _send(c, *topics)
    finally:
        c.disconnect()
        c.loop_stop()


def _topic(machine: str, kind: str, area="hall-1", line="line-1") -> str:
    return f"fieldlab/v1/acme/{area}/{line}/{machine}/{kind}"


def test_anonymous_and_wrong_passwords_are_refused(stack):
    for url in (_url(stack, None), _url(stack, None, tls=True),
                BrokerUrl("127.0.0.1", stack[1][0], "edge-cnc-01", "not-the-password"),
                BrokerUrl("127.0.0.1", stack[1][0], "nobody", "x")):
        with pytest.raises(ServiceError, match="not authorised"):
            connect(url, "intruder")


def test_agent_publishes_only_its_own_machine_and_the_gateway_reads_all(stack):
    gw = Listener(_url(stack, "gateway"), "fieldlab/v1/acme/#")
    try:
        agent = _url(stack, "edge-cnc-01")
        own = [_topic("cnc-01", k) for k in ("telemetry", "state", "counts", "status")]
        _publish(agent, *own)
        assert [gw.next() for _ in own] == own
        # another machine's data, a KPI, a command, a made-up kind, the dead-letter topic: all refused
        refused = [_topic("moulder-01", "telemetry"), _topic("cnc-01", "kpi"), _topic("cnc-01", "cmd"),
                   _topic("cnc-01", "other"), "fieldlab/v1/_sys/deadletter", _topic("filler-01", "counts",
                                                                                    "hall-2", "packing")]
        _publish(agent, *refused, own[0])
        assert gw.next() == own[0]  # the allowed one after them arrives first: the refused ones never came
        # the other agents are just as confined, and their own data gets through
        _publish(_url(stack, "edge-filler-01"), _topic("cnc-01", "counts"),
                 _topic("filler-01", "counts", "hall-2", "packing"))
        assert gw.next() == _topic("filler-01", "counts", "hall-2", "packing")
    finally:
        gw.close()


def test_agent_reads_only_its_own_commands_and_operators_send_them(stack):
    spy = Listener(_url(stack, "edge-cnc-01"), "fieldlab/v1/#")  # subscribes to all, may see only its cmd
    try:
        _publish(_url(stack, "edge-moulder-01"), _topic("moulder-01", "telemetry"))
        _publish(_url(stack, "trainer"), _topic("moulder-01", "cmd"), _topic("cnc-01", "cmd"))
        assert spy.next() == _topic("cnc-01", "cmd")
        assert spy.got.empty()
    finally:
        spy.close()


def test_gateway_publishes_kpis_and_viewers_only_read(stack):
    viewer = Listener(_url(stack, "node-red"), "fieldlab/v1/#")
    try:
        kpi, line_kpi = _topic("cnc-01", "kpi"), _topic("_line", "kpi")
        _publish(_url(stack, "gateway"), _topic("cnc-01", "telemetry"), kpi, line_kpi)
        assert [viewer.next(), viewer.next()] == [kpi, line_kpi]  # the gateway may not fake machine data
        _send(viewer.client, kpi, _topic("cnc-01", "cmd"))
        _publish(_url(stack, "trainer"), _topic("cnc-01", "kpi"), _topic("filler-01", "cmd", "hall-2", "packing"))
        assert viewer.next() == _topic("filler-01", "cmd", "hall-2", "packing")  # viewers/trainers forge no KPIs
    finally:
        viewer.close()


def test_operator_entries_come_from_the_gateways_web_app_and_operators_only(stack):
    """The operator terminal publishes through the gateway's connection (operator entries, a product switch);
    Node-RED or an MES as an operator user may send operator entries too; an agent or a viewer may not."""
    gw = Listener(_url(stack, "gateway"), "fieldlab/v1/acme/#")
    try:
        entry, cmd = _topic("cnc-01", "operator"), _topic("cnc-01", "cmd")
        _publish(_url(stack, "edge-cnc-01"), entry)
        _publish(_url(stack, "node-red"), entry)
        _publish(_url(stack, "trainer"), entry)
        assert gw.next() == entry and gw.got.empty()
        _send(gw.client, entry, cmd)
        assert [gw.next(), gw.next()] == [entry, cmd]
    finally:
        gw.close()


def test_tls_with_the_generated_ca_works_and_another_ca_is_refused(stack, tmp_path):
    gw = Listener(_url(stack, "gateway", tls=True), _topic("cnc-01", "telemetry"))
    try:
        _publish(_url(stack, "edge-cnc-01", tls=True), _topic("cnc-01", "telemetry"))
        assert gw.next() == _topic("cnc-01", "telemetry")
    finally:
        gw.close()
    other = deploy.make_ca(tmp_path, "other-ca", subject="someone else's CA")
    with pytest.raises(ServiceError, match="certificate verif"):
        connect(_url(stack, "edge-cnc-01", tls=True, ca=other), "mitm-check")


def test_no_user_can_take_over_another_users_session(stack):
    """Issue 13, defect 7: an agent's credentials with the gateway's client id took over the gateway's
    session. Now every client's id is its user name: the gateway stays connected and keeps receiving,
    the session it left (clean session 0) keeps what arrived meanwhile, and a second gateway user runs
    beside the first (one user per gateway process)."""
    def gateway():  # as Gateway(site="acme") connects
        return Listener(_url(stack, "gateway"), "fieldlab/v1/acme/#", client_id="fieldlab-gateway-acme",
                        persistent=True)

    def intrude(clean: bool):
        c = connect(_url(stack, "edge-cnc-01"), "fieldlab-gateway-acme", persistent=not clean)
        c.disconnect()
        c.loop_stop()

    gw, second = gateway(), Listener(_url(stack, "gateway-2"), "fieldlab/v1/acme/#")
    try:
        for clean in (True, False):
            intrude(clean)
            _publish(_url(stack, "edge-moulder-01"), _topic("moulder-01", "state"))
            assert gw.next() == second.next() == _topic("moulder-01", "state")
        assert gw.drops == [], f"the gateway was disconnected: {gw.drops}"
        gw.close()
        _publish(_url(stack, "edge-moulder-01"), _topic("moulder-01", "counts"))  # queued for the gateway
        intrude(clean=True)  # would have wiped that queue
        gw = gateway()
        assert gw.next() == _topic("moulder-01", "counts")
    finally:
        gw.close()
        second.close()


def test_a_message_over_the_size_cap_is_refused_and_its_sender_disconnected(stack):
    """Issue 13, defect 9: no size cap (one valid 104 MB message took RSS from 45 MB to 2.7 GB). Mosquitto
    counts a packet as its remaining length (topic, packet id, payload) + 1: the largest message that
    fits arrives, one byte more disconnects its sender and reaches nobody."""
    topic = _topic("cnc-01", "telemetry")
    largest = deploy.MAX_MESSAGE_SIZE - 1 - (2 + len(topic) + 2)
    sizes, dropped = queue.Queue(), threading.Event()
    gw = connect(_url(stack, "gateway"), "t-size", subscriptions=[(topic, 1)],
                 on_message=lambda c, u, m: sizes.put(len(m.payload)))
    agent = connect(_url(stack, "edge-cnc-01"), "t-big")
    agent.on_disconnect = lambda *a: dropped.set()
    try:
        assert wait_published([agent.publish(topic, bytes(largest), qos=1)], 10.0)
        assert sizes.get(timeout=10) == largest and not dropped.is_set()
        agent.publish(topic, bytes(largest + 1), qos=1)
        assert dropped.wait(10), f"a message of {largest + 1} bytes did not disconnect its sender"
        agent.loop_stop()  # (paho would reconnect and send it again)
        _publish(_url(stack, "edge-cnc-01"), topic)
        assert sizes.get(timeout=5) == 2  # the small one after it comes first: the large one never came
    finally:
        agent.disconnect()
        agent.loop_stop()
        gw.disconnect()
        gw.loop_stop()


def test_the_size_cap_comes_from_the_plant_file(tmp_path):
    p = tmp_path / "plant.yaml"
    p.write_text("site: a\nmachines:\n  x/y: [m]\nbroker:\n  max_message_size: 16MB\n")
    conf = deploy.mosquitto_conf(deploy.load_plant(p), "/etc/fieldlab", None, tls=False, plain_bind="127.0.0.1")
    assert "\nmax_packet_size 16777216\n" in conf


def test_the_plain_listener_is_loopback_only_with_tls_and_files_are_private(stack):
    out = stack[0]
    conf = (out / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {stack[1][0]} 127.0.0.1\n" in conf and "allow_anonymous false" in conf
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(out / "credentials") == 0o700
    assert all(mode(f) == 0o600 for f in (out / "credentials").iterdir())
    assert mode(out / "mosquitto" / "server.key") == 0o600 and mode(out / "ca" / "ca.key") == 0o600
    assert mode(out / "ca") == 0o700 and mode(out / "ca.crt") == 0o644  # the clients' copy is public
    assert not (out / "mosquitto" / "ca.key").exists()  # the CA's key never goes to the broker
    passwd = (out / "mosquitto" / "passwd").read_text()
    for user in stack[2].users:
        assert (out / "credentials" / user).read_text().strip() not in passwd  # only hashes


def test_rerun_keeps_passwords_rotates_on_request_and_removes_users(plant_file, tmp_path):
    plant = deploy.load_plant(plant_file)
    first = deploy.generate(plant, tmp_path)
    files = {p: p.read_bytes() for p in (tmp_path / "mosquitto").iterdir()}
    creds = {p.name: p.read_text() for p in (tmp_path / "credentials").iterdir()}
    assert sorted(first.new_passwords) == sorted(plant.users) and len(set(creds.values())) == len(creds)
    again = deploy.generate(plant, tmp_path)
    assert again.new_passwords == []
    assert {p: p.read_bytes() for p in (tmp_path / "mosquitto").iterdir()} == files  # nothing churns
    deploy.generate(plant, tmp_path, rotate=("edge-cnc-01",))
    assert (tmp_path / "credentials" / "edge-cnc-01").read_text() != creds["edge-cnc-01"]
    assert (tmp_path / "credentials" / "edge-moulder-01").read_text() == creds["edge-moulder-01"]
    lines = dict(ln.split(":", 1) for ln in (tmp_path / "mosquitto" / "passwd").read_text().splitlines())
    assert deploy.hash_matches(lines["edge-cnc-01"], (tmp_path / "credentials" / "edge-cnc-01").read_text().strip())
    plant_file2 = tmp_path / "smaller.yaml"
    plant_file2.write_text(PLANT.replace("[cnc-01, moulder-01]", "[cnc-01]"))
    deploy.generate(deploy.load_plant(plant_file2), tmp_path)
    assert not (tmp_path / "credentials" / "edge-moulder-01").exists()
    assert "edge-moulder-01" not in (tmp_path / "mosquitto" / "passwd").read_text()
    assert "moulder-01" not in (tmp_path / "mosquitto" / "acl").read_text()
    with pytest.raises(ServiceError, match="--rotate edge-zz: no such user"):
        deploy.generate(plant, tmp_path, rotate=("edge-zz",))


def test_a_broker_user_that_cannot_reach_the_files_is_warned_about(plant_file):
    base = Path(tempfile.mkdtemp(prefix="fieldlab-deploy-"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        nobody = (65534, 65534)
        assert deploy.unreachable(private / "s" / "mosquitto", *nobody) == private
        assert deploy.unreachable(base / "s" / "mosquitto", *nobody) is None
        if os.geteuid() == 0:  # generate hands the files over (needs root) and then warns
            r = deploy.generate(deploy.load_plant(plant_file), private / "s", broker_user=nobody[0])
            assert r.blocked == private and (private / "s" / "mosquitto" / "acl").stat().st_uid == nobody[0]
        assert deploy.unreachable(private / "s" / "mosquitto", 0, 0) is None  # root enters everywhere
    finally:
        shutil.rmtree(base)


def test_the_hash_is_the_one_mosquitto_passwd_makes():
    # a line made by mosquitto_passwd 2.0.11 for user alice, password s3cret
    stored = ("$7$101$hhhug18aLfH//GGw$NwGkTCmOYwMd6ggWfgL385cRT0c1EUkDDmHQtWZhmlERhnQPCB0rs4gnclbgCmZTeAOaahxpDNpZ"
              "CRa3RL4VLA==")
    assert deploy.hash_matches(stored, "s3cret") and not deploy.hash_matches(stored, "s3cret ")
    assert deploy.hash_matches(deploy.mosquitto_hash("pw"), "pw")


@pytest.mark.parametrize("text, where", [
    ("site: acme\nmachines:\n  hall-1/line-1: [cnc-01]\n  hall-1/line-2: [cnc-01]\n",
     "plant.yaml:4: machines.hall-1/line-2: machine cnc-01 is also on hall-1/line-1"),
    ("site: acme\nmachines:\n  hall-1: [cnc-01]\n", "plant.yaml:3: machines.hall-1: write the area and the line"),
    ("site: acme\nmachines:\n  a/b: [_x]\n", "plant.yaml:3: machines.a/b[0]: '_x' is not a valid name"),
    ("site: acme\nmachines:\n  a/b: [m]\nviewers: [edge-m]\n", "plant.yaml:4: viewers: user edge-m is listed twice"),
    ("site: acme\nmachines:\n  a/b: [m]\ngateways: [gw-1]\noperators: [gw-1]\n",
     "plant.yaml:5: operators: user gw-1 is listed twice"),
    ("site: acme\nmachines:\n  a/b: [m]\ngateways: []\n", "plant.yaml:4: gateways: list at least one user"),
    ("site: acme\nmachines:\n  a/b: [m]\nbroker:\n  max_message_size: 1KB\n",
     "plant.yaml:5: broker.max_message_size: '1KB': write a size between 64KB and 256MB"),
    ("site: acme\nmachine:\n  a/b: [m]\n", "plant.yaml:2: machine: unknown key"),
    ("sites: [a]\nsite: b\n", "plant.yaml:2: site: give either site:"),
    ("site: acme\nmachines:\n  a/b: [m]\nbridge:\n  address: central:8883\n  password_file: nope\n",
     "plant.yaml:6: bridge.password_file: "),
])
def test_plant_file_mistakes_name_the_line_and_the_fix(tmp_path, text, where):
    p = tmp_path / "plant.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        deploy.load_plant(p)
    assert str(e.value).startswith(f"{p.parent}/{where}"), str(e.value)


def test_cli_writes_the_files_and_says_how_to_run_the_broker(plant_file, tmp_path, capsys):
    assert cli.main(["deploy", str(plant_file), "--out", str(tmp_path / "s")]) == 0
    said = capsys.readouterr().out
    assert "edge-cnc-01" in said and "new password" in said and "mosquitto -c" in said
    assert (tmp_path / "s" / "mosquitto" / "acl").exists()
    assert cli.main(["deploy", str(tmp_path / "missing.yaml")]) == cli.EXIT_CONFIG


@pytest.mark.parametrize("options, warned", [
    ([], True), (["--tls"], False), (["--plain-bind", "127.0.0.1"], False), (["--plain-bind", "::1"], False),
    (["--tls", "--plain-bind", "0.0.0.0"], True), (["--plain-bind", "192.168.1.10", "--layout", "debian"], True),
    (["--layout", "compose"], False),  # docker-compose.yml publishes only the TLS port on the host
])
def test_a_plain_listener_open_to_the_network_is_warned_about(plant_file, tmp_path, capsys, options, warned):
    """Issue 13, defect 10: without --tls, deploy listened on every interface with clear-text passwords."""
    assert cli.main(["deploy", str(plant_file), "--out", str(tmp_path / "s"), *options]) == 0
    err = capsys.readouterr().err
    assert ("passwords cross it in clear text" in err) == warned, err
    if warned:
        assert "--plain-bind 127.0.0.1" in err and ("add --tls" in err) != ("--tls" in options)


def test_gateway_and_edge_agent_log_in_with_the_generated_credentials(stack, tmp_path):
    """The real gateway (its command-line broker options) and a real edge agent (its mapping file's
    password_file and ca_file), over TLS: the agent's parts reach the gateway's KPIs."""
    import asyncio

    from edge import config as edge_config
    from edge.agent import EdgeAgent
    from gateway.service import Gateway

    out, ports, _, _ = stack
    args = cli.build_parser().parse_args(
        ["gateway", "--broker", f"mqtts://gateway@127.0.0.1:{ports[1]}", "--password-file",
         str(out / "credentials" / "gateway"), "--ca-file", str(out / "ca" / "ca.crt"), "--site", "acme"])
    url = cli._broker(args)
    assert (url.username, url.tls, url.password) == ("gateway", True,
                                                    (out / "credentials" / "gateway").read_text().strip())
    mapping = tmp_path / "edge.yaml"
    mapping.write_text(f"""\
machine: acme/hall-1/line-1/cnc-01
broker:
  url: mqtts://127.0.0.1:{ports[1]}
  username: edge-cnc-01
  password_file: {out / "credentials" / "edge-cnc-01"}
  ca_file: {out / "ca" / "ca.crt"}
buffer:
  path: {tmp_path / "outbox.db"}
source:
  type: sim
  machine: cnc-01
  speed: 600
  seed: 2
""")
    cfg = edge_config.load(mapping)

    status = Listener(_url(stack, "node-red"), "fieldlab/v1/_sys/gateway/+/status")  # viewers see it is alive

    async def run():
        gw = Gateway(url, site="acme", publish_s=0.2)
        await gw.start()
        assert status.next() == gw.status_topic  # the ACL lets the gateway publish its own status
        agent = EdgeAgent(cfg.machine, cfg.broker, cli._simulated_source(cfg), buffer=cfg.buffer_path, flush_s=0.1)
        await agent.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.1)
                row = next((r for r in gw.rows if r["machine"].machine == "cnc-01" and r.get("good")), None)
                if row:
                    return row
            raise AssertionError("no KPIs with parts from cnc-01 reached the gateway")
        finally:
            await agent.stop()
            await gw.stop()

    try:
        assert asyncio.run(run())["good"] > 0
    finally:
        status.close()


def test_a_site_broker_bridges_its_own_topics_to_the_central_one(tmp_path_factory):
    """Two real Mosquittos: the site forwards fieldlab/v1/<site>/# to the central broker over TLS with
    its bridge user; commands for the site's machines come back; a site cannot write another's topics."""
    _need_binaries()
    base = Path(tempfile.mkdtemp(prefix="fieldlab-bridge-"))
    base.chmod(0o755)
    brokers = []
    try:
        central_plant = base / "central.yaml"
        central_plant.write_text("sites: [acme, other]\nbroker:\n  hostnames: [127.0.0.1]\noperators: [trainer]\n")
        c_ports = (free_port(), free_port())
        user = deploy.default_broker_user("standalone")
        deploy.generate(deploy.load_plant(central_plant), base / "central", tls=True, ports=c_ports,
                        plain_bind="127.0.0.1", broker_user=user)
        site_plant = base / "site.yaml"
        site_plant.write_text(PLANT + f"bridge:\n  address: 127.0.0.1:{c_ports[1]}\n"
                              "  password_file: central/credentials/bridge-acme\n  ca_file: central/ca/ca.crt\n")
        s_ports = (free_port(), free_port())
        deploy.generate(deploy.load_plant(site_plant), base / "site", tls=True, ports=s_ports,
                        plain_bind="127.0.0.1", broker_user=user)
        assert "remote_password" in (base / "site" / "mosquitto" / "mosquitto.conf").read_text()
        assert stat.S_IMODE(os.stat(base / "site" / "mosquitto" / "mosquitto.conf").st_mode) == 0o600
        for name, ports in (("central", c_ports), ("site", s_ports)):
            brokers.append(ConfiguredMosquitto(base / name / "mosquitto" / "mosquitto.conf", list(ports),
                                               base / f"{name}.log").start())
        cred = lambda d, u: (base / d / "credentials" / u).read_text().strip()  # noqa: E731
        central_gw = Listener(BrokerUrl("127.0.0.1", c_ports[0], "gateway", cred("central", "gateway")),
                              "fieldlab/v1/#")
        agent = Listener(BrokerUrl("127.0.0.1", s_ports[0], "edge-cnc-01", cred("site", "edge-cnc-01")),
                         _topic("cnc-01", "cmd"))
        try:
            # the bridge connects in the background: publish until the first message comes through
            for _ in range(50):
                _send(agent.client, _topic("cnc-01", "status"))
                try:
                    assert central_gw.next(0.2) == _topic("cnc-01", "status")
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError("the site's bridge never delivered to the central broker:\n"
                                     + brokers[1].log_text()[-800:])
            _send(agent.client, _topic("cnc-01", "telemetry"))
            assert central_gw.next() == _topic("cnc-01", "telemetry")
            _publish(BrokerUrl("127.0.0.1", c_ports[0], "trainer", cred("central", "trainer")), _topic("cnc-01", "cmd"))
            assert agent.next() == _topic("cnc-01", "cmd")  # a command from the central trainer reaches the site
            # the bridge user of acme may not write the other site's topics at the central broker (logging in
            # as bridge-acme closes the site's bridge connection for a moment: one connection per user)
            bridge = BrokerUrl("127.0.0.1", c_ports[0], "bridge-acme", cred("central", "bridge-acme"))
            _publish(bridge, "fieldlab/v1/other/hall-1/line-1/m1/telemetry", _topic("cnc-01", "counts"))
            while (t := central_gw.next()) in (_topic("cnc-01", "status"), _topic("cnc-01", "cmd")):
                pass  # the trainer's command (the central gateway reads everything), a retained status again
            assert t == _topic("cnc-01", "counts")
        finally:
            central_gw.close()
            agent.close()
    finally:
        for b in brokers:
            b.cleanup()
        shutil.rmtree(base)


def test_the_debian_layout_is_a_drop_in_next_to_debians_own_configuration(plant_file):
    """Debian's /etc/mosquitto/mosquitto.conf sets persistence and includes conf.d: the drop-in must not
    set it again (Mosquitto stops at a duplicate) and still refuses anonymous clients."""
    _need_binaries()
    base = Path(tempfile.mkdtemp(prefix="fieldlab-debian-"))
    try:
        base.chmod(0o755)
        port = free_port()
        deploy.generate(deploy.load_plant(plant_file), base / "fieldlab", layout="debian", ports=(port, 8883),
                        plain_bind="127.0.0.1", broker_user=deploy.default_broker_user("debian"))
        (base / "conf.d").mkdir()
        (base / "conf.d" / "fieldlab.conf").symlink_to(base / "fieldlab" / "mosquitto" / "mosquitto.conf")
        (base / "data").mkdir()
        if os.geteuid() == 0:  # Mosquitto started as root writes its persistence as user mosquitto
            shutil.chown(base / "data", "mosquitto", "mosquitto")
        # what Debian 12's package ships, with its paths moved here
        (base / "mosquitto.conf").write_text(f"persistence true\npersistence_location {base}/data/\n"
                                             f"log_dest stderr\ninclude_dir {base}/conf.d\n")
        broker = ConfiguredMosquitto(base / "mosquitto.conf", [port], base / "log").start()
        try:
            with pytest.raises(ServiceError, match="not authorised"):
                connect(BrokerUrl("127.0.0.1", port), "anonymous")
            creds = base / "fieldlab" / "credentials"
            _publish(BrokerUrl("127.0.0.1", port, "edge-cnc-01", (creds / "edge-cnc-01").read_text().strip()),
                     _topic("cnc-01", "telemetry"))
        finally:
            broker.cleanup()
    finally:
        shutil.rmtree(base)


def test_the_certificate_is_kept_until_the_hostnames_change(tmp_path):
    p = tmp_path / "plant.yaml"
    p.write_text("site: a\nmachines:\n  x/y: [m]\nbroker:\n  hostnames: [localhost, '::1', 127.0.0.1]\n")
    deploy.generate(deploy.load_plant(p), tmp_path / "s", tls=True)
    cert = (tmp_path / "s" / "mosquitto" / "server.crt").read_bytes()
    deploy.generate(deploy.load_plant(p), tmp_path / "s", tls=True)  # openssl spells ::1 its own way
    assert (tmp_path / "s" / "mosquitto" / "server.crt").read_bytes() == cert
    p.write_text(p.read_text().replace("'::1', ", "broker.local, "))
    deploy.generate(deploy.load_plant(p), tmp_path / "s", tls=True)
    assert deploy._cert_names(tmp_path / "s" / "mosquitto" / "server.crt") == {"localhost", "broker.local",
                                                                               "127.0.0.1"}


def test_a_broker_that_cannot_start_says_why_from_its_own_log(tmp_path):
    _need_binaries()
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\npassword_file {tmp_path}/missing\n")
    with pytest.raises(ServiceError, match=rf"did not start on port\(s\) {port}: .*(?s:.*)missing"):
        ConfiguredMosquitto(conf, [port], tmp_path / "log").start(timeout=5)


def test_every_layout_writes_the_operator_terminal_logins(tmp_path):
    """``fieldlab deploy`` (not only --layout pi) writes a PIN per operator of the plant file and the web app's
    signing key, outside git and 0600; the gateway reads them (gateway/auth.py) and a PIN logs in."""
    import subprocess
    import sys

    from gateway.auth import Auth, read_users

    out = tmp_path / "secrets"
    run = subprocess.run([sys.executable, "-m", "fieldlab", "deploy", str(Path(__file__).resolve().parents[2] / "deploy" / "plant.example.yaml"),
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "FIELDLAB_WEB_USERS=" in run.stdout
    users = read_users(str(out / "web" / "users"))
    assert set(users) == {"trainer"} and users["trainer"][0] == {"operator"}
    pin = (out / "web" / "pins" / "trainer").read_text().strip()
    assert Auth(users=users).by_pin("trainer", pin) is not None and Auth(users=users).by_pin("trainer", "x") is None
    for f in (out / "web" / "users", out / "web" / "key", out / "web" / "pins" / "trainer"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert pin not in run.stdout  # the PIN is in its file, not on the screen
