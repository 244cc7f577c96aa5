"""Small helpers shared by tests (fixtures live in conftest.py)."""
import asyncio
import signal
import subprocess
import time

from fieldlab.demo import advance_machines, start_machines  # noqa: F401 (the tests' helpers too)


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


def schema_name(topic: str) -> str | None:
    """The contract/schemas file that describes a message on ``topic`` (docs/contract.md, Topics), None if none."""
    parts = topic.split("/")
    if parts[:2] != ["fieldlab", "v1"]:
        return None
    if topic == "fieldlab/v1/_sys/deadletter":
        return "dead-letter.json"
    if len(parts) == 6 and parts[2:4] == ["_sys", "gateway"] and parts[5] == "status":
        return "gateway-status.json"
    if len(parts) == 8 and parts[2:4] == ["_sys", "sim"] and parts[7] == "machines":
        return "sim-machines.json"  # a simulator's machines (docs/contract.md, simulator machines)
    if len(parts) == 6 and parts[2:4] == ["_sys", "sim"] and parts[5] in ("scenario", "cmd"):
        return f"{parts[5]}.json"  # a simulation's scenario message, the start command (docs/contract.md)
    return f"{parts[6]}.json" if len(parts) == 7 and not parts[2].startswith("_") else None


def validate_all(messages) -> dict[str, int]:
    """Validate every (topic, payload, retained) against its schema by topic; binary telemetry (no JSON, no
    schema) must decode. Fails listing what does not validate; returns how many messages each schema checked."""
    import json
    from collections import Counter
    from pathlib import Path

    import jsonschema

    import contract

    folder = Path(contract.__file__).parent / "schemas"
    validators, seen, bad = {}, Counter(), []
    for topic, payload, _ in messages:
        name = schema_name(topic)
        if name is None:
            bad.append(f"{topic}: no schema for this topic")
            continue
        if name == "telemetry.json" and payload[:4] == contract.BINARY_MAGIC:
            contract.decode(contract.Kind.TELEMETRY, payload)
            seen["telemetry (binary)"] += 1
            continue
        if name not in validators:
            validators[name] = jsonschema.Draft202012Validator(json.loads((folder / name).read_text()))
        errors = list(validators[name].iter_errors(json.loads(payload)))
        if errors:
            bad.append(f"{topic} ({name}): {errors[0].message} at {list(errors[0].absolute_path)}: {payload[:200]!r}")
        seen[name] += 1
    assert not bad, f"{len(bad)} of {len(messages)} messages do not validate:\n" + "\n".join(bad[:10])
    return dict(seen)
