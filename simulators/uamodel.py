"""The OPC UA information model of the simulated machines: object types, engineering units, instances.

Types (namespace ``urn:fieldlab:sim``, string NodeIds made from the browse names, never hand-typed
numbers)::

    BaseObjectType
      FieldlabMachineType                     every simulated machine
        State, StateReason                    Int32 (BaseDataVariableType)
        GoodCount, RejectCount                UInt64
        Product                               String
        IdealCycleTime                        Double, AnalogItemType, s
        Process (FolderType)
          Temperature, Power, Vibration       Double, AnalogItemType: degC, kW, mm/s, each with EURange
        InjectBreakdown(...), ..., Reset()    methods: faults on cue (simulators.faults)
        CncMachineType                        + SpindleSpeed (r/min), SpindleLoad (%)
        InjectionMouldingMachineType          + InjectionPressure (bar)
        FillingMachineType                    + FillVolume (ml)
        AssemblyStationType                   + ScrewTorque (N.m)

Every child of a type has the modelling rule Mandatory, so an instance (``Objects/<machine>``, made with
asyncua's ``instantiate`` from its kind's type) has all of them, NodeId ``<machine>.<path>``, e.g.
``ns=2;s=cnc-01.Process.Temperature``: stable across restarts and readable.

Engineering units: ``EUInformation`` per OPC 10000-8 5.6.4.4 (namespace
``http://www.opcfoundation.org/UA/units/un/cefact``, UnitId from the UNECE Recommendation 20 common code:
each character's ASCII value, the first in the highest byte; "CEL" -> 0x43454C = 4408652).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from asyncua import Node, ua

from . import packml
from .machine import EXECUTE, UNITS as MACHINE_UNITS, Machine

UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
BASE_TYPE = "FieldlabMachineType"

#: unit as the contract writes it -> (UNECE common code, symbol, name)
UNITS = {
    "degC": ("CEL", "°C", "degree Celsius"),
    "kW": ("KWT", "kW", "kilowatt"),
    "mm/s": ("C16", "mm/s", "millimetre per second"),
    "s": ("SEC", "s", "second"),
    "rpm": ("M46", "r/min", "revolution per minute"),
    "%": ("P1", "%", "percent"),
    "bar": ("BAR", "bar", "bar"),
    "ml": ("MLT", "ml", "millilitre"),
    "N.m": ("NU", "N·m", "newton metre"),
}


def unit_id(code: str) -> int:
    """OPC 10000-8 5.6.4.4: the common code's characters as bytes of an Int32, the first in the highest byte."""
    return int.from_bytes(code.encode("ascii"), "big")


def eu_information(unit: str) -> ua.EUInformation:
    code, symbol, name = UNITS[unit]
    return ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=unit_id(code), DisplayName=ua.LocalizedText(symbol),
                            Description=ua.LocalizedText(name))


@dataclass(frozen=True)
class Extra:
    """A process value only one machine kind has: ``nominal`` in Execute, ``idle`` x nominal when stopped,
    halfway in the acting states; relative noise ``noise``."""

    name: str
    unit: str
    nominal: float
    idle: float
    noise: float
    lo: float
    hi: float
    help: str


#: machine kind (MachineSpec.kind) -> (type name, its own process values)
KINDS: dict[str, tuple[str, tuple[Extra, ...]]] = {
    "cnc": ("CncMachineType", (
        Extra("SpindleSpeed", "rpm", 8000.0, 0.0, 0.002, 0.0, 12000.0, "spindle speed"),
        Extra("SpindleLoad", "%", 55.0, 0.0, 0.05, 0.0, 100.0, "spindle load, % of the rated torque"),
    )),
    "injection_moulding": ("InjectionMouldingMachineType", (
        Extra("InjectionPressure", "bar", 850.0, 0.0, 0.02, 0.0, 2000.0, "peak injection pressure of the cycle"),
    )),
    "filling": ("FillingMachineType", (
        Extra("FillVolume", "ml", 1000.0, 1.0, 0.003, 0.0, 1100.0, "volume of the last bottle filled"),
    )),
    "assembly": ("AssemblyStationType", (
        Extra("ScrewTorque", "N.m", 2.5, 0.0, 0.04, 0.0, 5.0, "final torque of the last screw driven"),
    )),
}

#: the base type's variables: browse name -> (initial value, variant type, unit or None, range or None)
V = ua.VariantType
COMMON = {"State": (packml.EXECUTE, V.Int32, None, None), "StateReason": (0, V.Int32, None, None),
          "GoodCount": (0, V.UInt64, None, None), "RejectCount": (0, V.UInt64, None, None),
          "Product": ("", V.String, None, None), "IdealCycleTime": (1.0, V.Double, "s", None)}
EU_RANGES = {"temperature": (0.0, 300.0), "power": (0.0, 50.0), "vibration": (0.0, 20.0)}
# the machines' process values with their units (simulators/machine.py), and a range each
PROCESS = {name.capitalize(): (unit, EU_RANGES[name]) for name, unit in MACHINE_UNITS.items()}
DESCRIPTIONS = {
    "State": "PackML state, OPC 30060 numbers: 4 Execute, 12 Suspended (starved, blocked, material), 15 Held",
    "StateReason": "reason of the current state: 0 none, 101 breakdown, 102 jam, 201 material shortage, "
                   "202 starved, 203 blocked, 301 changeover",
    "GoodCount": "good parts since the start, monotonic", "RejectCount": "rejected parts since the start, monotonic",
    "Product": "product being made", "IdealCycleTime": "seconds per part at nameplate speed",
    "Temperature": "process temperature", "Power": "electrical power drawn", "Vibration": "vibration velocity, RMS",
}


def type_name(kind: str) -> str:
    return KINDS[kind][0] if kind in KINDS else BASE_TYPE


def extras(kind: str) -> tuple[Extra, ...]:
    return KINDS[kind][1] if kind in KINDS else ()


def process_range(machine: Machine) -> dict[str, tuple[float, float]]:
    """EURange of an instance's process values, from its spec."""
    s = machine.spec
    hot = max(s.temp_setpoint_c, s.idle_temp_c or 0.0)
    return {"Temperature": (0.0, float(math.ceil(hot * 1.5 / 10) * 10)),
            "Power": (0.0, float(math.ceil(s.power_kw * 1.5))), "Vibration": (0.0, 20.0)}


class ExtraValues:
    """The kind's own process values of one machine, from its state (their own RNG: the machine's
    production and process values stay exactly as they are without them)."""

    def __init__(self, machine: Machine, enabled: bool = True):
        self.machine, self.extras = machine, extras(machine.spec.kind) if enabled else ()
        self._rng = random.Random(f"{machine.spec.name}/extras")

    def sample(self) -> dict[str, float]:
        state = self.machine.state
        out = {}
        for e in self.extras:
            f = 1.0 if state == EXECUTE else (1 + e.idle) / 2 if state in packml.ACTING else e.idle
            out[e.name] = round(e.nominal * f * (1 + self._rng.gauss(0, e.noise)), 3) if f else 0.0
        return out


async def _describe(node, text: str) -> None:
    await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text))))


async def _mandatory(node) -> None:
    await node.set_modelling_rule(True)


async def analog_item(parent, idx: int, path: str, name: str, value: float, unit: str,
                      rng: tuple[float, float] | None):
    """A Double variable of AnalogItemType with EngineeringUnits (and EURange when given)."""
    # asyncua's add_variable always makes a BaseDataVariableType; the type definition is part of the
    # parent's reference (what a browse reports), so the node is added with the right one from the start
    item = ua.AddNodesItem()
    item.RequestedNewNodeId, item.BrowseName = ua.NodeId(f"{path}.{name}", idx), ua.QualifiedName(name, idx)
    item.NodeClass, item.ParentNodeId = ua.NodeClass.Variable, parent.nodeid
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.AnalogItemType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = attrs.Description = ua.LocalizedText(name)
    attrs.DataType, attrs.Value = ua.NodeId(ua.ObjectIds.Double), ua.Variant(value, V.Double)
    attrs.ValueRank, attrs.ArrayDimensions = ua.ValueRank.Scalar, None
    attrs.WriteMask = attrs.UserWriteMask = 0
    attrs.Historizing = False
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    (result,) = await parent.session.add_nodes([item])
    result.StatusCode.check()
    var = Node(parent.session, result.AddedNodeId)
    props = [await var.add_property(ua.NodeId(f"{path}.{name}.EngineeringUnits", idx),
                                    ua.QualifiedName("EngineeringUnits", 0), eu_information(unit),
                                    datatype=ua.NodeId(ua.ObjectIds.EUInformation))]
    if rng is not None:
        props.append(await var.add_property(ua.NodeId(f"{path}.{name}.EURange", idx), ua.QualifiedName("EURange", 0),
                                            ua.Range(Low=rng[0], High=rng[1]), datatype=ua.NodeId(ua.ObjectIds.Range)))
    return var, props


async def build_types(server, idx: int, methods, add_method) -> dict[str, ua.NodeId]:
    """Create the base type and one subtype per machine kind; {type name: NodeId}.

    ``methods`` is simulators.faults.METHODS; ``add_method(parent, nodeid, name, fault, help, args)`` adds one
    method node (its callback on the type refuses: call it on a machine)."""
    base_obj = server.get_node(ua.ObjectIds.BaseObjectType)
    base = await base_obj.add_object_type(ua.NodeId(BASE_TYPE, idx), ua.QualifiedName(BASE_TYPE, idx))
    await _describe(base, "a fieldlab simulated machine: PackML state, counters, process values, faults on cue")
    for name, (value, vtype, unit, rng) in COMMON.items():
        if unit:
            node, props = await analog_item(base, idx, BASE_TYPE, name, float(value), unit, rng)
        else:
            node = await base.add_variable(ua.NodeId(f"{BASE_TYPE}.{name}", idx), ua.QualifiedName(name, idx),
                                           ua.Variant(value, vtype))
            props = []
        for n in (node, *props):
            await _mandatory(n)
        await _describe(node, DESCRIPTIONS[name])
    folder = await base.add_folder(ua.NodeId(f"{BASE_TYPE}.Process", idx), ua.QualifiedName("Process", idx))
    await _mandatory(folder)
    for name, (unit, rng) in PROCESS.items():
        node, props = await analog_item(folder, idx, f"{BASE_TYPE}.Process", name, 0.0, unit, rng)
        for n in (node, *props):
            await _mandatory(n)
        await _describe(node, DESCRIPTIONS[name])
    for name, fault, help, args in methods:
        node = await add_method(base, ua.NodeId(f"{BASE_TYPE}.{name}", idx), name, fault, help, args)
        await _mandatory(node)
        for child in await node.get_children():  # InputArguments, OutputArguments
            await _mandatory(child)
    out = {BASE_TYPE: base.nodeid}
    for kind, (tname, extra) in KINDS.items():
        t = await base.add_object_type(ua.NodeId(tname, idx), ua.QualifiedName(tname, idx))
        await _describe(t, f"a simulated {kind.replace('_', ' ')} machine")
        for e in extra:
            node, props = await analog_item(t, idx, tname, e.name, 0.0, e.unit, (e.lo, e.hi))
            for n in (node, *props):
                await _mandatory(n)
            await _describe(node, e.help)
        out[tname] = t.nodeid
    return out


async def build_flat(server, idx: int, name: str, methods, add_method):
    """The address space without types (``typed=False``): the same browse paths and methods below
    ``Objects/<name>``, plain BaseDataVariables, no engineering-unit properties, no kind's own values."""
    obj = await server.nodes.objects.add_object(ua.NodeId(name, idx), ua.QualifiedName(name, idx))
    for var, (value, vtype, _, _) in COMMON.items():
        node = await obj.add_variable(ua.NodeId(f"{name}.{var}", idx), ua.QualifiedName(var, idx),
                                      ua.Variant(value if vtype != V.Double else float(value), vtype))
        await _describe(node, DESCRIPTIONS[var])
    folder = await obj.add_folder(ua.NodeId(f"{name}.Process", idx), ua.QualifiedName("Process", idx))
    for var in PROCESS:
        node = await folder.add_variable(ua.NodeId(f"{name}.Process.{var}", idx), ua.QualifiedName(var, idx),
                                         ua.Variant(0.0, V.Double))
        await _describe(node, DESCRIPTIONS[var])
    for mname, fault, help, args in methods:
        await add_method(obj, ua.NodeId(f"{name}.{mname}", idx), mname, fault, help, args)
    return obj


__all__ = ["BASE_TYPE", "KINDS", "UNECE_URI", "UNITS", "ExtraValues", "build_flat", "build_types", "eu_information",
           "extras", "process_range", "type_name", "unit_id"]
