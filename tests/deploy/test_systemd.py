"""The systemd units: valid for systemd, and the commands they run are valid fieldlab commands."""
import base64
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldlab import cli

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
EDGE, GATEWAY = UNITS / "fieldlab-edge.service", UNITS / "fieldlab-gateway.service"


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", [EDGE, GATEWAY], ids=lambda u: u.stem)
def test_systemd_accepts_the_unit(tmp_path, unit):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd", pytrace=False)
    fieldlab = Path(sys.executable).with_name("fieldlab")
    copy = tmp_path / unit.name  # the same unit, with the binary where this checkout installed it
    copy.write_text(unit.read_text().replace(exec_start(unit)[0], str(fieldlab)))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr  # unknown keys are only warnings: none allowed


def test_the_edge_unit_runs_the_agent_with_the_config_from_etc():
    binary, *args = exec_start(EDGE)
    assert binary == "/opt/fieldlab/venv/bin/fieldlab" and args == ["edge", "--config", "/etc/fieldlab/edge.yaml"]
    # the same arguments with the example file are a valid agent command line (checked, not run)
    args[-1] = str(ROOT / "docs" / "examples" / "edge-opcua.yaml")
    r = subprocess.run([sys.executable, "-m", "fieldlab", *args, "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "edge-opcua.yaml: OK" in r.stdout


def test_the_gateway_unit_reads_its_password_from_systemd_credentials(tmp_path, monkeypatch):
    """ExecStart with systemd's variables filled in as systemd would: the password comes from the file
    LoadCredential= names, the InfluxDB password from the environment file, the checkpoint goes to the
    state directory, and nothing secret is on the command line."""
    text = GATEWAY.read_text()
    load = next(x for x in text.splitlines() if x.startswith("LoadCredential="))
    name, source = load.removeprefix("LoadCredential=").split(":", 1)
    assert source == "/etc/fieldlab/credentials/gateway"  # where fieldlab deploy --out /etc/fieldlab puts it
    (tmp_path / name).write_text("s3cret\n")
    binary, *args = exec_start(GATEWAY)
    args = [a.replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)).replace("${STATE_DIRECTORY}", str(tmp_path / "st"))
            for a in args if a != "$FIELDLAB_PRESENTER"]  # unset: no argument (tests/deploy/test_presenters.py)
    assert binary == "/opt/fieldlab/venv/bin/fieldlab" and not any("$" in a for a in args)
    ca = tmp_path / "ca.crt"  # the --ca-file must exist to be accepted
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args[args.index("--ca-file") + 1] = str(ca)
    a = cli.build_parser().parse_args(args)
    url = cli._broker(a)
    assert (url.username, url.password, url.tls, url.port) == ("gateway", "s3cret", True, 8883)
    monkeypatch.setenv("FIELDLAB_INFLUX_PASSWORD", "from-env-file")
    sink = cli._influx_sink(a)
    basic = base64.b64encode(b"gateway:from-env-file").decode()
    assert (sink.database, sink._headers["Authorization"]) == ("fieldlab", f"Basic {basic}")
    assert cli._state_dir(a.state_dir) == tmp_path / "st"


def test_a_service_without_a_home_keeps_its_state_where_systemd_says(monkeypatch, tmp_path):
    """DynamicUser= services have no home directory: the state goes to $STATE_DIRECTORY (StateDirectory=), and
    without one the message says what to give instead of a traceback (found by tests/deploy/test_one_pi_systemd.py:
    the Pi's edge agent crashed with "Could not determine home directory")."""
    from contract.errors import ServiceError

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert cli._state_dir(None) == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    with pytest.raises(ServiceError, match="--state-dir DIR, or StateDirectory="):
        cli._state_dir(None)
