"""``fieldlab edge``: an edge agent for one machine; ``fieldlab edge discover``: a starter mapping file."""
from __future__ import annotations

import argparse

from ._common import (
    _add_levels, _add_mqtt_login, _count, _positive, _size, _wait_for_stop, add_command, default_state_dir,
)


def add_parser(sub) -> None:
    e = add_command(sub, "edge", "read one machine (OPC UA, Modbus TCP, digital I/O) and publish its data to MQTT",
                    "Run an edge agent: it reads one machine and publishes state changes,\n"
                    "counters and process values to MQTT in the fieldlab format (docs/contract.md).\n"
                    "While the broker is unreachable everything is kept on disk and sent later.\n\n"
                    "A mapping file (YAML) says which machine, broker, source and tags; examples\n"
                    "in docs/examples/edge-*.yaml, every key in docs/edge-on-a-pi.md.\n\n"
                    "examples:\n"
                    "  fieldlab edge --config /etc/fieldlab/edge.yaml           run from a mapping file\n"
                    "  fieldlab edge --config edge.yaml --check                 check the file, then stop\n"
                    "  fieldlab edge check edge.yaml --online                   connect, read every tag, log in\n"
                    "  fieldlab edge read edge.yaml                             watch Modbus registers live\n"
                    "  fieldlab edge product edge.yaml lid                      switch the product (ideal cycle time)\n"
                    "  fieldlab edge --config edge-gpio.yaml --mock-keys        a stack light and light barrier from\n"
                    "                                                           the keyboard (a classroom, no hardware)\n"
                    "  fieldlab edge discover opc.tcp://192.168.0.10:4840 -o edge.yaml   write a starter file\n"
                    "  fieldlab edge --opcua opc.tcp://127.0.0.1:4840/fieldlab/ --object cnc-01 \\\n"
                    "                --broker mqtt://localhost:1883     a fieldlab simulated machine, no file")
    e.add_argument("--config", metavar="FILE", help="the mapping file (YAML); on a Pi /etc/fieldlab/edge.yaml")
    e.add_argument("--check", action="store_true", help="check the mapping file, say what it will read, and stop")
    e.add_argument("--opcua", metavar="URL", help="without a file: OPC UA endpoint of a fieldlab simulated machine")
    e.add_argument("--object", metavar="NAME", help="without a file: browse name of the machine object under Objects")
    e.add_argument("--namespace", default="urn:fieldlab:sim", help="without a file: namespace URI of its variables")
    e.add_argument("--broker", metavar="URL", help="MQTT broker, e.g. mqtt://localhost:1883 (overrides the file's)")
    _add_levels(e, "without a file: {level} name in the topic")
    e.add_argument("--machine", help="without a file: machine name in the topic (default: the --object name)")
    e.add_argument("--buffer", metavar="FILE", help="the store-and-forward outbox (SQLite): data waits here while "
                   "the broker is unreachable (default: edge-<site>-<area>-<line>-<machine>.db in systemd's "
                   "$STATE_DIRECTORY, else in $XDG_STATE_HOME/fieldlab or ~/.local/state/fieldlab)")
    e.add_argument("--buffer-size", type=_size, default=None, metavar="SIZE",
                   help="at most this much is kept; the oldest data is dropped beyond it (default 100MB)")
    e.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")
    e.add_argument("--mock-keys", action="store_true", help="digital inputs (source.type gpio) without hardware: "
                   "simulated pins driven from the keyboard (p = a part, x = a reject, g/o/r = a lamp, q = quit)")
    esub = e.add_subparsers(dest="edge_command", metavar="discover|check|read|product")
    dsc = esub.add_parser("discover", help="browse an OPC UA server and write a starter mapping file",
                          description="Browse an OPC UA server's variables and write a starter mapping file\n"
                                      "with guessed tags, to check and edit by hand.\n\n"
                                      "example:\n  fieldlab edge discover opc.tcp://192.168.0.10:4840 -o edge.yaml",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    dsc.add_argument("url", metavar="opc.tcp://HOST:PORT", help="the server's endpoint")
    dsc.add_argument("-o", "--output", metavar="FILE", help="write the file here (default: print it)")
    dsc.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    dsc.add_argument("--username", help="OPC UA user, if the server wants one (password from $OPCUA_PASSWORD)")
    chk = esub.add_parser("check", help="check a mapping file; with --online also connect and read every tag once",
                          description="Check a mapping file and say what the agent will do (as --check). With\n"
                                      "--online also do once what the agent does: connect to the machine and log\n"
                                      "in, read every tag, log in to the MQTT broker and publish on the agent's\n"
                                      "status topic. Prints tag -> value -> OK or the problem with its fix.\n\n"
                                      "exit code: 0 all OK, 78 a mistake in the mapping file or the credentials,\n"
                                      "69 a server that cannot be reached.\n\n"
                                      "example:\n  fieldlab edge check /etc/fieldlab/edge.yaml --online",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("mapping", nargs="?", metavar="FILE", help="the mapping file (default: --config)")
    chk.add_argument("--online", action="store_true", help="connect to the machine and the broker, read every tag")
    chk.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                     help="wait at most this long for each server (default 5)")
    rd = esub.add_parser("read", help="watch a Modbus device's mapped registers live: raw and scaled values",
                         description="Read every register of a Modbus mapping file again and again and show a\n"
                                     "table of raw and scaled values, until Ctrl-C (or --count reads): to find\n"
                                     "the right address, table, type, word order and scale with the machine\n"
                                     "running. Nothing is published.\n\n"
                                     "example:\n  fieldlab edge read /etc/fieldlab/edge.yaml --every 0.5",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    rd.add_argument("mapping", metavar="FILE", help="the mapping file (source.type: modbus)")
    rd.add_argument("--count", type=_count, default=None, metavar="N", help="stop after N reads (1-200)")
    rd.add_argument("--every", type=_positive, default=1.0, metavar="SECONDS", help="read this often (default 1)")
    pr = esub.add_parser("product", help="switch the product a running agent stamps on its counts",
                         description="Tell the running edge agent of a mapping file that another product is being\n"
                                     "made from now on: its counts then carry that product and its ideal cycle\n"
                                     "time (the mapping file's products table). Sends a set_product command on\n"
                                     "the machine's cmd topic and waits until the agent's status confirms it.\n\n"
                                     "exit code: 0 confirmed, 78 not a product of the file, 69 not confirmed\n"
                                     "(the agent is not running, or the broker refused the command).\n\n"
                                     "examples:\n  fieldlab edge product /etc/fieldlab/edge.yaml lid\n"
                                     "  fieldlab edge product edge.yaml lid --broker mqtt://operator@broker.local:1883 "
                                     "--password-file op.pw",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("mapping", metavar="FILE", help="the agent's mapping file (with products: and product:)")
    pr.add_argument("product", metavar="NAME", help="a product of the file's products table")
    pr.add_argument("--broker", metavar="URL", help="send as this MQTT user (one that may write the machine's cmd "
                    "topic, e.g. mqtt://operator@broker.local:1883); default: the file's broker and user")
    _add_mqtt_login(pr)
    pr.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                    help="wait at most this long for the agent's confirmation (default 5)")


async def run(a) -> int:
    import dataclasses
    import sys

    from ..memory import steady_malloc

    steady_malloc()  # an agent on a Pi runs for months: RSS must not creep by fragmentation (fieldlab/memory.py)
    from contract import MachineRef
    from contract.errors import ServiceError
    from contract.mqtt import BrokerUrl
    from edge import config as edge_config
    from edge.agent import EdgeAgent
    from edge.batcher import Batcher
    from edge.products import Products

    if a.edge_command == "discover":
        return await _discover(a)
    if a.edge_command in ("check", "read"):
        return await (_check(a) if a.edge_command == "check" else _read(a))
    if a.edge_command == "product":
        return await _product(a)
    if a.mock_keys and not a.config:
        raise ServiceError("--mock-keys drives the pins of a mapping file with source.type gpio: give it with --config "
                           "FILE (e.g. docs/examples/edge-gpio.yaml)")
    if a.config:
        cfg = edge_config.load(a.config)
        if a.broker:  # another address for the same broker identity (user, password, certificates)
            url, b = BrokerUrl.parse(a.broker), cfg.broker
            if b.tls and not url.tls:
                raise ServiceError(f"--broker {a.broker}: {cfg.path} connects with TLS (mqtts://); the password "
                                   "must not travel unencrypted: use an mqtts:// address")
            tls = {"ca_file": b.ca_file, "cert_file": b.cert_file, "key_file": b.key_file} if url.tls else {}
            cfg.broker = dataclasses.replace(url, username=url.username or b.username,
                                             password=url.password or b.password, **tls)
        if a.mock_keys:
            if cfg.source_type != "gpio":
                raise ServiceError(f"--mock-keys drives digital inputs; {cfg.path} has source.type {cfg.source_type} "
                                   "(try docs/examples/edge-gpio.yaml)")
            if not sys.stdin.isatty():
                raise ServiceError("--mock-keys reads keys from a terminal; run it in one (not under systemd or a "
                                   "pipe)")
            cfg.source["pin_factory"] = "mock"  # the same mapping file as on the Pi, with simulated pins
        source = _simulated_source(cfg) if cfg.source_type == "sim" else edge_config.build_source(cfg)
    elif a.opcua and a.object and a.broker:
        from edge.opcua import OpcUaSource  # only here: a Modbus or GPIO agent does not load asyncua (~28 MB)

        ref = MachineRef(a.site, a.area, a.line, a.machine or a.object)
        cfg = edge_config.EdgeConfig("(command line)", ref, BrokerUrl.parse(a.broker), "opcua", {"endpoint": a.opcua})
        source = OpcUaSource(a.opcua, a.object, a.namespace)
    else:
        raise ServiceError("give a mapping file with --config FILE (see docs/examples/edge-opcua.yaml), or "
                           "--opcua, --object and --broker for a fieldlab simulated machine")
    if a.check:
        print(_describe(cfg))
        return 0
    import logging

    for note in cfg.notes:  # how the mapping file was read where it could mean two things
        logging.getLogger("fieldlab.edge").warning("%s", note)
    buffer = a.buffer or cfg.buffer_path or default_state_dir() / f"edge-{cfg.machine.path.replace('/', '-')}.db"
    batcher = Batcher(cfg.state_model, cfg.state_map, cfg.encoding)
    names = {t.name for t in cfg.tags}
    if cfg.source_type in ("opcua", "modbus") and cfg.tags and "good" in names and "reject" not in names:
        batcher.assume("reject", 0)  # a machine without a reject counter: every part counted is good
    agent = EdgeAgent(cfg.machine, cfg.broker, source, buffer=buffer, flush_s=cfg.flush_s,
                      max_buffer_bytes=a.buffer_size or cfg.buffer_bytes, wait_for_broker=False,
                      heartbeat_s=cfg.heartbeat_s, batcher=batcher, sparkplug=cfg.sparkplug,
                      products=Products.from_config(cfg, buffer))
    try:
        await agent.start()
    except ValueError as e:  # asyncua's get_namespace_index: "'urn:x' is not in list", a mistake in the file
        if cfg.source_type != "opcua" or not str(e).endswith("is not in list"):
            raise
        from contract.yamlfile import ConfigError

        raise ConfigError(f"{cfg.path}: source.namespace {cfg.source.get('namespace')!r}: the OPC UA server has no "
                          f"such namespace (fieldlab edge check {cfg.path} --online lists the ones it has)") from None
    print(f"edge agent for {cfg.machine.path}: {cfg.source_type} {_source_address(cfg)} -> {cfg.broker}", flush=True)
    keys = None
    if a.mock_keys:
        import asyncio

        from edge.gpio import drive_from_keys

        done = asyncio.Event()
        keys = asyncio.create_task(drive_from_keys(source, sys.stdin.fileno(), sys.stdout))
        keys.add_done_callback(lambda _: done.set())
    try:
        await _wait_for_stop(a.duration, done=done if keys else None)
    finally:
        if keys is not None:
            keys.cancel()  # restores the terminal
            await asyncio.gather(keys, return_exceptions=True)
        await agent.stop()
    return 0


def _source_address(cfg) -> str:
    s = cfg.source
    return s.get("endpoint") or (f"{s['host']}:{s['port']}" if "host" in s else s.get("machine") or "pins")


def _simulated_source(cfg):
    from simulators.feed import MachineFeed

    s = cfg.source
    return MachineFeed(s["machine"], seed=s["seed"], speed=s["speed"])


def _describe(cfg) -> str:
    lines = [f"{cfg.path}: OK",
             f"  machine   {cfg.machine.path}  (topics {cfg.machine.topic('state').rsplit('/', 1)[0]}/...)",
             f"  broker    {cfg.broker}" + (f" as {cfg.broker.username}" if cfg.broker.username else "")
             + (" with password" if cfg.broker.password else ""),
             f"  source    {cfg.source_type} {_source_address(cfg)}",
             f"  outbox    {cfg.buffer_path or '(default path)'}, at most {cfg.buffer_bytes // 2**20} MB",
             f"  publish   every {cfg.flush_s:g} s, heartbeat every {cfg.heartbeat_s:g} s, telemetry as "
             f"{cfg.encoding}"]
    if cfg.sparkplug is not None:
        s = cfg.sparkplug
        lines.append(f"  sparkplug edge node spBv1.0/{s.group}/+/{s.node}, device {s.device}"
                     + (f", waits for primary host {s.primary_host}" if s.primary_host else ""))
    if cfg.ideal_cycle_s is not None:
        lines.append(f"  ideal     {cfg.ideal_cycle_s:g} s per part (stamped on the counts)")
    if cfg.products:
        lines.append("  products  " + ", ".join(f"{n} {s:g} s" for n, s in cfg.products.items())
                     + f"; {cfg.product} at the first start, switched with: fieldlab edge product {cfg.path} NAME")
    lines += [f"  note      {note}" for note in cfg.notes]
    for t in cfg.tags:
        where = {k: v for k, v in t.options.items() if k not in ("register", "pin_spec", "light_spec")}
        lines.append(f"  tag       {t.name:<14} {where}" + (f" [{t.unit}]" if t.unit else "")
                     + (f" map {t.state_map}" if t.state_map else ""))
    return "\n".join(lines)


async def _discover(a) -> int:
    import os
    from pathlib import Path

    from contract.errors import ServiceError
    from edge import discover

    out = Path(a.output) if a.output else None
    if out and out.exists() and not a.force:
        raise ServiceError(f"{out} exists; choose another file or add --force")
    variables, namespaces = await discover.browse(a.url, username=a.username,
                                                  password=os.environ.get("OPCUA_PASSWORD"))
    text = discover.starter_file(a.url, variables, namespaces)
    if out:
        out.write_text(text)
        print(f"wrote {out}: {len(variables)} variables, {len(discover.guess(variables))} tags guessed; "
              f"check it, then: fieldlab edge --config {out} --check", flush=True)
    else:
        print(text, end="")
    return 0


async def _check(a) -> int:
    """fieldlab edge check FILE [--online]: the offline check, or edge/check.py's table and exit code."""
    from contract.errors import ServiceError
    from edge import check
    from edge import config as edge_config

    path = a.mapping or a.config
    if not path:
        raise ServiceError("name the mapping file: fieldlab edge check /etc/fieldlab/edge.yaml --online")
    cfg = edge_config.load(path)
    if not a.online:
        print(_describe(cfg))
        return 0
    rows = await check.check(cfg, a.timeout)
    print(check.render(rows), flush=True)
    return check.exit_code(rows)


async def _product(a) -> int:
    """fieldlab edge product FILE NAME: a set_product command to the file's agent, confirmed by its status."""
    import asyncio
    import time

    import orjson

    from contract import Kind, encode_command
    from contract.errors import ServiceError
    from contract.mqtt import connect, wait_published
    from contract.yamlfile import ConfigError
    from edge import config as edge_config

    from ._common import _broker

    from contract.yamlfile import YamlFile

    doc = YamlFile.load(a.mapping)
    if a.broker and isinstance(doc.data, dict) and isinstance(doc.data.get("broker"), dict):
        for k in ("password_file", "password_env"):  # another login: the agent's password is not needed
            doc.data["broker"].pop(k, None)
    cfg = edge_config.parse(doc)
    if not cfg.products:
        raise ConfigError(f"{cfg.path}: no products: table; add e.g. products: {{cap: 2.5, lid: 4}} and product: cap "
                          "(docs/edge-on-a-pi.md), then restart the agent")
    if a.product not in cfg.products:
        raise ConfigError(f"{cfg.path}: product {a.product!r} is not in products; use one of "
                          f"{', '.join(cfg.products)}")
    broker = _broker(a) if a.broker else cfg.broker
    status_topic, seen = cfg.machine.topic(Kind.STATUS), []

    def on_message(client, userdata, msg):  # paho's thread
        try:
            seen.append(orjson.loads(msg.payload))
        except orjson.JSONDecodeError:
            pass

    client = await asyncio.to_thread(connect, broker, on_message=on_message, subscriptions=[(status_topic, 1)])
    try:
        for _ in range(50):  # the retained status, if there is one: is the agent there at all?
            if seen:
                break
            await asyncio.sleep(0.01)
        if seen and seen[-1].get("status") == "offline":
            print(f"the agent of {cfg.machine.path} is offline: start it first; nothing sent", flush=True)
            return 69
        before = len(seen)
        info = client.publish(cfg.machine.topic(Kind.CMD), encode_command("set_product", product=a.product), qos=1)
        if not await asyncio.to_thread(wait_published, [info], a.timeout):
            raise ServiceError(f"the MQTT broker at {broker} did not acknowledge the command")
        deadline = time.monotonic() + a.timeout
        while time.monotonic() < deadline:
            if any(s.get("info", {}).get("product") == a.product for s in seen[before:]):
                print(f"{cfg.machine.path}: product {a.product} (ideal cycle time {cfg.products[a.product]:g} s), "
                      "confirmed by the agent", flush=True)
                return 0
            await asyncio.sleep(0.05)
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
    print(f"sent set_product {a.product} to {cfg.machine.topic(Kind.CMD)}, but the agent did not confirm within "
          f"{a.timeout:g} s: is it running, and may this MQTT user write that topic (--broker "
          "mqtt://operator@HOST with an operator's login)?", flush=True)
    return 69


async def _read(a) -> int:
    """fieldlab edge read FILE: a Modbus device's mapped registers, raw and scaled, refreshed until Ctrl-C."""
    import asyncio
    import signal
    import sys
    import time

    from contract.errors import ServiceError
    from edge import check
    from edge import config as edge_config
    from edge.modbus import ModbusSource

    cfg = edge_config.load(a.mapping)
    if cfg.source_type != "modbus":
        raise ServiceError(f"{cfg.path}: edge read watches Modbus registers; for source.type {cfg.source_type} "
                           f"use: fieldlab edge check {cfg.path} --online (it reads every tag once)")
    s = cfg.source
    src = ModbusSource(s["host"], s["port"], [t.options["register"] for t in cfg.tags], unit_id=s["unit_id"],
                       poll_s=s["poll_s"], timeout_s=s["timeout_s"])
    for note in cfg.notes:
        print(f"note: {note}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tty = sys.stdout.isatty()
    n, readings = 0, []
    try:
        while not stop.is_set():
            readings = await src.read_all()
            n += 1
            rows = [check.Row(f"tag {t.name}", f"{r.register.table} {r.register.address} {r.register.type}"
                              + ("" if r.register.word_order == "big" else " word-swapped"),
                              "" if r.error else check.modbus_value(r), r.error or r.warning,
                              r.kind or ("warning" if r.warning else "ok")) for t, r in zip(cfg.tags, readings)]
            head = (f"{cfg.path}: Modbus {s['host']}:{s['port']} unit {s['unit_id']}, read {n}"
                    f"{'' if not a.count else ' of ' + str(a.count)} at {time.strftime('%H:%M:%S')} (Ctrl-C stops)")
            text = head + "\n" + check.render(rows).rsplit("\n", 1)[0]
            print(("\x1b[H\x1b[J" if tty else "") + text + ("" if tty else "\n"), flush=True)
            if a.count and n >= a.count:
                break
            try:
                await asyncio.wait_for(stop.wait(), a.every)
            except asyncio.TimeoutError:
                pass
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        src.client.close()
    kinds = {r.kind for r in readings if r.error}
    return check.EXIT_CONFIG if "config" in kinds else check.EXIT_UNREACHABLE if kinds else 0
