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
