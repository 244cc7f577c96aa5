"""Two processes over one state file, as an operator starting a service twice would: the second is refused at
once with the first one's pid and exits non-zero, and the first goes on (contract/lockfile.py). The in-process
tests (tests/gateway/test_health.py, tests/edge/test_store_forward.py) hold the lock in the same process."""
import os
import subprocess
import sys
import time

from fieldlab.broker import free_port
from tests.helpers import terminate

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def fieldlab(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fieldlab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)


def wait_for_line(proc: subprocess.Popen, start: str, timeout: float = 20) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(start):
            return seen
    raise AssertionError(f"no line starting {start!r}:\n{''.join(seen)}")


def test_a_second_gateway_process_over_the_same_state_is_refused(mosquitto, site, tmp_path):
    cmd = ("gateway", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site, "--client-id", f"gw-{site}",
           "--state-dir", str(tmp_path), "--http-port", str(free_port()))
    first = fieldlab(*cmd)
    try:
        wait_for_line(first, "gateway reading")
        second = subprocess.run([sys.executable, "-m", "fieldlab", *cmd[:-1], str(free_port())],
                                capture_output=True, text=True, env=ENV, timeout=30)
        assert second.returncode != 0
        assert f"in use by another process (pid {first.pid})" in second.stderr, second.stderr
        assert first.poll() is None  # the first one goes on
    finally:
        terminate(first)
    assert first.returncode == 0


def test_a_second_edge_agent_over_the_same_outbox_is_refused(mosquitto, site, tmp_path):
    opc = free_port()
    sim = fieldlab("sim", "--machines", "1", "--opcua-port", str(opc))
    agent = None
    try:
        wait_for_line(sim, "cnc-01: opc.tcp://")
        cmd = ("edge", "--opcua", f"opc.tcp://127.0.0.1:{opc}/fieldlab/", "--object", "cnc-01", "--broker",
               f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site, "--buffer", str(tmp_path / "outbox.db"))
        agent = fieldlab(*cmd)
        wait_for_line(agent, "edge agent for")
        second = subprocess.run([sys.executable, "-m", "fieldlab", *cmd], capture_output=True, text=True,
                                env=ENV, timeout=30)
        assert second.returncode != 0
        assert f"in use by another process (pid {agent.pid})" in second.stderr, second.stderr
        assert agent.poll() is None
    finally:
        terminate(agent, sim)
