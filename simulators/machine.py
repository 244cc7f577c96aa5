"""A deterministic machine model with its own ground-truth ledger.

Event-driven in simulated time: ``advance(t)`` processes every event (part
finished, breakdown, repair, material shortage) up to ``t`` with its exact
timestamp, so results do not depend on how often the driver ticks. Production
events come from one seeded RNG, process-value noise from another, so the same
seed gives the same parts, stops and rejects at any ``--speed``.

States use the OPC UA PackML (OPC 30060) numbers from the contract. This first
model runs Execute, Held (own breakdown) and Suspended (starved of material);
the full PackML cycle and more machine types follow in the simulator issue.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

from contract import PACKML

EXECUTE, SUSPENDED, HELD = 4, 12, 15
REASON_NONE, REASON_BREAKDOWN, REASON_MATERIAL = 0, 101, 201
REASONS = {REASON_NONE: "none", REASON_BREAKDOWN: "breakdown", REASON_MATERIAL: "material shortage"}


@dataclass(frozen=True)
class MachineSpec:
    name: str
    kind: str
    product: str
    ideal_cycle_s: float  # seconds per part at nameplate speed
    speed_factor: float = 1.0  # actual speed / ideal speed (reduced-speed loss below 1)
    reject_rate: float = 0.02
    mtbf_s: float = 3600.0  # mean run time between breakdowns
    mttr_s: float = 300.0  # mean repair time
    mtbs_s: float = 1800.0  # mean run time between material shortages
    shortage_s: tuple[float, float] = (20.0, 120.0)
    temp_setpoint_c: float = 60.0
    power_kw: float = 7.5


DEMO_MACHINES = (
    MachineSpec("cnc-01", "cnc", "bracket-A", ideal_cycle_s=40.0, speed_factor=0.92, reject_rate=0.03,
                mtbf_s=2400, mttr_s=240, mtbs_s=1500, temp_setpoint_c=35.0, power_kw=11.0),
    MachineSpec("moulder-01", "injection_moulding", "cap-28mm", ideal_cycle_s=12.0, speed_factor=0.97,
                reject_rate=0.05, mtbf_s=3600, mttr_s=360, mtbs_s=2400, temp_setpoint_c=220.0, power_kw=18.0),
    MachineSpec("filler-01", "filling", "bottle-1l", ideal_cycle_s=2.0, speed_factor=0.9, reject_rate=0.01,
                mtbf_s=1800, mttr_s=180, mtbs_s=900, temp_setpoint_c=20.0, power_kw=4.0),
)


@dataclass
class Ledger:
    """What really happened, for checking the gateway: time per state, counts, stops."""

    start: float
    end: float
    state_s: dict[int, float] = field(default_factory=dict)
    good: int = 0
    reject: int = 0
    ideal_s: float = 0.0  # sum of ideal cycle time over all parts made
    breakdowns: int = 0
    shortages: int = 0
    stops: list = field(default_factory=list)  # [start, end, state, reason]; end None while it lasts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state_s"] = {PACKML[k]: v for k, v in sorted(self.state_s.items())}
        d["stops"] = [{"start": s, "duration_s": (self.end if e is None else e) - s, "state": PACKML[st],
                       "reason": REASONS.get(r, r)} for s, e, st, r in self.stops]
        d["run_s"] = self.state_s.get(EXECUTE, 0.0)
        d["elapsed_s"] = self.end - self.start
        return d


class Machine:
    def __init__(self, spec: MachineSpec, t0: float, seed: int):
        self.spec = spec
        self._rng = random.Random(seed)  # production events
        self._noise = random.Random(seed ^ 0x5EED)  # process values
        self.clock = t0
        self.state, self.reason, self.state_since = EXECUTE, REASON_NONE, t0
        self.good = self.reject = 0
        self.ledger = Ledger(start=t0, end=t0)
        self._cycle_left = self._cycle()
        self._to_failure = self._rng.expovariate(1.0 / spec.mtbf_s)
        self._to_shortage = self._rng.expovariate(1.0 / spec.mtbs_s)
        self._stop_left = 0.0
        self.temperature = spec.temp_setpoint_c

    def _cycle(self) -> float:
        jitter = self._rng.lognormvariate(0.0, 0.03)
        return self.spec.ideal_cycle_s / self.spec.speed_factor * jitter

    def _enter(self, state: int, reason: int, events: list) -> None:
        led = self.ledger
        led.state_s[self.state] = led.state_s.get(self.state, 0.0) + (self.clock - self.state_since)
        if self.state != EXECUTE:
            led.stops[-1][1] = self.clock
        if state != EXECUTE:
            led.stops.append([self.clock, None, state, reason])
        self.state, self.reason, self.state_since = state, reason, self.clock
        events.append(("state", self.clock, state, reason))

    def advance(self, t: float) -> list[tuple]:
        """Run the machine up to time ``t``; return its events in order.

        Events: ("state", ts, state, reason) and ("count", ts, good, reject).
        """
        events: list[tuple] = []
        while True:
            if self.state == EXECUTE:
                step = min(self._cycle_left, self._to_failure, self._to_shortage)
                if self.clock + step > t:
                    dt = t - self.clock
                    self._cycle_left -= dt
                    self._to_failure -= dt
                    self._to_shortage -= dt
                    self.clock = t
                    break
                self.clock += step
                self._cycle_left -= step
                self._to_failure -= step
                self._to_shortage -= step
                if self._cycle_left <= 0:
                    if self._rng.random() < self.spec.reject_rate:
                        self.reject += 1
                    else:
                        self.good += 1
                    self.ledger.ideal_s += self.spec.ideal_cycle_s
                    self._cycle_left = self._cycle()
                    events.append(("count", self.clock, self.good, self.reject))
                elif self._to_failure <= 0:
                    self.ledger.breakdowns += 1
                    self._stop_left = self._rng.expovariate(1.0 / self.spec.mttr_s)
                    self._to_failure = self._rng.expovariate(1.0 / self.spec.mtbf_s)
                    self._enter(HELD, REASON_BREAKDOWN, events)
                else:
                    self.ledger.shortages += 1
                    self._stop_left = self._rng.uniform(*self.spec.shortage_s)
                    self._to_shortage = self._rng.expovariate(1.0 / self.spec.mtbs_s)
                    self._enter(SUSPENDED, REASON_MATERIAL, events)
            else:
                if self.clock + self._stop_left > t:
                    self._stop_left -= t - self.clock
                    self.clock = t
                    break
                self.clock += self._stop_left
                self._stop_left = 0.0
                self._enter(EXECUTE, REASON_NONE, events)
        self.ledger.good, self.ledger.reject, self.ledger.end = self.good, self.reject, self.clock
        return events

    def ledger_now(self) -> Ledger:
        """The ledger including the state the machine is in right now."""
        led = Ledger(**{**self.ledger.__dict__, "state_s": dict(self.ledger.state_s),
                        "stops": [list(s) for s in self.ledger.stops]})
        led.state_s[self.state] = led.state_s.get(self.state, 0.0) + (self.clock - self.state_since)
        return led

    def process_values(self, dt: float) -> dict[str, float]:
        """Sample the process values after ``dt`` simulated seconds (first-order thermal model)."""
        s, n = self.spec, self._noise
        running = self.state == EXECUTE
        target = s.temp_setpoint_c + (8.0 if running else -15.0)
        self.temperature += (target - self.temperature) * (1.0 - math.exp(-dt / 300.0)) + n.gauss(0, 0.05)
        power = s.power_kw * (1.0 if running else 0.15) * (1 + n.gauss(0, 0.02))
        vibration = (2.0 if running else 0.2) * (1 + abs(n.gauss(0, 0.1)))
        return {"temperature": round(self.temperature, 3), "power": round(power, 3),
                "vibration": round(vibration, 3)}


UNITS = {"temperature": "degC", "power": "kW", "vibration": "mm/s"}
