"""The gateway's KPI table: every 5 s in a terminal, never into a log. Under systemd the table went to the journal
every 5 s (39 lines a minute for one machine on a Pi's SD card) and pushed "gateway reading ..." out of the
`journalctl -n 20` that docs/one-pi.md asks for (found by following the page under a real systemd)."""
import os
import subprocess
import sys

from fieldlab.broker import free_port

HEAD = "machine                            state"


def run_gateway(mosquitto, site, seconds, *more) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fieldlab", "gateway", "--broker",
                             f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site, "--state-dir", "none",
                             "--http-port", str(free_port()), "--duration", str(seconds), *more],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_table_goes_to_a_log_only_when_asked(mosquitto, site):
    # longer than the terminal's 5 s, so a table printed on the terminal's schedule would show
    quiet, every = run_gateway(mosquitto, site, 6.5), run_gateway(mosquitto, f"{site}b", 3, "--table", "0.5")
    out_quiet, _ = quiet.communicate(timeout=60)
    out_every, _ = every.communicate(timeout=60)
    assert quiet.returncode == 0 and every.returncode == 0, out_quiet + out_every
    assert "gateway reading" in out_quiet
    assert out_quiet.count(HEAD) == 1, out_quiet  # the one at the end, when it stops
    assert out_every.count(HEAD) >= 4, out_every  # every 0.5 s for 3 s, and the one at the end
