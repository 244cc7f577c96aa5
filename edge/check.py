"""``fieldlab edge check --online``: do once what the agent will do, and say in words what stands in the way.

The mapping file is read as the agent reads it (edge/config.py). Then:

- OPC UA: connect and log in (``edge.opcua.open_session``), find every tag's node (NodeId or browse path
  below the root, as the agent does) and read its value once;
- Modbus TCP: connect and read every register once (``ModbusSource.read_all``: exception codes as their
  likely cause, the first read checked for a wrong word order);
- digital inputs: open the pins (gpiozero), as the agent does, and close them again;
- MQTT: log in with the agent's credentials (``contract.mqtt.connect``, MQTT 3.1.1 as the agent), then
  publish one QoS 1 message on the agent's own status topic over MQTT 5, whose PUBACK carries a reason
  code: Mosquitto answers 135 "not authorised" for a topic its ACL denies. (MQTT 3.1.1 has no such code:
  a denied publish is acknowledged all the same and silently dropped, so no 3.1.1 client can prove it.)
  The message is a non-retained "online" status with ``info.check``; the retained status stays as it is.

Each step is a row: what, where, the value read, and the problem with its fix (None = OK). The exit code
says what kind of problem came first in importance: 78 (EX_CONFIG) for a mistake in the mapping file or the
credentials, 69 (EX_UNAVAILABLE) for a server that cannot be reached, 0 when everything is OK. Warnings
(a suspicious word order) are shown but do not fail the check.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from contract import Kind, encode_status
from contract.errors import ServiceError

from .config import EdgeConfig

EXIT_OK, EXIT_UNREACHABLE, EXIT_CONFIG = 0, 69, 78  # sysexits.h: EX_UNAVAILABLE, EX_CONFIG


@dataclass
class Row:
    what: str  # "OPC UA server", "tag good", "MQTT login", ...
    where: str = ""  # endpoint, node id, register, topic
    value: str = ""  # what was read
    problem: str | None = None  # None: OK; else what is wrong and how to fix it
    kind: str = "ok"  # ok | warning | config | unreachable

    @property
    def result(self) -> str:
        return {"ok": "OK", "warning": "WARNING"}.get(self.kind, "ERROR")


async def check(cfg: EdgeConfig, timeout_s: float = 5.0) -> list[Row]:
    """Every row of the online check, source first, then the broker."""
    rows = [Row("mapping file", cfg.path, f"machine {cfg.machine.machine}, {len(cfg.tags)} tags")]
    rows += [Row("note", "", "", note, "warning") for note in cfg.notes]
    if cfg.source_type == "opcua":
        rows += await _opcua(cfg, timeout_s)
    elif cfg.source_type == "modbus":
        rows += await _modbus(cfg)
    elif cfg.source_type == "gpio":
        rows += await _gpio(cfg)
    else:
        rows.append(Row("source", cfg.source.get("machine", ""), "a simulated machine inside the agent"))
    rows += await asyncio.to_thread(_broker, cfg, timeout_s)
    return rows


def exit_code(rows: list[Row]) -> int:
    kinds = {r.kind for r in rows}
    return EXIT_CONFIG if "config" in kinds else EXIT_UNREACHABLE if "unreachable" in kinds else EXIT_OK


def render(rows: list[Row]) -> str:
    """A table: what | where | value | result, and under a row that is not OK, its problem and fix."""
    w = [max(len(r.what) for r in rows), min(44, max(len(r.where) for r in rows)),
         min(28, max(len(r.value) for r in rows))]
    lines = [f"{'what':<{w[0]}}  {'where':<{w[1]}}  {'value':<{w[2]}}  result"]
    for r in rows:
        lines.append(f"{r.what:<{w[0]}}  {r.where:<{w[1]}}  {r.value:<{w[2]}}  {r.result}")
        if r.problem:
            lines.append(f"{'':<{w[0]}}  -> {r.problem}")
    bad = [r for r in rows if r.kind in ("config", "unreachable")]
    code = exit_code(rows)
    lines.append("all OK: the agent can start" if not bad else
                 f"{len(bad)} problem(s); exit code {code} "
                 f"({'a mistake in the mapping file or credentials' if code == EXIT_CONFIG else 'unreachable'})")
    return "\n".join(lines)


def _show(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 28 else text[:25] + "..."


# ----------------------------------------------------------------------------- OPC UA

async def _opcua(cfg: EdgeConfig, timeout_s: float) -> list[Row]:
    from asyncua import Client, ua

    from .opcua import open_session

    s = cfg.source
    ep = s["endpoint"]
    client = Client(ep, timeout=min(s["timeout"], timeout_s))
    try:
        await open_session(client, ep, s.get("security"), s.get("username"), s.get("password"))
    except ServiceError as e:
        why = str(e)
        if "(check" in why:  # open_session names the user or the certificates: the server answered
            return [Row("OPC UA server", ep, "", why, "config")]
        return [Row("OPC UA server", ep, "", f"{why}; check source.endpoint (address and port: 4840 is usual), "
                                              "that the server runs, and the network and firewall between",
                    "unreachable")]
    rows = [Row("OPC UA server", ep, "connected" + (f" as {s['username']}" if s.get("username") else ""))]
    try:
        idx = None
        if s.get("namespace"):
            try:
                idx = await client.get_namespace_index(s["namespace"])
            except ValueError:
                have = ", ".join(await client.get_namespace_array())
                rows.append(Row("namespace", s["namespace"], "", f"the server has no namespace {s['namespace']!r}; "
                                f"it has: {have}. Fix source.namespace", "config"))
                return rows
        for t in cfg.tags:
            node_id = t.options["node"]
            try:
                if _is_nodeid(node_id):
                    node = client.get_node(node_id)
                else:
                    steps = [x for x in f"{s.get('root', '')}/{node_id}".split("/") if x]
                    node = await client.nodes.objects.get_child([x if ":" in x else f"{idx}:{x}" for x in steps])
                value = await node.read_value()
            except (ua.UaError, ValueError) as e:
                rows.append(Row(f"tag {t.name}", node_id, "", f"no such variable on the server ({_status(e)}): "
                                f"check the tag's node (and source.root); 'fieldlab edge discover {ep}' lists "
                                f"the server's variables", "config"))
                continue
            rows.append(Row(f"tag {t.name}", node_id, _opc_value(t, value)))
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except Exception:  # the server may be gone already; nothing left to release
            pass
    return rows


def _is_nodeid(text: str) -> bool:
    from .config import _NODEID

    return _NODEID.match(text) is not None


def _status(e: Exception) -> str:
    """asyncua raises one class per status code: BadNodeIdUnknown, BadNoMatch, ..."""
    name = type(e).__name__
    return name if name.startswith("Bad") else str(e) or name


def _opc_value(t, value) -> str:
    o = t.options
    if t.role.startswith("value:") or t.name == "ideal_cycle_s":
        try:
            eng = float(value) * o.get("scale", 1.0) + o.get("offset", 0.0)
        except (TypeError, ValueError):
            return f"{_show(value)} (not a number)"
        shown = _show(eng) + (f" {t.unit}" if t.unit else "")
        return shown if (o.get("scale", 1.0), o.get("offset", 0.0)) == (1.0, 0.0) else f"{_show(value)} -> {shown}"
    if t.state_map and value in t.state_map:
        return f"{_show(value)} -> state {t.state_map[value]}"
    return _show(value)


# ----------------------------------------------------------------------------- Modbus

async def _modbus(cfg: EdgeConfig) -> list[Row]:
    from .modbus import ModbusSource

    s = cfg.source
    where = f"{s['host']}:{s['port']}"
    src = ModbusSource(s["host"], s["port"], [t.options["register"] for t in cfg.tags], unit_id=s["unit_id"],
                       poll_s=s["poll_s"], timeout_s=s["timeout_s"])
    try:
        readings = await src.read_all()
    finally:
        src.client.close()
    if readings and all(r.error and r.error.startswith("cannot reach") for r in readings):
        return [Row("Modbus device", where, "", readings[0].error + "; check source.host and source.port "
                    "(502 is usual)", "unreachable")]
    rows = [Row("Modbus device", where, f"connected, unit {s['unit_id']}")]
    for t, r in zip(cfg.tags, readings):
        reg = r.register
        at = f"{reg.table} {reg.address} {reg.type}"
        if r.error:
            rows.append(Row(f"tag {t.name}", at, "", r.error, r.kind or "unreachable"))
            continue
        rows.append(Row(f"tag {t.name}", at, modbus_value(r), r.warning, "warning" if r.warning else "ok"))
    return rows


def modbus_value(r) -> str:
    """``raw -> value unit`` of a Reading (just the value when it is not scaled)."""
    reg = r.register
    if reg.table in ("coil", "discrete"):
        return str(bool(r.raw))
    shown = _show(r.value) + (f" {reg.unit}" if reg.unit else "")
    return shown if (reg.scale, reg.offset) == (1.0, 0.0) else f"{_show(r.raw)} -> {shown}"


# ----------------------------------------------------------------------------- digital inputs

async def _gpio(cfg: EdgeConfig) -> list[Row]:
    from .batcher import Batcher
    from .config import build_source

    src = build_source(cfg)
    pins = [f"{t.name} pin {t.options['pin']}" for t in cfg.tags if "pin" in t.options]
    pins += [f"state {c} pin {p}" for t in cfg.tags for c, p in (t.options.get("stack_light") or {}).items()]
    try:
        await src.start(Batcher())
    except (ServiceError, ValueError, OSError) as e:
        return [Row("digital inputs", ", ".join(pins), "", f"{e} (on a Pi: the agent's user must be in the group "
                    "gpio: sudo usermod -aG gpio fieldlab; source.pin_factory: mock to try without hardware)",
                    "config")]
    await src.stop()
    return [Row("digital inputs", ", ".join(pins), "opened" + (" (mock pins)" if cfg.source.get("pin_factory")
                                                                else ""))]


# ----------------------------------------------------------------------------- MQTT

def _broker(cfg: EdgeConfig, timeout_s: float) -> list[Row]:
    from contract.mqtt import connect

    url = cfg.broker
    login = f"as {url.username}" if url.username else "anonymous"
    client_id = f"fieldlab-edge-check-{cfg.machine.path.replace('/', '-')}"  # not the agent's: it may be running
    try:
        client = connect(url, client_id, timeout=timeout_s)
    except ServiceError as e:
        why = str(e)
        unreachable = why.startswith("cannot reach") or "no answer within" in why
        fix = ("; check broker.url (host and port: 1883, 8883 for mqtts://), that the broker runs, and the network"
               if unreachable else "; check broker.username and the password file" if "not authorised" in why
               else "")
        return [Row("MQTT broker", str(url), "", why + fix, "unreachable" if unreachable else "config")]
    client.disconnect()
    client.loop_stop()
    rows = [Row("MQTT broker", str(url), f"logged in {login}")]
    topic = cfg.machine.topic(Kind.STATUS)
    payload = encode_status(time.time(), "online", agent="fieldlab-edge check", check=True)
    code, why = _publish_v5(url, client_id, topic, payload, timeout_s)
    if code is None:
        rows.append(Row("MQTT publish", topic, "", f"could not test: {why}", "unreachable"))
    elif code.is_failure:
        rows.append(Row("MQTT publish", topic, "", f"the broker refused it: {code} (its ACL does not let user "
                        f"{url.username or '(anonymous)'} publish fieldlab/v1/{cfg.machine.path}/...; with "
                        f"fieldlab deploy the user is edge-<machine>: check machine: and broker.username)", "config"))
    else:
        rows.append(Row("MQTT publish", topic, "acknowledged (QoS 1)"))
    return rows


def _publish_v5(url, client_id: str, topic: str, payload: bytes, timeout_s: float):
    """(PUBACK reason code, None) of one QoS 1 publish over MQTT 5, or (None, why not)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if url.tls:
        client.tls_set(ca_certs=url.ca_file, certfile=url.cert_file, keyfile=url.key_file)
    if url.username:
        client.username_pw_set(url.username, url.password)
    connected, acked, got = threading.Event(), threading.Event(), {}
    client.on_connect = lambda c, u, f, rc, p: (got.update(connect=rc), connected.set())
    client.on_publish = lambda c, u, mid, rc, p: (got.update(puback=rc), acked.set())
    try:
        client.connect(url.host, url.port, keepalive=10)
    except (OSError, ValueError) as e:
        return None, f"MQTT 5 connection failed: {e}"
    client.loop_start()
    try:
        if not connected.wait(timeout_s) or got["connect"].is_failure:
            return None, f"the broker did not accept an MQTT 5 connection ({got.get('connect', 'no answer')})"
        client.publish(topic, payload, qos=1)
        if not acked.wait(timeout_s):
            return None, f"no PUBACK within {timeout_s:g} s"
        return got["puback"], None
    finally:
        client.disconnect()
        client.loop_stop()
