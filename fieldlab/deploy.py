"""``fieldlab deploy``: a secure Mosquitto for a plant, generated from a list of machines.

From a plant file (``deploy/plant.example.yaml``) it writes, into a directory that stays out of git
(default ``./secrets``):

- ``credentials/<user>``: one random password per MQTT user (mode 0600). Kept when the file is
  re-generated, so agents keep working; ``--rotate USER`` makes a new one.
- ``mosquitto/passwd``: Mosquitto's password file (PBKDF2-SHA512, the ``$7$`` format of
  ``mosquitto_passwd`` 2.x); a line whose password did not change is kept as it is.
- ``mosquitto/acl``: every edge agent (user ``edge-<machine>``) may publish only its own machine's
  telemetry, state, counts and status and read only its own commands; the gateway reads everything
  and publishes KPIs and dead letters (and its web app's commands and operator entries); viewers only read;
  operators also send commands and operator entries (a stop's reason, rejects counted by hand); a simulator
  (``fieldlab sim --broker``) reads the machines' commands and announces itself on the simulation's topics
  (``fieldlab/v1/_sys/sim/<site>/...``: its scenario and machines), which gateways and operators read.
- ``mosquitto/mosquitto.conf``: no anonymous clients, the password file and ACL, persistence, each
  client's id replaced by its user name (nobody can take over another user's session), a cap on
  the size of a message (``broker.max_message_size``), and with ``--tls`` a TLS listener on 8883
  (``ca.crt``, ``server.crt``, ``server.key``, made with openssl; the CA's key stays in ``ca/``,
  never next to the broker). ``ca.crt`` at the top is the
  copy for the clients, which they need to trust the broker.
- with a ``bridge:`` section: the site broker forwards its site's topics to a central broker
  (Mosquitto's own bridge), and ``fieldlab deploy`` for the central broker gives each bridged site
  one user that may write only its own site's topics.
- ``web/key``, ``web/users``, ``web/pins/<user>`` (``web_login``, every layout): the gateway's web login
  (gateway/auth.py, docs/web.md): the signing key, and a random PIN per user of ``operators:`` and
  ``presenters:`` (its hash in ``users`` with the user's scopes, the PIN itself in ``pins/`` for whoever hands
  it out); ``web/gateway.env``: ``FIELDLAB_PRESENTER=--presenter`` when there are presenters (the gateway's
  systemd unit adds it to its command line; the compose stack reads the same key from ``compose.env``).

Nothing here talks to a broker: the tests start a real Mosquitto with the generated files
(tests/deploy/test_secure_broker.py).
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from contract.errors import ServiceError
from contract.passwords import hash_matches, mosquitto_hash
from contract.sim import SIM_PREFIX
from contract.topics import _LEVEL, DEADLETTER_TOPIC, GATEWAY_STATUS_PREFIX, ROOT, Kind, MachineRef
from contract.yamlfile import YamlFile, size

#: What an edge agent publishes for its machine (everything else is refused by the ACL).
AGENT_KINDS = (Kind.TELEMETRY, Kind.STATE, Kind.COUNTS, Kind.STATUS)
GATEWAY_USER = "gateway"
#: The largest MQTT packet the broker accepts (its sender is disconnected): room for a contract batch of
#: 100,000 rows of counts or states, or of one signal's JSON telemetry (2.7-3.2 MB), ~200x an edge's usual one.
MAX_MESSAGE_SIZE = 4 * 2**20
#: Container paths of the eclipse-mosquitto image (docker-compose.yml mounts the generated dir there).
COMPOSE_DIRS = ("/mosquitto/config", "/mosquitto/data")
#: The user fieldlab's own container image runs as (Dockerfile): it reads the agents' credentials.
IMAGE_UID = 10001
#: Secrets of the compose stack's other services, written once to compose.env (docker compose --env-file).
COMPOSE_SECRETS = ("INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_WRITE_USER_PASSWORD", "INFLUXDB_READ_USER_PASSWORD",
                   "GRAFANA_ADMIN_PASSWORD")
OPENSSL_HINT = "install it with: sudo apt-get install -y openssl"
#: The gateway's presenter switch in compose.env and web/gateway.env: "--presenter" or empty (docs/web.md).
PRESENTER_ENV = "FIELDLAB_PRESENTER"
#: A web login PIN's digits: one of a million, and the web app refuses a client after 5 wrong ones a minute.
PIN_DIGITS = 6


def agent_user(machine: str) -> str:
    return f"edge-{machine}"


def bridge_user(site: str) -> str:
    return f"bridge-{site}"


@dataclass
class Bridge:
    """The site broker's connection to the central one."""
    address: str  # host:port of the central broker
    username: str
    password_file: Path
    ca_file: Path | None = None  # with it the bridge uses TLS


@dataclass
class PiSettings:
    """``pi:`` of the plant file: the broker, gateway and edge agents on one Raspberry Pi (``--layout pi``,
    fieldlab/onepi.py, docs/one-pi.md)."""
    tls: bool = True  # MQTT for the network over TLS on 8883; False: plain on 1883 (passwords in clear text)
    influx: str | None = None  # also store in InfluxDB at this URL (None: no InfluxDB)
    http_port: int = 8080  # the dashboard and operator terminal, on every interface


@dataclass
class Plant:
    path: str
    site: str | None  # None: a central broker (no machines of its own)
    machines: list[MachineRef] = field(default_factory=list)
    hostnames: list[str] = field(default_factory=list)  # names and addresses the TLS certificate is valid for
    max_message_size: int = MAX_MESSAGE_SIZE
    gateways: list[str] = field(default_factory=lambda: [GATEWAY_USER])  # one user per gateway process
    viewers: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    simulators: list[str] = field(default_factory=list)  # fieldlab sim --broker: simulated machines' commands
    presenters: list[str] = field(default_factory=list)  # web login only (presenter mode), no MQTT user
    sites: list[str] = field(default_factory=list)  # central broker: sites that bridge in
    bridge: Bridge | None = None
    pi: PiSettings = field(default_factory=PiSettings)  # read by --layout pi only

    @property
    def users(self) -> list[str]:
        """Every MQTT user, in the order the files list them."""
        return (self.gateways + [agent_user(m.machine) for m in self.machines] + self.viewers + self.operators
                + self.simulators + [bridge_user(s) for s in self.sites])


def _names(doc: YamlFile, key: str, value, what: str, example: str | None = None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        example = example or ('node-red' if 'user' in what else 'cnc-01')
        raise doc.error(key, f"write a list of {what}, like [{example}]")
    out = []
    for i, v in enumerate(value):
        if not _LEVEL.match(str(v)):
            raise doc.error(f"{key}[{i}]", f"{v!r} is not a valid name: letters, digits, '-', '_' and '.', "
                            "starting with a letter or digit")
        out.append(str(v))
    return out


def load_plant(path: str | Path) -> Plant:
    """Read and check a plant file; ConfigError names file:line, the key and the fix."""
    doc = YamlFile.load(path)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error("", "expected keys like site:, machines: (see deploy/plant.example.yaml)")
    known = ("site", "machines", "broker", "gateways", "viewers", "operators", "presenters", "simulators", "sites",
             "bridge", "pi")
    for key in data:
        if key not in known:
            raise doc.error(str(key), f"unknown key; the keys are {', '.join(known)}")
    site = data.get("site")
    central = "sites" in data
    if central == (site is not None):
        raise doc.error("site" if site is not None else "", "give either site: (a site's broker, with machines:) "
                        "or sites: (the central broker that the sites bridge to)")
    plant = Plant(str(doc.path), None if site is None else str(site))
    if site is not None:
        if not _LEVEL.match(str(site)):
            raise doc.error("site", f"{site!r} is not a valid name: letters, digits, '-', '_' and '.'")
        lines = data.get("machines")
        if not isinstance(lines, dict) or not lines:
            raise doc.error("machines", "list the machines per area/line, like:  hall-1/line-1: [cnc-01, "
                            "moulder-01]")
        seen: dict[str, str] = {}
        for where, names in lines.items():
            parts = str(where).split("/")
            if len(parts) != 2 or not all(_LEVEL.match(p) for p in parts):
                raise doc.error(f"machines.{where}", "write the area and the line as AREA/LINE, like hall-1/line-1")
            for name in _names(doc, f"machines.{where}", names, "machine names"):
                if name in seen:
                    raise doc.error(f"machines.{where}", f"machine {name} is also on {seen[name]}: each machine "
                                    f"needs its own name (its agent logs in as {agent_user(name)})")
                seen[name] = str(where)
                plant.machines.append(MachineRef(plant.site, parts[0], parts[1], name))
    else:
        plant.sites = _names(doc, "sites", data.get("sites"), "site names")
        if not plant.sites:
            raise doc.error("sites", "list the sites that bridge to this broker, like [eindhoven, delft]")
        if "machines" in data or "bridge" in data:
            raise doc.error("machines" if "machines" in data else "bridge",
                            "a central broker (sites:) has no machines and no bridge of its own")
    broker = data.get("broker") or {}
    if not isinstance(broker, dict) or set(broker) - {"hostnames", "max_message_size"}:
        raise doc.error("broker", "the keys are hostnames (the names and addresses clients use to reach this broker "
                        "over TLS, like [broker.local, 192.168.1.10]) and max_message_size (like 4MB)")
    plant.hostnames = _hostnames(doc, broker.get("hostnames"))
    if "max_message_size" in broker:
        plant.max_message_size = size(broker["max_message_size"]) or 0
        if not 2**16 <= plant.max_message_size <= 2**28:
            raise doc.error("broker.max_message_size", f"{broker['max_message_size']!r}: write a size between 64KB "
                            "and 256MB, like 4MB")
    if "gateways" in data:
        plant.gateways = _names(doc, "gateways", data["gateways"], "user names")
        if not plant.gateways:
            raise doc.error("gateways", "list at least one user, like [gateway], or leave gateways: out")
    plant.viewers = _names(doc, "viewers", data.get("viewers"), "user names")
    plant.operators = _names(doc, "operators", data.get("operators"), "user names")
    plant.simulators = _names(doc, "simulators", data.get("simulators"), "user names", "simulator")
    taken = [u for u in plant.users if plant.users.count(u) > 1]
    if taken:
        key = next((k for k in ("viewers", "operators", "simulators", "gateways") if taken[0] in getattr(plant, k)),
                   "gateways")
        raise doc.error(key, f"user {taken[0]} is listed twice; every MQTT user has one role")
    # presenters log in to the web app only (its MQTT messages go through the gateway's connection); a name in
    # operators: too gets both scopes, one PIN
    plant.presenters = _names(doc, "presenters", data.get("presenters"), "user names", "trainer")
    twice = [u for u in plant.presenters if plant.presenters.count(u) > 1]
    if twice:
        raise doc.error("presenters", f"{twice[0]} is listed twice; write each presenter once")
    if "bridge" in data:
        plant.bridge = _bridge(doc, data["bridge"])
    if "pi" in data:
        plant.pi = _pi(doc, data["pi"])
    return plant


def _hostnames(doc: YamlFile, value) -> list[str]:
    if value is None:
        return ["localhost", "127.0.0.1"]
    if not isinstance(value, list) or not value:
        raise doc.error("broker.hostnames", "write a list, like [broker.local, 192.168.1.10]")
    out = []
    for i, v in enumerate(value):
        v = str(v).strip()
        if not v or any(c in v for c in " ,/:\n") and not _is_ip(v):
            raise doc.error(f"broker.hostnames[{i}]", f"{v!r} is neither a host name nor an IP address")
        out.append(v)
    return out


def _is_ip(v: str) -> bool:
    try:
        ip_address(v)
        return True
    except ValueError:
        return False


def _loopback(address: str) -> bool:
    return address == "localhost" or _is_ip(address) and ip_address(address).is_loopback


def _bridge(doc: YamlFile, b) -> Bridge:
    if not isinstance(b, dict):
        raise doc.error("bridge", "write address:, username: and password_file: (and ca_file: for TLS)")
    for key in b:
        if key not in ("address", "username", "password_file", "ca_file"):
            raise doc.error(f"bridge.{key}", "unknown key; the keys are address, username, password_file, ca_file")
    for key in ("address", "password_file"):
        if not b.get(key):
            raise doc.error(f"bridge.{key}" if b else "bridge", "missing: " + (
                "the central broker as HOST:PORT, like central.example.org:8883" if key == "address" else
                "the file with the bridge user's password (secrets/credentials/bridge-SITE of the central "
                "broker's fieldlab deploy)"))
    address = str(b["address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise doc.error("bridge.address", f"{address!r}: write HOST:PORT, like central.example.org:8883")
    base = Path(doc.path).parent
    files = {}
    for key in ("password_file", "ca_file"):
        if b.get(key):
            p = (base / str(b[key])).resolve()
            if not p.is_file():
                raise doc.error(f"bridge.{key}", f"{p} does not exist; copy it from the central broker's "
                                "secrets directory (a relative path starts at this file's directory)")
            files[key] = p
    site = doc.data.get("site")
    return Bridge(address, str(b.get("username") or bridge_user(site)), files["password_file"], files.get("ca_file"))


def _pi(doc: YamlFile, p) -> PiSettings:
    keys = ("tls", "influx", "http_port")
    if p is None:  # pi: with every key commented out: the defaults
        p = {}
    if not isinstance(p, dict):
        raise doc.error("pi", "write tls: (true or false), and optionally influx: (a URL) and http_port:")
    for key in p:
        if key not in keys:
            raise doc.error(f"pi.{key}", f"unknown key; the keys are {', '.join(keys)}")
    if doc.data.get("site") is None:
        raise doc.error("pi", "pi: is for a site with machines (site:), not for the central broker")
    out = PiSettings()
    if "tls" in p:
        if not isinstance(p["tls"], bool):
            raise doc.error("pi.tls", "write true (MQTT over TLS for the network) or false (plain MQTT: passwords "
                            "cross the network in clear text)")
        out.tls = p["tls"]
    if p.get("influx") is not None:
        url = str(p["influx"])
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise doc.error("pi.influx", f"{url!r}: write InfluxDB's address, like http://127.0.0.1:8086, or leave "
                            "influx: out (no InfluxDB)")
        if ":" in rest.split("@", 1)[0] and "@" in rest:
            raise doc.error("pi.influx", "no password in the address: write http://gateway@127.0.0.1:8086 and put "
                            "FIELDLAB_INFLUX_PASSWORD=... in gateway.env next to the credentials (docs/one-pi.md)")
        out.influx = url
    if "http_port" in p:
        port = p["http_port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise doc.error("pi.http_port", f"{port!r}: write a port number between 1 and 65535, like 8080")
        out.http_port = port
    return out


# --- the password file ---

def passwd_text(passwords: dict[str, str], old: str = "") -> str:
    """The password file for ``passwords``; a user's old line is kept if it still matches (no churn)."""
    before = dict(line.split(":", 1) for line in old.splitlines() if ":" in line)
    lines = []
    for user, pw in passwords.items():
        stored = before.get(user)
        lines.append(f"{user}:{stored if stored and hash_matches(stored, pw) else mosquitto_hash(pw)}")
    return "\n".join(lines) + "\n"


# --- the ACL ---

def acl_text(plant: Plant) -> str:
    """Mosquitto's ACL file: whatever is not granted here is refused."""
    scope = f"{ROOT}/{plant.site or '+'}"  # the central broker: every site (+ also matches _sys)
    sim = f"{SIM_PREFIX}/{plant.site or '+'}"  # a simulator's scenario, machines and commands (contract/sim.py)
    out = [f"# generated by fieldlab deploy from {Path(plant.path).name}; re-run it instead of editing this file",
           "# anything not granted here is refused"]
    for user in plant.gateways:
        out += ["", f"user {user}", f"topic read {scope}/#",
                f"topic write {scope}/+/+/+/kpi",  # machines' and lines' (machine level _line) KPIs
                # its web app's writes (docs/web.md): operator entries, and commands (product switch, faults)
                f"topic write {scope}/+/+/+/{Kind.OPERATOR.value}", f"topic write {scope}/+/+/+/{Kind.CMD.value}",
                f"topic write {DEADLETTER_TOPIC}",
                f"topic read {sim}/#", f"topic write {sim}/cmd",  # presenter mode: the scenario, and starting one
                f"topic readwrite {GATEWAY_STATUS_PREFIX}/#",  # its retained status and last will
                "topic read spBv1.0/#",  # Sparkplug B groups, if its site file reads any (docs/contract.md)
                "topic write spBv1.0/+/NCMD/+"]  # ... and its rebirth requests to their edge nodes
    for m in plant.machines:
        out += ["", f"user {agent_user(m.machine)}"]
        out += [f"topic write {m.topic(k)}" for k in AGENT_KINDS]
        out.append(f"topic read {m.topic(Kind.CMD)}")
    gateways = f"topic read {GATEWAY_STATUS_PREFIX}/#"  # is the gateway alive? (its KPIs are retained)
    for user in plant.viewers:
        out += ["", f"user {user}", f"topic read {scope}/#", gateways]
    for user in plant.operators:
        out += ["", f"user {user}", f"topic read {scope}/#", gateways,
                f"topic read {sim}/#",  # which machines a simulator has (fieldlab sim inject --broker)
                f"topic write {scope}/+/+/+/{Kind.CMD.value}",
                f"topic write {scope}/+/+/+/{Kind.OPERATOR.value}"]  # a stop's reason from Node-RED, an MES
    for user in plant.simulators:  # fieldlab sim --broker: faults and scenario starts in, itself announced out
        out += ["", f"user {user}", f"topic read {scope}/+/+/+/{Kind.CMD.value}", f"topic read {sim}/cmd",
                f"topic write {sim}/scenario", f"topic write {sim}/+/+/machines"]
    for site in plant.sites:  # what a site's bridge may carry: its own site's topics, both ways
        out += ["", f"user {bridge_user(site)}", f"topic readwrite {ROOT}/{site}/#"]
    return "\n".join(out) + "\n"


# --- mosquitto.conf ---

def mosquitto_conf(plant: Plant, config_dir: str, data_dir: str | None, *, tls: bool, plain_bind: str | None,
                   plain_port: int = 1883, tls_port: int = 8883, bridge_password: str | None = None) -> str:
    """The broker's configuration. ``config_dir``: where the generated files are on the broker's host
    (in the compose stack: /mosquitto/config). ``plain_bind``: address of the unencrypted listener
    (None: none at all)."""
    out = [f"# generated by fieldlab deploy from {Path(plant.path).name}; re-run it instead of editing this file",
           "per_listener_settings false", "allow_anonymous false",
           f"password_file {config_dir}/passwd", f"acl_file {config_dir}/acl"]
    if data_dir:
        out += ["persistence true", f"persistence_location {data_dir.rstrip('/')}/", "autosave_interval 60"]
    # enough queued QoS 1 messages for an outage of a few minutes at a few hundred messages per second
    out += ["max_queued_messages 100000",
            "# a larger packet is refused as soon as its header arrives, and its sender disconnected",
            f"max_packet_size {plant.max_message_size}", ""]
    # per listener (set before the first one it would open a default listener on 1883): a client's id is its
    # user name, so nobody can take over (or wipe) another user's session by connecting with its client id
    same_id = "use_username_as_clientid true"
    if plain_bind:
        out += [f"listener {plain_port} {plain_bind}" if plain_bind != "0.0.0.0" else f"listener {plain_port}", same_id]
    if tls:
        out += [f"listener {tls_port}", same_id, f"cafile {config_dir}/ca.crt", f"certfile {config_dir}/server.crt",
                f"keyfile {config_dir}/server.key", "tls_version tlsv1.2"]
    if plant.bridge:
        b = plant.bridge
        host, _, port = b.address.rpartition(":")
        out += ["", "# forward this site's topics to the central broker, and commands for it back",
                f"connection fieldlab-{plant.site}", f"address {host}:{port}",
                f"remote_clientid fieldlab-bridge-{plant.site}", f"local_clientid fieldlab-bridge-{plant.site}-local",
                f"remote_username {b.username}", f"remote_password {bridge_password}",
                "cleansession false", "try_private true", "restart_timeout 2 30",
                f"topic {ROOT}/{plant.site}/# out 1",
                f"topic {ROOT}/{plant.site}/+/+/+/{Kind.CMD.value} in 1"]
        if b.ca_file:
            out += [f"bridge_cafile {config_dir}/bridge-ca.crt", "bridge_insecure false"]
    return "\n".join(out) + "\n"


# --- certificates ---

def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise ServiceError(f"openssl not found; {OPENSSL_HINT}")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise ServiceError(f"openssl {args[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")


def make_ca(d: Path, name: str = "ca", days: int = 3650, subject: str = "fieldlab CA") -> Path:
    """A self-signed CA (EC P-256): ``<name>.crt`` and ``<name>.key`` in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    with _private_umask():
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", str(days), "-subj", f"/CN={subject}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=d)
    return d / f"{name}.crt"


def make_cert(d: Path, name: str, ca: Path, *, hostnames: list[str] = (), client: bool = False,
              days: int = 825) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` (its key next to it): for a server with ``hostnames`` as
    subjectAltName, or for a client. Returns (cert, key) in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    if hostnames:
        ext += "subjectAltName=" + ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hostnames) + "\n"
    ext += f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}\n"
    with tempfile.TemporaryDirectory() as tmp, _private_umask():
        t = Path(tmp)
        (t / "ext").write_text(ext)
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(d / f"{name}.key"), "-out", str(t / "csr"), "-subj", f"/CN={name}", cwd=t)
        _openssl("x509", "-req", "-in", str(t / "csr"), "-CA", str(ca), "-CAkey", str(ca.with_suffix(".key")),
                 "-set_serial", str(secrets.randbits(63)), "-out", str(d / f"{name}.crt"), "-days", str(days),
                 "-extfile", str(t / "ext"), cwd=t)
    return d / f"{name}.crt", d / f"{name}.key"


class _private_umask:
    """Files made inside are readable by their owner only (keys, passwords)."""

    def __enter__(self):
        self.old = os.umask(0o077)

    def __exit__(self, *exc):
        os.umask(self.old)


def _cert_names(cert: Path) -> set[str]:
    """The subjectAltNames of a certificate (to see whether it still fits broker.hostnames)."""
    r = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
                       capture_output=True, text=True)
    names = set()
    for part in r.stdout.replace("\n", ",").split(","):
        part = part.strip()
        if part.startswith(("DNS:", "IP Address:")):
            names.add(_canonical(part.split(":", 1)[1].strip()))
    return names


def _canonical(name: str) -> str:
    """An IP address in one spelling (openssl writes ::1 as 0:0:0:0:0:0:0:1), a host name as it is."""
    return str(ip_address(name)) if _is_ip(name) else name


# --- writing it all ---

@dataclass
class Result:
    out: Path
    users: list[str]
    new_passwords: list[str]
    files: list[Path]
    blocked: Path | None = None  # a directory the broker's user cannot enter, on the way to its files


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def generate(plant: Plant, out: Path, *, tls: bool = False, layout: str = "standalone",
             plain_bind: str | None = None, ports: tuple[int, int] = (1883, 8883), rotate: tuple[str, ...] = (), broker_user: str | int | None = None) -> Result:
    """Write credentials, password file, ACL, mosquitto.conf (and with ``tls`` the certificates) to ``out``.

    ``layout``: ``standalone`` (the conf names the files where they are: ``mosquitto -c
    out/mosquitto/mosquitto.conf``), ``debian`` (the same without persistence, as a drop-in for
    /etc/mosquitto/conf.d of Debian's package, whose own mosquitto.conf sets it) or ``compose``
    (paths inside the eclipse-mosquitto container).
    ``plain_bind``: address of the unencrypted listener; default 0.0.0.0 without TLS and
    127.0.0.1 with it (compose: 0.0.0.0, for the services on the stack's own network).
    ``ports``: of the plain and the TLS listener.
    ``broker_user``: the user (name or uid) the broker runs as, who must read its files and write its
    persistence directory (Mosquitto started as root drops to user ``mosquitto``; the container's is
    uid 1883); changing owners needs root. None: leave them to whoever runs this.
    """
    unknown = [u for u in rotate if u not in plant.users]
    if unknown:
        raise ServiceError(f"--rotate {unknown[0]}: no such user in {plant.path}; the users are "
                           f"{', '.join(plant.users)}")
    owner = _owner(broker_user)
    out = out.resolve()
    creds, broker_dir = out / "credentials", out / "mosquitto"
    creds.mkdir(parents=True, exist_ok=True)
    broker_dir.mkdir(exist_ok=True)
    os.chmod(creds, 0o700)  # the passwords in clear, for the agents
    os.chmod(broker_dir, 0o750)  # what the broker reads (hashes, its key): its owner and group only
    passwords, new = {}, []
    for user in plant.users:
        f = creds / user
        if f.exists() and user not in rotate:
            passwords[user] = f.read_text().strip()
        else:
            passwords[user] = secrets.token_urlsafe(24)
            _write(f, passwords[user] + "\n", 0o600)
            new.append(user)
    for stale in creds.iterdir():  # users no longer in the plant file lose their credential
        if stale.is_file() and stale.name not in passwords:
            stale.unlink()
    old = (broker_dir / "passwd").read_text() if (broker_dir / "passwd").exists() else ""
    files = [broker_dir / "passwd", broker_dir / "acl", broker_dir / "mosquitto.conf"]
    _write(files[0], passwd_text(passwords, old), 0o640)
    _write(files[1], acl_text(plant), 0o640)
    if tls:
        ca = out / "ca" / "ca.crt"
        if not ca.exists():
            make_ca(ca.parent)
        os.chmod(ca.parent, 0o700)  # the CA's key signs certificates: it never leaves this directory
        shutil.copyfile(ca, broker_dir / "ca.crt")
        shutil.copyfile(ca, out / "ca.crt")  # for the clients (gateway, agents): public, unlike ca/
        server = broker_dir / "server.crt"
        if not server.exists() or _cert_names(server) != {_canonical(h) for h in plant.hostnames}:
            make_cert(broker_dir, "server", ca, hostnames=plant.hostnames)
        for f in (ca, out / "ca.crt", broker_dir / "ca.crt", server):
            os.chmod(f, 0o644)  # certificates are public; the keys stay 0600
        files += [broker_dir / "ca.crt", server, broker_dir / "server.key"]
    bridge_password = None
    if plant.bridge:
        bridge_password = plant.bridge.password_file.read_text().strip()
        if not bridge_password:
            raise ServiceError(f"{plant.path}: bridge.password_file {plant.bridge.password_file} is empty")
        if plant.bridge.ca_file:
            shutil.copyfile(plant.bridge.ca_file, broker_dir / "bridge-ca.crt")
            files.append(broker_dir / "bridge-ca.crt")
    owned = [broker_dir, *files]
    if layout == "compose":
        config_dir, data_dir = COMPOSE_DIRS
        bind = plain_bind or "0.0.0.0"
    elif layout == "standalone":
        config_dir, data_dir = str(broker_dir), str(out / "mosquitto-data")
        Path(data_dir).mkdir(mode=0o750, exist_ok=True)
        owned.append(Path(data_dir))
        bind = plain_bind or ("127.0.0.1" if tls else "0.0.0.0")
    elif layout == "debian":  # a drop-in for /etc/mosquitto/conf.d: Debian's mosquitto.conf keeps persistence
        config_dir, data_dir = str(broker_dir), None
        bind = plain_bind or ("127.0.0.1" if tls else "0.0.0.0")
    else:
        raise ServiceError(f"unknown layout {layout!r}: standalone, debian or compose")
    if layout != "compose" and not _loopback(bind):  # (docker-compose.yml does not publish the plain port)
        print(f"warning: plain MQTT on {bind}:{ports[0]} is open to the network and passwords cross it in clear text: "
              + ("" if tls else f"add --tls (other computers then use TLS on port {ports[1]}) or ")
              + "keep it to this computer with --plain-bind 127.0.0.1", file=sys.stderr)
    conf = mosquitto_conf(plant, config_dir, data_dir, tls=tls, plain_bind=bind, plain_port=ports[0],
                          tls_port=ports[1], bridge_password=bridge_password)
    _write(files[2], conf, 0o600 if bridge_password else 0o640)
    if owner:
        for f in owned:
            os.chown(f, *owner)
    blocked = unreachable(broker_dir, *owner) if owner and layout != "compose" else None
    if layout == "compose":
        files.append(compose_env(out / "compose.env", presenter=bool(plant.presenters)))
        if os.geteuid() == 0:  # the containers of fieldlab's image read the agents' passwords
            for f in [creds, *creds.iterdir()]:
                os.chown(f, IMAGE_UID, IMAGE_UID)
    return Result(out, plant.users, new, files, blocked)


def compose_env(path: Path, presenter: bool | None = None) -> Path:
    """The compose stack's passwords (InfluxDB's users, Grafana's admin), random, made once and then kept:
    ``docker compose --env-file secrets/compose.env up -d``. ``presenter`` (not None): set ``FIELDLAB_PRESENTER``,
    which docker-compose.yml adds to the gateway's command, to ``--presenter`` (the plant file has presenters) or
    to nothing (the gateway then gets ``--no-presenter``)."""
    have = {}
    if path.exists():  # also a copy of .env.example: "KEY=   # comment" is an empty value, not a password
        for line in path.read_text().splitlines():
            key, eq, value = line.partition("=")
            value = value.split(" #", 1)[0].strip()
            if eq and not key.strip().startswith("#") and value and not value.startswith("#"):
                have[key.strip()] = value
    managed = COMPOSE_SECRETS + ((PRESENTER_ENV,) if presenter is not None else ())
    lines = ["# made by fieldlab deploy --layout compose; docker compose --env-file secrets/compose.env up -d",
             *(f"{k}={v}" for k, v in have.items() if k not in managed)]
    if presenter is not None:
        lines += ["# the gateway's presenter mode, from the plant file's presenters: (re-run fieldlab deploy)",
                  f"{PRESENTER_ENV}={'--presenter' if presenter else ''}"]
    lines += [f"{k}={have.get(k) or secrets.token_urlsafe(24)}" for k in COMPOSE_SECRETS]
    _write(path, "\n".join(lines) + "\n", 0o600)
    return path


# --- the web app's login ---

def web_login(plant: Plant, out: Path, group: int | None = None) -> list[str]:
    """The web app's signing key, a PIN per operator and presenter (kept when they exist) and web/gateway.env;
    returns the users with a new PIN. A user in both lists gets both scopes and one PIN. ``group``: a gid that may
    read ``users`` and ``key`` (root:group, 0640), the two files the compose stack mounts into the gateway's
    container, which runs as IMAGE_UID:IMAGE_UID; changing a group needs root. Everything else stays the
    owner's alone: ``pins/`` (0700, its PINs 0600) and ``web/`` itself (0700; Docker mounts the files as root)."""
    web, pins = out / "web", out / "web" / "pins"
    pins.mkdir(parents=True, exist_ok=True)
    web.chmod(0o700)
    pins.chmod(0o700)
    if not (web / "key").exists() or len((web / "key").read_text().strip()) < 32:  # missing, emptied, cut short
        _write(web / "key", secrets.token_hex(32) + "\n", 0o600)
    old = {}
    if (web / "users").exists():
        for line in (web / "users").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and not line.startswith("#"):
                old[parts[0]] = parts[2]
    new, lines = [], [f"# generated by fieldlab deploy from {Path(plant.path).name}: name:scopes:PIN hash",
                      "# (the PINs are in pins/); re-run it instead of editing this file"]
    users = plant.operators + [u for u in plant.presenters if u not in plant.operators]
    for user in users:
        f = pins / user
        pin = f.read_text().strip() if f.exists() else ""
        if not (pin.isdigit() and len(pin) >= 4):  # missing, or emptied or garbled by hand: a new PIN (_write replaces)
            pin = f"{secrets.randbelow(10 ** PIN_DIGITS):0{PIN_DIGITS}d}"
            _write(f, pin + "\n", 0o600)
            new.append(user)
        scopes = ",".join(s for s, has in (("presenter", user in plant.presenters),
                                           ("operator", user in plant.operators)) if has)
        stored = old.get(user)
        lines.append(f"{user}:{scopes}:{stored if stored and hash_matches(stored, pin) else mosquitto_hash(pin)}")
    for stale in pins.iterdir():
        if stale.name not in users:
            stale.unlink()
    _write(web / "users", "\n".join(lines) + "\n", 0o600)
    _write(web / "gateway.env", f"# generated by fieldlab deploy from {Path(plant.path).name}: presenter mode when "
           "the plant file has presenters:\n# (deploy/systemd/fieldlab-gateway.service reads it; docs/web.md)\n"
           f"{PRESENTER_ENV}={'--presenter' if plant.presenters else ''}\n", 0o600)
    if group is not None:
        for f in (web / "users", web / "key"):
            os.chown(f, 0, group)
            f.chmod(0o640)
        for f in (web, pins, *pins.iterdir(), web / "gateway.env"):  # root's alone (an older fieldlab deploy gave
            os.chown(f, 0, 0)                                         # all of web/ to the image's user)
    return new


def unreachable(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above ``path`` that user uid/gid may not enter (None: it can reach it)."""
    if uid == 0:
        return None
    for d in reversed(path.resolve().parents):
        if not d.exists():  # made by generate(), for its owner
            break
        st = d.stat()
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return d
    return None


def _owner(user: str | int | None) -> tuple[int, int] | None:
    """(uid, gid) of the broker's user: a name from the system's users, or a number (its own group)."""
    if user is None:
        return None
    if isinstance(user, int) or str(user).isdigit():
        return int(user), int(user)
    try:
        p = pwd.getpwnam(str(user))
    except KeyError:
        raise ServiceError(f"--broker-user {user}: no such user on this computer") from None
    return p.pw_uid, p.pw_gid


def default_broker_user(layout: str) -> str | int | None:
    """Who runs the broker, when we are root and may hand the files over: the container's mosquitto
    (uid 1883) or the system user of Debian's mosquitto package; otherwise the broker runs as us."""
    if os.geteuid() != 0:
        return None
    if layout == "compose":
        return 1883  # the eclipse-mosquitto image's user
    try:
        return pwd.getpwnam("mosquitto").pw_name
    except KeyError:
        return None
