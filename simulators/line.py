"""A line: machines in sequence, coupled by finite buffers, so a demo can show a bottleneck.

Machine 0 takes its material from an endless supply, machine i > 0 from buffer i - 1, and machine i puts
every good part into buffer i (the last machine's good parts leave the line: the line's output). Rejects
are scrapped where they are made. The coupling follows the PackML meaning of Suspended (ISA-TR88.00.02:
stopped by a reason outside the machine, upstream or downstream):

- **starved** (reason 202): a machine that begins a cycle and finds its input buffer empty goes
  Execute -> Suspending -> Suspended and waits; the moment upstream puts a part into the buffer the machine
  takes it and goes Unsuspending -> Execute (the cycle starts when it is back in Execute).
- **blocked** (reason 203): a machine that finishes a good part and finds its output buffer full keeps
  the part and goes Execute -> Suspending -> Suspended; the moment downstream takes a part from the buffer
  the held part is put in its place and the machine goes Unsuspending -> Execute.

Each stop is booked in the machine's ledger with its cause: the neighbour that caused it (its state and
reason at that moment) and the root of the chain (a starved machine whose upstream is itself starved points
through it to the machine that really stopped). Every buffer keeps its level within [0, capacity] (checked
on every put and take) and books puts, takes, the lowest and highest level and the time-weighted mean.

All machines of a line advance together (``Line.advance``), one event at a time in time order across the
machines, so a part put at t is available downstream at t, and the result does not depend on the tick:
the same seed gives the same events at any ``--speed``. Each ``LineMachine`` is an ordinary ``Machine``
to its driver (``advance(t)`` returns its own events), so OPC UA, Modbus, the edge feed, scenarios and
the ledger work unchanged. Scripted scenario events sit in each machine's own fault queue
(``Machine.inject`` with a future time) and are received at their exact time like any other event.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from contract import PACKML

from .machine import (EXECUTE, INF, REASON_BLOCKED, REASON_CHANGEOVER, REASON_STARVED, REASONS, SUSPENDED, Ledger,
                      Machine, MachineSpec)


@dataclass
class Buffer:
    """Parts waiting between two machines: 0 <= level <= capacity at every moment."""

    name: str
    capacity: int
    level: int = 0
    t0: float = 0.0
    puts: int = 0
    takes: int = 0
    low: int = 0
    high: int = 0
    _area: float = 0.0  # integral of the level over time
    _since: float = 0.0
    history: list | None = field(default=None, repr=False)  # (time, level) after every change, if kept

    def __post_init__(self):
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ValueError(f"buffer {self.name}: capacity must be a whole number >= 1, got {self.capacity!r}")
        if not 0 <= self.level <= self.capacity:
            raise ValueError(f"buffer {self.name}: initial level {self.level} outside [0, {self.capacity}]")
        self.low = self.high = self.level
        self._since = self.t0

    def _change(self, t: float, by: int) -> None:
        level = self.level + by
        if not 0 <= level <= self.capacity:  # an error of the line's logic, never of the user
            raise RuntimeError(f"buffer {self.name}: level {level} outside [0, {self.capacity}] at {t}")
        self._area += self.level * (t - self._since)
        self._since, self.level = t, level
        self.low, self.high = min(self.low, level), max(self.high, level)
        if self.history is not None:
            self.history.append((t, level))

    def put(self, t: float) -> None:
        self._change(t, +1)
        self.puts += 1

    def take(self, t: float) -> None:
        self._change(t, -1)
        self.takes += 1

    @property
    def full(self) -> bool:
        return self.level >= self.capacity

    def to_dict(self, now: float) -> dict:
        area = self._area + self.level * (now - self._since)
        return {"name": self.name, "capacity": self.capacity, "level": self.level, "puts": self.puts,
                "takes": self.takes, "low": self.low, "high": self.high,
                "mean_level": area / (now - self.t0) if now > self.t0 else float(self.level)}


class LineMachine(Machine):
    """A machine in a ``Line``: takes material from ``inbuf`` and puts good parts into ``outbuf``."""

    def __init__(self, spec: MachineSpec, t0: float, seed: int, line: "Line", position: int, **kw):
        super().__init__(spec, t0, seed, **kw)
        self.line, self.position = line, position
        self.inbuf: Buffer | None = None
        self.outbuf: Buffer | None = None
        self.waiting: str | None = None  # "starved" / "blocked" while waiting for a buffer
        self._out: list[tuple] = []  # events made by the line's advance, not yet handed to the driver

    # ------------------------------------------------------------------ the driver's view
    def advance(self, t: float) -> list[tuple]:
        self.line.advance(t)
        events, self._out = self._out, []
        return events

    def process_values(self, dt: float) -> dict[str, float]:
        """The machine's process values and, with an input buffer, its level and capacity in parts
        (``buffer_in``, ``buffer_in_capacity``: telemetry signals, docs/simulators.md "A line with buffers")."""
        pv = super().process_values(dt)
        if self.inbuf is not None:
            pv["buffer_in"], pv["buffer_in_capacity"] = float(self.inbuf.level), float(self.inbuf.capacity)
        return pv

    def ledger_now(self) -> Ledger:
        led = super().ledger_now()
        now = self.clock
        led.line = {"line": self.line.name, "position": self.position,
                    "input": self.inbuf.to_dict(now) if self.inbuf else None,
                    "output": self.outbuf.to_dict(now) if self.outbuf else None}
        return led

    # ------------------------------------------------------------------ coupling hooks
    def _deliver(self, events: list) -> bool:
        b = self.outbuf
        if b is None:
            return True
        if not b.full:
            b.put(self.clock)
            self.line._after_put(self.position, self.clock)
            return True
        self._due["part"] = INF  # the next cycle is drawn when the part has found a place (_after_part)
        self.ledger.blocked += 1
        self.waiting = "blocked"
        self._hold_or_suspend(SUSPENDED, INF, REASON_BLOCKED, events,
                              cause=self.line._cause(self.position + 1))
        return False

    def _feed(self, events: list) -> None:
        b = self.inbuf
        if b is None:
            return
        if b.level > 0:
            self._take(self.clock)
            return
        self.ledger.starved += 1
        self.waiting = "starved"
        self._hold_or_suspend(SUSPENDED, INF, REASON_STARVED, events, cause=self.line._cause(self.position - 1))

    def _take(self, t: float) -> None:
        self.inbuf.take(t)
        self.ledger.consumed += 1
        self.line._after_take(self.position - 1, t)

    def _resumed(self, reason: int, events: list) -> None:
        if reason == REASON_BLOCKED:
            self._after_part(events)  # the part is placed: change over or begin the next cycle
        elif reason == REASON_CHANGEOVER:  # the new order's first part needs material
            self._feed(events)

    def _wake(self, t: float) -> None:
        """The buffer this machine waits for changed at ``t``: leave Suspended (starved or blocked) at ``t``."""
        self.waiting = None
        self._leave_wait(t)


class Line:
    """Machines in sequence with a buffer of ``capacities[i]`` parts between machine i and i + 1.

    ``fill``: initial buffer levels (default 0, an empty line that fills at the start). Faults, live or
    scripted, go to a machine with ``machine.inject(fault, at, **params)``.
    """

    def __init__(self, specs: list[MachineSpec], t0: float, seeds: list[int], capacities: list[int],
                 fill: list[int] | None = None, *, name: str = "line", keep_parts: bool = False, keep_history: bool = False):
        if len(specs) < 2:
            raise ValueError("a line needs at least two machines")
        if len(capacities) != len(specs) - 1:
            raise ValueError(f"a line of {len(specs)} machines needs {len(specs) - 1} buffer capacities, "
                             f"got {len(capacities)}")
        fill = [0] * len(capacities) if fill is None else list(fill)
        if len(fill) != len(capacities):
            raise ValueError(f"{len(capacities)} buffers but {len(fill)} initial levels")
        self.name, self.clock = name, t0
        self.machines = [LineMachine(s, t0, seed, self, i, keep_parts=keep_parts)
                         for i, (s, seed) in enumerate(zip(specs, seeds))]
        self.buffers = [Buffer(f"{a.name}>{b.name}", cap, lvl, t0=t0, history=[] if keep_history else None)
                        for a, b, cap, lvl in zip(specs, specs[1:], capacities, fill)]
        for i, b in enumerate(self.buffers):
            self.machines[i].outbuf, self.machines[i + 1].inbuf = b, b
        self._started = False

    # ------------------------------------------------------------------ coupling
    def _after_put(self, i: int, t: float) -> None:
        """Buffer i got a part at t: a starved machine i + 1 takes it now."""
        m = self.machines[i + 1]
        if m.waiting == "starved":
            m._wake(t)
            m._take(t)

    def _after_take(self, i: int, t: float) -> None:
        """Buffer i lost a part at t: a blocked machine i puts its finished part in its place now."""
        m = self.machines[i]
        if m.waiting == "blocked":
            self.buffers[i].put(t)
            m._wake(t)
            self._after_put(i, t)  # (the machine that took is not starved, so this does nothing today)

    def _cause(self, j: int) -> dict:
        """What neighbour j is doing now, and the root of the chain of starved / blocked machines."""
        m = self.machines[j]
        cause = {"machine": m.spec.name, "state": PACKML[m.state], "reason": REASONS.get(m.reason, m.reason)}
        root = cause
        stop = m.ledger.stops[-1] if m.ledger.stops else None
        if m.state != EXECUTE and stop and stop[1] is None and stop[5] is not None:
            root = stop[5]["root"]
        cause["root"] = {k: root[k] for k in ("machine", "state", "reason")}
        return cause

    # ------------------------------------------------------------------ time
    def advance(self, t: float) -> None:
        """Run every machine of the line to ``t``, event by event in time order across the machines (ties:
        machines in line order)."""
        if t <= self.clock and self._started:
            return
        ms = self.machines
        if not self._started:  # at t0: every machine but the first takes the material of its first part
            self._started = True
            for m in ms[1:]:
                m._feed(m._out)
        base = Machine.advance
        while True:
            when, who = INF, None
            for m in ms:
                w = m._next()[0]
                if w < when:
                    when, who = w, m
            if when > t:
                break
            who._out += base(who, when)
        for m in ms:
            m._out += base(m, t)
        self.clock = max(self.clock, t)

    def ledger(self) -> dict:
        """The line as a whole: output (good parts of the last machine), buffers."""
        now = self.clock
        return {"name": self.name, "machines": [m.spec.name for m in self.machines],
                "output": self.machines[-1].good, "buffers": [b.to_dict(now) for b in self.buffers]}


def bottleneck_bound(capacities: list[int]) -> int:
    """Parts that can be in the line after the first machine: every buffer full plus one part held per
    machine (in its cycle, or finished and waiting for room). The line's output and any machine's good
    count differ by no more than this plus the rejects downstream of it."""
    return sum(capacities) + len(capacities) + 1


def parse_capacities(text: str, machines: int) -> list[int]:
    """``--buffers 20`` (every buffer 20) or ``--buffers 20,10,5`` (one per buffer) -> capacities."""
    try:
        caps = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--buffers {text}: write buffer capacities in parts, e.g. 20 or 20,10") from None
    if len(caps) == 1:
        caps = caps * (machines - 1)
    if machines < 2:
        raise ValueError("--buffers needs at least two machines (--machines 2 or more)")
    if len(caps) != machines - 1 or min(caps) < 1:
        raise ValueError(f"--buffers {text}: {machines} machines need {machines - 1} buffer capacities of at least "
                         f"1 part (or one for all)")
    return caps


__all__ = ["Buffer", "Line", "LineMachine", "bottleneck_bound", "parse_capacities"]
