"""The edge agent's configuration file (YAML): which machine, which broker, which source, which tags.

One file per machine, by default /etc/fieldlab/edge.yaml on a Pi. Annotated examples for every
source type live in docs/examples/edge-*.yaml; docs/edge-on-a-pi.md explains them key by key.
Every mistake is a ConfigError naming file, line, key and fix, e.g.
``edge.yaml:17: tags[2].type: 'uint23' is not a type; use one of int16, uint16, ...``.

Secrets never sit in this file: the MQTT and OPC UA passwords come from a file (``password_file``,
readable only by the agent) or an environment variable (``password_env``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from contract import PACKML, STATE_MODELS, MachineRef
from contract.errors import ServiceError
from contract.mqtt import BrokerUrl
from contract.yamlfile import ConfigError, YamlFile, duration, size

from .batcher import ROLES

SOURCE_TYPES = ("opcua", "modbus", "gpio", "sim")
TOP_KEYS = ("machine", "broker", "buffer", "publish", "state_model", "source", "tags", "ideal_cycle_s", "products",
            "product")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NODEID = re.compile(r"^(ns=\d+;)?[isgb]=")  # as edge/opcua.py tells a NodeId from a browse path

# keys each source type accepts (besides "type"), and its tags
SOURCE_KEYS = {
    "opcua": ("endpoint", "namespace", "root", "publishing_interval", "sampling_interval", "security",
              "certificate", "private_key", "server_certificate", "username", "password_file", "password_env",
              "timeout"),
    "modbus": ("host", "port", "unit_id", "poll", "timeout"),
    "gpio": ("pin_factory",),
    "sim": ("machine", "seed", "speed"),
}
COMMON_TAG_KEYS = ("tag", "unit", "map")
TAG_KEYS = {
    "opcua": ("node", "scale", "offset", "deadband"),
    "modbus": ("address", "table", "type", "word_order", "byte_order", "scale", "offset", "deadband"),
    "gpio": ("pin", "active_high", "pull_up", "bounce", "stack_light", "states", "priority", "settle"),
    "sim": (),
}


@dataclass(frozen=True)
class Tag:
    """One machine signal: a role of edge.batcher.ROLES (state, good, ...) or a process value."""

    name: str
    options: dict  # the source-specific keys, already checked
    unit: str | None = None
    state_map: dict[int, int] | None = None  # vendor state code -> state of the model

    @property
    def role(self) -> str:
        """"state", "good", ... or "value:<name>" for a process value."""
        return self.name if self.name in ROLES else f"value:{self.name}"


@dataclass
class EdgeConfig:
    path: str
    machine: MachineRef
    broker: BrokerUrl
    source_type: str
    source: dict
    tags: list[Tag] = field(default_factory=list)
    buffer_path: Path | None = None  # None: the agent picks ~/.local/state/fieldlab/edge-<machine>.db
    buffer_bytes: int = 100 * 2**20
    flush_s: float = 0.5
    encoding: str = "json"  # of telemetry: "json" or "binary" (docs/contract.md)
    heartbeat_s: float = 30.0
    state_model: str = "packml"
    notes: list[str] = field(default_factory=list)  # how the file was read where it could mean two things
    sparkplug: object = None  # edge/sparkplug.py Settings with publish.format: sparkplug; None: fieldlab topics
    # a machine that does not report its ideal cycle time (edge/products.py): one fixed, or a product table
    ideal_cycle_s: float | None = None
    products: dict[str, float] = field(default_factory=dict)
    product: str | None = None  # the product at the first start

    @property
    def state_map(self) -> dict[int, int] | None:
        return next((t.state_map for t in self.tags if t.name == "state" and t.state_map), None)


def load(path: str | Path, environ=os.environ) -> EdgeConfig:
    return parse(YamlFile.load(path), environ)


def parse(doc: YamlFile, environ=os.environ) -> EdgeConfig:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error("", f"the file must be a mapping with the keys {', '.join(TOP_KEYS)} "
                            "(see docs/examples/edge-opcua.yaml)")
    _no_unknown(doc, data, "", TOP_KEYS)
    for key in ("machine", "broker", "source"):
        if key not in data:
            raise doc.error(key, "missing; see docs/examples/edge-opcua.yaml")
    machine = _machine(doc, data["machine"])
    broker = _broker(doc, _mapping(doc, data["broker"], "broker"), environ)
    model = data.get("state_model", "packml")
    if model not in STATE_MODELS:
        raise doc.error("state_model", f"{model!r}: use one of {', '.join(STATE_MODELS)}")
    source = _mapping(doc, data["source"], "source")
    _no_password(doc, source, "source")
    stype = source.get("type")
    if stype not in SOURCE_TYPES:
        raise doc.error("source.type", f"{stype!r}: use one of {', '.join(SOURCE_TYPES)}")
    _no_unknown(doc, source, "source", ("type",) + SOURCE_KEYS[stype])
    src = _source(doc, stype, source, environ)
    if stype == "gpio" and model != "packml":
        raise doc.error("state_model", "a stack light's states are PackML states: leave state_model out")
    notes: list[str] = []
    tags = _tags(doc, stype, data.get("tags"), STATE_MODELS[model], notes)
    if stype == "opcua" and "namespace" not in src:  # else the agent could only find out when it connects
        for i, tag in enumerate(tags):
            node = tag.options["node"]
            steps = [s for s in f"{src.get('root', '')}/{node}".split("/") if s]
            if not _NODEID.match(node) and any(":" not in s for s in steps):
                raise doc.error(f"tags[{i}].node", f"{node!r} is a browse path: give source.namespace (the URI of "
                                                   "the machine's variables, 'fieldlab edge discover' shows it) or "
                                                   "write each step as index:Name, e.g. 2:Counters/2:Good")
    cfg = EdgeConfig(doc.path, machine, broker, stype, src, tags, state_model=model, notes=notes)
    _products(doc, data, stype, tags, cfg)

    buf = _mapping(doc, data.get("buffer") or {}, "buffer")
    _no_unknown(doc, buf, "buffer", ("path", "max_size"))
    if "path" in buf:
        cfg.buffer_path = Path(str(buf["path"]))
    if "max_size" in buf:
        cfg.buffer_bytes = _need(doc, "buffer.max_size", size(buf["max_size"]), "write a size like 100MB or 2GB",
                                 lambda v: v >= 2**20, "at least 1MB")
    pub = _mapping(doc, data.get("publish") or {}, "publish")
    _no_unknown(doc, pub, "publish", ("flush", "heartbeat", "encoding", "format", "sparkplug"))
    if "flush" in pub:
        cfg.flush_s = _need(doc, "publish.flush", duration(pub["flush"]), "write a duration like 500ms or 1s",
                            lambda v: 0.01 <= v <= 60, "between 10ms and 60s")
    if "encoding" in pub:
        if pub["encoding"] not in ("json", "binary"):
            raise doc.error("publish.encoding", f"{pub['encoding']!r}: use json (readable by any MQTT tool) or "
                                                "binary (cheaper for the gateway at high rates)")
        cfg.encoding = pub["encoding"]
    if pub.get("format", "fieldlab") not in ("fieldlab", "sparkplug"):
        raise doc.error("publish.format", f"{pub['format']!r}: use fieldlab (the contract's topics, the default) or "
                                          "sparkplug (Sparkplug B, docs/contract.md)")
    if pub.get("format") == "sparkplug":
        from .sparkplug import parse_settings
        cfg.sparkplug = parse_settings(doc, pub, machine)
    elif "sparkplug" in pub:
        raise doc.error("publish.sparkplug", "only with format: sparkplug")
    if "heartbeat" in pub:
        cfg.heartbeat_s = _need(doc, "publish.heartbeat", duration(pub["heartbeat"]), "write a duration like 30s",
                                lambda v: v >= 1, "at least 1s")
    return cfg


# ----------------------------------------------------------------------------- sections

def _mapping(doc: YamlFile, value, key: str) -> dict:
    if not isinstance(value, dict):
        raise doc.error(key, "write a mapping (key: value lines indented below it)")
    return value


def _no_unknown(doc: YamlFile, data: dict, key: str, allowed) -> None:
    for k in data:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise doc.error(where, f"unknown key; the keys here are {', '.join(allowed)}")


def _need(doc, key, value, fix, ok=lambda v: True, limit=""):
    if value is None:
        raise doc.error(key, fix)
    if not ok(value):
        raise doc.error(key, f"{value!r}: must be {limit}")
    return value


def _machine(doc: YamlFile, value) -> MachineRef:
    fix = "write site/area/line/machine, e.g. acme/hall-1/line-1/press-07 (letters, digits, - _ .)"
    if isinstance(value, dict):
        _no_unknown(doc, value, "machine", ("site", "area", "line", "machine"))
        parts = [value.get(k) for k in ("site", "area", "line", "machine")]
    elif isinstance(value, str):
        parts = value.split("/")
    else:
        raise doc.error("machine", fix)
    if len(parts) != 4 or not all(isinstance(p, str) and _SEGMENT.match(p) for p in parts):
        raise doc.error("machine", f"{value!r}: {fix}")
    return MachineRef(*parts)


def _no_password(doc: YamlFile, section: dict, key: str) -> None:
    """A password written into the file: say where it goes instead (before any "unknown key")."""
    if "password" in section:
        raise doc.error(f"{key}.password", "do not write the password into this file (it is shared and versioned); "
                                           "put it in a file readable only by the agent, e.g. /etc/fieldlab/"
                                           "mqtt-password, and write password_file: /etc/fieldlab/mqtt-password "
                                           "(or password_env: NAME of an environment variable)")


def _secret(doc: YamlFile, section: dict, key: str, environ) -> str | None:
    """A password from password_file or password_env, never from the YAML itself."""
    _no_password(doc, section, key)
    if "password_file" in section:
        p = Path(str(section["password_file"]))
        try:
            return p.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise doc.error(f"{key}.password_file", f"cannot read {p} ({e.strerror})") from None
    if "password_env" in section:
        name = str(section["password_env"])
        if name not in environ:
            raise doc.error(f"{key}.password_env", f"the environment variable {name} is not set")
        return environ[name]
    return None


def _file(doc: YamlFile, section: dict, key: str, name: str) -> str | None:
    if name not in section:
        return None
    p = Path(str(section[name]))
    if not p.is_file():
        raise doc.error(f"{key}.{name}", f"no such file: {p}")
    return str(p)


def _broker(doc: YamlFile, b: dict, environ) -> BrokerUrl:
    _no_password(doc, b, "broker")
    _no_unknown(doc, b, "broker", ("url", "username", "password_file", "password_env", "ca_file", "cert_file",
                                   "key_file"))
    if "url" not in b:
        raise doc.error("broker.url", "missing; e.g. url: mqtts://broker.local:8883")
    files = {k: _file(doc, b, "broker", k) for k in ("ca_file", "cert_file", "key_file")}
    try:
        url = BrokerUrl.parse(str(b["url"]), **{k: v for k, v in files.items() if v})
    except ServiceError as e:
        raise doc.error("broker.url", str(e)) from None
    if url.password:
        raise doc.error("broker.url", "do not write the password into the URL; use password_file or password_env")
    username = b.get("username", url.username)
    password = _secret(doc, b, "broker", environ)
    if password is not None and not username:
        raise doc.error("broker.username", "a password needs a username (the agent's MQTT user)")
    return replace(url, username=None if username is None else str(username), password=password)


def _source(doc: YamlFile, stype: str, s: dict, environ) -> dict:
    out: dict = {}
    key = "source"
    if stype == "opcua":
        ep = s.get("endpoint")
        if not isinstance(ep, str) or not ep.startswith("opc.tcp://"):
            raise doc.error(f"{key}.endpoint", "write the server's address, e.g. opc.tcp://192.168.0.10:4840")
        out["endpoint"] = ep
        for k in ("namespace", "root", "username"):
            if k in s:
                out[k] = str(s[k])
        for k, default, lo, hi in (("publishing_interval", 0.1, 0.01, 60.0), ("sampling_interval", 0.0, 0.0, 60.0),
                                   ("timeout", 5.0, 0.5, 20.0)):
            out[k] = default if k not in s else _need(doc, f"{key}.{k}", duration(s[k]),
                                                      "write a duration like 100ms or 1s", lambda v: lo <= v <= hi,
                                                      f"between {lo:g}s and {hi:g}s")
        if "security" in s:
            policy = str(s["security"]).split(",")
            if len(policy) != 2 or policy[1] not in ("Sign", "SignAndEncrypt"):
                raise doc.error(f"{key}.security", "write policy and mode, e.g. Basic256Sha256,SignAndEncrypt")
            for k in ("certificate", "private_key"):
                if k not in s:
                    raise doc.error(f"{key}.{k}", f"security needs the agent's {k.replace('_', ' ')} (a file)")
            out["security"] = ",".join(policy + [_file(doc, s, key, "certificate"), _file(doc, s, key, "private_key")]
                                       + ([_file(doc, s, key, "server_certificate")]
                                          if "server_certificate" in s else []))
        password = _secret(doc, s, key, environ)
        if password is not None:
            if "username" not in s:
                raise doc.error(f"{key}.username", "a password needs a username")
            out["password"] = password
    elif stype == "modbus":
        if not isinstance(s.get("host"), str):
            raise doc.error(f"{key}.host", "write the device's address, e.g. host: 192.168.0.20")
        out["host"] = s["host"]
        out["port"] = _int(doc, s, key, "port", 502, 1, 65535)
        out["unit_id"] = _int(doc, s, key, "unit_id", 1, 0, 255)
        out["poll_s"] = 0.1 if "poll" not in s else _need(doc, f"{key}.poll", duration(s["poll"]),
                                                          "write a duration like 100ms", lambda v: v >= 0.01,
                                                          "at least 10ms")
        out["timeout_s"] = 1.0 if "timeout" not in s else _need(doc, f"{key}.timeout", duration(s["timeout"]),
                                                                "write a duration like 1s", lambda v: 0.05 <= v <= 20,
                                                                "between 50ms and 20s")
    elif stype == "gpio":
        pf = s.get("pin_factory")
        if pf not in (None, "mock"):
            raise doc.error(f"{key}.pin_factory", f"{pf!r}: leave it out on a Pi (gpiozero picks the pin library, "
                                                  "or set GPIOZERO_PIN_FACTORY), or write mock to try without hardware")
        out["pin_factory"] = pf
    elif stype == "sim":
        if not isinstance(s.get("machine"), str):
            raise doc.error(f"{key}.machine", "name a simulated machine, e.g. machine: cnc-01")
        out["machine"] = s["machine"]
        out["seed"] = _int(doc, s, key, "seed", 1, 0, 2**31)
        speed = s.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
            raise doc.error(f"{key}.speed", f"{speed!r}: write a number > 0 (1 = real time, 60 = an hour a minute)")
        out["speed"] = float(speed)
    return out


def _products(doc: YamlFile, data: dict, stype: str, tags: list[Tag], cfg: EdgeConfig) -> None:
    """``ideal_cycle_s`` (one product) or ``products`` with ``product`` (edge/products.py)."""
    def seconds(key, v):
        return _need(doc, key, duration(v), f"{v!r}: write the seconds per part at nameplate speed, more than 0, e.g. 2.5",
                     lambda x: 0 < x <= 86400, "more than 0 and at most a day")

    keys = [k for k in ("ideal_cycle_s", "products", "product") if k in data]
    if keys and stype == "sim":
        raise doc.error(keys[0], "a simulated machine brings its own products and ideal cycle times; leave it out")
    if "ideal_cycle_s" in data:
        if "products" in data or "product" in data:
            raise doc.error("ideal_cycle_s", "use one: ideal_cycle_s for a machine that makes one product, or "
                                             "products: {name: seconds} with product: name")
        cfg.ideal_cycle_s = seconds("ideal_cycle_s", data["ideal_cycle_s"])
    if "product" in data and "products" not in data:
        raise doc.error("product", "name the products with their ideal cycle times, e.g. products: {cap: 2.5, "
                                   "lid: 4}, then product: cap")
    if "products" in data:
        table = data["products"]
        if not isinstance(table, dict) or not table:
            raise doc.error("products", "write product -> seconds per part, e.g. {cap: 2.5, lid: 4}")
        for name, v in table.items():
            if isinstance(name, bool) or not str(name).strip() or len(str(name)) > 64:
                raise doc.error("products", f"{name!r}: a product name of 1-64 characters, e.g. cap")
            cfg.products[str(name)] = seconds(f"products.{name}", v)
        reported = [t.name for t in tags if t.name in ("product", "ideal_cycle_s")]
        if reported:
            raise doc.error("products", f"the machine reports its {reported[0]} itself (tag {reported[0]}): "
                                        "leave products out")
        product = data.get("product")
        if product is None:
            raise doc.error("product", f"name the product running now: product: {next(iter(cfg.products))}")
        if str(product) not in cfg.products:
            raise doc.error("product", f"{product!r} is not in products; use one of {', '.join(cfg.products)}")
        cfg.product = str(product)


def _int(doc, s: dict, key: str, name: str, default: int, lo: int, hi: int) -> int:
    v = s.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise doc.error(f"{key}.{name}", f"{v!r}: write a whole number from {lo} to {hi}")
    return v


def _number(doc, t: dict, key: str, name: str, default: float) -> float:
    v = t.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise doc.error(f"{key}.{name}", f"{v!r}: write a number")
    return float(v)


def _state_code(doc: YamlFile, key: str, state, table: dict[int, str]) -> int:
    """A state of the model by name (Execute, held) or number."""
    target = {n.lower(): c for c, n in table.items()}.get(state.lower()) if isinstance(state, str) else state
    if isinstance(target, bool) or target not in table:
        raise doc.error(key, f"{state!r} is not a state; use one of {', '.join(table.values())}")
    return target


def _state_map(doc: YamlFile, value, key: str, table: dict[int, str]) -> dict[int, int]:
    if not isinstance(value, dict) or not value:
        raise doc.error(key, "write vendor code -> state, e.g. {1: Execute, 2: Held, 3: Stopped}")
    out = {}
    for code, state in value.items():
        if isinstance(code, bool) or not isinstance(code, int):
            raise doc.error(key, f"{code!r}: the machine's own state codes are whole numbers")
        out[code] = _state_code(doc, f"{key}.{code}", state, table)
    return out


def _bool(doc: YamlFile, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise doc.error(key, f"{value!r}: write true or false")
    return value


def _tags(doc: YamlFile, stype: str, items, table: dict[int, str], notes: list[str]) -> list[Tag]:
    if stype == "sim":
        if items:
            raise doc.error("tags", "a simulated machine brings its own tags; leave tags out")
        return []
    if not isinstance(items, list) or not items:
        raise doc.error("tags", "list the machine's signals, e.g. - {tag: good, ...}; see docs/examples/"
                                f"edge-{stype}.yaml")
    out, seen = [], set()
    for i, t in enumerate(items):
        key = f"tags[{i}]"
        if not isinstance(t, dict):
            raise doc.error(key, "write a mapping, e.g. - {tag: good, ...}")
        _no_unknown(doc, t, key, COMMON_TAG_KEYS + TAG_KEYS[stype])
        name = t.get("tag")
        if not isinstance(name, str) or not (name in ROLES or _NAME.match(name)):
            raise doc.error(f"{key}.tag", f"{name!r}: use one of {', '.join(ROLES)} or a process value name in "
                                          "lower case (letters, digits, _), e.g. temperature")
        if name in seen:
            raise doc.error(f"{key}.tag", f"{name!r} appears twice")
        seen.add(name)
        unit = t.get("unit")
        if "map" in t and name != "state":
            raise doc.error(f"{key}.map", "only the state tag can map codes")
        if "map" in t and stype == "gpio":
            raise doc.error(f"{key}.map", "a stack light gives states directly: use states: {red: Held, ...}")
        smap = _state_map(doc, t["map"], f"{key}.map", table) if "map" in t else None
        opts = {k: v for k, v in t.items() if k in TAG_KEYS[stype]}
        if stype == "opcua":
            if not isinstance(t.get("node"), str):
                raise doc.error(f"{key}.node", "write a node id (ns=2;s=Press.Count) or a browse path below the "
                                               "source's root (Counters/Good)")
            for k, d in (("scale", 1.0), ("offset", 0.0), ("deadband", 0.0)):
                if k in t and name in ROLES and name != "ideal_cycle_s":
                    raise doc.error(f"{key}.{k}", f"only for process values: the {name} is sent as the machine "
                                                  "reports it (a deadband would hide changes)")
                opts[k] = _number(doc, t, key, k, d)
        out.append(Tag(name, opts, None if unit is None else str(unit), smap))
    if stype == "modbus":
        _modbus_registers(doc, out, notes)
    elif stype == "gpio":
        _gpio_pins(doc, out)
    if stype != "gpio" and "state" not in seen and not any(n in seen for n in ("good", "reject")):
        raise doc.error("tags", "no state and no counter: OEE needs at least the state or the good counter")
    if "reject" in seen and "good" not in seen:
        raise doc.error("tags", "a reject counter needs the good counter too (counts are good + reject)")
    return out


#: the 1-based "Modicon" numbers of many manuals: first number of the range -> table
MODICON = {30001: "input", 40001: "holding", 300001: "input", 400001: "holding"}


def _modicon(address) -> tuple[str, int] | None:
    """(table, 0-based address) for a manual's 3xxxx/4xxxx (or 3xxxxx/4xxxxx) number, else None."""
    if isinstance(address, bool) or not isinstance(address, int):
        return None
    for first, table in MODICON.items():
        if first <= address < first + (9999 if first < 100000 else 65536):
            return table, address - first
    return None


def _modbus_registers(doc: YamlFile, tags: list[Tag], notes: list[str]) -> None:
    """Check each tag by building its edge.modbus.Register (that class knows the rules).

    An address like 40003 without ``table:`` is the manual's 1-based notation (4xxxx = holding registers,
    3xxxx = input registers, counted from 1): it is read as holding address 2, and a note says so. With an
    explicit ``table:`` the address is taken as it is (0-based protocol address, up to 65535)."""
    from .modbus import Register

    for i, t in enumerate(tags):
        o = dict(t.options)
        if "address" not in o:
            raise doc.error(f"tags[{i}].address", "the register's 0-based address (40001 is holding address 0)")
        if "table" not in o and (m := _modicon(o["address"])):
            table, address = m
            line = doc.line(f"tags[{i}]")
            notes.append(f"{doc.path}:{line}: tags[{i}] ({t.name}): address {o['address']} is read as the manual's "
                         f"1-based {str(o['address'])[0]}xxxx notation: {table} register, 0-based address {address}. "
                         f"To say so yourself (and silence this note): table: {table}, address: {address}")
            o.update(table=table, address=address)
            t.options.update(table=table, address=address)
        try:
            reg = Register(t.role, **o, unit=t.unit)
        except (TypeError, ValueError) as e:
            raise doc.error(f"tags[{i}]", str(e)) from None
        t.options["register"] = reg


def _gpio_pins(doc: YamlFile, tags: list[Tag]) -> None:
    from .gpio import CounterPin, StackLight

    for i, t in enumerate(tags):
        o, key = t.options, f"tags[{i}]"
        try:
            if t.name in ("good", "reject"):
                if "pin" not in o:
                    raise doc.error(f"{key}.pin", "the input the light barrier is wired to (BCM number, e.g. 17)")
                extra = set(o) - {"pin", "active_high", "pull_up", "bounce"}
                if extra:
                    raise doc.error(f"{key}.{sorted(extra)[0]}", "only for the state tag (stack light)")
                kw = {k: _bool(doc, f"{key}.{k}", o[k]) for k in ("active_high",) if k in o}
                if "pull_up" in o:
                    kw["pull_up"] = None if o["pull_up"] is None else _bool(doc, f"{key}.pull_up", o["pull_up"])
                if "bounce" in o:
                    kw["bounce_s"] = _need(doc, f"{key}.bounce", duration(o["bounce"]), "write a duration like 5ms")
                o["pin_spec"] = CounterPin(t.name, o["pin"], **kw)
            elif t.name == "state":
                lights = o.get("stack_light")
                if not isinstance(lights, dict) or not lights:
                    raise doc.error(f"{key}.stack_light", "write colour -> pin, e.g. {green: 22, orange: 27, red: 23}")
                kw = {k: _bool(doc, f"{key}.{k}", o[k]) for k in ("active_high",) if k in o}
                if "states" in o:
                    if not isinstance(o["states"], dict):
                        raise doc.error(f"{key}.states", "write light -> state, e.g. {red: Held, off: Stopped}")
                    kw["states"] = {}
                    for light, st in o["states"].items():
                        light = "off" if light is False else str(light)  # YAML 1.1 reads a bare off as false
                        kw["states"][light] = _state_code(doc, f"{key}.states.{light}", st, PACKML)
                if "priority" in o:
                    kw["priority"] = tuple(o["priority"])
                if "settle" in o:
                    kw["settle_s"] = _need(doc, f"{key}.settle", duration(o["settle"]), "write a duration like 50ms")
                o["light_spec"] = StackLight({str(k): v for k, v in lights.items()}, **kw)
            else:
                raise doc.error(f"{key}.tag", "digital inputs give the good/reject counters and the state "
                                              "(stack light); use tag: good, reject or state")
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise doc.error(key, str(e)) from None


def build_source(cfg: EdgeConfig):
    """The source object for a configuration (sim is built by the CLI: edge never imports simulators)."""
    if cfg.source_type == "opcua":
        from .opcua import OpcTag, OpcUaSource

        s = cfg.source
        tags = [OpcTag(t.role, t.options["node"], t.unit, t.options["scale"], t.options["offset"],
                       t.options["deadband"]) for t in cfg.tags]
        return OpcUaSource(s["endpoint"], tags=tags, namespace=s.get("namespace"), root=s.get("root"),
                           publishing_ms=int(s["publishing_interval"] * 1000),
                           sampling_ms=s["sampling_interval"] * 1000, timeout_s=s["timeout"],
                           security=s.get("security"), username=s.get("username"), password=s.get("password"))
    if cfg.source_type == "modbus":
        from .modbus import ModbusSource

        s = cfg.source
        return ModbusSource(s["host"], s["port"], [t.options["register"] for t in cfg.tags], unit_id=s["unit_id"],
                            poll_s=s["poll_s"], timeout_s=s["timeout_s"])
    if cfg.source_type == "gpio":
        from .gpio import GpioSource

        return GpioSource([t.options["pin_spec"] for t in cfg.tags if "pin_spec" in t.options],
                          next((t.options["light_spec"] for t in cfg.tags if "light_spec" in t.options), None),
                          pin_factory=cfg.source["pin_factory"])
    raise ConfigError(f"{cfg.path}: source.type {cfg.source_type!r} is built by the fieldlab command")
