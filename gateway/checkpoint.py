"""The gateway's state on disk, so a restart (even after kill -9) continues the KPIs where they were.

One file per gateway (named after its MQTT client id) holds the KpiEngine (its
NumPy arrays: timeline rows, prefix sums, per-machine state, timestamps) and a
small JSON document (format version, sizes, machine list in engine order,
statuses). It is an ``.npz`` of plain arrays, read with ``allow_pickle=False``:
a checkpoint cannot run code. Writing is atomic: a temporary file in
the same directory, fsync, ``os.replace``, fsync of the directory.

Replays after a restart do not count twice: the per-machine "already folded up
to" marks (``state_ts``/``state_code``, ``count_ts``, and the timeline's last
counter values) are part of the checkpoint, so QoS 1 redeliveries of messages
folded before it are dropped by ``KpiEngine.fold`` as they are without a restart.

A file of another format version, or one that cannot be read, is moved aside
(``<name>.corrupt-<time>``) with a warning, and the gateway starts fresh.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from contract import MachineRef

from .engine import KpiEngine

log = logging.getLogger("fieldlab.gateway")

VERSION = 1
ENGINE_ARRAYS = ("first_ts", "now_ts", "state_ts", "state_code", "state_model", "count_ts")
ROWS = ("p", "c", "f", "u")  # the timeline's per-machine row logs


class CheckpointError(Exception):
    """The file is not a usable checkpoint of this version."""


def path_for(state_dir: Path | str, client_id: str) -> Path:
    """The checkpoint file of the gateway with this MQTT client id."""
    return Path(state_dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', client_id)}.checkpoint.npz"


def capture(engine: KpiEngine, machines: list[MachineRef], status: dict[int, str]) -> tuple[dict, dict]:
    """Copies of everything the checkpoint holds: (arrays, JSON document). Call with the gateway's lock held;
    what is pending is folded first, so no loose batch is left out (folding earlier changes no KPI)."""
    engine.fold()
    tl = engine.timeline
    arrays = {f"engine.{name}": getattr(engine, name).copy() for name in ENGINE_ARRAYS}
    arrays.update({f"tl.{name}": getattr(tl, name).copy() for name, _, _ in tl.PER_MACHINE})
    arrays["tl.cal"] = tl.cal.copy()
    for r in ROWS:
        rows = getattr(tl, r)
        arrays[f"{r}.fill"] = rows.fill.copy()
        arrays.update({f"{r}.{col}": getattr(rows, col).copy() for col in rows.spec})
    doc = {"version": VERSION, "saved_at": time.time(), "n": engine.n, "capacity": engine.capacity,
           "calendar_span": list(engine._calendar_span) if engine._calendar_span else None,
           "caps": {r: getattr(tl, r).cap for r in ROWS},
           "machines": [[m.site, m.area, m.line, m.machine] for m in machines],
           "status": {str(i): s for i, s in status.items()}}
    return arrays, doc


def write(path: Path | str, arrays: dict, doc: dict) -> None:
    """Write atomically: temp file in the same directory, fsync, rename over the old one, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=meta, **arrays)  # plain arrays only; read back with allow_pickle=False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: Path | str, engine: KpiEngine, machines: list[MachineRef], status: dict[int, str]) -> None:
    write(path, *capture(engine, machines, status))


def read(path: Path | str, engine: KpiEngine) -> tuple[list[MachineRef], dict[int, str]]:
    """Load a checkpoint into ``engine`` (a fresh one, with the site configuration): returns the machines
    (engine order) and statuses. Raises CheckpointError (engine untouched) if the file is not usable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        doc = json.loads(bytes(data.pop("meta")).decode())
    except Exception as e:
        raise CheckpointError(f"unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise CheckpointError(f"format version {doc.get('version') if isinstance(doc, dict) else None!r}, "
                              f"this gateway reads version {VERSION}")
    try:
        n, cap = int(doc["n"]), int(doc["capacity"])
        machines = [MachineRef(*m) for m in doc["machines"]]
        status = {int(i): str(s) for i, s in doc["status"].items()}
        span = doc["calendar_span"]
        span = None if span is None else (float(span[0]), float(span[1]))
        caps = {r: int(doc["caps"][r]) for r in ROWS}
        if not 0 <= n <= cap or cap < 1 or len(machines) != n or len(set(machines)) != n:
            raise ValueError(f"{n} machines, capacity {cap}, {len(machines)} listed")
        if any(not 0 <= i < n for i in status):
            raise ValueError("status of an unknown machine")
        fresh = KpiEngine(engine.config, engine.windows, capacity=cap)
        for _ in range(n):
            fresh.add_machine()
        tl = fresh.timeline
        expect = {f"engine.{name}": getattr(fresh, name) for name in ENGINE_ARRAYS}
        expect.update({f"tl.{name}": getattr(tl, name) for name, _, _ in tl.PER_MACHINE})
        for r in ROWS:
            rows = getattr(tl, r)
            expect[f"{r}.fill"] = rows.fill
            for col, (shape, dtype, _) in rows.spec.items():
                expect[f"{r}.{col}"] = np.empty((n, caps[r], *shape), dtype)
        missing = set(expect) - set(data)
        if missing:
            raise ValueError(f"missing arrays {sorted(missing)}")
        for k, ref in expect.items():
            if data[k].shape != ref.shape or data[k].dtype != ref.dtype:
                raise ValueError(f"{k}: shape {data[k].shape} {data[k].dtype}, expected {ref.shape} {ref.dtype}")
        cal = data["tl.cal"]
        if cal.ndim != 1 or cal.dtype != np.float64:
            raise ValueError("tl.cal: not a 1-D float64 array")
        for r in ROWS:
            fill = data[f"{r}.fill"]
            if (fill < 0).any() or (fill >= caps[r]).any():
                raise ValueError(f"{r}.fill out of range")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"inconsistent: {type(e).__name__}: {e}") from e
    # all checked: fill the engine in place (the gateway and its HTTP endpoint keep their reference)
    for name in ENGINE_ARRAYS:
        setattr(engine, name, data[f"engine.{name}"])
    engine.n, engine.capacity, engine._calendar_span, engine._pending = n, cap, span, []
    engine.timeline = tl
    for name, _, _ in tl.PER_MACHINE:
        setattr(tl, name, data[f"tl.{name}"])
    tl.cal = cal
    for r in ROWS:
        rows = getattr(tl, r)
        rows.cap, rows.fill = caps[r], data[f"{r}.fill"]
        for col in rows.spec:
            setattr(rows, col, data[f"{r}.{col}"])
    return machines, status


def load(path: Path | str, engine: KpiEngine) -> tuple[list[MachineRef], dict[int, str]] | None:
    """Like ``read``, for starting up: None if there is no checkpoint; a bad one is moved aside with a
    warning and None returned (start fresh). Never raises for the file's content."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read(path, engine)
    except CheckpointError as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(path, aside)
            where = f"moved aside to {aside}"
        except OSError as move:
            where = f"could not move it aside ({move})"
        log.warning("checkpoint %s not used (%s); %s; starting with empty KPIs", path, e, where)
        return None


# ----------------------------------------------------------------------------- the journal
# Every message the gateway accepts is appended to a journal file before it is folded (one
# os.write, so it survives the process being killed; an fsync per message would not pay off).
# A checkpoint records the number of the last journal it covers; journals it covers are deleted
# once it is on disk. After a crash: load the checkpoint, then replay the journals after it.

_RECORD = struct.Struct(">HI")  # topic length, payload length


def journal_path(path: Path | str, n: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.journal-{n:08d}")


def journals(path: Path | str) -> list[tuple[int, Path]]:
    """The journal files of this checkpoint, oldest first."""
    path = Path(path)
    found = []
    for p in path.parent.glob(f"{path.name}.journal-*"):
        try:
            found.append((int(p.name.rsplit("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(found)


def record(topic: str, payload: bytes) -> bytes:
    t = topic.encode()
    return _RECORD.pack(len(t), len(payload)) + t + payload


def replay(p: Path):
    """(topic, payload) of each complete record; a record cut short by a crash ends the file."""
    data = p.read_bytes()
    i = 0
    while i + _RECORD.size <= len(data):
        nt, npay = _RECORD.unpack_from(data, i)
        j = i + _RECORD.size + nt + npay
        if j > len(data):
            break
        yield data[i + _RECORD.size: i + _RECORD.size + nt].decode(), data[i + _RECORD.size + nt: j]
        i = j


def covered(path: Path | str) -> int:
    """The last journal the checkpoint at ``path`` includes (0: none, or no usable checkpoint)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(bytes(z["meta"]).decode()).get("journal", 0))
    except Exception:  # no checkpoint, or one that cannot be read: every journal is replayed
        return 0
