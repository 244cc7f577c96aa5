"""Third-party clients for interop tests, installed from npm into .cache/npm/ (outside git) when missing.

node/npm missing: the test fails with the install command. The npm registry not reachable: the test fails too,
with the reason and the command that installs them by hand (a skipped test is not a passing one).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / ".cache" / "npm"
#: pinned: the Eclipse Tahu lineage (Cirrus Link) Sparkplug B client and payload codec
NPM_PACKAGES = {"sparkplug-client": "3.2.4", "sparkplug-payload": "1.0.3"}
#: pinned, in a folder of their own (docs/examples/node-red/): Node-RED 4.1 (5.x needs Node.js >= 22.9), its OPC UA
#: nodes, and the Sparkplug client for the flows' function nodes. About 300 MB and 75 s on the first run.
NODE_RED_DIR = ROOT / ".cache" / "npm-node-red"
NODE_RED_PACKAGES = {"node-red": "4.1.8", "node-red-contrib-opcua": "0.2.354", "sparkplug-client": "3.2.4"}
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ENETUNREACH", "network")


def _installed(folder: Path = NPM_DIR, packages: dict = NPM_PACKAGES) -> bool:
    for name, version in packages.items():
        meta = folder / "node_modules" / name / "package.json"
        if not meta.exists() or json.loads(meta.read_text()).get("version") != version:
            return False
    return True


def _npm_install(folder: Path, packages: dict, what: str) -> Path:
    """folder/node_modules holding the pinned packages, installed when missing; fails or skips as said above."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail(f"Node.js is needed for the {what}: apt-get install -y nodejs npm", pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".install.lock", "w") as lock:  # test workers (pytest -n) install one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(folder, packages):
            _install(folder, packages)
    return folder / "node_modules"


def _install(folder: Path, packages: dict) -> None:
    run = subprocess.run(["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                          "--no-save", *[f"{n}@{v}" for n, v in packages.items()]],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        why = [line for line in run.stderr.splitlines() if any(word in line for word in _OFFLINE)]
        if why:
            pytest.fail(f"npm registry not reachable, cannot install {', '.join(packages)}: {why[0]}; connect this "
                        f"machine to the npm registry (or a mirror: npm config set registry URL) and run the tests "
                        f"again, or install them once by hand: npm install --prefix {folder} "
                        f"{' '.join(f'{n}@{v}' for n, v in packages.items())}", pytrace=False)
        pytest.fail(f"npm install {' '.join(packages)} failed:\n{run.stderr[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The node_modules folder holding NPM_PACKAGES (installed on first use)."""
    return _npm_install(NPM_DIR, NPM_PACKAGES, "Sparkplug interop tests")


@pytest.fixture(scope="session")
def node_red_modules() -> Path:
    """The node_modules folder holding NODE_RED_PACKAGES (installed on first use)."""
    return _npm_install(NODE_RED_DIR, NODE_RED_PACKAGES, "Node-RED example flows' test")


class NodeProcess:
    """A Node.js script that takes JSON commands on stdin and writes JSON events on stdout."""

    def __init__(self, modules: Path, script: Path, arg: dict):
        env = {**os.environ, "NODE_PATH": str(modules)}
        self.proc = subprocess.Popen(["node", str(script), json.dumps(arg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.events: list[dict] = []
        self._taken: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def wait(self, event: str, timeout: float = 10.0, **match) -> dict:
        """The first event of this name (and fields) that no earlier ``wait`` returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, e in enumerate(list(self.events)):
                if i not in self._taken and e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    self._taken.add(i)
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise AssertionError(f"no {event} {match} from {self.proc.args[1]} in {timeout} s; got {self.events} {err}")

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        self.wait("done", op=command["op"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def node_process(node_modules):
    """start(script, arg) -> NodeProcess; every one is killed at the end of the test."""
    made = []

    def start(script: Path, arg: dict) -> NodeProcess:
        p = NodeProcess(node_modules, script, arg)
        made.append(p)
        return p

    yield start
    for p in made:
        p.kill()
