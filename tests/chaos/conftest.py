"""The chaos suite: real processes (Mosquitto, gateway, simulated machines with their edge publishers) on
loopback, faults injected at observable points, the simulators' ledger as ground truth.

Every test runs a short version in CI. ``FIELDLAB_CHAOS=full`` repeats each fault more often and runs
longer; ``FIELDLAB_CHAOS_REPORT=FILE`` appends one JSON line per scenario (bench/chaos.py runs both and
prints the table of docs/RELIABILITY.md).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldlab.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("FIELDLAB_CHAOS") == "full"


#: The scenarios only the full run has (FIELDLAB_CHAOS=full, bench/chaos.py --full): the CI subset keeps the suite
#: within its time (about 3.5 minutes of the 15); what these cover, CI also checks by shorter tests elsewhere
#: (tests/edge/test_store_forward.py, test_agent.py; tests/gateway/test_influx.py).
FULL_ONLY = ("test_edge.py::", "test_storage.py::", "test_broker.py::test_broker_outages_lose_no_part[restart]")


def pytest_collection_modifyitems(config, items):
    kept, left = [], []
    for item in items:
        if "tests/chaos/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.chaos)
            if not FULL and any(part in item.nodeid for part in FULL_ONLY):
                left.append(item)
                continue
        kept.append(item)
    if left:  # deselected, not skipped: pytest reports them as such, and nothing counts them as passed
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture
def seed() -> int:
    """A printed seed per test: the same seed, the same machines and the same fault times."""
    value = int(os.environ.get("FIELDLAB_CHAOS_SEED") or random.SystemRandom().randrange(1, 10_000))
    print(f"chaos seed {value} (FIELDLAB_CHAOS_SEED={value} repeats it)")
    return value


class Proc:
    """A child process whose output is collected line by line as it comes."""

    def __init__(self, name: str, cmd: list[str]):
        self.name, self.cmd, self.lines = name, cmd, []
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, text=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.lines):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not say {text!r}:\n{self.tail()}", pytrace=False)
            time.sleep(0.05)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def kill(self) -> None:
        """SIGKILL, the whole process group (a crash, or the OOM killer)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


@pytest.fixture
def procs():
    """Start processes with ``procs(name, cmd)``; all are stopped in reverse order at the end, and their output's
    tail is printed (pytest shows it when the test fails)."""
    started: list[Proc] = []

    def start(name: str, cmd: list[str]) -> Proc:
        p = Proc(name, cmd)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        code = p.stop()
        print(f"--- {p.name} (exit {code}): {' '.join(p.cmd[2:])}\n{p.tail()}")


@pytest.fixture
def report(request):
    """``report(**row)``: one scenario's figures, printed, and appended to $FIELDLAB_CHAOS_REPORT if set."""
    def write(**row) -> None:
        row = {"test": request.node.name, "full": FULL, **row}
        print("chaos result", json.dumps(row))
        path = os.environ.get("FIELDLAB_CHAOS_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return write


def fieldlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "fieldlab", *args]


def gateway_cmd(broker_port: int, http_port: int, state_dir: Path, site: str, *extra: str) -> list[str]:
    return fieldlab("gateway", "--broker", f"mqtt://127.0.0.1:{broker_port}", "--site", site, "--http-port",
                    str(http_port), "--state-dir", str(state_dir), "--checkpoint-every", "1", *extra)


def sim_cmd(broker_port: int, site: str, ledger: Path, seconds: float, machines: int = 2, speed: float = 60,
            seed: int = 1) -> list[str]:
    return fieldlab("sim", "--machines", str(machines), "--speed", str(speed), "--duration", str(seconds),
                    "--seed", str(seed), "--one-server", "--opcua-port", str(free_port()), "--publish",
                    f"mqtt://127.0.0.1:{broker_port}", "--site", site, "--area", "a", "--line", "l",
                    "--ledger", str(ledger))


def http_json(url: str, timeout: float = 2.0) -> tuple[int, dict | str | None]:
    """(status, JSON body or text) of a GET; (0, None) if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def metric(http_port: int, name: str) -> float | None:
    status, body = http_json(f"http://127.0.0.1:{http_port}/metrics")
    if status != 200 or not isinstance(body, str):
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def poll(predicate, timeout: float, every: float = 0.1):
    """The predicate's first true value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            return None
        time.sleep(every)


def retained(port: int, topic_filter: str, timeout: float = 3.0, settle: float = 0.5) -> dict[str, dict]:
    """The retained messages under a filter, by topic (JSON), as a late subscriber sees them."""
    got: dict[str, dict] = {}
    last = [time.monotonic()]

    def on_message(c, u, m):
        if m.retain:
            got[m.topic] = json.loads(m.payload)
            last[0] = time.monotonic()

    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (got and time.monotonic() - last[0] > settle):
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return got


def machine_kpis(port: int, site: str) -> dict[str, dict]:
    """The retained KPI message of each machine of the site, by machine name (the keys of sim --ledger)."""
    return {t.split("/")[-2]: k
            for t, k in retained(port, f"fieldlab/v1/{site}/+/+/+/kpi").items() if "/_line/" not in t}


def compare(kpis: dict[str, dict], ledger: dict[str, dict]) -> dict:
    """Parts produced, lost and counted twice, and the largest run-time error (s), KPIs against the ledger."""
    produced = sum(v["good"] + v["reject"] for v in ledger.values())
    counted = {path: (k["good"] or 0) + (k["reject"] or 0) for path, k in kpis.items()}
    lost = sum(max(0, v["good"] + v["reject"] - counted.get(path, 0)) for path, v in ledger.items())
    twice = sum(max(0, counted.get(path, 0) - v["good"] - v["reject"]) for path, v in ledger.items())
    run_error = max((abs((kpis[p]["run_s"] or 0) - v["run_s"]) if p in kpis else v["run_s"])
                    for p, v in ledger.items())
    return {"produced": produced, "lost": lost, "duplicated": twice, "run_s_error": round(run_error, 6)}


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def sink_metrics(http_port: int) -> dict[str, float]:
    """The gateway's storage metrics (``fieldlab_sink_*``, summed over its sinks) by name without the prefix:
    written_total, dropped_total, rejected_total, retries_total, backlog_lines; {} if /metrics does not answer."""
    status, body = http_json(f"http://127.0.0.1:{http_port}/metrics")
    out: dict[str, float] = {}
    for line in body.splitlines() if status == 200 and isinstance(body, str) else []:
        if line.startswith("fieldlab_sink_"):
            name = line.split("{")[0].split()[0].removeprefix("fieldlab_sink_")
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def settled_kpis(port: int, site: str, ledger: dict[str, dict], shift_s: float = 0.0, timeout: float = 20.0) -> dict:
    """The machines' final KPIs: once every machine of the ledger has KPIs up to its ledger's end (plus
    ``shift_s``) and no part is missing; after ``timeout`` whatever there is (the caller's asserts say why)."""
    def done():
        k = machine_kpis(port, site)
        return k if (compare(k, ledger)["lost"] == 0 and set(ledger) <= set(k)
                     and all((k[m]["ts"] or 0) >= v["end"] + shift_s - 1e-3 for m, v in ledger.items())) else None
    return poll(done, timeout, every=0.3) or machine_kpis(port, site)


@pytest.fixture
def durable_sub():
    """``durable_sub(port, topic_filter)``: a subscriber with a persistent session that keeps every message
    (``.messages``: (topic, payload) in arrival order; tests/edge/test_store_forward.py); closed at the end."""
    from tests.edge.test_store_forward import DurableSubscriber

    made = []

    def make(port: int, topic_filter: str):
        made.append(DurableSubscriber(port, topic_filter))
        return made[-1]

    yield make
    for s in made:
        s.close()
