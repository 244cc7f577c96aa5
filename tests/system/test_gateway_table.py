"""The gateway's KPI table: every 5 s in a terminal, never into a log. Under systemd the table went to the journal
every 5 s (39 lines a minute for one machine on a Pi's SD card) and pushed "gateway reading ..." out of the
`journalctl -n 20` that docs/one-pi.md asks for (found by following the page under a real systemd)."""
import os
import pty
import subprocess
import sys
import threading

import pytest

from fieldlab import cli
from fieldlab.broker import free_port

HEAD = "machine                            state"


def run_gateway(mosquitto, site, seconds, *more, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fieldlab", "gateway", "--broker",
                             f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site, "--state-dir", "none",
                             "--http-port", str(free_port()), "--duration", str(seconds), *more],
                            stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_table_goes_to_a_terminal_and_to_a_log_only_when_asked(mosquitto, site):
    # longer than the terminal's 5 s, so a table printed on the terminal's schedule would show in the log
    quiet, every = run_gateway(mosquitto, site, 6.5), run_gateway(mosquitto, f"{site}b", 3, "--table", "0.5")
    master, slave = pty.openpty()  # a terminal, as a trainer's
    tty = run_gateway(mosquitto, f"{site}c", 6.5, stdout=slave)
    os.close(slave)
    shown = []

    def read():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end closed: the gateway exited
                return
            if not chunk:
                return
            shown.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out_quiet, _ = quiet.communicate(timeout=60)
    out_every, _ = every.communicate(timeout=60)
    assert tty.wait(timeout=60) == 0
    reader.join(10)
    os.close(master)
    assert quiet.returncode == 0 and every.returncode == 0, out_quiet + out_every
    assert "gateway reading" in out_quiet and HEAD not in out_quiet, out_quiet
    assert out_every.count(HEAD) >= 4, out_every  # every 0.5 s for 3 s, and the one at the end
    assert "".join(shown).count(HEAD) >= 2, "".join(shown)  # at 5 s, and at the end


@pytest.mark.parametrize("option", [["--table", "nan"], ["--table", "-1"], ["--duration", "nan"],
                                    ["--duration", "inf"]])
def test_a_table_or_duration_that_is_no_finite_number_is_refused(option, capsys):
    """float('nan') passed every check (nan <= 0 is false), and a --duration of nan never ended."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["gateway", "--broker", "mqtt://127.0.0.1:1", *option])
    err = capsys.readouterr().err
    assert "finite" in err or "0 or more" in err, err
