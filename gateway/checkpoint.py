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

Nothing on disk can stop the next start (docs/RELIABILITY.md, State files): a
checkpoint carries a CRC-32 of its document and of every array, and its times
are checked to be plausible; one of another format version, one that cannot be
read, does not match its checksum or holds an implausible time is moved aside
(``<name>.corrupt-<time>``) with a warning saying why, and the gateway starts
without it. Journal records carry a CRC-32 each; damaged ones are skipped and
the journal is moved aside the same way (``replay``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from contract import MachineRef

from .engine import CALENDAR_AHEAD, ENGINE_ARRAYS as _ARRAYS, KpiEngine
from .oee import EXTERNAL, N_CAT, N_TOT
from .timeline import _ranges

log = logging.getLogger("fieldlab.gateway")

VERSION = 4  # 2: a CRC-32 of the document and every array (``crc32``); times checked on load
# 3: timeline rows stored compact (each machine's rows one after the other) instead of machines x capacity
# 4: a seventh time category, external (oee.EXTERNAL): ``p.pre`` and ``tl.base`` one column wider
READS = (2, 3, 4)  # a version-2 file is read (its rows compacted on load); 2 and 3 get a zero external column
ENGINE_ARRAYS = tuple(name for name, _, _ in _ARRAYS)
# the engine's arrays of times, with the value they hold before a machine has any (KpiEngine._grow)
ENGINE_TIMES = (("first_ts", np.nan), ("now_ts", np.nan), ("state_ts", -np.inf), ("count_ts", -np.inf))
# plausible Unix times in seconds, 2000-01-01 <= t < 2100-01-01 UTC: the contract's range for message times;
# anything else in a checkpoint (a time in milliseconds, say) would poison every later start
TS_MIN, TS_MAX = 946_684_800.0, 4_102_444_800.0
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
        arrays.update({f"{r}.{k}": a for k, a in getattr(tl, r).export().items()})
    doc = {"version": VERSION, "saved_at": time.time(), "n": engine.n, "capacity": engine.capacity,
           "calendar_span": list(engine._calendar_span) if engine._calendar_span else None,
           "machines": [[m.site, m.area, m.line, m.machine] for m in machines],
           "status": {str(i): s for i, s in status.items()}}
    return arrays, doc


def write(path: Path | str, arrays: dict, doc: dict) -> None:
    """Write atomically, with a CRC-32 of the document and every array (checked by ``read``)."""
    stored = {"meta": np.frombuffer(json.dumps(doc).encode(), np.uint8), **arrays}
    crc = np.array([checksum(stored)], np.uint32)
    # plain arrays only; read back with allow_pickle=False
    _write_atomically(Path(path), lambda f: np.savez(f, crc32=crc, **stored))


def checksum(arrays: dict) -> int:
    """CRC-32 of every array's name, dtype, shape and bytes, in name order."""
    crc = 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        crc = zlib.crc32(a, zlib.crc32(f"{name}:{a.dtype.str}:{a.shape}".encode(), crc))
    return crc


def _write_atomically(path: Path, fill) -> None:
    """``fill(file)`` into a temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a file's creation or rename in ``path`` survive a power cut."""
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: Path | str, engine: KpiEngine, machines: list[MachineRef], status: dict[int, str]) -> None:
    write(path, *capture(engine, machines, status))


def read(path: Path | str, engine: KpiEngine, extra: dict | None = None) -> tuple[list[MachineRef], dict[int, str]]:
    """Load a checkpoint into ``engine`` (a fresh one, with the site configuration): returns the machines
    (engine order) and statuses; ``extra`` (if given) gets ``forgotten``: {machine index: when it was forgotten}.
    Raises CheckpointError (engine untouched) if the file is not usable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = data.pop("meta")
        doc = json.loads(bytes(meta).decode())
    except Exception as e:
        raise CheckpointError(f"unreadable: {type(e).__name__}: {e}") from e
    version = doc.get("version") if isinstance(doc, dict) else None
    if version not in READS:
        raise CheckpointError(f"format version {version!r}, this gateway reads versions {READS}")
    stored, crc = data.pop("crc32", np.zeros(0, np.uint32)).tolist(), checksum({"meta": meta, **data})
    if stored != [crc]:
        raise CheckpointError(f"checksum mismatch: CRC-32 stored {stored}, of the content {crc}: the file was "
                              f"changed or damaged after it was written")
    try:
        n, cap = int(doc["n"]), int(doc["capacity"])
        machines = [MachineRef(*m) for m in doc["machines"]]
        status = {int(i): str(s) for i, s in doc["status"].items()}
        forgotten = {int(i): float(t) for i, t in doc.get("forgotten", {}).items()}
        span = doc["calendar_span"]
        span = None if span is None else (float(span[0]), float(span[1]))
        caps = {r: int(doc["caps"][r]) for r in ROWS} if version == 2 else None
        if not 0 <= n <= cap or cap < 1 or len(machines) != n or len(set(machines)) != n:
            raise ValueError(f"{n} machines, capacity {cap}, {len(machines)} listed")
        if any(not 0 <= i < n for i in status) or any(not 0 <= i < n for i in forgotten):
            raise ValueError("status or forgotten of an unknown machine")
        if version < 4:  # before the external category: starved/blocked time was booked as stopped or small stop
            _add_external_column(data)
        fresh = KpiEngine(engine.config, engine.windows, capacity=cap)
        for _ in range(n):
            fresh.add_machine()
        tl = fresh.timeline
        expect = {f"engine.{name}": getattr(fresh, name) for name in ENGINE_ARRAYS}
        expect.update({f"tl.{name}": getattr(tl, name) for name, _, _ in tl.PER_MACHINE})
        for r in ROWS:
            rows = getattr(tl, r)
            fill = data.get(f"{r}.fill")
            expect[f"{r}.fill"] = rows.fill
            if fill is None or fill.shape != rows.fill.shape or fill.dtype != rows.fill.dtype:
                continue  # reported below
            if (fill < 0).any() or (caps is not None and (fill >= caps[r]).any()):
                raise ValueError(f"{r}.fill out of range")
            for col, (shape, dtype, _) in rows.spec.items():
                if caps is not None:  # version 2: machines x capacity; compacted here
                    a = data.get(f"{r}.{col}")
                    if a is not None and a.shape == (n, caps[r], *shape):
                        data[f"{r}.{col}"] = a[np.repeat(np.arange(n), fill + 1), _ranges(np.zeros(n, np.int64), fill + 1)]
                expect[f"{r}.{col}"] = np.empty((int((fill + 1).sum()), *shape), dtype)
        missing = set(expect) - set(data)
        if missing:
            raise ValueError(f"missing arrays {sorted(missing)}")
        for k, ref in expect.items():
            if data[k].shape != ref.shape or data[k].dtype != ref.dtype:
                raise ValueError(f"{k}: shape {data[k].shape} {data[k].dtype}, expected {ref.shape} {ref.dtype}")
        cal = data["tl.cal"]
        if cal.ndim != 1 or cal.dtype != np.float64:
            raise ValueError("tl.cal: not a 1-D float64 array")
        for name, none in ENGINE_TIMES:
            _check_times(f"engine.{name}", data[f"engine.{name}"], TS_MIN, TS_MAX, none)
        # the cut of KpiEngine.prune (a margin before a day's start) never passes the machine's now: one that did
        # would make the engine drop everything of that machine as too late
        kept, now = data["tl.kept_from"], data["engine.now_ts"][: data["tl.kept_from"].size]
        _check_times("tl.kept_from", kept, TS_MIN - 2 * 86400.0, TS_MAX, -np.inf)
        if (kept > now).any():
            i = int(np.flatnonzero(kept > now)[0])
            raise CheckpointError(f"implausible time: tl.kept_from[{i}] = {float(kept[i])!r} is after the machine's "
                                  f"latest data ({float(now[i])!r}); such a checkpoint would poison the engine")
        if span is not None:  # laid out from a day before the first data to CALENDAR_AHEAD after the newest
            _check_times("calendar_span", np.array(span), TS_MIN - 86400.0, TS_MAX + CALENDAR_AHEAD)
            if not span[0] < span[1]:
                raise CheckpointError(f"calendar_span {span} ends before it starts")
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
        rows.load(data[f"{r}.fill"], {col: data[f"{r}.{col}"] for col in rows.spec})
    if extra is not None:
        extra["forgotten"] = forgotten
    return machines, status


def _add_external_column(data: dict) -> None:
    """A checkpoint of format 2 or 3 has six time categories: add external (oee.EXTERNAL, the seventh) as zero
    seconds to the pieces' prefix sums (``p.pre``) and the totals before the cut (``tl.base``, where it comes
    right after the time categories). Arrays of another shape are left as they are (and refused below)."""
    pre, base = data.get("p.pre"), data.get("tl.base")
    if pre is not None and pre.ndim in (2, 3) and pre.shape[-1] == N_CAT - 1:  # rows (3) or machines x rows (2)
        data["p.pre"] = np.concatenate([pre, np.zeros((*pre.shape[:-1], 1), pre.dtype)], axis=-1)
    if base is not None and base.ndim == 2 and base.shape[1] == N_TOT - 1:
        data["tl.base"] = np.insert(base, EXTERNAL, 0.0, axis=1)


def _check_times(name: str, a: np.ndarray, lo: float, hi: float, none: float | None = None) -> None:
    """CheckpointError unless every value of ``a`` is in [lo, hi) (plausible Unix seconds) or ``none`` (NaN,
    -inf: no time yet); a poisoned time would make the engine lay out a calendar of millennia, every start."""
    ok = (a >= lo) & (a < hi)
    if none is not None:
        ok |= np.isnan(a) if np.isnan(none) else (a == none)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise CheckpointError(f"implausible time: {name}[{i}] = {float(a.flat[i])!r} is not a Unix time in seconds "
                              f"from 2000-01-01 to 2100-01-01 (milliseconds?); such a checkpoint would poison the "
                              f"engine")


def load(path: Path | str, engine: KpiEngine, extra: dict | None = None) -> tuple[list[MachineRef], dict[int, str]] | None:
    """Like ``read``, for starting up: None if there is no checkpoint; a bad one is moved aside with a
    warning and None returned (start fresh). Never raises for the file's content."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read(path, engine, extra)
    except CheckpointError as e:
        log.warning("checkpoint %s not used (%s); %s; starting with empty KPIs", path, e, _move_aside(path))
        return None


def _move_aside(path: Path) -> str:
    """Rename a damaged state file to ``<name>.corrupt-<time>`` (kept for a look); says where it went."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, aside)
        return f"moved aside to {aside}"
    except OSError as e:
        return f"could not move it aside ({e})"


# ----------------------------------------------------------------------------- the journal
# Every message the gateway accepts is appended to a journal file before it is folded (one
# os.write, so it survives the process being killed) and fsynced in groups, every SYNC_S by a
# thread of the Journal, so a power cut loses at most what was accepted in the last SYNC_S
# (docs/RELIABILITY.md, State files; its cost: docs/PERFORMANCE.md, Journal durability).
# A checkpoint records the number of the last journal it covers; journals it covers are deleted
# once it is on disk. After a crash: load the checkpoint, then replay the journals after it.

SYNC_S = 0.5  # group fsync interval: ~2 fsyncs a second at most, none while idle (docs/PERFORMANCE.md)
JOURNAL_MAGIC = b"fieldlab journal 2\n"  # a journal file's first bytes (format 2: records with a CRC-32)
_MARK = b"\xabJR\x02"  # starts every record: after damage, reading goes on at the next intact one
_RECORD = struct.Struct(">4sIHI")  # mark, CRC-32 of the rest (from the lengths on), topic length, payload length
_LENGTHS = struct.Struct(">HI")


def journal_path(path: Path | str, n: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.journal-{n:08d}")


def journals(path: Path | str) -> list[tuple[int, Path]]:
    """The journal files of this checkpoint, oldest first (not the ones moved aside, nor temp files)."""
    path = Path(path)
    found = []
    for p in path.parent.glob(f"{path.name}.journal-*"):
        n = p.name[len(path.name) + len(".journal-"):]
        if re.fullmatch(r"[0-9]+", n):
            found.append((int(n), p))
    return sorted(found)


def record(topic: str, payload: bytes) -> bytes:
    body = topic.encode()
    body = _LENGTHS.pack(len(body), len(payload)) + body + payload
    return _MARK + struct.pack(">I", zlib.crc32(body)) + body


class Journal:
    """One journal file, appended to by one writer at a time (the gateway's ingest lock); a thread fsyncs
    what was appended every ``sync_s`` seconds (None: only at close), off the writer's path."""

    def __init__(self, path: Path | str, sync_s: float | None = SYNC_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(self._fd).st_size == 0:
            os.write(self._fd, JOURNAL_MAGIC)
        self.syncs = 0
        self._dirty = True  # the new file's header and directory entry
        self._closing = threading.Event()
        self._syncer = threading.Thread(target=self._sync_every, args=(sync_s,), daemon=True,
                                        name=f"journal-sync {self.path.name}")
        self._syncer.start()

    def append(self, topic: str, payload: bytes) -> None:
        if self._fd < 0:  # closed: never write into a descriptor number the process has reused since
            raise OSError(f"journal {self.path} is closed")
        os.write(self._fd, record(topic, payload))  # in the page cache: survives a kill, not a power cut yet
        self._dirty = True

    def sync(self) -> None:
        """fsync, if anything was appended since the last one (a write after the flag is cleared is covered
        by this fsync or sets the flag for the next)."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            os.fsync(self._fd)
            self.syncs += 1
        except OSError as e:
            self._dirty = True
            log.warning("journal not synced path=%s error=%s", self.path, e)

    def _sync_every(self, sync_s: float | None) -> None:
        try:  # the new file's name, on disk (it cannot be opened when file descriptors run out: go on without)
            _fsync_dir(self.path.parent)
        except OSError as e:
            log.warning("journal directory not synced path=%s error=%s", self.path.parent, e)
        while not self._closing.wait(sync_s):
            self.sync()

    def close(self) -> None:
        """Stop the thread, fsync what is left, close the file."""
        if self._fd < 0:
            return
        self._closing.set()
        self._syncer.join()
        self.sync()
        fd, self._fd = self._fd, -1
        os.close(fd)


def replay(p: Path) -> list[tuple[str, bytes]]:
    """(topic, payload) of every intact record of journal ``p``; never raises for the file's content.

    A damaged stretch (a CRC-32 mismatch, a record cut short by a crash, a topic that is not UTF-8) is
    skipped up to the next intact record; a file without this format's header is skipped whole. Then the
    file is moved aside (``<name>.corrupt-<time>``), the intact records are written back in its place (so
    they stay journaled until a checkpoint covers them) and one warning names the file, where the damage
    starts, what it is and what was lost."""
    p = Path(p)
    try:
        data = p.read_bytes()
    except OSError as e:
        log.warning("journal not replayed path=%s error=%s", p, e)
        return []
    if JOURNAL_MAGIC.startswith(data):  # empty, or killed while writing the header: nothing lost
        return []
    if not data.startswith(JOURNAL_MAGIC):
        records, lost = [], [(0, len(data), "not a journal of this format (one of an older version?)")]
    else:
        records, lost = _scan(data)
    if lost:
        where = _move_aside(p)
        kept = "no intact records"
        if records and where.startswith("moved"):
            try:
                _write_atomically(p, lambda f: f.write(JOURNAL_MAGIC + b"".join(record(*r) for r in records)))
                kept = f"the intact records kept in {p}"
            except OSError as e:
                kept = f"the intact records could not be kept ({e})"
        log.warning("journal damaged path=%s offset=%d reason=%s replayed=%d lost_bytes=%d lost_records=%d; "
                    "%s, %s", p, lost[0][0], json.dumps(lost[0][2]), len(records), sum(n for _, n, _ in lost),
                    sum(data.count(_MARK, i, i + n) for i, n, _ in lost), where, kept)
    return records


def _scan(data: bytes) -> tuple[list[tuple[str, bytes]], list[tuple[int, int, str]]]:
    """(intact records, damaged stretches as (offset, length, what the first record there lacks))."""
    records, lost, bad, i = [], [], None, len(JOURNAL_MAGIC)
    while i < len(data):
        got = _record_at(data, i)
        if isinstance(got, str):  # damaged: go on at the next record mark
            bad = bad or (i, got)
            j = data.find(_MARK, i + 1)
            i = len(data) if j < 0 else j
            continue
        if bad:
            lost.append((bad[0], i - bad[0], bad[1]))
            bad = None
        topic, payload, i = got
        records.append((topic, payload))
    if bad:
        lost.append((bad[0], len(data) - bad[0], bad[1]))
    return records, lost


def _record_at(data: bytes, i: int) -> tuple[str, bytes, int] | str:
    """(topic, payload, end) of the intact record at offset ``i``, or what is wrong with it."""
    if len(data) - i < _RECORD.size:
        return "record cut short"
    mark, crc, nt, npay = _RECORD.unpack_from(data, i)
    end = i + _RECORD.size + nt + npay
    if mark != _MARK:
        return "no record mark"
    if end > len(data):
        return "record cut short"
    if zlib.crc32(memoryview(data)[i + _RECORD.size - _LENGTHS.size: end]) != crc:
        return "CRC-32 mismatch"
    try:
        topic = data[i + _RECORD.size: i + _RECORD.size + nt].decode()
    except UnicodeDecodeError:
        return "topic not UTF-8"
    return topic, data[i + _RECORD.size + nt: end], end


def covered(path: Path | str) -> int:
    """The last journal the checkpoint at ``path`` includes (0: none, or no usable checkpoint)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(bytes(z["meta"]).decode()).get("journal", 0))
    except Exception:  # no checkpoint, or one that cannot be read: every journal is replayed
        return 0
