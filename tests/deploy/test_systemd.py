"""The edge agent's systemd unit: valid for systemd, and the command it runs is a valid agent command."""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "fieldlab-edge.service"


def exec_start() -> list[str]:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd", pytrace=False)
    fieldlab = Path(sys.executable).with_name("fieldlab")
    unit = tmp_path / UNIT.name  # the same unit, with the binary where this checkout installed it
    unit.write_text(UNIT.read_text().replace(exec_start()[0], str(fieldlab)))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr  # unknown keys are only warnings: none allowed


def test_the_unit_runs_the_agent_with_the_config_from_etc(tmp_path):
    binary, *args = exec_start()
    assert binary == "/opt/fieldlab/venv/bin/fieldlab" and args == ["edge", "--config", "/etc/fieldlab/edge.yaml"]
    # the same arguments with the example file are a valid agent command line (checked, not run)
    args[-1] = str(ROOT / "docs" / "examples" / "edge-opcua.yaml")
    r = subprocess.run([sys.executable, "-m", "fieldlab", *args, "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "edge-opcua.yaml: OK" in r.stdout
