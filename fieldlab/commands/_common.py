"""Option types, shared options and helpers of the fieldlab commands (fieldlab/commands/*.py).

Imports nothing heavy at the top: building the parser (and every --help) loads no gateway, edge or NumPy code."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def add_command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """One command's parser, with the -v option every command has."""
    sp = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("-v", "--verbose", action="store_true", help="show what every part is doing (log lines)")
    return sp


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):  # nan would make every comparison false: a --duration that never ends
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def _positive(text: str) -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def _not_negative(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return v


def _whole(text: str, lo: int, hi: int, what: str, out_of_range: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"{text}: {out_of_range}")
    return v


def _count(text: str) -> int:
    return _whole(text, 1, 200, "a whole number", "choose between 1 and 200")


def _port(text: str) -> int:
    return _whole(text, 1, 65535, "a port number", "a port is between 1 and 65535")


def _duration(text: str) -> float:
    from contract.yamlfile import duration

    value = duration(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: write a duration like 90, 90s, 2m, 1h or 1d")
    return value


def _size(text: str) -> int:
    from contract.yamlfile import size

    value = size(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: write a size like 500MB or 2GB")
    if value < 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 4KB")
    return value


def _add_levels(parser, help_: str) -> None:
    """--site, --area, --line with the demo's defaults."""
    for level, default in (("site", "demo"), ("area", "hall-1"), ("line", "line-1")):
        parser.add_argument(f"--{level}", default=default, help=help_.format(level=level) + f" (default {default})")


LINE_HELP = ("couple the machines into a line, in order, with buffers of CAP parts between them (one number "
             "for every buffer, or one per buffer): a stop upstream starves the next machine, a full buffer blocks "
             "the one before it (docs/simulators.md, \"A line with buffers\"); not with --scenario (a scenario "
             "file has its own line: key)")


async def _wait_for_stop(duration: float | None, every: float | None = None, on_tick=None,
                         done: asyncio.Event | None = None) -> None:
    """Wait for Ctrl-C / SIGTERM, ``duration`` seconds or ``done``, calling ``on_tick`` every ``every`` seconds."""
    import asyncio
    import signal
    import time

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set() and not (done and done.is_set()):
            step = every or (0.1 if done else 3600.0)
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    return
            try:
                await asyncio.wait_for(stop.wait(), step)
            except asyncio.TimeoutError:
                if on_tick:
                    on_tick()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def site_config(path: str | None):
    from gateway.config import SiteConfig, load

    return load(path) if path else SiteConfig()


def _add_mqtt_login(p) -> None:
    p.add_argument("--password-file", metavar="FILE", help="the MQTT user's password (the user is in the --broker "
                   "URL); or set $FIELDLAB_MQTT_PASSWORD. Never put it in the URL: it would show in the process list")
    p.add_argument("--ca-file", metavar="FILE", help="with mqtts://: the CA certificate that signed the broker's "
                   "(default: the system's CAs)")
    p.add_argument("--cert-file", metavar="FILE", help="with mqtts://: a client certificate, if the broker wants one")
    p.add_argument("--key-file", metavar="FILE", help="with --cert-file: its private key (PEM, not encrypted)")


def _broker(a, address: str | None = None):
    """--broker (or another ``address``) with the login of _add_mqtt_login: password from a file or
    $FIELDLAB_MQTT_PASSWORD."""
    import dataclasses

    from contract.errors import ServiceError
    from contract.mqtt import BrokerUrl

    url = BrokerUrl.parse(address or a.broker, ca_file=getattr(a, "ca_file", None),
                          cert_file=getattr(a, "cert_file", None), key_file=getattr(a, "key_file", None))
    if url.password:
        raise ServiceError("--broker: do not put the password in the address (it shows in the process list); "
                           "use --password-file FILE or $FIELDLAB_MQTT_PASSWORD")
    from contract.secrets import read_secret

    password = read_secret("--password-file", getattr(a, "password_file", None), "FIELDLAB_MQTT_PASSWORD")
    if password and not url.username:
        raise ServiceError("a password needs a user: write it in the address, like mqtt://gateway@broker.local:1883")
    return dataclasses.replace(url, password=password) if password else url


def _state_dir(given: str | None) -> Path | None:
    """--state-dir: a directory, 'none' (no checkpoint), or by default the user's state directory."""
    if given is not None:
        return None if given.strip().lower() == "none" else Path(given).expanduser()
    return default_state_dir()


def default_state_dir() -> Path:
    """Where a service keeps its state unless told: systemd's StateDirectory= ($STATE_DIRECTORY), else
    $XDG_STATE_HOME/fieldlab, else ~/.local/state/fieldlab. A service without a home directory (systemd's
    DynamicUser= without StateDirectory=) gets a clear message instead of a traceback."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "fieldlab"
    from contract.errors import ServiceError

    try:
        return Path.home() / ".local" / "state" / "fieldlab"
    except RuntimeError:
        raise ServiceError("no home directory to keep state in (a service without a user of its own?): give "
                           "--state-dir DIR, or StateDirectory= in its systemd unit") from None


def _influx_sink(a):
    """InfluxV1Sink for --influx [--influx-db], InfluxV2Sink for --influx with --influx-org and --influx-bucket;
    None without any --influx* option. Secrets only from the environment (the command line shows in the
    process list)."""
    from urllib.parse import unquote, urlsplit

    from contract.errors import ServiceError
    from gateway.influx import InfluxV1Sink, InfluxV2Sink

    if (a.influx, a.influx_db, a.influx_org, a.influx_bucket) == (None, None, None, None):
        return None
    v2 = a.influx_org is not None or a.influx_bucket is not None
    if not a.influx:
        given = "--influx-org/--influx-bucket" if v2 else "--influx-db"
        raise ServiceError(f"{given} without --influx: give the database's address too, like "
                           "--influx http://localhost:8086")
    u = urlsplit(a.influx)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ServiceError(f"--influx {a.influx!r}: write the database's address like http://localhost:8086")
    if u.password:
        raise ServiceError("--influx: do not put the password in the address (it shows in the process list); "
                           "set FIELDLAB_INFLUX_PASSWORD")
    base = f"{u.scheme}://{u.hostname}:{u.port or 8086}{u.path.rstrip('/')}"
    if not v2:
        return InfluxV1Sink(base, a.influx_db or "fieldlab", username=unquote(u.username) if u.username else None,
                            password=os.environ.get("FIELDLAB_INFLUX_PASSWORD"))
    if not a.influx_org or not a.influx_bucket:
        missing = "--influx-bucket" if a.influx_org else "--influx-org"
        raise ServiceError(f"InfluxDB 2.x needs both --influx-org and --influx-bucket; {missing} is missing")
    if a.influx_db is not None:
        raise ServiceError("--influx-db is for InfluxDB 1.x; with --influx-org and --influx-bucket the data goes "
                           "to the bucket")
    if u.username:
        raise ServiceError("--influx: InfluxDB 2.x signs in with an API token, not a user; remove the user from "
                           "the address and set FIELDLAB_INFLUX_TOKEN")
    token = os.environ.get("FIELDLAB_INFLUX_TOKEN", "").strip()
    if not token:
        raise ServiceError("InfluxDB 2.x needs an API token with write access to the bucket: set "
                           "FIELDLAB_INFLUX_TOKEN (never on the command line: it shows in the process list)")
    return InfluxV2Sink(base, a.influx_org, a.influx_bucket, token)
