"""`presenters:` in the plant file: a web login (a PIN) for presenter mode in a deployed gateway (#15, #14).

`fieldlab deploy` gives each presenter a 6-digit PIN in web/pins/ and a line in web/users with the presenter scope
(both scopes for a name that is also an operator), keeps the PIN on a re-run and removes it when the name goes.
Presenters get no MQTT user: the web app sends through the gateway's connection. The gateway's command gets
`--presenter` only when there are presenters: in the pi layout's unit, in the compose stack (docker-compose.yml
with the generated compose.env, resolved by docker-compose) and in the Debian unit (deploy/systemd, through the
generated web/gateway.env). The running gateway with a presenter's login is in
tests/gateway/test_presenter_deployed.py. About 3 s (two docker-compose runs).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from contract.passwords import hash_matches
from contract.yamlfile import ConfigError
from fieldlab import cli, deploy, onepi
from gateway.auth import read_users
from tests.deploy.test_compose import _compose

ROOT = Path(__file__).resolve().parents[2]
PLANT = """\
site: acme
machines:
  hall-1/line-1: [cnc-01]
viewers: [simulator]
operators: [anna, piet]
presenters: [trainer, anna]
"""


def _deploy(tmp_path: Path, text: str, *more: str) -> Path:
    (tmp_path / "plant.yaml").write_text(text)
    assert cli.main(["deploy", str(tmp_path / "plant.yaml"), "--out", str(tmp_path / "s"), *more]) == 0
    return tmp_path / "s"


def _pins(out: Path) -> dict[str, str]:
    return {f.name: f.read_text().strip() for f in (out / "web" / "pins").iterdir()}


def test_presenters_get_a_pin_and_the_presenter_scope_but_no_mqtt_user(tmp_path, capsys):
    out = _deploy(tmp_path, PLANT)
    users, pins = read_users(str(out / "web" / "users")), _pins(out)
    assert {name: scopes for name, (scopes, _) in users.items()} == {
        "anna": {"presenter", "operator"}, "piet": {"operator"}, "trainer": {"presenter"}}
    assert "anna:presenter,operator:$7$" in (out / "web" / "users").read_text()
    assert set(pins) == {"anna", "piet", "trainer"}
    for name, pin in pins.items():
        assert re.fullmatch(r"\d{6}", pin) and hash_matches(users[name][1], pin), name
    # the web app publishes with the gateway's own connection: no MQTT user, password or ACL entry for trainer
    assert not (out / "credentials" / "trainer").exists()
    assert "trainer" not in (out / "mosquitto" / "passwd").read_text()
    assert "user trainer" not in (out / "mosquitto" / "acl").read_text()
    assert "FIELDLAB_PRESENTER=--presenter\n" in (out / "web" / "gateway.env").read_text()
    said = capsys.readouterr().out
    assert re.search(r"trainer +new PIN \(presenter\)", said) and re.search(r"anna +new PIN \(presenter\+operator\)",
                                                                             said)
    assert "run the gateway with --presenter" in said
    assert not any(pin in said for pin in pins.values())


def test_a_rerun_keeps_the_pins_and_a_removed_presenter_loses_its_pin(tmp_path, capsys):
    out = _deploy(tmp_path, PLANT)
    before, lines = _pins(out), (out / "web" / "users").read_text().splitlines()
    _deploy(tmp_path, PLANT)
    assert _pins(out) == before and (out / "web" / "users").read_text().splitlines() == lines  # no churn
    assert "PIN kept (presenter)" in capsys.readouterr().out
    _deploy(tmp_path, PLANT.replace("presenters: [trainer, anna]\n", ""))
    users = read_users(str(out / "web" / "users"))
    assert set(users) == {"anna", "piet"} and users["anna"][0] == {"operator"}
    assert _pins(out) == {k: v for k, v in before.items() if k != "trainer"}  # anna keeps her PIN
    assert hash_matches(users["anna"][1], before["anna"])
    assert "FIELDLAB_PRESENTER=\n" in (out / "web" / "gateway.env").read_text()


def test_an_emptied_pin_or_key_file_is_made_again_a_pin_set_by_hand_is_kept(tmp_path, capsys):
    """An empty PIN file was "PIN kept" and its user could never log in; an empty key signed every session with
    an empty key. A PIN of 4 or more digits written by hand stays."""
    out = _deploy(tmp_path, PLANT)
    (out / "web" / "pins" / "piet").write_text("\n")
    (out / "web" / "pins" / "anna").write_text("4711\n")
    (out / "web" / "key").write_text("")
    capsys.readouterr()
    _deploy(tmp_path, PLANT)
    users, pins = read_users(str(out / "web" / "users")), _pins(out)
    assert re.fullmatch(r"\d{6}", pins["piet"]) and hash_matches(users["piet"][1], pins["piet"])
    assert pins["anna"] == "4711" and hash_matches(users["anna"][1], "4711")
    assert len((out / "web" / "key").read_text().strip()) == 64
    said = capsys.readouterr().out
    assert re.search(r"piet +new PIN", said) and re.search(r"anna +PIN kept", said), said


@pytest.mark.parametrize("line, key, fix", [
    ("presenters: trainer", "presenters", "write a list of user names, like [trainer]"),
    ("presenters: [trainer, 'tafel 3']", "presenters[1]", "'tafel 3' is not a valid name"),
    ("presenters: [trainer, trainer]", "presenters", "trainer is listed twice; write each presenter once"),
    ("presenter: [trainer]", "presenter", "unknown key; the keys are site, machines, broker, gateways, viewers, "
                                          "operators, presenters"),
])
def test_a_wrong_presenters_key_names_the_file_the_key_and_the_fix(tmp_path, line, key, fix):
    (tmp_path / "plant.yaml").write_text(PLANT.replace("presenters: [trainer, anna]", line))
    with pytest.raises(ConfigError) as e:
        deploy.load_plant(tmp_path / "plant.yaml")
    assert f"plant.yaml:6: {key}: " in str(e.value) and fix in str(e.value), str(e.value)


def _gateway_args(args: list[str]):
    return cli.build_parser().parse_args(args)


def test_the_pi_gateway_unit_gets_presenter_only_with_presenters(tmp_path):
    for text, expected in ((PLANT, True), (PLANT.replace("presenters: [trainer, anna]\n", ""), False)):
        (tmp_path / "plant.yaml").write_text(text)
        plant = deploy.load_plant(tmp_path / "plant.yaml")
        command = onepi.gateway_command(plant, Path("/opt/fieldlab/venv/bin/fieldlab"))
        assert _gateway_args(command[1:]).presenter is expected
        unit = onepi.gateway_unit(plant, tmp_path, Path("/opt/fieldlab/venv/bin/fieldlab"))
        assert ("--presenter" in unit) is expected


def test_the_compose_gateway_gets_presenter_only_with_presenters(tmp_path):
    """docker-compose.yml resolved by docker-compose with the compose.env `fieldlab deploy --layout compose` wrote."""
    compose_plant = (ROOT / "deploy" / "compose" / "plant.yaml").read_text()
    assert "# presenters: [trainer]" in compose_plant
    for name, text, expected in (("with", compose_plant.replace("# presenters:", "presenters:"), True),
                                 ("without", compose_plant, False)):
        (tmp_path / name).mkdir()
        out = _deploy(tmp_path / name, text, "--layout", "compose")
        r = _compose("config", env_file=out / "compose.env")
        assert r.returncode == 0, r.stderr
        command = yaml.safe_load(r.stdout)["services"]["gateway"]["command"]
        assert ("--presenter" in command) is expected, command
        assert _gateway_args(command).presenter is expected


def _read_as(uid: int, gid: int, path: Path, where: Path) -> bool:
    """Whether a process of uid:gid (no other groups) may read ``path``'s inode, through a hard link in a directory
    below ``where`` that it may enter: as the gateway's container sees a file that docker-compose.yml mounts,
    whatever directory holds it on the host."""
    with tempfile.TemporaryDirectory(dir=where) as d:
        os.chmod(d, 0o755)
        os.link(path, Path(d) / "f")
        r = subprocess.run(["cat", str(Path(d) / "f")], user=uid, group=gid, extra_groups=[], capture_output=True)
        return r.returncode == 0


def test_compose_as_root_lets_the_gateway_container_read_only_the_users_and_the_key(tmp_path):
    """docker-compose.yml mounts web/users and web/key into the gateway's container, which runs as 10001:10001;
    they are root's, group 10001, 0640. The PINs (pins/, never mounted), web/ and gateway.env stay root's alone,
    also after a run of an older fieldlab deploy that gave all of web/ to uid 10001."""
    if os.geteuid() != 0:
        pytest.fail("changing a file's group needs root: run this test as root (CI does)", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="fieldlab-web-"))  # one uid 10001 may enter (pytest's own are root's, 0700)
    try:
        base.chmod(0o755)
        text = PLANT
        for run in range(2):
            out = _deploy(base, text, "--layout", "compose")
            web, uid = out / "web", deploy.IMAGE_UID
            for f in (web / "users", web / "key"):
                st = f.stat()
                assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, uid, 0o640), f
                assert _read_as(uid, uid, f, base), f
            for f in (web, web / "pins", *(web / "pins").iterdir(), web / "gateway.env"):
                st = f.stat()
                assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
                    0, 0, 0o700 if f.is_dir() else 0o600), f
            assert not _read_as(uid, uid, web / "pins" / "trainer", base)  # reading a PIN needs sudo
            for f in (web, web / "pins", *web.iterdir(), *(web / "pins").iterdir()):  # as an older run left them
                os.chown(f, uid, uid)
    finally:
        shutil.rmtree(base)


def _systemd_env(*files: Path) -> dict[str, str]:
    """KEY=VALUE lines of EnvironmentFile=s, as systemd reads them (comments skipped, later files win)."""
    env = {}
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    return env


def test_the_debian_unit_takes_presenter_from_the_generated_web_gateway_env(tmp_path):
    """deploy/systemd/fieldlab-gateway.service reads web/gateway.env of `fieldlab deploy --out /etc/fieldlab`; its
    unbraced $FIELDLAB_PRESENTER becomes the words of the value (none when empty), as systemd splits it."""
    unit = (ROOT / "deploy" / "systemd" / "fieldlab-gateway.service").read_text()
    assert "EnvironmentFile=-/etc/fieldlab/web/gateway.env" in unit
    assert "LoadCredential=web-users:/etc/fieldlab/web/users" in unit
    assert "Environment=FIELDLAB_WEB_USERS=%d/web-users" in unit
    exec_start = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart=")).split("=", 1)[1])
    assert exec_start[-1] == "$FIELDLAB_PRESENTER"
    for name, text, expected in (("with", PLANT, True),
                                 ("without", PLANT.replace("presenters: [trainer, anna]\n", ""), False)):
        (tmp_path / name).mkdir()
        out = _deploy(tmp_path / name, text, "--layout", "debian")
        env = _systemd_env(out / "web" / "gateway.env")
        args = exec_start[1:-1] + env.get("FIELDLAB_PRESENTER", "").split()
        args = [a.replace("${CREDENTIALS_DIRECTORY}", "/run/c").replace("${STATE_DIRECTORY}", "/var/lib/g")
                for a in args]
        assert ("--presenter" in args) is expected
        a = _gateway_args(args)
        assert a.presenter is expected and a.command == "gateway"
