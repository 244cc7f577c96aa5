"""A private MQTT broker for the demo and the tests: Mosquitto if installed, else embedded amqtt.

Mosquitto runs as a child process with its own config in a temp dir, bound to
127.0.0.1 only, without persistence; it is stopped by PID. amqtt runs inside the
demo's asyncio loop when no mosquitto binary is on PATH (fine for a demo, not
for load: see docs/PERFORMANCE.md).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from contract.errors import ServiceError
from contract.mqtt import BrokerUrl

log = logging.getLogger("fieldlab.broker")

INSTALL_HINT = "install it with: sudo apt-get install -y mosquitto"


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A free port (the first of ``count`` consecutive free ones) for a server of ours.

    Chosen below the kernel's ephemeral range (32768 and up on Linux), which outgoing connections
    draw from: a port the kernel hands out with bind(0) may be taken by a client a moment later.
    """
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(20000, 32000 - count)
        try:
            for p in range(first, first + count):
                with socket.socket() as s:
                    s.bind((host, p))
        except OSError:
            continue
        return first
    raise ServiceError(f"no {count} free consecutive ports found on {host} between 20000 and 32000")


def check_port_free(port: int, what: str, option: str, host: str = "127.0.0.1") -> None:
    """ServiceError naming the option to change if ``port`` is taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServiceError(f"port {port} on {host} is taken, so the {what} cannot start there; "
                                   f"stop what uses it or choose another port with {option}") from None
            raise ServiceError(f"cannot use port {port} on {host} for the {what}: {e.strerror}") from None


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str, status: int = 200) -> bool:
    """Whether ``url`` answers with ``status`` now (a readiness check)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status == status
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    """Debian installs mosquitto in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class ChildServer:
    """A server we run as a child process (``self.proc``, its output in ``self._log``) in a temp dir
    (``self._tmp``, if we made one): stopped with SIGTERM, killed if it does not stop in time."""

    proc: subprocess.Popen | None = None
    _log = None
    _tmp = None
    stop_timeout = 10.0

    def _launch(self, cmd: list[str], log_file: Path, ready, what: str, timeout: float) -> None:
        """Start ``cmd`` as ``self.proc``, its output appended to ``log_file``, and wait until ``ready()``;
        if it exits or ``timeout`` passes first: stop it, ServiceError "``what``: <the log's tail>"."""
        self._log = open(log_file, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready():
                return
            time.sleep(0.02)
        self.stop()
        tail = Path(log_file).read_text(errors="replace")[-500:].strip()
        raise ServiceError(f"{what}: {tail or 'no output'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it (no clean shutdown, nothing saved)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()


class PrivateMosquitto(ChildServer):
    """``mosquitto -c <tmp>/mosquitto.conf`` on 127.0.0.1:port; ``extra_conf`` adds lines (auth, ACL, TLS).

    Optional, keyword-only, for a broker that checks who connects (tests of the secure set-up):

    - ``password_file``: a file made with ``mosquitto_passwd``; then anonymous clients are refused
      (without one they are allowed, as before, unless ``extra_conf`` says otherwise).
    - ``acl_file``: Mosquitto's ACL file (``user alice`` / ``topic readwrite fieldlab/#``).
    - ``tls=(cafile, certfile, keyfile)``: PEM files for a second, TLS-only listener on 127.0.0.1:
      ``tls_port`` (a free one if not given); ``tls_url`` connects to it. The plain listener on ``port``
      stays. ``require_certificate``: the TLS listener accepts only clients with a certificate signed
      by ``cafile``.
    """

    stop_timeout = 5.0

    def __init__(self, port: int | None = None, extra_conf: str | None = None,
                 workdir: str | Path | None = None, binary: str | None = None, persistence: bool = False, *,
                 password_file: str | Path | None = None, acl_file: str | Path | None = None,
                 tls: tuple[str | Path, str | Path, str | Path] | None = None, tls_port: int | None = None,
                 require_certificate: bool = False):
        self.port = port or free_port()
        if extra_conf is None:
            extra_conf = "" if password_file else "allow_anonymous true\n"
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.password_file = password_file
        self.acl_file = acl_file
        if tls is not None and len(tls) != 3:
            raise ServiceError("PrivateMosquitto: tls must be (cafile, certfile, keyfile)")
        self.tls = tuple(str(f) for f in tls) if tls else None
        self.tls_port = None
        if self.tls:
            self.tls_port = tls_port
            while not self.tls_port or self.tls_port == self.port:
                self.tls_port = free_port()
        self.require_certificate = require_certificate
        self.binary = binary or mosquitto_binary()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fieldlab-mosquitto-")
        self.dir = Path(workdir or self._tmp.name)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl("127.0.0.1", self.port)

    @property
    def tls_url(self) -> BrokerUrl:
        """The TLS listener, verified with the given cafile (its certificate must name 127.0.0.1); no user."""
        if not self.tls:
            raise ServiceError("this private Mosquitto has no TLS listener; "
                               "start it with tls=(cafile, certfile, keyfile)")
        return BrokerUrl("127.0.0.1", self.tls_port, tls=True, ca_file=self.tls[0])

    def _security_conf(self) -> tuple[str, str]:
        """(global lines, TLS listener block) for the keyword-only options."""
        lines = ""
        if self.password_file:
            lines += f"password_file {self.password_file}\nallow_anonymous false\n"
        if self.acl_file:
            lines += f"acl_file {self.acl_file}\n"
        block = ""
        if self.tls:
            cafile, certfile, keyfile = self.tls
            block = (f"listener {self.tls_port} 127.0.0.1\ncafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\n"
                     f"require_certificate {'true' if self.require_certificate else 'false'}\n")
        for f in (self.password_file, self.acl_file, *(self.tls or ())):
            if f and ("\n" in str(f) or "\r" in str(f)):
                raise ServiceError(f"PrivateMosquitto: a file name must not contain a line break: {str(f)!r}")
        return lines, block

    def start(self, timeout: float = 10.0) -> "PrivateMosquitto":
        if not self.binary:
            raise ServiceError(f"no mosquitto binary found; {INSTALL_HINT}")
        check_port_free(self.port, "MQTT broker", "--mqtt-port")
        if self.tls:
            check_port_free(self.tls_port, "MQTT TLS listener", "tls_port=")
        conf = self.dir / "mosquitto.conf"
        keep = f"persistence true\npersistence_location {self.dir}/\n" if self.persistence else "persistence false\n"
        # started as root, mosquitto drops to user "mosquitto", which may not write to our temp dir
        user = "user root\n" if os.geteuid() == 0 else ""
        security, tls_listener = self._security_conf()
        # the TLS listener comes last: lines after a "listener" line configure that listener
        extra = self.extra_conf if not self.extra_conf or self.extra_conf.endswith("\n") else self.extra_conf + "\n"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{keep}{user}log_dest stderr\n"
                        f"log_type error\nlog_type warning\n{security}{extra}{tls_listener}")
        _launch_mosquitto(self, self.binary, conf, [self.port] + ([self.tls_port] if self.tls else []),
                          self.dir / "mosquitto.log", timeout)
        return self


def _launch_mosquitto(server: ChildServer, binary: str, conf: Path, ports: list[int], log_file: Path,
                      timeout: float) -> None:
    """``mosquitto -c conf`` as ``server.proc``, ready when it listens on every port of ``ports``."""
    server._launch([binary, "-c", str(conf)], log_file, lambda: all(listening(p) for p in ports),
                   f"mosquitto -c {conf} did not start on port(s) {', '.join(map(str, ports))}", timeout)
    log.info("mosquitto up ports=%s pid=%d", ports, server.proc.pid)


class ConfiguredMosquitto(ChildServer):
    """Mosquitto with a configuration file used as it is (one that ``fieldlab deploy`` wrote), whose
    listeners are on 127.0.0.1 ``ports``; its output goes to ``log_file``."""

    stop_timeout = 5.0

    def __init__(self, conf: str | Path, ports: list[int], log_file: str | Path, binary: str | None = None):
        self.conf, self.ports, self.log_file = Path(conf), list(ports), Path(log_file)
        self.binary = binary or mosquitto_binary()
        self.proc = None

    def start(self, timeout: float = 10.0) -> "ConfiguredMosquitto":
        if not self.binary:
            raise ServiceError(f"no mosquitto binary found; {INSTALL_HINT}")
        _launch_mosquitto(self, self.binary, self.conf, self.ports, self.log_file, timeout)
        return self

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""



class EmbeddedAmqtt:
    """amqtt in this process's asyncio loop, anonymous, loopback only."""

    def __init__(self, port: int):
        self.port = port

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl("127.0.0.1", self.port)

    async def start(self) -> "EmbeddedAmqtt":
        check_port_free(self.port, "MQTT broker", "--mqtt-port")
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self.broker = Broker(config)
        await self.broker.start()
        log.info("amqtt up port=%d", self.port)
        return self

    async def stop(self) -> None:
        await self.broker.shutdown()


async def start_private_broker(impl: str, port: int):
    """Start the demo's own broker. ``impl``: auto (mosquitto if installed, else amqtt), mosquitto, amqtt."""
    if impl == "amqtt" or (impl == "auto" and not mosquitto_binary()):
        return await EmbeddedAmqtt(port).start()
    return await asyncio.to_thread(PrivateMosquitto(port).start)


async def stop_private_broker(broker) -> None:
    if isinstance(broker, EmbeddedAmqtt):
        await broker.stop()
    else:
        await asyncio.to_thread(broker.cleanup)
