"""Serve simulated machines over OPC UA (asyncua), one server per machine.

Address space (namespace ``urn:fieldlab:sim``; docs/simulators.md, "OPC UA address space"): with
``typed=True`` (the default; what ``fieldlab sim`` and ``fieldlab demo`` serve) each machine is an instance of its
kind's object type (``CncMachineType`` ... derived from ``FieldlabMachineType``, simulators/uamodel.py),
with AnalogItems carrying EngineeringUnits (UNECE codes) and EURange; untyped, the same browse paths
without types. Browse names a person reads, NodeIds made from them (``ns=2;s=cnc-01.Process.Temperature``)::

    Objects/<machine>/State          Int32   PackML state (OPC 30060 numbers)
                     /StateReason    Int32   reason code of the current state (0 = none)
                     /GoodCount      UInt64  monotonic
                     /RejectCount    UInt64  monotonic
                     /Product        String
                     /IdealCycleTime Double  seconds per part
                     /Process/Temperature, /Process/Power, /Process/Vibration  Double
                     /Process/BufferIn, /Process/BufferInCapacity  Double  (a machine in a line with an input
                                     buffer: its level and capacity in parts)
                     /SpindleSpeed ... (typed: the kind's own values)
                     /InjectBreakdown(minutes), /InjectMicroStops(count), /SlowDown(factor, minutes),
                     /QualityProblem(reject_rate, minutes), /TemperatureExcursion(temp_c, minutes),
                     /MaterialShortage(minutes), /Reset()   methods: faults on cue (simulators.faults)

Every value carries its simulated time as SourceTimestamp, so an edge agent
reading it stamps samples with machine time, not with when it heard of them.

Security: by default security None, anyone in. With ``UaSecurity`` (``fieldlab sim --opcua-security``)
Basic256Sha256 Sign and/or SignAndEncrypt with a generated certificate, and one user with a password.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from contract import PACKML, MachineRef
from contract.errors import ServiceError
from contract.tasks import cancel_and_wait

from . import faults, uamodel
from .machine import EXECUTE, UNITS, Machine
from .modbus import ModbusMachineServer

NAMESPACE = "urn:fieldlab:sim"
#: process values of a machine in a line (simulators.line.LineMachine) -> browse name under Process
BUFFER_NODES = {"buffer_in": "BufferIn", "buffer_in_capacity": "BufferInCapacity"}
log = logging.getLogger("fieldlab.sim")

for _name in ("asyncua", "asyncua.server", "asyncua.client"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


class SimClock:
    """Simulated time: starts paused at ``t0``; runs ``speed`` times faster than the wall clock."""

    def __init__(self, t0: float, speed: float):
        if speed <= 0:
            raise ServiceError(f"--speed {speed}: must be greater than 0 (1 = real time, 60 = one hour per minute)")
        self.t0, self.speed = t0, speed
        self._wall0: float | None = None

    def start(self) -> None:
        self._wall0 = time.monotonic()

    def now(self) -> float:
        if self._wall0 is None:
            return self.t0
        return self.t0 + (time.monotonic() - self._wall0) * self.speed


#: ``fieldlab sim --opcua-security`` names -> asyncua's endpoint types
SECURITY_MODES = {"sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
                  "sign-encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}


@dataclass(frozen=True)
class UaSecurity:
    """Who may connect (``fieldlab sim --opcua-security``; docs/simulators.md, "Security").

    ``modes``: ``sign`` and/or ``sign-encrypt``, each a Basic256Sha256 endpoint with the certificate kept in
    ``cert_dir`` (made on the first start, reused after); the None endpoint only with ``allow_none``. Any client
    certificate is accepted. ``user``: the one user let in with ``password`` (anonymous refused); without a
    user, anonymous sessions only."""
    modes: tuple[str, ...]
    cert_dir: Path
    user: str | None = None
    password: str | None = None
    allow_none: bool = False

    def __post_init__(self):
        wrong = [m for m in self.modes if m not in SECURITY_MODES]
        if wrong or not self.modes:
            raise ServiceError(f"--opcua-security {','.join(self.modes)}: write sign, sign-encrypt or both "
                               "(sign,sign-encrypt)")
        if self.user and not self.password:
            raise ServiceError(f"--opcua-user {self.user} needs a password: --opcua-password-file FILE or "
                               "$FIELDLAB_OPCUA_PASSWORD")

    @property
    def application_uri(self) -> str:
        """The servers' ApplicationUri, also in the certificate (OPC 10000-6 6.2.2: they must agree)."""
        return f"urn:fieldlab:sim:{socket.gethostname()}"

    @property
    def certificate(self) -> Path:
        return self.cert_dir / "server-cert.der"

    @property
    def private_key(self) -> Path:
        return self.cert_dir / "server-key.pem"

    async def ensure_certificate(self) -> None:
        """Make the self-signed certificate and key unless valid ones are there (asyncua remakes a certificate
        that expired or names another URI or host); the key readable by its owner only."""
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        try:
            self.cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await setup_self_signed_certificate(
                self.private_key, self.certificate, self.application_uri, socket.gethostname(),
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": "fieldlab simulator", "organizationName": "fieldlab"})
            os.chmod(self.private_key, 0o600)
        except OSError as e:
            raise ServiceError(f"cannot keep the OPC UA certificate in {self.cert_dir}: {e.strerror or e} "
                               "(choose a writable directory with --opcua-cert-dir)") from None
        except ValueError as e:
            raise ServiceError(f"cannot read the OPC UA certificate or key in {self.cert_dir} ({e}): delete "
                               f"{self.certificate.name} and {self.private_key.name} there, and a new pair is made "
                               "at the next start") from None


class SessionGuard(UserManager):
    """Who may open a session on a secured server; counts (and logs) the refusals.

    Only over a signed or encrypted channel unless ``allow_none``: asyncua 2.1 keeps an unsecured channel open
    for discovery (GetEndpoints) even when no None endpoint is offered, and would activate a session on it; the
    channel's client certificate (``certificate`` here) is empty exactly on such a channel. With a configured
    user only that user with its password (compared in constant time); without one, anonymous sessions (the
    server offers no other token then)."""

    def __init__(self, sec: UaSecurity):
        self.allow_none = sec.allow_none
        self._user = sec.user.encode() if sec.user else None
        self._password = (sec.password or "").encode()
        self.refused = 0

    def get_user(self, iserver, username=None, password=None, certificate=None):
        known = self._user is None or (username is not None and hmac.compare_digest(username.encode(), self._user)
                                       and hmac.compare_digest((password or "").encode(), self._password))
        if not certificate and not self.allow_none:
            why = "security None is not offered"
        elif not known:
            why = "wrong user or password"
        else:
            return User(role=UserRole.User, name=username)
        self.refused += 1
        log.warning("OPC UA session refused: %s user=%r refused=%d", why, username, self.refused)
        return None


class SharedServer:
    """One OPC UA server for several machines (``Simulation(..., shared=True)``): every machine is an object
    below Objects on the same endpoint. Saves asyncua's standard address space (about 40 MiB and 1.7 s of
    start-up) per machine after the first (docs/PERFORMANCE.md, "Simulator footprint")."""

    def __init__(self, host: str, port: int, typed: bool, security: UaSecurity | None = None):
        self.host, self.port, self.typed, self.security = host, port, typed, security
        self.endpoint = f"opc.tcp://{host}:{port}/fieldlab/"
        self.users = SessionGuard(security) if security else None
        self.server = Server(user_manager=self.users)
        self.idx: int | None = None
        self.types: dict[str, ua.NodeId] = {}

    async def init(self, name: str) -> None:
        """Build the server once (namespace, types); the first machine's call does it."""
        if self.idx is not None:
            return
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name(name)
        if self.security:
            await self._secure(self.security)
        else:  # the default: security None, and any user (or none) is let in
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.idx = await self.server.register_namespace(NAMESPACE)
        if self.typed:
            self.types = await uamodel.build_types(self.server, self.idx, faults.METHODS,
                                                   MachineServer._add_type_method)

    async def _secure(self, sec: UaSecurity) -> None:
        """Basic256Sha256 endpoints with the simulator's certificate; only the configured user, or anonymous."""
        await sec.ensure_certificate()
        await self.server.set_application_uri(sec.application_uri)
        await self.server.load_certificate(str(sec.certificate))
        await self.server.load_private_key(str(sec.private_key))
        # None last: a password sent on the None endpoint is then encrypted with the first SignAndEncrypt policy
        self.server.set_security_policy([SECURITY_MODES[m] for m in sec.modes]
                                        + ([ua.SecurityPolicyType.NoSecurity] if sec.allow_none else []))
        self.server.set_identity_tokens([ua.UserNameIdentityToken] if sec.user else [ua.AnonymousIdentityToken])

    async def start(self) -> None:
        try:
            await self.server.start()
        except OSError as e:
            raise ServiceError(f"cannot serve OPC UA on {self.host}:{self.port}: "
                               f"{e.strerror or e} (is the port taken? choose another with --opcua-port)") from None
        log.info("opcua server up endpoint=%s", self.endpoint)

    async def stop(self, grace_s: float = 3.0) -> None:
        """Stop the server; never wait for ever. asyncua 2.1 closes the clients' connections, then the listener,
        and waits until every connection is gone: a client that reconnects in between (an edge agent does, at
        once) keeps that wait going for good (CPython gh-109538; seen in 1 of 38 stops in the chaos suite, and
        ``fieldlab sim`` then never exited). After ``grace_s`` the connections left are aborted."""
        stopping = asyncio.ensure_future(self.server.stop())
        for _ in range(3):
            done, _ = await asyncio.wait({stopping}, timeout=grace_s)
            if done:
                return stopping.result()
            for transport in list(getattr(self.server.iserver, "asyncio_transports", [])):
                transport.abort()
        stopping.cancel()
        log.warning("opcua server stop did not finish in %g s endpoint=%s; going on without waiting", 3 * grace_s,
                    self.endpoint)


class MachineServer:
    """One machine behind one OPC UA server (its own, or ``shared`` with other machines). ``now`` gives the
    simulated time at which an injected fault is received (default: the machine's own clock)."""

    def __init__(self, machine: Machine, host: str, port: int, now=None, *, typed: bool = True,
                 shared: SharedServer | None = None, security: UaSecurity | None = None):
        self.machine, self.host, self.port, self.typed = machine, host, port, typed
        self.now = now or (lambda: machine.clock)
        self.shared, self.security = shared, security
        self._own = shared is None
        self._box = shared or SharedServer(host, port, typed, security)
        self.endpoint = self._box.endpoint
        self.server = self._box.server
        self._vars: dict[str, object] = {}
        self._last_pv_t = machine.clock
        self.last_pv: dict[str, float] = {}  # the latest process values (for the Modbus view)
        #: called after every advance with (events, t, process values): simulators.feed.SimulationTap
        self.listeners: list = []
        self.live = 0  # faults injected live (OPC UA method, MQTT command): a scenario's expected KPIs are void

    async def start(self) -> None:
        m = self.machine
        box = self._box
        await box.init(f"fieldlab simulated {m.spec.kind} {m.spec.name}" if self._own else "fieldlab simulated machines")
        idx, name = box.idx, m.spec.name
        if self.typed:
            obj = await self.server.nodes.objects.add_object(ua.NodeId(name, idx), ua.QualifiedName(name, idx),
                                                             box.types[uamodel.type_name(m.spec.kind)])
        else:
            obj = await uamodel.build_flat(self.server, idx, name, faults.METHODS, self._add_type_method)
        V = ua.VariantType
        initial = {
            "State": (m.state, V.Int32), "StateReason": (m.reason, V.Int32),
            "GoodCount": (m.good, V.UInt64), "RejectCount": (m.reject, V.UInt64),
            "Product": (m.spec.product, V.String), "IdealCycleTime": (m.spec.ideal_cycle_s, V.Double),
        }
        nodes = {k: await obj.get_child(f"{idx}:{k}") for k in initial}
        self.last_pv = m.process_values(0.0)
        folder = await obj.get_child(f"{idx}:Process")
        ranges = uamodel.process_range(m)
        for key in self.last_pv:
            if key in BUFFER_NODES:  # a machine in a line: its input buffer (not part of the machine types)
                nodes[key] = await folder.add_variable(ua.NodeId(f"{name}.Process.{BUFFER_NODES[key]}", idx),
                                                       ua.QualifiedName(BUFFER_NODES[key], idx), 0.0, V.Double)
                continue
            node = nodes[key] = await folder.get_child(f"{idx}:{key.capitalize()}")
            if self.typed:
                low, high = ranges[key.capitalize()]
                await (await node.get_child("0:EURange")).write_value(ua.Range(Low=low, High=high))
        self._extra = uamodel.ExtraValues(m, enabled=self.typed)
        for e in self._extra.extras:
            nodes[e.name] = await obj.get_child(f"{idx}:{e.name}")
        for mname, fault, help, args in faults.METHODS:
            self.server.link_method(await obj.get_child(f"{idx}:{mname}"), self._callback(mname, fault, args))
        self._vars = nodes  # complete: from now on the simulation loop writes to them
        # Stamp the initial values with the machine's time.
        await self._write_many([(n, v, vt) for n, (v, vt) in initial.items()], m.clock)
        await self._write_many([(k, v, V.Double) for k, v in {**self.last_pv, **self._extra.sample()}.items()], m.clock)
        if self._own:
            await box.start()
        log.info("opcua machine up machine=%s endpoint=%s", m.spec.name, self.endpoint)

    def _callback(self, name: str, fault: str, args):
        names = [a for a, _ in args]

        async def call(parent, *values):
            if len(values) != len(names):
                return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing if len(values) < len(names)
                                     else ua.StatusCodes.BadTooManyArguments)
            try:
                text = self.inject(fault, **{n: v.Value for n, v in zip(names, values)})
            except ValueError as e:
                log.warning("OPC UA %s refused: %s", name, e)
                return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
            return [ua.Variant(text, ua.VariantType.String)]

        return call

    @staticmethod
    async def _add_type_method(parent, nodeid, name: str, fault: str, help: str, args):
        """The method as the machine type declares it (arguments, description); called on the type itself it
        refuses: each machine's own copy is linked to that machine (``start``)."""
        async def on_type(parent, *values):
            return ua.StatusCode(ua.StatusCodes.BadMethodInvalid)

        inputs = []
        for a, vtype in args:
            arg = ua.Argument()
            arg.Name, arg.DataType, arg.ValueRank = a, ua.NodeId(getattr(ua.VariantType, vtype).value), -1
            arg.Description = ua.LocalizedText(faults.param_help(fault, a))
            inputs.append(arg)
        result = ua.Argument()
        result.Name, result.DataType, result.ValueRank = "Result", ua.NodeId(ua.ObjectIds.String), -1
        result.Description = ua.LocalizedText("what the simulator did")
        node = await parent.add_method(nodeid, ua.QualifiedName(name, nodeid.NamespaceIndex), on_type, inputs, [result])
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(help))))
        return node

    def inject(self, fault: str, **params) -> str:
        """Inject a fault at the simulated time now; a one-line status. ValueError if the fault is wrong."""
        m, t = self.machine, self.now()
        entry = m.inject(fault, t, **params)
        self.live += 1
        what = ", ".join(f"{k} {v:g}" for k, v in entry["params"].items())
        stamp = _utc(max(t, m.clock)).strftime("%Y-%m-%d %H:%M:%S")
        text = f"{m.spec.name}: {fault}{' (' + what + ')' if what else ''} at {stamp} UTC simulated time"
        if fault in faults.STOPS and m.state != EXECUTE:
            text += f"; the machine is stopped ({PACKML[m.state]}), so it starts when the machine is back in Execute"
        log.info("fault injected: %s", text)
        return text

    async def _write(self, name: str, value, vtype, t: float) -> None:
        stamp = _utc(t)
        await self._vars[name].write_value(ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp,
                                                        ServerTimestamp=stamp))

    async def _write_many(self, items, t: float) -> None:
        for name, value, vtype in items:
            await self._write(name, value, vtype, t)

    async def advance(self, t: float) -> None:
        """Run the machine to simulated time ``t`` and publish what happened in its address space."""
        V = ua.VariantType
        events = self.machine.advance(t)
        if not self._vars:  # the server is down (restarting): the machine runs on, unseen over OPC UA
            for listener in self.listeners:
                listener(events, t, {})
            return
        for ev in events:
            if ev[0] == "state":
                _, ts, state, reason = ev
                await self._write_many([("StateReason", reason, V.Int32), ("State", state, V.Int32)], ts)
            else:
                _, ts, good, reject = ev
                await self._write_many([("GoodCount", good, V.UInt64), ("RejectCount", reject, V.UInt64)], ts)
        pv = self.machine.process_values(t - self._last_pv_t)
        self._last_pv_t = t
        self.last_pv = pv
        for listener in self.listeners:
            listener(events, t, pv)
        await self._write_many([(k, v, V.Double) for k, v in {**pv, **self._extra.sample()}.items()], t)

    async def stop(self) -> None:
        if self._own:  # a shared server is stopped by its Simulation, once
            await self._box.stop()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the OPC UA server and start a fresh one (as a PLC reboot does); the machine runs on."""
        if not self._own:
            raise RuntimeError("restart needs the machine's own server (Simulation without shared=True)")
        self._vars = {}
        await self._box.stop()
        await asyncio.sleep(down_s)
        self._box = SharedServer(self.host, self.port, self.typed, self.security)
        self.server = self._box.server
        await self.start()


class Simulation:
    """Several machines, each behind its own OPC UA server (machine i on base_port + i), or with
    ``shared=True`` all behind one server on base_port, driven by one simulated clock.

    With ``modbus_base_port`` each machine is also served over Modbus TCP (machine i on
    modbus_base_port + i), showing the values of its latest tick.
    """

    def __init__(self, machines: list[Machine], clock: SimClock, host: str = "127.0.0.1",
                 base_port: int = 4840, tick_s: float = 0.1, *, modbus_base_port: int | None = None,
                 end: float | None = None, typed: bool = True, shared: bool = False,
                 security: UaSecurity | None = None):
        self.clock, self.tick_s = clock, tick_s
        #: simulated time at which the machines stop (a scenario's end): the last tick advances them to exactly
        #: ``end``, ``finished`` is set, and ``freeze`` never goes past it. None: run until frozen.
        self.end = end
        self.finished = asyncio.Event()
        self.shared = SharedServer(host, base_port, typed, security) if shared else None
        self.servers = [MachineServer(m, host, base_port + (0 if shared else i), now=clock.now, typed=typed,
                                      shared=self.shared, security=security) for i, m in enumerate(machines)]
        self.modbus_servers = ([] if modbus_base_port is None else
                               [ModbusMachineServer(m, host, modbus_base_port + i) for i, m in enumerate(machines)])
        self._task: asyncio.Task | None = None
        self.commands: faults.CommandListener | None = None

    @property
    def live_injections(self) -> int:
        """Faults injected live into any machine so far (a scenario's script not included)."""
        return sum(s.live for s in self.servers)

    def inject(self, machine: str, fault: str, **params) -> str:
        """Inject a fault into the named machine at the simulated time now; ValueError if anything is wrong."""
        for s in self.servers:
            if s.machine.spec.name == machine:
                return s.inject(fault, **params)
        raise ValueError(f"no machine {machine!r} here (machines: {', '.join(self.endpoints)})")

    async def listen(self, url, site: str, area: str, line: str) -> dict[str, str]:
        """Take fault commands from MQTT: fieldlab/v1/<site>/<area>/<line>/<machine>/cmd for every machine
        (payload ``{"v": 1, "cmd": "breakdown", "args": {"minutes": 5}}``); returns {topic: machine}."""
        from contract.payloads import encode_sim_machines
        from contract.topics import sim_machines_topic

        topics = {MachineRef(site, area, line, s.machine.spec.name).topic("cmd"): s.machine.spec.name
                  for s in self.servers}
        announce = (sim_machines_topic(site, area, line), encode_sim_machines(list(self.endpoints)))
        self.commands = faults.CommandListener(url, topics, self.inject, announce)
        await self.commands.start()
        return topics

    async def start(self) -> None:
        started = []
        try:
            # Modbus first: it starts in milliseconds, so a taken port fails before OPC UA's slow start.
            for mb in self.modbus_servers:
                await mb.start()
                started.append(mb)
            for s in self.servers:
                await s.start()
                started.append(s)
            if self.shared:
                await self.shared.start()
                started.append(self.shared)
            for s, mb in zip(self.servers, self.modbus_servers):
                mb.refresh(s.last_pv)  # the same initial process values as over OPC UA
        except BaseException:
            for s in started:
                await s.stop()
            raise

    def run(self) -> None:
        """Start the clock and the tick loop (in the background)."""
        self.clock.start()
        self._task = asyncio.create_task(self._loop())

    def _now(self) -> float:
        t = self.clock.now()
        return t if self.end is None else min(t, self.end)

    async def _loop(self) -> None:
        while True:
            t = self._now()
            await self._advance(t)
            if self.end is not None and t >= self.end:
                self.finished.set()
                return
            await asyncio.sleep(self.tick_s)

    async def _advance(self, t: float) -> None:
        for i, s in enumerate(self.servers):
            await s.advance(t)
            if self.modbus_servers:
                self.modbus_servers[i].refresh(s.last_pv)

    async def freeze(self) -> float:
        """Stop the clock: advance every machine to one final time (at most ``end``) and stop ticking.
        Returns that time."""
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None
        t = self._now()
        await self._advance(t)
        return t

    def ledgers(self) -> dict[str, dict]:
        return {s.machine.spec.name: s.machine.ledger_now().to_dict() for s in self.servers}

    async def stop(self) -> None:
        if self.commands:
            await self.commands.stop()
        await asyncio.gather(*(s.stop() for s in [*self.servers, *self.modbus_servers]))
        if self.shared:
            await self.shared.stop()

    @property
    def endpoints(self) -> dict[str, str]:
        return {s.machine.spec.name: s.endpoint for s in self.servers}

    @property
    def modbus_endpoints(self) -> dict[str, str]:
        """{machine name: "host:port"}; empty without ``modbus_base_port``."""
        return {s.machine.spec.name: s.endpoint for s in self.modbus_servers}


__all__ = ["NAMESPACE", "SECURITY_MODES", "UNITS", "MachineServer", "SessionGuard", "SharedServer", "SimClock",
           "Simulation", "UaSecurity"]
