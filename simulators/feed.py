"""A simulated machine as an edge source: no hardware, no OPC UA server, no network.

For trying an edge agent (``source: {type: sim, machine: cnc-01}`` in its mapping file)
and for tests. It has the edge sources' interface (``start(batcher)`` / ``stop()``,
feeding ``batcher.record`` and ``batcher.value``) without importing the edge package:
the ``fieldlab`` command wires the two together. Timestamps are the machine's
simulated time, which starts at the wall-clock time of ``start``.
"""
from __future__ import annotations

import asyncio
import time

from contract.errors import ServiceError
from contract.tasks import cancel_and_wait

from .machine import DEMO_MACHINES, UNITS, Machine
from .opcua import SimClock

MACHINES = {m.name: m for m in DEMO_MACHINES}


def hand_over(batcher, events: list, t: float, values: dict, stats: dict) -> None:
    """A machine's events (state changes, counts) and its process values at ``t`` to an edge batcher."""
    for kind, ts, a, b in events:
        stats["events"] += 1
        if kind == "state":
            batcher.record("reason", ts, b)
            batcher.record("state", ts, a)
        else:
            batcher.record("reject", ts, b)
            batcher.record("good", ts, a)
    for name, value in values.items():
        batcher.value(t, name, value)


def initial(batcher, machine: Machine, t: float) -> None:
    """What a source tells its batcher first: units, product, ideal cycle, state and counters at ``t``."""
    batcher.units.update(UNITS)
    for role, value in (("product", machine.spec.product), ("ideal_cycle_s", machine.spec.ideal_cycle_s),
                        ("reason", machine.reason), ("state", machine.state), ("reject", machine.reject),
                        ("good", machine.good)):
        batcher.record(role, t, value)


class SimulationTap:
    """One machine of a running ``simulators.opcua.Simulation`` as an edge source (``fieldlab sim --publish``):
    every tick's events and process values go straight to the batcher, stamped with simulated time; no OPC UA
    in between. Start it before the simulation runs, so not one part is made unseen."""

    def __init__(self, server):
        self.server = server  # a simulators.opcua.MachineServer
        self.stats = {"events": 0}
        self._batcher = None

    async def start(self, batcher) -> None:
        m = self.server.machine
        initial(batcher, m, m.clock)
        self._batcher = batcher
        self.server.listeners.append(self._on_tick)

    def _on_tick(self, events: list, t: float, values: dict) -> None:
        hand_over(self._batcher, events, t, values, self.stats)

    async def stop(self) -> None:
        if self._on_tick in self.server.listeners:
            self.server.listeners.remove(self._on_tick)


class MachineFeed:
    def __init__(self, machine: str, seed: int = 1, speed: float = 1.0, tick_s: float = 0.1):
        if machine not in MACHINES:
            raise ServiceError(f"no simulated machine {machine!r}; choose one of {', '.join(MACHINES)}")
        self.spec, self.seed, self.tick_s = MACHINES[machine], seed, tick_s
        self.clock = SimClock(time.time(), speed)
        self.machine = Machine(self.spec, self.clock.t0, seed)
        self.stats = {"events": 0}
        self._task: asyncio.Task | None = None
        self._last_pv_t = self.clock.t0

    async def start(self, batcher) -> None:
        initial(batcher, self.machine, self.clock.t0)
        self._batcher = batcher
        self.clock.start()
        self._task = asyncio.create_task(self._run(batcher))

    def step(self, batcher, t: float) -> None:
        """Advance the machine to simulated time ``t`` and hand what happened to the batcher."""
        events = self.machine.advance(t)
        hand_over(batcher, events, t, self.machine.process_values(t - self._last_pv_t), self.stats)
        self._last_pv_t = t

    async def _run(self, batcher) -> None:
        while True:
            self.step(batcher, self.clock.now())
            await asyncio.sleep(self.tick_s)

    async def stop(self) -> None:
        """Stop the machine; its last events up to now are handed over first (the ledger matches)."""
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None
            self.step(self._batcher, self.clock.now())
