"""The edge mapping file: the shipped examples load, and every mistake names file, line, key and fix."""
from pathlib import Path

import pytest

from contract.yamlfile import ConfigError, YamlFile
from edge import config as edge_config
from fieldlab.commands.edge import _describe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("edge-*.yaml"))

MINIMAL = """\
machine: acme/hall-1/line-1/press-07
broker:
  url: mqtt://localhost:1883
source:
  type: opcua
  endpoint: opc.tcp://10.0.0.5:4840
  namespace: urn:acme
tags:
  - {tag: state, node: State}
  - {tag: good, node: Counters/Good}
"""


def load(text: str, tmp_path, environ=None):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return edge_config.load(path, environ if environ is not None else {})


def error(text: str, tmp_path, environ=None) -> str:
    with pytest.raises(ConfigError) as e:
        load(text, tmp_path, environ)
    return str(e.value)


async def test_every_source_type_has_an_example_and_it_loads():  # (sources are built on a running loop)
    assert {p.stem.removeprefix("edge-") for p in EXAMPLES} == set(edge_config.SOURCE_TYPES)
    for path in EXAMPLES:
        cfg = edge_config.load(path, {})
        assert cfg.machine.path.count("/") == 3
        if cfg.source_type != "sim":
            edge_config.build_source(cfg)  # the example builds a real source object (nothing connects yet)


def test_minimal_file(tmp_path):
    cfg = load(MINIMAL, tmp_path)
    assert cfg.machine.path == "acme/hall-1/line-1/press-07"
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.username, cfg.broker.password) == ("localhost", 1883,
                                                                                           None, None)
    assert [(t.name, t.role, t.options["node"]) for t in cfg.tags] == [("state", "state", "State"),
                                                                      ("good", "good", "Counters/Good")]
    assert (cfg.flush_s, cfg.heartbeat_s, cfg.buffer_bytes, cfg.buffer_path) == (0.5, 30.0, 100 * 2**20, None)
    src = edge_config.build_source(cfg)
    assert (src.endpoint, src.namespace, src.root) == ("opc.tcp://10.0.0.5:4840", "urn:acme", None)


def test_process_values_become_value_roles_with_units_scale_and_deadband(tmp_path):
    cfg = load(MINIMAL + "  - {tag: oil_temp, node: T1, unit: degC, scale: 0.1, offset: -40, deadband: 0.5}\n",
               tmp_path)
    t = cfg.tags[-1]
    assert (t.role, t.unit, t.options["scale"], t.options["offset"], t.options["deadband"]) == (
        "value:oil_temp", "degC", 0.1, -40.0, 0.5)
    tag = edge_config.build_source(cfg).tags[-1]
    assert (tag.role, tag.unit, tag.scale, tag.offset, tag.deadband) == ("value:oil_temp", "degC", 0.1, -40.0, 0.5)


@pytest.mark.parametrize("line, text, where, says", [
    (1, "machine: acme/hall-1/press-07", "edge.yaml:1: machine:", "site/area/line/machine"),
    (5, "  type: opcuaa", "edge.yaml:5: source.type:", "opcua, modbus, gpio, sim"),
    (6, "  endpoint: 10.0.0.5:4840", "edge.yaml:6: source.endpoint:", "opc.tcp://"),
    (10, "  - {tag: good, nod: Counters/Good}", "edge.yaml:10: tags[1].nod:", "unknown key"),
    (10, "  - {tag: Good, node: X}", "edge.yaml:10: tags[1].tag:", "lower case"),
    (10, "  - {tag: state, node: X}", "edge.yaml:10: tags[1].tag:", "appears twice"),
    (10, "  - {tag: speed, node: X, scale: ten}", "edge.yaml:10: tags[1].scale:", "write a number"),
    (10, "  - {tag: good, node: X, deadband: 5}", "edge.yaml:10: tags[1].deadband:", "only for process values"),
    (10, "  - {tag: reject, node: X}", "edge.yaml:8: tags:", "needs the good counter"),
    (6, "  endpoint: opc.tcp://h:4840\n  timeout: 0s", "edge.yaml:7: source.timeout:", "between 0.5s and 20s"),
    (10, "  - {tag: good, node: X, map: {1: Execute}}", "edge.yaml:10: tags[1].map:", "only the state tag"),
    (9, "  - {tag: state, node: State, map: {1: Running}}", "edge.yaml:9: tags[0].map.1:", "Execute"),
    (11, "colour: blue", "edge.yaml:11: colour:", "unknown key"),
])
def test_mistakes_name_file_line_key_and_fix(tmp_path, line, text, where, says):
    lines = MINIMAL.splitlines() + [""]
    lines[line - 1] = text
    msg = error("\n".join(lines) + "\n", tmp_path)
    assert msg.startswith(str(tmp_path / where)), msg
    assert says in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    msg = error(MINIMAL.replace("  url: mqtt://localhost:1883", "  url: [mqtt://localhost:1883"), tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:3: not valid YAML: in the [ ... ] that starts here: "
                          "a comma or the closing ]")


@pytest.mark.parametrize("replace, text, line, says", [
    (3, "\turl: mqtt://localhost:1883", 3, "a tab: YAML indents with spaces only"),
    (3, "    url: mqtt://localhost:1883\n  username: p7", 4, "bad indentation: this line is indented differently"),
    (7, "    namespace: urn:acme", 7, "a colon that YAML does not expect here: this line is indented deeper"),
    (2, "broker", 2, "a key without its colon"),
    (9, "  - {tag: state, node: State", 9, "in the { ... } that starts here: a comma or the closing } is missing"),
    (10, " - {tag: good, node: Counters/Good}", 10, "bad indentation: this list item (-) does not line up"),
    (1, 'machine: "acme/hall-1/line-1/press-07', 1, "a quote (\" or ') opened here is never closed"),
])
def test_yaml_mistakes_are_said_in_words_with_their_line(tmp_path, replace, text, line, says):
    """Not PyYAML's "expected <block end>, but found '<block mapping start>'": what is wrong, where, and the line."""
    lines = MINIMAL.splitlines()
    lines[replace - 1] = text
    msg = error("\n".join(lines) + "\n", tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:{line}: not valid YAML: {says}"), msg
    assert "<block" not in msg and "token" not in msg
    assert f"[line {line}: " in msg  # the line itself, as it is in the file


def test_missing_sections_and_empty_file(tmp_path):
    assert "source: missing" in error("machine: a/b/c/d\nbroker: {url: mqtt://x}\n", tmp_path)
    assert "must be a mapping" in error("", tmp_path)
    assert "tags: list the machine's signals" in error(MINIMAL.split("tags:")[0], tmp_path)


def test_passwords_never_in_the_file(tmp_path):
    msg = error(MINIMAL.replace("  url: mqtt://localhost:1883", "  url: mqtt://localhost:1883\n  username: p7\n"
                                "  password: secret"), tmp_path)
    assert "broker.password: do not write the password into this file" in msg and "password_file: " in msg
    assert "unknown key" not in msg
    opcua = MINIMAL.replace("  namespace: urn:acme", "  namespace: urn:acme\n  username: op\n  password: x")
    assert "source.password: do not write the password" in error(opcua, tmp_path)
    msg = error(MINIMAL.replace("mqtt://localhost", "mqtt://p7:secret@localhost"), tmp_path)
    assert "broker.url" in msg and "password_file" in msg and "secret" not in msg


def test_password_from_file_or_environment(tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    text = MINIMAL.replace("  url: mqtt://localhost:1883", f"  url: mqtt://localhost:1883\n  username: p7\n"
                           f"  password_file: {secret}")
    cfg = load(text, tmp_path)
    assert (cfg.broker.username, cfg.broker.password) == ("p7", "s3cret")
    env_text = MINIMAL.replace("  url: mqtt://localhost:1883", "  url: mqtt://localhost:1883\n  username: p7\n"
                               "  password_env: EDGE_PW")
    assert load(env_text, tmp_path, {"EDGE_PW": "from-env"}).broker.password == "from-env"
    assert "EDGE_PW is not set" in error(env_text, tmp_path, {})
    assert "cannot read" in error(text.replace(str(secret), str(tmp_path / "nope")), tmp_path)


def test_state_map_translates_vendor_codes(tmp_path):
    cfg = load(MINIMAL.replace("{tag: state, node: State}", "{tag: state, node: State, map: {1: Execute, 2: held, "
                               "3: 2}}"), tmp_path)
    assert cfg.state_map == {1: 4, 2: 15, 3: 2}


def test_durations_and_sizes(tmp_path):
    cfg = load(MINIMAL + "publish: {flush: 250ms, heartbeat: 1m}\nbuffer: {max_size: 2GB, path: /tmp/x.db}\n",
               tmp_path)
    assert (cfg.flush_s, cfg.heartbeat_s, cfg.buffer_bytes, str(cfg.buffer_path)) == (0.25, 60.0, 2 * 2**30,
                                                                                      "/tmp/x.db")
    assert "publish.flush" in error(MINIMAL + "publish: {flush: soon}\n", tmp_path)
    assert "at least 1MB" in error(MINIMAL + "buffer: {max_size: 10k}\n", tmp_path)


def test_telemetry_encoding(tmp_path):
    assert load(MINIMAL, tmp_path).encoding == "json"  # readable by any MQTT tool unless asked otherwise
    assert load(MINIMAL + "publish: {encoding: binary}\n", tmp_path).encoding == "binary"
    msg = error(MINIMAL + "publish:\n  encoding: msgpack\n", tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:12: publish.encoding: 'msgpack': use json"), msg


def test_line_lookup_falls_back_to_the_enclosing_key():
    doc = YamlFile.parse("a:\n  b:\n    - x: 1\n    - y: 2\n", "f.yaml")
    assert doc.line("a.b[1].y") == 4
    assert doc.line("a.b[1].z") == 4  # not in the file: the nearest enclosing key that is
    assert doc.line("a.q") == 1
    assert str(doc.error("a.b[0].x", "fix it")) == "f.yaml:3: a.b[0].x: fix it"


def test_tls_to_the_broker(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = load(MINIMAL.replace("  url: mqtt://localhost:1883", f"  url: mqtts://broker.example\n  ca_file: {ca}"),
               tmp_path)
    assert (cfg.broker.tls, cfg.broker.port, cfg.broker.ca_file) == (True, 8883, str(ca))
    msg = error(MINIMAL.replace("  url: mqtt://localhost:1883", f"  url: mqtt://broker.example\n  ca_file: {ca}"),
                tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:3: broker.url:") and "mqtts://" in msg
    msg = error(MINIMAL.replace("  url: mqtt://localhost:1883", "  url: mqtts://b\n  ca_file: /nope/ca.crt"),
                tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:4: broker.ca_file:") and "/nope/ca.crt" in msg


def test_gpio_states_are_packml_and_pins_take_booleans(tmp_path):
    base = ("machine: a/b/c/d\nbroker: {url: mqtt://x}\nsource: {type: gpio, pin_factory: mock}\ntags:\n"
            "  - {tag: good, pin: 17}\n")
    assert "state_model" in error(base + "state_model: simple\n", tmp_path)
    assert "tags[0].active_high: 'no'" in error(base.replace("pin: 17", "pin: 17, active_high: 'no'"), tmp_path)
    msg = error(base + "  - {tag: state, stack_light: {green: 22}, map: {1: Execute}}\n", tmp_path)
    assert "tags[1].map" in msg and "states:" in msg
    msg = error(base + "  - {tag: state, stack_light: {green: 22}, states: {green: Running}}\n", tmp_path)
    assert "tags[1].states.green" in msg and "Execute" in msg


MODBUS = """\
machine: acme/hall-1/line-1/press-07
broker: {url: mqtt://localhost:1883}
source: {type: modbus, host: 10.0.0.20}
tags:
"""


@pytest.mark.parametrize("tag, table, address, note", [
    ("{tag: good, address: 40003, type: uint32}", "holding", 2, "address 40003 is read as the manual's 1-based "
     "4xxxx notation: holding register, 0-based address 2. To say so yourself (and silence this note): "
     "table: holding, address: 2"),
    ("{tag: good, address: 30010}", "input", 9, "1-based 3xxxx notation: input register, 0-based address 9"),
    ("{tag: good, address: 400001}", "holding", 0, "1-based 4xxxx notation: holding register, 0-based address 0"),
    ("{tag: good, address: 40003, table: holding}", "holding", 40003, None),  # with a table: as written
    ("{tag: good, address: 2}", "holding", 2, None),
])
def test_modbus_4xxxx_and_3xxxx_addresses_are_the_manuals_numbers(tmp_path, tag, table, address, note):
    cfg = load(MODBUS + f"  - {tag}\n", tmp_path)
    reg = cfg.tags[0].options["register"]
    assert (reg.table, reg.address) == (table, address)
    if note is None:
        assert cfg.notes == []
    else:
        assert len(cfg.notes) == 1 and cfg.notes[0].startswith(f"{tmp_path / 'edge.yaml'}:5: tags[0] (good): ")
        assert note in cfg.notes[0]
        assert f"  note      {cfg.notes[0]}" in _describe(cfg)  # fieldlab edge --check shows it


def test_a_browse_path_without_namespace_is_refused_when_the_file_is_read(tmp_path):
    """Otherwise the agent would find out only when it connects (and stop with a less helpful message)."""
    msg = error(MINIMAL.replace("  namespace: urn:acme\n", ""), tmp_path)
    assert msg.startswith(f"{tmp_path / 'edge.yaml'}:8: tags[0].node: 'State' is a browse path: give source.namespace")
    cfg = load(MINIMAL.replace("  namespace: urn:acme\n", "").replace("node: State", "node: 'ns=2;s=State'")
               .replace("node: Counters/Good", "node: 2:Counters/2:Good"), tmp_path)
    assert [t.options["node"] for t in cfg.tags] == ["ns=2;s=State", "2:Counters/2:Good"]
