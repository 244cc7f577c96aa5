"""A fresh Debian 12 machine with systemd as PID 1, for following a page of the docs literally.

`debootstrap` makes a minimal Debian 12 (bookworm) root file system from the machine's own Debian mirror; it is
kept as a tarball in /var/cache/fieldlab-tests (``FIELDLAB_TEST_CACHE``) so that later runs on the same machine
unpack instead of downloading. Minimal on purpose: no libnss-systemd (Priority standard, so most Debian and Pi OS
installs have it), so a service with DynamicUser= really has no home directory, the strictest case. The machine
reaches apt and PyPI as the host does: through a transparent network, with the host's extra CA certificates
copied in; an http(s)_proxy variable is not passed on. `systemd-nspawn` then runs commands in it: without booting and on the host's network for the
installation (apt, pip), and booted, with systemd as PID 1 and a private network of its own (only its loopback:
its ports never meet the host's or another test's), for everything that systemd runs. Commands reach the booted
machine through `nsenter`: `sh` runs a shell script inside as root; `in_network` runs a host program in its
network namespace only (the test's own Python or Chromium, talking to 127.0.0.1 inside).

The host has no systemd of its own (a container or VM whose PID 1 is something else), hence
`--register=no --keep-unit`: no machined to register with, no scope unit to create.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FIELDLAB_TEST_CACHE", "/var/cache/fieldlab-tests"))  # debootstrap's download
SUITE = "bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,ca-certificates,sudo"  # what a Pi OS Lite image has and minbase lacks
CLEAN_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive"]


def need(*binaries: str) -> None:
    missing = [b for b in binaries if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found; install with: sudo apt-get install -y systemd-container "
                    "debootstrap", pytrace=False)


def debian_mirror() -> str:
    """The host's own Debian mirror (its apt sources, where it serves bookworm), else Debian's default."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
              *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):  # deb822 stanzas, or one-line entries
            for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)(.*)$", stanza, re.M):
                uri = m.group(1).rstrip("/")
                if uri.endswith("/debian") and (SUITE in m.group(2) or re.search(rf"^Suites:.*\b{SUITE}\b", stanza,
                                                                                  re.M)):
                    return uri
    return "http://deb.debian.org/debian"


def root_filesystem(dest: Path) -> float:
    """A fresh minimal Debian 12 in ``dest``; returns the seconds it took (download or unpack). The download is
    kept as a tarball in CACHE (outside the checkout, so fresh clones on one machine share it), under a lock."""
    need("debootstrap", "systemd-nspawn")
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        pytest.fail("Debian's archive keyring is missing; install with: sudo apt-get install -y "
                    "debian-archive-keyring", pytrace=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / f"debian-{SUITE}-minbase-{PACKAGES.replace(',', '+')}.tar"
    t0 = time.monotonic()
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run on this machine makes the same tarball
        if not cache.exists():
            work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
            try:
                # in a mount namespace of its own: the proc and sys it mounts inside vanish with it, even when
                # a time-out kills it before its own clean-up
                r = subprocess.run(["unshare", "--mount", "--propagation", "private", "debootstrap",
                                    "--variant=minbase", f"--include={PACKAGES}", SUITE, str(work), debian_mirror()],
                                   capture_output=True, text=True, timeout=600)
                if r.returncode:
                    pytest.fail(f"debootstrap failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}",
                                pytrace=False)
                with tarfile.open(cache.with_suffix(".part"), "w") as tar:
                    tar.add(work, arcname=".")
                os.replace(cache.with_suffix(".part"), cache)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xpf", str(cache), "-C", str(dest), "--numeric-owner"], check=True, timeout=300)
    return time.monotonic() - t0


class Machine:
    """A Debian 12 root file system in ``root``, run by systemd-nspawn as machine ``name``."""

    def __init__(self, root: Path, name: str, options: list[str] = ()):
        """``options``: more systemd-nspawn options for every run, e.g. ``--bind-ro=HOST:INSIDE``."""
        self.root, self.name, self.options = root, name, list(options)
        self.boot_proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the machine's PID 1 (systemd) as the host sees it

    def _nspawn(self, *extra: str) -> list[str]:
        return ["systemd-nspawn", "-D", str(self.root), "-M", self.name, "--register=no", "--keep-unit", "--quiet",
                "--hostname=raspberrypi",
                *self.options, *extra]

    def run(self, script: str, timeout: float = 600, user: str | None = None) -> subprocess.CompletedProcess:
        """``script`` in the machine, not booted, on the host's network (for installing); as root or ``user``."""
        shell = ["su", "-", user, "-c", "set -e\n" + script] if user else ["/bin/sh", "-ec", script]
        return subprocess.run([*self._nspawn("--pipe"), *CLEAN_ENV, *shell], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def boot(self, log: Path, timeout: float = 60) -> None:
        """Boot it (systemd as PID 1) with a private network, and wait until systemd says it is up."""
        self.boot_proc = subprocess.Popen([*self._nspawn("-b", "--console=pipe", "--private-network")],
                                          stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.boot_proc.poll() is not None:
                pytest.fail(f"systemd-nspawn stopped ({self.boot_proc.returncode}):\n{log.read_text()[-3000:]}",
                            pytrace=False)
            self.pid = self.pid or self._systemd_pid()
            if self.pid:
                try:
                    r = self.sh("systemctl is-system-running --wait", check=False,
                                timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break
                if r.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)
        pytest.fail(f"{self.name} did not boot within {timeout} s:\n{log.read_text()[-3000:]}", pytrace=False)

    def _systemd_pid(self) -> int | None:
        """The machine's PID 1: the first process named systemd below systemd-nspawn."""
        todo = [self.boot_proc.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:  # gone meanwhile
                continue
            for child in map(int, children):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except OSError:
                    continue
                todo.append(child)
        return None

    def sh(self, script: str, timeout: float = 120, check: bool = True, user: str | None = None
           ) -> subprocess.CompletedProcess:
        """``script`` in the booted machine, in a clean environment: as root, or as ``user`` in a login shell
        (``su -``, as a person at the Pi's console); a failure shows its output."""
        shell = ["su", "-", user, "-c", "set -e\n" + script] if user else ["/bin/sh", "-ec", script]
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *CLEAN_ENV, *shell],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode:
            pytest.fail(f"in {self.name}{' as ' + user if user else ''}: {script}\nexit {r.returncode}\n"
                        f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False)
        return r

    def in_network(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A host program in the machine's network namespace only (its 127.0.0.1)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kw)

    def poweroff(self, timeout: float = 30) -> None:
        """Shut it down; if it does not go within ``timeout``, kill its PID 1 (which ends every process in its
        PID namespace) and systemd-nspawn."""
        if self.boot_proc is None or self.boot_proc.poll() is not None:
            return
        try:
            if self.pid:
                subprocess.run(["nsenter", "-t", str(self.pid), "-a", "systemctl", "poweroff"], capture_output=True,
                               timeout=timeout)
            self.boot_proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in (self.pid, self.boot_proc.pid):
                try:
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.boot_proc.wait(10)
