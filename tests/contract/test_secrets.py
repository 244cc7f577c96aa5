"""Secrets from a file or the environment, for every command that logs in (MQTT, InfluxDB, Grafana)."""
import subprocess
import sys

import pytest

from contract.errors import ServiceError
from contract.secrets import read_secret


def test_a_file_wins_over_the_environment_and_gives_its_first_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FIELDLAB_TEST_SECRET", "from-env")
    f = tmp_path / "secret"
    f.write_text("  s3cret  \nsecond line\n")
    assert read_secret("--x-file", str(f), "FIELDLAB_TEST_SECRET") == "s3cret"
    assert read_secret("--x-file", None, "FIELDLAB_TEST_SECRET") == "from-env"
    monkeypatch.delenv("FIELDLAB_TEST_SECRET")
    assert read_secret("--x-file", None, "FIELDLAB_TEST_SECRET") is None


def test_an_empty_or_missing_file_is_an_error_naming_the_option(tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServiceError, match=r"^--x-file .*empty: the file is empty$"):
        read_secret("--x-file", str(tmp_path / "empty"), "UNSET_FIELDLAB_VAR")
    with pytest.raises(ServiceError, match=r"^--x-file .*missing: cannot read it \(No such file or directory\)$"):
        read_secret("--x-file", str(tmp_path / "missing"), "UNSET_FIELDLAB_VAR")


def test_the_gateway_refuses_an_empty_mqtt_password_file_before_connecting(tmp_path):
    (tmp_path / "pw").write_text("")
    r = subprocess.run([sys.executable, "-m", "fieldlab", "gateway", "--broker", "mqtt://gateway@127.0.0.1:1",
                        "--password-file", str(tmp_path / "pw")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"--password-file {tmp_path / 'pw'}: the file is empty" in r.stderr, r.stderr
