"""Faults on cue: what a trainer can inject into a running simulated machine, and how.

One table (``FAULTS``) says which faults exist and which parameters each takes; ``check`` turns a
fault name and its parameters (from the CLI, an MQTT ``cmd`` message or an OPC UA method call)
into clean values or raises ValueError with a message a trainer can act on. ``Machine.inject``
applies them (simulators/machine.py); ``METHODS`` is the OPC UA view (simulators/opcua.py);
``CommandListener`` takes ``cmd`` messages from MQTT (docs/contract.md, kind ``cmd``).
"""
from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

log = logging.getLogger("fieldlab.sim")

WEEK_MIN = 7 * 24 * 60


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int or float
    default: float | None  # None: required (or, for quality, one of two)
    lo: float
    hi: float
    lo_open: bool  # lo itself not allowed
    help: str

    def check(self, fault: str, value) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{fault}: {self.name} must be a number, got {value!r}")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{fault}: {self.name} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if value < self.lo or (self.lo_open and value == self.lo) or value > self.hi:
            low = f"greater than {self.lo:g}" if self.lo_open else f"at least {self.lo:g}"
            raise ValueError(f"{fault}: {self.name} = {value:g} is out of range ({low}, at most {self.hi:g}: "
                             f"{self.help})")
        return value


def _minutes(default: float | None, what: str) -> Param:
    return Param("minutes", float, default, 0.0, WEEK_MIN, True, what)


@dataclass(frozen=True)
class Fault:
    name: str
    help: str
    params: tuple[Param, ...]


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("breakdown", "the machine breaks down: Holding, Held for MINUTES, Unholding (reason 101)",
          (_minutes(5.0, "minutes in Held"),)),
    Fault("microstops", "a burst of COUNT jams (reason 102), each SECONDS long, EVERY seconds of run time apart",
          (Param("count", int, 5, 1, 100, False, "how many jams"),
           Param("seconds", float, 10.0, 0.0, 120.0, True, "each jam, Execute to Execute"),
           Param("every", float, 30.0, 0.0, 3600.0, True, "seconds of run time between two jams"))),
    Fault("slow", "the machine runs at FACTOR of its normal speed for MINUTES (reduced speed)",
          (Param("factor", float, 0.5, 0.0, 1.0, True, "fraction of the normal speed"),
           _minutes(10.0, "minutes at reduced speed"))),
    Fault("quality", "a quality problem for MINUTES: parts are rejected with probability REJECT_RATE, or the "
          "temperature runs TEMP_C above its setpoint and the rejects follow (the machine's temperature model)",
          (Param("reject_rate", float, None, 0.0, 1.0, False, "probability that a part is rejected"),
           Param("temp_c", float, None, -100.0, 100.0, False, "degC above the setpoint while producing"),
           _minutes(10.0, "minutes of the quality problem"))),
    Fault("material", "material runs out: Suspending, Suspended for MINUTES, Unsuspending (reason 201)",
          (_minutes(5.0, "minutes in Suspended"),)),
    Fault("reset", "clear every injected fault now: an injected stop ends, speed and quality are normal again",
          ()),
)}
#: faults that stop the machine: they start in Execute (a machine already stopped takes them on its return)
STOPS = frozenset({"breakdown", "microstops", "material"})


def check(fault: str, params: dict) -> tuple[str, dict]:
    """Validate a fault and its parameters; return (fault, params with defaults). ValueError if wrong."""
    if not isinstance(fault, str) or fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
    spec = FAULTS[fault]
    names = [p.name for p in spec.params]
    unknown = [k for k in params if k not in names]
    if unknown:
        takes = f"it takes {', '.join(names)}" if names else "it takes no parameters"
        raise ValueError(f"{fault}: unknown parameter {unknown[0]!r} ({takes})")
    out = {}
    for p in spec.params:
        value = params.get(p.name)
        if value is None:
            if p.default is not None:
                out[p.name] = p.default
            continue
        out[p.name] = p.check(fault, value)
    if fault == "quality" and ("reject_rate" in out) == ("temp_c" in out):
        raise ValueError("quality: give either reject_rate (probability 0-1 that a part is rejected) or temp_c "
                         "(degC above the setpoint, rejects follow the temperature), not both or neither")
    return fault, out


#: OPC UA methods on each machine object: browse name, fault, description, [(argument, data type, parameter)].
#: The arguments are the parameters of ``FAULTS`` (same names); parameters a method lacks take their defaults.
METHODS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("InjectBreakdown", "breakdown", FAULTS["breakdown"].help, (("minutes", "Double"),)),
    ("InjectMicroStops", "microstops", "a burst of COUNT jams of 10 s each, 30 s of run time apart (reason 102)",
     (("count", "UInt32"),)),
    ("SlowDown", "slow", FAULTS["slow"].help, (("factor", "Double"), ("minutes", "Double"))),
    ("QualityProblem", "quality", "parts are rejected with probability REJECT_RATE for MINUTES",
     (("reject_rate", "Double"), ("minutes", "Double"))),
    ("TemperatureExcursion", "quality", "the temperature runs TEMP_C above its setpoint for MINUTES; rejects "
     "follow the temperature", (("temp_c", "Double"), ("minutes", "Double"))),
    ("MaterialShortage", "material", FAULTS["material"].help, (("minutes", "Double"),)),
    ("Reset", "reset", FAULTS["reset"].help, ()),
)


def param_help(fault: str, name: str) -> str:
    return next(p.help for p in FAULTS[fault].params if p.name == name)


def method_for(fault: str, params: dict) -> tuple[str, list[tuple[str, object]]]:
    """The OPC UA method for a checked fault: (browse name, [(data type, value)])."""
    for name, f, _, args in METHODS:
        if f == fault and all(a in params for a, _ in args):
            return name, [(vtype, params[a]) for a, vtype in args]
    raise ValueError(f"{fault} {params}: no OPC UA method takes these parameters")


class CommandListener:
    """Take ``cmd`` messages from MQTT and inject them: ``inject(machine name, fault, **params) -> str``.

    ``topics`` maps each cmd topic to its machine's name. A bad command is logged and ignored, never
    raised: the simulation keeps running. paho delivers in its own thread; injection happens on the
    asyncio loop that called ``start``, between two ticks, at the simulated time it arrives there.
    ``announce`` (topic, payload): published retained on every (re)connect, and an empty list at ``stop`` or
    by the broker as the last will: the machines this simulator has, so that ``fieldlab sim inject`` can
    refuse a machine that is not there (contract ``sim_machines_topic``, ``encode_sim_machines``).
    """

    def __init__(self, url, topics: dict[str, str], inject, announce: tuple[str, bytes] | None = None):
        self.url, self.topics, self._inject, self.announce = url, dict(topics), inject, announce
        self.accepted = self.ignored = 0
        self.last_error: str | None = None
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        from contract.mqtt import connect
        from contract.payloads import encode_sim_machines

        self._loop = asyncio.get_running_loop()
        a = self.announce

        def on_connect(client):
            if a:
                client.publish(a[0], a[1], qos=1, retain=True)

        self._client = await asyncio.to_thread(connect, self.url, subscriptions=[(t, 1) for t in self.topics],
                                               on_message=self._on_message, on_connect=on_connect,
                                               will=(a[0], encode_sim_machines([])) if a else None)
        log.info("listening for commands on %s (%d machines)", self.url, len(self.topics))

    def _on_message(self, client, userdata, msg) -> None:  # paho's thread
        try:
            self._loop.call_soon_threadsafe(self.handle, msg.topic, bytes(msg.payload))
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def handle(self, topic: str, payload: bytes) -> str | None:
        """Inject one command; on any problem log it, count it and return None."""
        from contract.payloads import decode_command

        try:
            machine = self.topics[topic]
            cmd = decode_command(payload)
            result = self._inject(machine, cmd.cmd, **cmd.args)
        except Exception as e:  # a bad command must never stop the simulation
            self.ignored += 1
            self.last_error = f"{topic}: {e}"
            log.warning("command ignored: %s", self.last_error)
            return None
        self.accepted += 1
        log.info("command on %s: %s", topic, result)
        return result

    async def stop(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            if self.announce:  # no simulator listens here any more
                from contract.mqtt import wait_published
                from contract.payloads import encode_sim_machines

                info = c.publish(self.announce[0], encode_sim_machines([]), qos=1, retain=True)
                await asyncio.to_thread(wait_published, [info], 3.0)
            c.disconnect()
            await asyncio.to_thread(c.loop_stop)


__all__ = ["FAULTS", "METHODS", "STOPS", "CommandListener", "Fault", "Param", "check", "method_for", "param_help"]
