"""docker-compose.yml, checked without a Docker engine (there is none here).

Debian's docker-compose validates and resolves it; the files it mounts are the ones tested here: the
Mosquitto configuration `fieldlab deploy --layout compose` writes runs in a real Mosquitto (its
container paths and ports moved to a temp dir), the edge agents' mapping files log in with the
credentials it made and may publish their machine's data, every command line parses with
fieldlab's own CLI, and the broker's healthcheck command gives the right answer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from contract.mqtt import BrokerUrl, connect, wait_published
from contract.yamlfile import YamlFile
from edge import config as edge_config
from fieldlab import cli, deploy
from fieldlab.broker import ConfiguredMosquitto, free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parents[2]
OURS = "fieldlab"  # services built from our Dockerfile


def _compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.fail("docker-compose is missing; install it with: sudo apt-get install -y docker-compose",
                    pytrace=False)
    # only the given file: not a developer's own .env in the checkout, nor passwords in this environment
    clean = {k: v for k, v in os.environ.items() if k not in deploy.COMPOSE_SECRETS}
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty:  # docker-compose 1.29 refuses /dev/null
        return subprocess.run([exe, "--env-file", str(env_file or empty.name), "-f", str(ROOT / "docker-compose.yml"),
                               *args], capture_output=True, text=True, cwd=ROOT, env=clean)


@pytest.fixture(scope="module")
def secrets_dir():
    """fieldlab deploy --layout compose --tls, into a temp dir a broker user could enter."""
    out = Path(tempfile.mkdtemp(prefix="fieldlab-compose-"))
    out.chmod(0o755)
    plant = deploy.load_plant(ROOT / "deploy/compose/plant.yaml")
    deploy.generate(plant, out, tls=True, layout="compose")
    deploy.web_login(plant, out)  # as `fieldlab deploy` does for every layout: the web app's logins
    yield out
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def resolved(secrets_dir) -> dict:
    r = _compose("config", env_file=secrets_dir / "compose.env")
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_without_the_generated_passwords_it_refuses_to_start():
    r = _compose("config", "-q")
    assert r.returncode != 0 and "fieldlab deploy --layout compose" in r.stderr  # no default passwords


def test_images_are_pinned_and_services_are_hardened(resolved):
    for name, svc in resolved["services"].items():
        image = svc["image"]
        assert re.search(r":\d+\.\d+\.\d+", image) and "latest" not in image, f"{name}: pin {image}"
        assert svc.get("restart") == "unless-stopped", name
        if image.startswith(OURS):
            assert svc["user"] == f"{deploy.IMAGE_UID}:{deploy.IMAGE_UID}" and svc["read_only"], name
            assert svc["cap_drop"] == ["ALL"], name
        else:
            assert "test" in svc["healthcheck"], f"{name} has no healthcheck"
    published = sorted(p["target"] for svc in resolved["services"].values() for p in svc.get("ports", []))
    assert published == [3000, 8080, 8883]  # Grafana, the gateway's page, MQTT only over TLS


def _binds(svc: dict) -> dict[str, tuple[Path, bool]]:
    """target -> (source, read-only) of a resolved service's bind mounts (docker-compose 1.29 writes
    them as SOURCE:TARGET[:MODE], named volumes without a leading /)."""
    out = {}
    for v in svc.get("volumes", []):
        source, target, *mode = v.split(":")
        if source.startswith("/"):
            out[target] = (Path(source), mode == ["ro"])
    return out


def test_every_mounted_file_is_in_the_repository_or_in_secrets(resolved, secrets_dir):
    for name, svc in resolved["services"].items():
        for source, read_only in _binds(svc).values():
            source = source.relative_to(ROOT)
            assert read_only, f"{name}: {source} should be mounted read-only"
            if source.parts[0] == "secrets":  # made by fieldlab deploy, never in git
                assert (secrets_dir / Path(*source.parts[1:])).exists(), f"{name}: fieldlab deploy makes no {source}"
            else:
                assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"


def test_every_command_line_is_one_fieldlab_understands(resolved):
    for name, svc in resolved["services"].items():
        if svc["image"].startswith(OURS):
            args = cli.build_parser().parse_args(svc["command"])
            assert args.command in ("gateway", "sim", "edge"), name


@pytest.fixture(scope="module")
def broker(secrets_dir):
    """Mosquitto on the compose layout's files, their container paths moved to a copy in a temp dir."""
    if not mosquitto_binary():
        pytest.fail("mosquitto not found; install it with: sudo apt-get install -y mosquitto", pytrace=False)
    here = secrets_dir / "here"
    shutil.copytree(secrets_dir / "mosquitto", here / "config")
    (here / "data").mkdir()
    ports = [free_port(), free_port()]
    conf = (here / "config" / "mosquitto.conf").read_text()
    conf = conf.replace(deploy.COMPOSE_DIRS[0], str(here / "config")).replace(deploy.COMPOSE_DIRS[1], str(here / "data"))
    conf = conf.replace("listener 1883", f"listener {ports[0]}").replace("listener 8883", f"listener {ports[1]}")
    conf += "user root\n"  # the copies belong to us, not to the container's mosquitto
    (here / "config" / "mosquitto.conf").write_text(conf)
    b = ConfiguredMosquitto(here / "config" / "mosquitto.conf", ports, here / "log").start()
    yield b, ports
    b.cleanup()


def test_the_brokers_healthcheck_passes_against_the_generated_configuration(resolved, broker):
    _, ports = broker
    cmd = resolved["services"]["mosquitto"]["healthcheck"]["test"]
    assert cmd[0] == "CMD-SHELL"
    sub = shutil.which("mosquitto_sub")
    assert sub, "mosquitto_sub is missing; install it with: sudo apt-get install -y mosquitto-clients"
    shell = cmd[1].replace("-p 1883", f"-p {ports[0]}")
    assert subprocess.run(["sh", "-c", shell]).returncode == 0
    dead = shell.replace(f"-p {ports[0]}", f"-p {free_port()}")  # nothing listens there: unhealthy
    assert subprocess.run(["sh", "-c", dead]).returncode != 0


def test_the_edge_agents_mapping_files_log_in_and_publish_their_machine(resolved, secrets_dir, broker):
    _, ports = broker
    creds = secrets_dir / "credentials"
    gateway = BrokerUrl("127.0.0.1", ports[0], "gateway", (creds / "gateway").read_text().strip())
    got = []
    listener = connect(gateway, f"gw-{uuid.uuid4().hex[:6]}", subscriptions=[("fieldlab/v1/#", 1)],
                       on_message=lambda c, u, m: got.append(m.topic))
    try:
        agents = [n for n, s in resolved["services"].items() if s.get("command", [])[:1] == ["edge"]]
        assert len(agents) == 3
        for name in agents:
            binds = _binds(resolved["services"][name])
            mapping, password = binds["/etc/fieldlab/edge.yaml"][0], binds["/run/secrets/mqtt-password"][0]
            local = secrets_dir / password.relative_to(ROOT / "secrets")
            text = mapping.read_text().replace("/run/secrets/mqtt-password", str(local))
            cfg = edge_config.parse(YamlFile.parse(text, mapping))
            assert (cfg.broker.host, cfg.broker.port) == ("mosquitto", 1883)
            client = connect(BrokerUrl("127.0.0.1", ports[0], cfg.broker.username, cfg.broker.password),
                             f"{name}-{uuid.uuid4().hex[:6]}")
            try:
                assert wait_published([client.publish(cfg.machine.topic("counts"), b"{}", qos=1)], 5.0)
            finally:
                client.disconnect()
                client.loop_stop()
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(got) == sorted(f"fieldlab/v1/demo/hall-1/line-1/{m}/counts"
                                     for m in ("cnc-01", "moulder-01", "filler-01"))
    finally:
        listener.disconnect()
        listener.loop_stop()


def test_env_example_documents_every_variable_and_holds_no_secret():
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(\w+)=", text, re.M))
    assert used == documented, f"only in compose: {used - documented}; only in .env.example: {documented - used}"
    for name in deploy.COMPOSE_SECRETS:
        assert re.search(rf"^{name}=\s*(#|$)", text, re.M), f"{name} must be empty in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().split() and "secrets/" in (ROOT / ".gitignore").read_text()


def test_the_image_copies_every_package_pyproject_installs():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert {p.rstrip("*") for p in include} <= copied, "the Dockerfile misses a package: pip would install less"
    assert re.search(r'pip install "\.\[[^]]*\bedge\b[^]]*\bgateway\b[^]]*\bsim\b', (ROOT / "Dockerfile").read_text())


def test_compose_env_from_a_copy_of_env_example_gets_real_passwords(tmp_path):
    """The example's inline comments are not values: empty secrets get random passwords, a filled one is
    kept, and the options stay as they were."""
    env = tmp_path / "compose.env"
    env.write_text(re.sub(r"^GRAFANA_ADMIN_PASSWORD=\s*#", "GRAFANA_ADMIN_PASSWORD=chosen-by-me  #",
                          (ROOT / ".env.example").read_text(), flags=re.M))
    deploy.compose_env(env)
    values = dict(ln.split("=", 1) for ln in env.read_text().splitlines() if ln and not ln.startswith("#"))
    assert values["GRAFANA_ADMIN_PASSWORD"] == "chosen-by-me"
    for name in deploy.COMPOSE_SECRETS[:3]:
        assert re.fullmatch(r"[\w-]{32}", values[name]), (name, values[name])
    assert set(values) == set(deploy.COMPOSE_SECRETS)
    again = env.read_text()
    deploy.compose_env(env)
    assert env.read_text() == again  # made once, then kept


def test_deploy_for_compose_without_root_says_which_owners_the_containers_need(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["deploy", str(ROOT / "deploy/compose/plant.yaml"), "--layout", "compose",
                     "--out", str(tmp_path / "s")]) == 0
    said = capsys.readouterr().out
    assert "chown -R 1883:1883" in said and f"chown -R {deploy.IMAGE_UID}:{deploy.IMAGE_UID}" in said
    assert "edge-cnc-01" in said and "docker compose --env-file" in said
