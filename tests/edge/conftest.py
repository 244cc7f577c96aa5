"""Fixtures of the edge tests."""
import pytest

from fieldlab.broker import free_port
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation


@pytest.fixture
async def sim():
    """The filler (2 s per bottle) behind its own asyncua server, at 600x speed; its clock starts with sim.run()."""
    clock = SimClock(1_800_000_000.0, speed=600.0)
    s = Simulation([Machine(DEMO_MACHINES[2], clock.t0, seed=2)], clock, base_port=free_port(), tick_s=0.05)
    await s.start()
    yield s
    await s.stop()
