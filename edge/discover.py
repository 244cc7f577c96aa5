"""``fieldlab edge discover opc.tcp://...``: browse a server, write a starter mapping file.

Walks the address space below Objects (skipping the server's own diagnostics,
namespace 0), lists every variable with its data type, engineering unit and
current value, guesses which one is the machine state, the counters and the
process values from their names, and writes a mapping file a person then checks
and edits. Guesses are marked as such; everything it did not recognise is listed
as a comment so nothing is hidden.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from asyncua import Client, ua

from .opcua import open_session

NUMERIC = {"Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double"}
INTEGER = NUMERIC - {"Float", "Double", "Boolean"}

# (role, pattern on the lower-case name without separators, data type must be)
GUESSES = [
    ("reason", r"(state|stop|alarm)?(reason|stopcode|alarmcode)", INTEGER),
    ("state", r"(machine|packml|current|unit)?(state|status|mode)(current)?", INTEGER),
    ("good", r"(good|ok)(parts?|count(er)?|pieces|pcs)?|(parts?|count(er)?)good", INTEGER),
    ("reject", r"(reject(ed|s)?|scrap|bad|nok|nio)(parts?|count(er)?|pieces|pcs)?", INTEGER),
    ("product", r"(product|article|recipe|order|part)(name|number|no|id|code)?", {"String"}),
    ("ideal_cycle_s", r"(ideal|nominal|target)cycle(time)?", NUMERIC - {"Boolean"}),
]


@dataclass
class Variable:
    path: list[tuple[int, str]]  # (namespace index, browse name) steps below Objects
    nodeid: str
    datatype: str
    unit: str | None
    value: object

    @property
    def name(self) -> str:
        return self.path[-1][1]


async def browse(endpoint: str, max_depth: int = 8, max_variables: int = 2000, timeout: float = 5.0,
                 username: str | None = None, password: str | None = None) -> tuple[list[Variable], list[str]]:
    """Every variable below Objects (namespaces > 0) and the server's namespace array."""
    client = Client(endpoint, timeout=timeout)
    await open_session(client, endpoint, username=username, password=password)
    try:
        namespaces = await client.get_namespace_array()
        found: list[Variable] = []
        todo = [(client.nodes.objects, [])]
        seen = set()
        while todo and len(found) < max_variables:
            node, path = todo.pop(0)
            for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HierarchicalReferences):
                nid = ref.NodeId
                # namespace 0 is the standard's own: its nodes, and the standard properties a server adds to
                # its variables (EngineeringUnits, EURange of an AnalogItem), which are not machine data
                if nid.NamespaceIndex == 0 or ref.BrowseName.NamespaceIndex == 0 or nid.to_string() in seen:
                    continue
                seen.add(nid.to_string())
                child = client.get_node(nid)
                step = path + [(ref.BrowseName.NamespaceIndex, ref.BrowseName.Name)]
                if ref.NodeClass == ua.NodeClass.Variable:
                    found.append(await _variable(child, step))
                if ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable) and len(step) < max_depth:
                    todo.append((child, step))
        return found, list(namespaces)
    finally:
        try:
            await client.disconnect()
        except Exception:  # nothing left to release if the server went away meanwhile
            pass


async def _variable(node, path) -> Variable:
    try:
        dtype = (await node.read_data_type_as_variant_type()).name
    except (ua.UaError, ValueError, KeyError):
        dtype = "?"
    try:
        value = await node.read_value()
    except ua.UaError:
        value = None
    unit = None
    try:
        eu = await node.get_child("0:EngineeringUnits")
        unit = (await eu.read_value()).DisplayName.Text
    except (ua.UaError, AttributeError):
        pass
    return Variable(path, node.nodeid.to_string(), dtype, unit, value)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    s = re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")
    return s if re.match(r"^[a-z]", s) else f"v_{s}"


def guess(variables: list[Variable]) -> dict[int, str]:
    """Variable index -> tag name (a role or a process value name); unknown ones are left out."""
    out: dict[int, str] = {}
    taken = set()
    for role, pattern, types in GUESSES:
        for i, v in enumerate(variables):
            if i not in out and role not in taken and v.datatype in types and re.fullmatch(pattern, _key(v.name)):
                out[i] = role
                taken.add(role)
    for i, v in enumerate(variables):
        if i not in out and v.datatype in NUMERIC:
            name = snake(v.name)
            while name in taken:
                name += "_2"
            out[i] = name
            taken.add(name)
    return out


def _common_root(variables: list[Variable]) -> list[tuple[int, str]]:
    if not variables:
        return []
    root = variables[0].path[:-1]
    for v in variables[1:]:
        k = 0
        while k < len(root) and k < len(v.path) - 1 and root[k] == v.path[k]:
            k += 1
        root = root[:k]
    return root


def starter_file(endpoint: str, variables: list[Variable], namespaces: list[str]) -> str:
    tags = guess(variables)
    used = sorted({ix for v in variables for ix, _ in v.path})
    ns = used[0] if len(used) == 1 else None
    root = _common_root(variables)

    def step(ix: int, name: str) -> str:
        return name if ix == ns else f"{ix}:{name}"

    def rel(v: Variable) -> str:
        return "/".join(step(ix, n) for ix, n in v.path[len(root):])

    lines = [
        f"# Starter mapping for {endpoint}, written by 'fieldlab edge discover'.",
        "# CHECK EVERY LINE: the tags were guessed from the variable names. Then try it with",
        "#   fieldlab edge --config THIS_FILE --check",
        "# Keys are explained in docs/edge-on-a-pi.md.",
        "",
        "machine: my-site/hall-1/line-1/machine-1   # site/area/line/machine: where its data appears in MQTT",
        "broker:",
        "  url: mqtt://localhost:1883               # mqtts://host:8883 with ca_file for TLS",
        "  # username: machine-1",
        "  # password_file: /etc/fieldlab/mqtt-password",
        "source:",
        "  type: opcua",
        f"  endpoint: {json.dumps(endpoint)}",
    ]
    if ns is not None:
        lines.append(f"  namespace: {json.dumps(namespaces[ns] if ns < len(namespaces) else ns)}")
    if root:
        lines.append(f"  root: {json.dumps('/'.join(step(ix, n) for ix, n in root))}")
    lines += ["  publishing_interval: 100ms", "tags:"]
    if not any(t in ("state", "good") for t in tags.values()):
        lines.append("  # no machine state or good counter recognised: pick them from the variables below")
    skipped = []
    for i, v in enumerate(variables):
        about = f"# {v.datatype}, now {v.value!r}"[:70]
        if i in tags:
            unit = f", unit: {json.dumps(v.unit)}" if v.unit else ""
            lines.append(f"  - {{tag: {tags[i]}, node: {json.dumps(rel(v))}{unit}}}   {about}")
        else:
            skipped.append(f"  # - {{tag: ?, node: {json.dumps(rel(v))}}}   {about}")
    if skipped:
        lines += ["  # not recognised (not a number, or no guess):"] + skipped
    return "\n".join(lines) + "\n"
