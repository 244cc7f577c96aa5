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
        m, t0 = self.machine, self.clock.t0
        batcher.units.update(UNITS)
        for role, value in (("product", self.spec.product), ("ideal_cycle_s", self.spec.ideal_cycle_s),
                            ("reason", m.reason), ("state", m.state), ("reject", m.reject), ("good", m.good)):
            batcher.record(role, t0, value)
        self._batcher = batcher
        self.clock.start()
        self._task = asyncio.create_task(self._run(batcher))

    def step(self, batcher, t: float) -> None:
        """Advance the machine to simulated time ``t`` and hand what happened to the batcher."""
        for kind, ts, a, b in self.machine.advance(t):
            self.stats["events"] += 1
            if kind == "state":
                batcher.record("reason", ts, b)
                batcher.record("state", ts, a)
            else:
                batcher.record("reject", ts, b)
                batcher.record("good", ts, a)
        for name, value in self.machine.process_values(t - self._last_pv_t).items():
            batcher.value(t, name, value)
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
