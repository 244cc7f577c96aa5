"""Small helpers shared by tests (fixtures live in conftest.py)."""
import asyncio
import signal
import subprocess
import time


def terminate(*procs: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop child processes as a user would (SIGTERM), and kill them if they do not stop in time."""
    for p in procs:
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_until(predicate, timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll ``predicate`` on the event loop until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


def start_machines(engine, machines, t0: float) -> list[int]:
    """Add simulated machines to a KpiEngine with their state and zero counters at t0; their engine ids."""
    import numpy as np

    from contract import CountsBatch, StateBatch

    ids = [engine.add_machine() for _ in machines]
    for i, m in zip(ids, machines):
        engine.add_state(i, StateBatch(np.array([t0]), np.array([m.state]), np.array([m.reason])))
        engine.add_counts(i, CountsBatch(np.array([t0]), np.array([0]), np.array([0]), m.spec.product,
                                         m.spec.ideal_cycle_s))
    return ids


def advance_machines(engine, ids, machines, t: float) -> None:
    """Run simulated machines to t and hand their state changes and counter readings to the engine
    (with a counter sample at t: an unchanged sample tells the engine the machine's "now")."""
    import numpy as np

    from contract import CountsBatch, StateBatch

    for i, m in zip(ids, machines):
        events = m.advance(t)
        st = [e for e in events if e[0] == "state"]
        if st:
            engine.add_state(i, StateBatch(np.array([e[1] for e in st]), np.array([e[2] for e in st]),
                                           np.array([e[3] for e in st])))
        c = [e for e in events if e[0] == "count"] + [("count", t, m.good, m.reject)]
        engine.add_counts(i, CountsBatch(np.array([e[1] for e in c]), np.array([e[2] for e in c]),
                                         np.array([e[3] for e in c]), m.spec.product, m.spec.ideal_cycle_s))


class KeepLines:
    """A gateway sink that keeps the lines it gets (the InfluxDB sinks have their own tests)."""

    def __init__(self):
        self.lines = []

    async def start(self):
        pass

    def accept(self, lines):
        self.lines += lines

    async def stop(self):
        pass
