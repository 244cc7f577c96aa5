"""Small helpers shared by tests (fixtures live in conftest.py)."""
import signal
import subprocess


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
