"""A deterministic machine model with its own ground-truth ledger.

Event-driven in simulated time: ``advance(t)`` processes every event (part finished, breakdown,
jam, material shortage, changeover, each step of a PackML path) up to ``t`` with its exact
timestamp. Every event time is computed at the previous event, never at a tick, so results do not
depend on how often the driver ticks: the same seed gives the same events at any ``--speed``.
Each kind of random event has its own seeded RNG (parts: cycle time and reject draw; breakdowns;
material shortages; micro-stops; changeovers), the slow process disturbance another and process-value
noise another, so the k-th breakdown is the same breakdown (same work done before it, same repair time)
whatever else happened: an injected stop delays the machine's own events, it never reshuffles them.

States use the PackML numbers of the contract (OPC 30060). Every state change goes through the
PackML transition table (``simulators.packml``), which refuses illegal ones. The paths
(docs/simulators.md, "Machine models"):

- breakdown (reason 101) and jam / micro-stop (102): Execute -> Holding -> Held -> Unholding -> Execute
- material shortage (201): Execute -> Suspending -> Suspended -> Unsuspending -> Execute
- changeover (301): Execute -> Completing -> Complete -> Resetting -> Idle -> Starting -> Execute

Losses: breakdowns, micro-stops, shortages, changeovers with setup time, reduced speed
(``speed_factor``), rejects at a base rate, a higher rate during the start-up period after a
changeover, and a reject probability that rises with the temperature above its setpoint.

Faults on cue (``inject``, ``simulators.faults``): a trainer's breakdown, burst of jams, slow-down,
quality problem or material shortage goes into the machine's one time-ordered queue of faults, fed by
live injections and by a scenario's script alike (``inject`` with a future time); it is received
(booked in the ledger's ``faults``) at its simulated time, walks the same PackML paths, and its stops
are booked as ``injected``. Injected faults draw no random numbers, so the machine's own events keep
their order and their spacing in work done (docs/simulators.md, "Faults on cue").
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field

from contract import PACKML, REASONS

from . import faults as _faults
from . import packml
from .packml import (COMPLETING, EXECUTE, HELD, HOLD, IDLE, RESET, SC, START, SUSPEND, SUSPENDED, UNHOLD,
                     UNSUSPEND)

REASON_NONE, REASON_BREAKDOWN, REASON_JAM, REASON_MATERIAL, REASON_CHANGEOVER = 0, 101, 102, 201, 301
REASON_STARVED, REASON_BLOCKED = 202, 203  # in a line (simulators.line): input buffer empty / output buffer full
INF = math.inf


@dataclass(frozen=True)
class MachineSpec:
    """A machine type and its losses. A mean or interval of 0 switches that loss off."""

    name: str
    kind: str
    product: str
    ideal_cycle_s: float  # seconds per part at nameplate speed
    speed_factor: float = 1.0  # actual speed / ideal speed (reduced-speed loss below 1)
    reject_rate: float = 0.02  # base probability that a part is rejected
    mtbf_s: float = 3600.0  # mean run time between breakdowns (exponential)
    mttr_s: float = 300.0  # mean time in Held per breakdown (exponential)
    mtbs_s: float = 1800.0  # mean run time between material shortages (exponential)
    shortage_s: tuple[float, float] = (20.0, 120.0)  # time in Suspended per shortage (uniform)
    temp_setpoint_c: float = 60.0
    power_kw: float = 7.5  # while producing
    # --- PackML paths
    acting_s: float = 2.0  # each acting state (Holding, Unholding, Suspending, Starting, ...) lasts this long
    # --- micro-stops (jams): short Held episodes with their own reason
    mtbms_s: float = 0.0  # mean run time between micro-stops (exponential); 0 = none
    micro_stop_s: tuple[float, float] = (10.0, 90.0)  # whole episode, Execute to Execute (uniform)
    # --- changeovers and start-up rejects
    changeover_every_s: float = 0.0  # run time between changeovers (one production order); 0 = none
    setup_s: tuple[float, float] = (600.0, 900.0)  # whole changeover, Execute to Execute (uniform)
    startup_s: float = 600.0  # start-up period after a changeover (the gateway's default `startup`)
    startup_reject_rate: float | None = None  # reject rate in the start-up period; None = reject_rate
    # --- process physics
    idle_temp_c: float | None = None  # temperature approached when not producing; None = setpoint - 15
    thermal_tau_s: float = 300.0  # first-order time constant of the temperature
    temp_drift_c: float = 0.0  # standard deviation of the slow process disturbance while producing
    drift_step_s: float = 600.0  # the disturbance changes this often (AR(1), correlation 0.9 per step)
    reject_per_c: float = 0.0  # added reject probability per degC above the setpoint
    temp_ripple_c: float = 0.0  # amplitude of the temperature controller's limit cycle (on/off, PID hunting)
    temp_ripple_s: float = 300.0  # its period
    idle_power: float = 0.15  # power when not producing, as a fraction of power_kw
    vibration_mm_s: float = 2.0  # while producing
    wear_mm_s_per_h: float = 0.0  # vibration rise per hour of run time since the last changeover (tool wear)

    def __post_init__(self):
        a = self.acting_s
        if a < 0 or self.ideal_cycle_s <= 0 or self.speed_factor <= 0:
            raise ValueError(f"{self.name}: acting_s >= 0, ideal_cycle_s > 0 and speed_factor > 0 required")
        for rate in (self.reject_rate, self.startup_reject_rate):
            if rate is not None and not 0 <= rate <= 1:
                raise ValueError(f"{self.name}: reject rates are probabilities between 0 and 1")
        if self.mtbms_s and self.micro_stop_s[0] < 2 * a:
            raise ValueError(f"{self.name}: micro_stop_s must leave room for Holding and Unholding (2 x acting_s)")
        if self.changeover_every_s and self.setup_s[0] < 5 * a:
            raise ValueError(f"{self.name}: setup_s must leave room for five acting states (5 x acting_s)")
        if min(self.mtbf_s, self.mtbs_s, self.mtbms_s, self.changeover_every_s, self.mttr_s) < 0:
            raise ValueError(f"{self.name}: means and intervals must be >= 0 (0 = off)")


DEMO_MACHINES = (
    # a CNC mill: chip / door-interlock stops, fixture change per order, coolant chiller, tool wear
    MachineSpec("cnc-01", "cnc", "bracket-A", ideal_cycle_s=40.0, speed_factor=0.92, reject_rate=0.03,
                mtbf_s=2400, mttr_s=240, mtbs_s=1500, temp_setpoint_c=35.0, power_kw=11.0,
                mtbms_s=1800, changeover_every_s=4 * 3600, setup_s=(1200, 2100), startup_reject_rate=0.15,
                idle_temp_c=22.0, thermal_tau_s=900, temp_drift_c=1.5, reject_per_c=0.02,
                temp_ripple_c=0.4, temp_ripple_s=480, idle_power=0.15, vibration_mm_s=2.5, wear_mm_s_per_h=0.3),
    # an injection moulder: heater bands keep the barrel hot when stopped; mould change per order
    MachineSpec("moulder-01", "injection_moulding", "cap-28mm", ideal_cycle_s=12.0, speed_factor=0.97,
                reject_rate=0.05, mtbf_s=3600, mttr_s=360, mtbs_s=2400, temp_setpoint_c=220.0, power_kw=18.0,
                mtbms_s=1200, changeover_every_s=8 * 3600, setup_s=(2400, 3600), startup_reject_rate=0.25,
                idle_temp_c=205.0, thermal_tau_s=600, temp_drift_c=3.0, reject_per_c=0.01,
                temp_ripple_c=1.0, temp_ripple_s=180, idle_power=0.45, vibration_mm_s=0.8),
    # a bottle filler: fallen bottles jam it, format change per product, warm product foams
    MachineSpec("filler-01", "filling", "bottle-1l", ideal_cycle_s=2.0, speed_factor=0.9, reject_rate=0.01,
                mtbf_s=1800, mttr_s=180, mtbs_s=900, temp_setpoint_c=20.0, power_kw=4.0,
                mtbms_s=600, changeover_every_s=2 * 3600, setup_s=(900, 1500), startup_reject_rate=0.05,
                idle_temp_c=23.0, thermal_tau_s=1200, temp_drift_c=1.0, reject_per_c=0.01,
                temp_ripple_c=0.6, temp_ripple_s=300, idle_power=0.2, vibration_mm_s=1.2),
    # a semi-automatic assembly station: bowl-feeder jams, missing kits, variant change, hot-melt glue
    MachineSpec("assembly-01", "assembly", "sensor-housing", ideal_cycle_s=30.0, speed_factor=0.95,
                reject_rate=0.015, mtbf_s=4 * 3600, mttr_s=600, mtbs_s=1200, shortage_s=(60.0, 300.0),
                temp_setpoint_c=170.0, power_kw=3.0, mtbms_s=900, changeover_every_s=3 * 3600,
                setup_s=(600, 900), startup_reject_rate=0.06, idle_temp_c=150.0, thermal_tau_s=400,
                temp_drift_c=2.5, reject_per_c=0.005, temp_ripple_c=1.5, temp_ripple_s=240,
                idle_power=0.2, vibration_mm_s=0.6),
)


@dataclass
class Ledger:
    """What really happened, for checking the gateway: time per state, counts, stops and their causes."""

    start: float
    end: float
    state_s: dict[int, float] = field(default_factory=dict)
    good: int = 0
    reject: int = 0
    ideal_s: float = 0.0  # sum of ideal cycle time over all parts made
    breakdowns: int = 0
    shortages: int = 0
    micro_stops: int = 0
    changeovers: int = 0
    setup_s: float = 0.0  # time in changeovers (Execute to Execute)
    startup_rejects: int = 0  # rejects within startup_s after a changeover ended (both ends included)
    transitions: int = 0  # state changes emitted
    starved: int = 0  # in a line: stops because the input buffer was empty (reason 202)
    blocked: int = 0  # in a line: stops because the output buffer was full (reason 203)
    consumed: int = 0  # in a line: parts taken from the input buffer
    #: [start, end, main state, reason, fault entry or None, cause or None]; end None while it lasts.
    #: cause (starved / blocked only): the neighbour that caused it and the root of the chain
    stops: list = field(default_factory=list)
    line: dict | None = None  # in a line: position and the buffers before and after the machine
    faults: list = field(default_factory=list)  # injected faults: fault, params, received, applied, until

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state_s"] = {PACKML[k]: v for k, v in sorted(self.state_s.items())}
        d["stops"] = [{"start": s, "duration_s": (self.end if e is None else e) - s, "state": PACKML[st],
                       "reason": REASONS.get(r, r), "reason_code": r, "injected": f is not None,
                       **({"cause": c} if c is not None else {})}
                      for s, e, st, r, f, c in self.stops]
        for r, name in ((REASON_STARVED, "starved_s"), (REASON_BLOCKED, "blocked_s")):
            d[name] = sum((self.end if e is None else e) - s for s, e, _, rr, _, _ in self.stops if rr == r)
        if d["line"] is None:
            del d["line"]
        d["run_s"] = self.state_s.get(EXECUTE, 0.0)
        d["elapsed_s"] = self.end - self.start
        return d


class Machine:
    def __init__(self, spec: MachineSpec, t0: float, seed: int, *, keep_parts: bool = False):
        s = self.spec = spec
        self._rng = random.Random(seed)  # parts: cycle-time jitter and the reject draw
        #: one stream per kind of own loss: the k-th of each is the same in every run of this seed
        self._rngs = {k: random.Random(f"{seed}/{k}") for k in ("breakdown", "shortage", "micro", "changeover")}
        self._noise = random.Random(seed ^ 0x5EED)  # process-value noise (never affects production)
        self._thermal = random.Random(seed ^ 0x7E4D)  # the slow process disturbance
        self.clock = t0
        self._slow = 1.0  # speed multiplier of an injected slow-down
        self._sm = packml.StateMachine(EXECUTE)  # produces from t0
        self.reason, self.state_since = REASON_NONE, t0
        self.good = self.reject = 0
        self.ledger = Ledger(start=t0, end=t0)
        #: per part (time, temperature, in start-up period, rejected) when keep_parts (for tests)
        self.parts: list[tuple[float, float, bool, bool]] | None = [] if keep_parts else None
        # Execute timers: absolute due times while in Execute, remaining run time while stopped
        self._due = {"part": t0 + self._cycle(),
                     "breakdown": t0 + self._draw(s.mtbf_s, "breakdown"),
                     "shortage": t0 + self._draw(s.mtbs_s, "shortage"),
                     "micro": t0 + self._draw(s.mtbms_s, "micro"),
                     "changeover": t0 + (s.changeover_every_s or INF),
                     "burst": INF}  # the next jam of an injected burst
        self._left: dict[str, float] = {}
        self._plan: deque = deque()  # the rest of the PackML path being walked: (command, dwell after it)
        self._state_due = INF  # when the current non-Execute state ends
        self._startup_until = -INF
        self._run_since_changeover = 0.0  # run time before the current Execute piece, since the last changeover
        # thermal model: first-order lag towards a target; exact between breakpoints
        self._disturbance = 0.0
        self._tb, self._Tb = t0, s.temp_setpoint_c
        self._target = s.temp_setpoint_c
        self._drift_k = 1
        self._drift_due = t0 + s.drift_step_s if s.temp_drift_c > 0 else INF
        self._ripple_phase = self._thermal.uniform(0.0, 2 * math.pi)
        self.temperature = s.temp_setpoint_c  # as last measured by process_values (with its noise)
        # injected faults (``inject``)
        #: the fault queue: (due, sequence, ledger entry) in order. ``_incoming``: not yet received (a
        #: scenario's script, or a live injection stamped ahead of the machine's clock); ``_pending``: received
        #: (in the ledger), waiting to apply (a stopping fault waits for Execute)
        self._incoming: list[tuple[float, int, dict]] = []
        self._pending: list[tuple[float, int, dict]] = []
        self._seq = 0
        self._reject_override: float | None = None  # reject rate of an injected quality problem
        self._excursion = 0.0  # degC added to the setpoint by an injected temperature excursion
        self._expiry: dict[str, tuple[float, dict]] = {}  # "slow" / "quality": (end time, ledger entry)
        self._burst: tuple[int, float, dict] | None = None  # jams still to come, seconds each, ledger entry

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> int:
        return self._sm.state

    def _draw(self, mean: float, kind: str) -> float:
        """Run time to the next own loss of ``kind``: a drawn amount of work, at the current speed."""
        return self._rngs[kind].expovariate(1.0 / mean) / self._slow if mean > 0 else INF

    def _cycle(self) -> float:
        jitter = self._rng.lognormvariate(0.0, 0.03)
        return self.spec.ideal_cycle_s / (self.spec.speed_factor * self._slow) * jitter

    def _fire(self, command: str, reason: int, events: list) -> None:
        """Change state through the PackML transition table (raises on an illegal transition)."""
        old = self._sm.state
        new = self._sm.fire(command)
        led = self.ledger
        led.state_s[old] = led.state_s.get(old, 0.0) + (self.clock - self.state_since)
        led.transitions += 1
        self.reason, self.state_since = reason, self.clock
        if EXECUTE in (old, new):
            self._retarget()
        events.append(("state", self.clock, new, reason))

    def _hold_or_suspend(self, state: int, seconds: float, reason: int, events: list,
                         fault: dict | None = None, cause: dict | None = None) -> None:
        """Execute -> Holding -> Held (or Suspending -> Suspended) for ``seconds`` -> back to Execute.
        ``seconds`` may be INF: the wait state then lasts until ``_leave_wait``."""
        a = self.spec.acting_s
        go, back = (HOLD, UNHOLD) if state == HELD else (SUSPEND, UNSUSPEND)
        self._begin_stop([(go, a), (SC, seconds), (back, a), (SC, None)], state, reason, events, fault, cause)

    def _begin_stop(self, steps: list, main: int, reason: int, events: list, fault: dict | None = None,
                    cause: dict | None = None) -> None:
        """Leave Execute along ``steps`` [(command, dwell in the state it leads to)], ending in Execute."""
        now = self.clock
        self._left = {k: due - now for k, due in self._due.items()}
        self._run_since_changeover += now - self.state_since
        self.ledger.stops.append([now, None, main, reason, fault, cause])
        self._plan = deque(steps)
        self._step(events)

    def _step(self, events: list) -> None:
        command, dwell = self._plan.popleft()
        stop = self.ledger.stops[-1]
        back = packml.next_state(self.state, command) == EXECUTE
        self._fire(command, REASON_NONE if back else stop[3], events)
        if not back:
            self._state_due = self.clock + dwell
            return
        now = self.clock
        self._state_due = INF
        stop[1] = now
        if stop[4] is not None:
            stop[4]["until"] = now
        changeover = stop[3] == REASON_CHANGEOVER
        self._due = {k: now + left for k, left in self._left.items()}
        if changeover:
            self.ledger.setup_s += now - stop[0]
            self._startup_until = now + self.spec.startup_s
            self._run_since_changeover = 0.0
            self._due["part"] = now + self._cycle()  # the new order's first part
            self._due["changeover"] = now + self.spec.changeover_every_s / self._slow
        self._resumed(stop[3], events)

    def _leave_wait(self, now: float) -> None:
        """End the wait state (Held / Suspended) of the current stop at ``now`` (>= the machine's clock): the way
        back to Execute follows. In the acting state before it, the wait state that follows lasts 0 s."""
        if self.state in (HELD, SUSPENDED):
            self._state_due = now
        elif self._plan and packml.TRANSITIONS.get((self.state, SC)) in (HELD, SUSPENDED):
            command, _ = self._plan[0]
            self._plan[0] = (command, 0.0)

    # hooks for a machine in a line (simulators.line); a machine on its own has endless material and room
    def _deliver(self, events: list) -> bool:
        """A good part is finished: put it somewhere. False: no room, the machine waits (blocked)."""
        return True

    def _feed(self, events: list) -> None:
        """A new cycle begins: take its material."""

    def _resumed(self, reason: int, events: list) -> None:
        """Back in Execute after a stop with ``reason``."""

    # ------------------------------------------------------------------ events
    def _part(self, events: list) -> None:
        s, now, led = self.spec, self.clock, self.ledger
        startup = now <= self._startup_until
        temp = self._temp_at(now)
        p = (s.startup_reject_rate if startup and s.startup_reject_rate is not None else s.reject_rate)
        if self._reject_override is not None:
            p = self._reject_override
        p = min(1.0, p + s.reject_per_c * max(0.0, temp - s.temp_setpoint_c))
        rejected = self._rng.random() < p
        if rejected:
            self.reject += 1
            led.startup_rejects += startup
        else:
            self.good += 1
        led.ideal_s += s.ideal_cycle_s
        if self.parts is not None:
            self.parts.append((now, temp, startup, rejected))
        events.append(("count", now, self.good, self.reject))
        if not rejected and not self._deliver(events):
            return  # blocked: the rest (_after_part) follows when the part has found a place
        self._after_part(events)

    def _after_part(self, events: list) -> None:
        s, now, led = self.spec, self.clock, self.ledger
        if now >= self._due["changeover"]:  # the order is complete: change over before the next part
            led.changeovers += 1
            total = self._rngs["changeover"].uniform(*s.setup_s)
            a = s.acting_s
            self._due["part"] = INF
            self._begin_stop([(SC, a), (SC, a), (RESET, a), (SC, total - 5 * a), (START, a), (SC, None)],
                             IDLE, REASON_CHANGEOVER, events)
        else:
            self._due["part"] = now + self._cycle()
            self._feed(events)

    def _breakdown(self, events: list) -> None:
        s = self.spec
        self.ledger.breakdowns += 1
        held = self._rngs["breakdown"].expovariate(1.0 / s.mttr_s) if s.mttr_s > 0 else 0.0
        self._due["breakdown"] = self.clock + self._draw(s.mtbf_s, "breakdown")
        self._hold_or_suspend(HELD, held, REASON_BREAKDOWN, events)

    def _micro_stop(self, events: list) -> None:
        s = self.spec
        self.ledger.micro_stops += 1
        total = self._rngs["micro"].uniform(*s.micro_stop_s)
        self._due["micro"] = self.clock + self._draw(s.mtbms_s, "micro")
        self._hold_or_suspend(HELD, total - 2 * s.acting_s, REASON_JAM, events)

    def _shortage(self, events: list) -> None:
        s = self.spec
        self.ledger.shortages += 1
        waiting = self._rngs["shortage"].uniform(*s.shortage_s)
        self._due["shortage"] = self.clock + self._draw(s.mtbs_s, "shortage")
        self._hold_or_suspend(SUSPENDED, waiting, REASON_MATERIAL, events)

    def _drift(self, events: list) -> None:
        s, rho = self.spec, 0.9  # AR(1): stationary standard deviation temp_drift_c
        step = s.temp_drift_c * math.sqrt(1 - rho * rho) * self._thermal.gauss(0, 1)
        self._disturbance = rho * self._disturbance + step
        self._drift_k += 1
        self._drift_due = self.ledger.start + self._drift_k * s.drift_step_s
        self._retarget()

    def _next(self) -> tuple[float, int]:
        """The next event: (time, which); ties in a fixed order (the machine's own events first)."""
        if self.state == EXECUTE:
            d = self._due
            best = min((d["part"], 0), (d["breakdown"], 1), (d["shortage"], 2), (d["micro"], 3), (d["burst"], 9))
        else:
            best = (self._state_due, 4)
        best = min(best, (self._drift_due, 5))
        if self._incoming:
            best = min(best, (max(self._incoming[0][0], self.clock), 6))
        if self._pending:
            best = min(best, (self._pending_due(), 7))
        if self._expiry:
            best = min(best, (min(end for end, _ in self._expiry.values()), 8))
        return best

    def advance(self, t: float) -> list[tuple]:
        """Run the machine up to time ``t``; return its events in order.

        Events: ("state", ts, state, reason) and ("count", ts, good, reject).
        """
        events: list[tuple] = []
        handlers = (self._part, self._breakdown, self._shortage, self._micro_stop, self._step, self._drift,
                    self._receive, self._apply_fault, self._expire, self._burst_jam)
        while True:
            when, which = self._next()
            if when > t:
                break
            self.clock = max(self.clock, when)
            handlers[which](events)
        self.clock = max(self.clock, t)
        self.ledger.good, self.ledger.reject, self.ledger.end = self.good, self.reject, self.clock
        return events

    # ------------------------------------------------------------------ faults on cue
    def inject(self, fault: str, at: float, **params) -> dict:
        """Inject a fault at simulated time ``at`` (docs/simulators.md, "Faults on cue").

        ``fault`` is one of ``simulators.faults.FAULTS``: breakdown (minutes), microstops (count, seconds,
        every), slow (factor, minutes), quality (reject_rate or temp_c, minutes), material (minutes), reset.
        Missing parameters take their defaults. The fault goes into the machine's fault queue: it is received
        (appended to ``ledger.faults``) and takes effect during ``advance`` at ``at`` (or now, if ``at`` is in
        the machine's past), so a scenario scripts its events by injecting them all at the start; a stopping
        fault that finds the machine stopped starts when it is back in Execute. Faults at the same time keep
        the order of their injection. Returns its ledger entry: fault, params, received, applied (None until
        it is), until. ValueError for an unknown fault or a bad parameter.
        """
        fault, params = _faults.check(fault, params)
        if fault == "microstops" and params["seconds"] < 2 * self.spec.acting_s:
            raise ValueError(f"microstops: seconds = {params['seconds']:g} leaves no room for Holding and Unholding "
                             f"({self.spec.name}: at least {2 * self.spec.acting_s:g})")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise ValueError(f"{fault}: the time must be a finite number (Unix seconds), got {at!r}")
        entry = {"fault": fault, "params": params, "received": float(at), "applied": None, "until": None}
        self._seq += 1
        self._incoming.append((float(at), self._seq, entry))
        self._incoming.sort(key=lambda p: p[:2])
        if at <= self.clock:  # now or in the past: received now
            self._receive([])
        return entry

    def _receive(self, events: list) -> None:
        """The next fault of the queue arrives: booked in the ledger, waiting to apply."""
        due, seq, entry = self._incoming.pop(0)
        self.ledger.faults.append(entry)
        self._pending.append((max(due, self.clock), seq, entry))
        self._pending.sort(key=lambda p: p[:2])

    @property
    def active_faults(self) -> list[str]:
        """Injected faults in effect now (waiting ones not included)."""
        out = sorted(self._expiry)
        stop = self.ledger.stops[-1] if self.ledger.stops else None
        if self.state != EXECUTE and stop and stop[1] is None and stop[4] is not None:
            out.insert(0, stop[4]["fault"])
        elif self._burst:
            out.insert(0, "microstops")
        return out

    def _pending_index(self) -> int:
        """The next pending fault that can apply now: stopping faults only in Execute, and a burst of jams
        only when the previous burst is done (it would cut that one short)."""
        for i, (_, _, entry) in enumerate(self._pending):
            fault = entry["fault"]
            if fault not in _faults.STOPS or (self.state == EXECUTE and not (fault == "microstops" and self._burst)):
                return i
        return -1

    def _pending_due(self) -> float:
        i = self._pending_index()
        return INF if i < 0 else max(self._pending[i][0], self.clock)

    def _apply_fault(self, events: list) -> None:
        due, seq, entry = self._pending.pop(self._pending_index())
        now, p = self.clock, entry["params"]
        entry["applied"] = now
        fault = entry["fault"]
        if fault == "breakdown":
            self.ledger.breakdowns += 1
            self._hold_or_suspend(HELD, p["minutes"] * 60, REASON_BREAKDOWN, events, entry)
        elif fault == "material":
            self.ledger.shortages += 1
            self._hold_or_suspend(SUSPENDED, p["minutes"] * 60, REASON_MATERIAL, events, entry)
        elif fault == "microstops":
            self._burst = (p["count"], p["seconds"], entry)
            self._burst_jam(events)
        elif fault == "slow":
            if "slow" in self._expiry:  # a new slow-down replaces the running one: that one ends now
                self._expiry["slow"][1]["until"] = now
            self._set_slow(p["factor"])
            self._expiry["slow"] = (now + p["minutes"] * 60, entry)
            entry["until"] = self._expiry["slow"][0]
        elif fault == "quality":
            if "quality" in self._expiry:  # replaces the running quality problem, which ends now
                self._expiry["quality"][1]["until"] = now
            self._end_quality()
            self._reject_override = p.get("reject_rate")
            self._excursion = p.get("temp_c", 0.0)
            self._retarget()
            self._expiry["quality"] = (now + p["minutes"] * 60, entry)
            entry["until"] = self._expiry["quality"][0]
        else:  # reset
            self._reset(entry, (due, seq))

    def _burst_jam(self, events: list) -> None:
        left, seconds, entry = self._burst
        a = self.spec.acting_s
        self.ledger.micro_stops += 1
        left -= 1
        self._burst = (left, seconds, entry) if left else None
        self._due["burst"] = self.clock + entry["params"]["every"] if left else INF
        self._hold_or_suspend(HELD, seconds - 2 * a, REASON_JAM, events, entry)

    def _set_slow(self, factor: float) -> None:
        """Change the speed; the part in progress finishes its rest at the new speed (exact, no draw). The own
        timers count work (run time at normal speed), so they stretch with it: a slowed machine is slower to
        its next breakdown, shortage, jam and changeover, and does the same work before each."""
        scale, self._slow = self._slow / factor, factor
        timers = [k for k in self._due if k != "burst"]  # a burst's spacing is run time (docs/simulators.md)
        if self.state == EXECUTE:
            for k in timers:
                self._due[k] = self.clock + (self._due[k] - self.clock) * scale
        else:
            for k in timers:
                if k in self._left:
                    self._left[k] *= scale

    def _end_quality(self) -> None:
        self._reject_override, self._excursion = None, 0.0
        self._retarget()

    def _expire(self, events: list) -> None:
        name = min(self._expiry, key=lambda k: self._expiry[k][0])
        del self._expiry[name]
        if name == "slow":
            self._set_slow(1.0)
        else:
            self._end_quality()

    def _reset(self, entry: dict, key: tuple[float, int]) -> None:
        """Clear every injected fault received before the reset (``key``: its time and place in the queue) now:
        one in effect ends (an injected stop by its normal way back to Execute), one waiting is dropped. Faults
        not yet received (scripted later), or received at the same time after it, are not touched."""
        now = self.clock
        entry["until"] = now
        for due, seq, waiting in self._pending:
            if (due, seq) < key:
                waiting["until"] = now  # never applied
        self._pending = [p for p in self._pending if p[:2] > key]
        for end_entry in self._expiry.values():
            end_entry[1]["until"] = now
        if "slow" in self._expiry:
            self._set_slow(1.0)
        if "quality" in self._expiry:
            self._end_quality()
        self._expiry.clear()
        self._burst = None
        self._due["burst"] = INF
        if "burst" in self._left:
            self._left["burst"] = INF
        stop = self.ledger.stops[-1] if self.ledger.stops else None
        if self.state != EXECUTE and stop and stop[1] is None and stop[4] is not None:
            self._leave_wait(now)

    def ledger_now(self) -> Ledger:
        """The ledger including the state the machine is in right now."""
        led = Ledger(**{**self.ledger.__dict__, "state_s": dict(self.ledger.state_s),
                        "stops": [list(s) for s in self.ledger.stops],
                        "faults": [dict(f) for f in self.ledger.faults]})
        led.state_s[self.state] = led.state_s.get(self.state, 0.0) + (self.clock - self.state_since)
        if self.state != EXECUTE and led.stops and led.stops[-1][3] == REASON_CHANGEOVER:
            led.setup_s += self.clock - led.stops[-1][0]
        return led

    # ------------------------------------------------------------------ process values
    def _lag_at(self, t: float) -> float:
        return self._target + (self._Tb - self._target) * math.exp(-(t - self._tb) / self.spec.thermal_tau_s)

    def _temp_at(self, t: float) -> float:
        """T(t) = first-order lag towards the target + the controller's limit cycle (exact at any t)."""
        s = self.spec
        ripple = s.temp_ripple_c * math.sin(2 * math.pi * (t - self.ledger.start) / s.temp_ripple_s
                                            + self._ripple_phase) if s.temp_ripple_c else 0.0
        return self._lag_at(t) + ripple

    def _retarget(self) -> None:
        """A breakpoint of the thermal model at the current time (state or disturbance changed)."""
        s, now = self.spec, self.clock
        self._Tb, self._tb = self._lag_at(now), now
        idle = s.temp_setpoint_c - 15.0 if s.idle_temp_c is None else s.idle_temp_c
        self._target = s.temp_setpoint_c + self._disturbance + self._excursion if self.state == EXECUTE else idle

    @property
    def true_temperature(self) -> float:
        """The model's temperature now, without measurement noise (what drives the reject rate)."""
        return self._temp_at(self.clock)

    def process_values(self, dt: float) -> dict[str, float]:
        """Sample the process values at the current time (``dt``: seconds since the last sample, unused:
        the values follow from the machine's history, so they do not depend on the tick)."""
        s, n = self.spec, self._noise
        state = self.state
        if state == EXECUTE:
            load = 1.0
            run_h = (self._run_since_changeover + self.clock - self.state_since) / 3600.0
            vib = s.vibration_mm_s + s.wear_mm_s_per_h * run_h
        elif state in packml.ACTING:  # drives ramping up or down
            load, vib = (1.0 + s.idle_power) / 2, 0.3 * s.vibration_mm_s
        else:
            load, vib = s.idle_power, 0.1 * s.vibration_mm_s
        temperature = self.temperature = self._temp_at(self.clock) + n.gauss(0, 0.05)
        power = s.power_kw * load * (1 + n.gauss(0, 0.02))
        vibration = vib * (1 + abs(n.gauss(0, 0.1)))
        return {"temperature": round(temperature, 3), "power": round(power, 3),
                "vibration": round(vibration, 3)}


UNITS = {"temperature": "degC", "power": "kW", "vibration": "mm/s"}
def demo_machine_name(i: int) -> str:
    """The name of the simulator's ``i``-th machine (from 0): cnc-01, moulder-01, ..., cnc-02, ... (light: no
    server imports, so that fieldlab deploy can name them without the edge and gateway extras)."""
    spec = DEMO_MACHINES[i % len(DEMO_MACHINES)]
    return f"{spec.name.rsplit('-', 1)[0]}-{i // len(DEMO_MACHINES) + 1:02d}"


__all__ = ["DEMO_MACHINES", "demo_machine_name", "EXECUTE", "HELD", "SUSPENDED", "IDLE", "COMPLETING", "REASONS", "REASON_NONE",
           "REASON_BREAKDOWN", "REASON_JAM", "REASON_MATERIAL", "REASON_CHANGEOVER", "UNITS", "Ledger", "Machine",
           "MachineSpec"]
