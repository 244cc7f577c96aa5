"""The gateway service: MQTT in, KPIs out (retained MQTT messages).

Every message on a machine topic is decoded straight into NumPy arrays; what
does not follow the contract is logged with its reason, counted, and parked on
the dead-letter topic, and never reaches a machine's state. Decoded batches are
folded for all machines together once per tick, then KPIs are published.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import threading
import time

import numpy as np

from contract import (
    BINARY_MAGIC, DEADLETTER_TOPIC, QOS, ROOT, ContractError, Kind, LineRef, MachineRef, decode, encode_kpi,
    parse_topic,
)
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.tasks import cancel_and_wait

from . import checkpoint, oee, storage
from .config import SiteConfig
from .oee import plain
from .engine import KpiEngine, state_name

log = logging.getLogger("fieldlab.gateway")

INGEST_KINDS = (Kind.STATE, Kind.COUNTS, Kind.TELEMETRY, Kind.STATUS)


def parse_scope(patterns: list[str]) -> list[str]:
    """Check site/area/line patterns (each level a name or +); ContractError naming the bad one."""
    out = []
    for pattern in patterns:
        parts = pattern.strip("/").split("/")
        if len(parts) != 3:
            raise ContractError(f"scope {pattern!r}: write site/area/line, with + for any, e.g. acme/hall-1/+")
        MachineRef(*[("x" if p == "+" else p) for p in parts], "x")  # the same name rules as machines
        out.append("/".join(parts))
    return out


class Gateway:
    def __init__(self, broker: BrokerUrl, site: str = "+", publish_s: float = 1.0, client_id: str | None = None,
                 config: SiteConfig | None = None, sinks: list | None = None, store_kpis_s: float = 10.0,
                 scope: list[str] | None = None, state_dir=None, checkpoint_s: float = 10.0):
        """``scope``: the part of the plant this gateway owns, as site/area/line patterns (``+`` = any), e.g.
        ["acme/hall-1/+"]; several gateways with disjoint scopes share one broker, each machine's state
        owned by exactly one of them. Without it: every machine of ``site``."""
        self.broker, self.site, self.publish_s = broker, site, publish_s
        self.scope = parse_scope(scope) if scope else [f"{site}/+/+"]
        # sinks (gateway/influx.py) get every decoded message and, every store_kpis_s, the KPIs per window
        self.sinks = list(sinks or [])
        self.store_kpis_s = store_kpis_s
        self._to_store: list = []
        self._kpis_stored_at = -float("inf")
        # stable per site: the broker keeps this gateway's session (its subscriptions and the QoS 1 messages
        # that arrive while it restarts or reconnects) and hands them over when it is back
        if client_id is None and scope:  # unambiguous for any set of patterns (names may contain dots)
            client_id = "fieldlab-gateway-" + hashlib.sha1("|".join(sorted(self.scope)).encode()).hexdigest()[:12]
        self.client_id = client_id or f"fieldlab-gateway-{'all' if site == '+' else site}"
        # restart safety (gateway/checkpoint.py): the engine's state on disk every checkpoint_s and at stop
        self.checkpoint_path = checkpoint.path_for(state_dir, self.client_id) if state_dir else None
        self.checkpoint_s, self._checkpointed_at = checkpoint_s, time.monotonic()
        self._checkpoint_lock, self._checkpoint_seq, self._checkpoint_written = threading.Lock(), 0, 0
        self._journal_fd: int | None = None  # accepted messages since the last checkpoint, for a crash
        self._journal_seq = 0
        self.engine = KpiEngine(config)
        self.machines: list[MachineRef] = []
        self._index: dict[MachineRef, int] = {}
        self.status: dict[int, str] = {}
        self.stats = {"messages": 0, "samples": 0, "dead_letters": 0, "kpi_published": 0}
        self.last_error: str | None = None
        self.last_message_at: float | None = None
        self.rows: list[dict] = []
        self.lines = LineIndex()  # machine -> line, for the line KPIs (docs/contract.md, kpi of a line)
        self.line_rows: list[dict] = []
        self.ticks = 0  # KPI computations so far: the HTTP service's live stream follows it
        self.tick_seconds = 0.0
        # Two locks, so that paho's network thread never waits for a KPI computation:
        # - _lock (ingest): the inbox of decoded messages, machine index, statuses, stats, journal. Held
        #   for a few microseconds per message, and by the tick only to take the inbox (a list swap).
        # - _state_lock: the engine (fold, snapshot, timelines, checkpoints). Held by the tick while it
        #   folds and computes; ingest never takes it. Order when both are needed: _state_lock, then _lock.
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._inbox: list = []  # (machine index, kind, decoded item) in arrival order, not yet folded
        self._client = None
        self._task: asyncio.Task | None = None
        self._pending: list = []

    # -- MQTT side (paho's network thread)
    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._ingest(msg.topic, msg.payload)
        except ContractError as e:
            self._dead_letter(msg.topic, msg.payload, str(e))
        except Exception as e:  # a bug of ours must not stop ingest (paho's thread would die with it)
            log.exception("failed to ingest topic=%s", msg.topic)
            self._dead_letter(msg.topic, msg.payload, f"internal error: {type(e).__name__}: {e}")

    def _ingest(self, topic: str, payload: bytes, journal: bool = True) -> None:
        """Decode and queue one message (paho's thread). Only the queueing holds the ingest lock; folding
        into the machines' state happens in the tick (``_take_inbox``), which never holds up this thread."""
        ref, kind = parse_topic(topic)  # (cached: a plant has a bounded set of topics)
        if kind not in INGEST_KINDS:
            return
        item = decode(kind, payload)
        if kind is Kind.TELEMETRY:
            samples = item.ts.size * len(item.signals)
        else:
            samples = 0 if kind is Kind.STATUS else item.ts.size
        new = False
        with self._lock:
            m = self._index.get(ref)
            if m is None:  # the engine learns of it when the tick folds (_fold_inbox)
                m = self._index[ref] = len(self.machines)
                self.machines.append(ref)
                new = True
            if journal and self._journal_fd is not None:  # on disk before it counts (gateway/checkpoint.py)
                os.write(self._journal_fd, checkpoint.record(topic, payload))
            if kind is Kind.STATUS:
                self.status[m] = item.status
            self._inbox.append((m, kind, item))
            self.stats["messages"] += 1
            self.stats["samples"] += samples
            self.last_message_at = time.time()  # wall clock: /metrics shows how long ago data came
        if new:
            log.info("new machine machine=%s", ref.path)

    def _take_inbox(self) -> tuple[list, int, dict]:
        """(messages not folded yet, machines known, statuses): a swap under the ingest lock."""
        with self._lock:
            items, self._inbox = self._inbox, []
            return items, len(self.machines), dict(self.status)

    def _fold_inbox(self) -> tuple[int, dict]:
        """Hand what arrived to the engine and fold it (with _state_lock held); (machines, statuses) as of then."""
        items, n, status = self._take_inbox()
        self._inbox_taken(items, n)
        return n, status

    def _dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        with self._lock:
            self.stats["dead_letters"] += 1
            self.last_error = reason
        log.warning("rejected message topic=%s reason=%s", topic, json.dumps(reason))
        body = {"topic": topic, "error": reason, "ts": time.time()}
        if payload[:4] == BINARY_MAGIC:  # binary telemetry (docs/contract.md) would be mangled as text
            body["payload_base64"] = base64.b64encode(payload[:1024]).decode()
        else:
            body["payload"] = payload[:1024].decode("utf-8", "replace")
        self._client.publish(DEADLETTER_TOPIC, json.dumps(body), qos=1)

    # -- lifecycle
    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()
        self.restore()  # before subscribing: redelivered messages meet the state they were folded into
        self._client = await asyncio.to_thread(
            connect, self.broker, self.client_id, on_message=self._on_message, persistent=True,
            subscriptions=[(f"{ROOT}/{s}/+/{k.value}", 1) for s in self.scope for k in INGEST_KINDS])
        self._task = asyncio.create_task(self._loop())
        log.info("gateway up broker=%s", self.broker)

    def restore(self) -> bool:
        """Load this gateway's checkpoint, if there is a usable one (a bad one is moved aside, with a warning),
        then replay the journals of what was accepted after it, and open a new journal."""
        if not self.checkpoint_path:
            return False
        restored = False
        with self._state_lock, self._lock:
            got = checkpoint.load(self.checkpoint_path, self.engine)
            if got is not None:
                self.machines, self.status = got
                self._index = {ref: i for i, ref in enumerate(self.machines)}
                restored = True
        done = checkpoint.covered(self.checkpoint_path) if restored else 0
        found = checkpoint.journals(self.checkpoint_path)
        replayed = 0
        for n, path in found:
            if n > done:
                for topic, payload in checkpoint.replay(path):
                    try:
                        self._ingest(topic, payload, journal=False)
                        replayed += 1
                    except Exception as e:  # it was accepted once; if it no longer is, say so and go on
                        log.warning("journal record not replayed topic=%s error=%s", topic, e)
        self._journal_seq = max([done] + [n for n, _ in found]) + 1
        self._open_journal()
        if restored or replayed:
            log.info("restored checkpoint path=%s machines=%d replayed=%d", self.checkpoint_path,
                     len(self.machines), replayed)
        return restored

    def _open_journal(self) -> None:
        path = checkpoint.journal_path(self.checkpoint_path, self._journal_seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _capture(self) -> tuple[int, dict, dict]:
        with self._state_lock:
            with self._lock:  # the inbox and the journal change together: a message is in exactly one of
                # (folded before this capture, journal after it)
                self._checkpointed_at = time.monotonic()
                self._checkpoint_seq += 1
                seq = self._checkpoint_seq
                rotated = self._journal_fd is not None
                if rotated:  # from here on, messages go to the next journal
                    os.close(self._journal_fd)
                    self._journal_seq += 1
                    self._open_journal()
                journal = self._journal_seq - 1
                items, self._inbox = self._inbox, []
                n, status = len(self.machines), dict(self.status)
            self._inbox_taken(items, n)
            arrays, doc = checkpoint.capture(self.engine, self.machines[:n], status)
            if rotated:
                doc["journal"] = journal
            return seq, arrays, doc

    def _inbox_taken(self, items: list, n: int) -> None:
        """Fold messages taken from the inbox into the engine (with _state_lock held)."""
        engine = self.engine
        while engine.n < n:
            engine.add_machine()
        for m, kind, item in items:
            if kind is Kind.STATE:
                engine.add_state(m, item)
            elif kind is Kind.COUNTS:
                engine.add_counts(m, item)
            elif kind is Kind.TELEMETRY:
                engine.add_telemetry(m, item)
        engine.fold()
        if self.sinks:
            self._to_store += items

    def checkpoint(self, captured: tuple[int, dict, dict] | None = None) -> None:
        """Write the state (captured now, or by ``_capture``) to the checkpoint file; a newer one is never
        overwritten by an older one. A failure is logged, and the gateway goes on."""
        seq, arrays, doc = captured or self._capture()
        with self._checkpoint_lock:
            if seq <= self._checkpoint_written:
                return
            try:
                checkpoint.write(self.checkpoint_path, arrays, doc)
                self._checkpoint_written = seq
            except OSError as e:
                log.warning("checkpoint not written path=%s error=%s", self.checkpoint_path, e)
                return
            for n, path in checkpoint.journals(self.checkpoint_path):  # now covered by the checkpoint
                if n <= doc.get("journal", 0):
                    path.unlink(missing_ok=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.publish_s)
            try:
                self.tick()
            except Exception:  # keep publishing next tick; the log says what went wrong
                log.exception("KPI tick failed")
            if self.checkpoint_path and time.monotonic() - self._checkpointed_at >= self.checkpoint_s:
                try:
                    await asyncio.to_thread(self.checkpoint, self._capture())
                except Exception:  # KPIs go on without it; the next try is checkpoint_s later
                    log.exception("checkpoint failed")

    def tick(self) -> list[dict]:
        """Fold what arrived, compute KPIs for all machines, publish them retained."""
        started = time.perf_counter()
        with self._state_lock:
            n, status = self._fold_inbox()
            snap = self.engine.snapshot()
            machines = self.machines[:n]
            to_store, self._to_store = self._to_store, []
            now = self.engine.now_ts[: len(machines)].copy()
            # lines: each line's windows end at its latest machine's time; its machines' totals in those
            # windows are summed (vectorised over a machine -> line index), then derived
            group = self.lines.update(machines)
            line_refs, line_names = list(self.lines.refs), [list(n) for n in self.lines.names]
            line_snap = self.engine.line_snapshot(group, len(line_refs))
        if self.sinks:
            self._store(to_store, machines, snap, now, line_refs, line_snap)
        self._pending = [i for i in self._pending if not i.is_published()]
        rows = []
        for i, (ref, row) in enumerate(zip(machines, kpi_rows(snap))):
            row["status"] = status.get(i)
            self._publish_kpi(ref, row)
            rows.append({"machine": ref, **row})
        self.rows = rows
        line_rows = []
        for line, row in zip(line_refs, line_kpi_rows(line_snap, line_names)):  # after the machines': one per line
            self._publish_kpi(line, row)
            line_rows.append({"line": line, **row})
        self.line_rows = line_rows
        self.ticks += 1
        self.tick_seconds = time.perf_counter() - started
        return rows

    def timeline(self, machine: MachineRef, start: float | None = None, end: float | None = None,
                 window: str = "last_1h") -> dict | None:
        """A machine's state pieces in a window of its latest KPIs (or between start and end)."""
        with self._state_lock:
            i = self._index.get(machine)
            if i is None or i >= self.engine.n:
                return None
            return self._timeline(i, self.row_of(machine), start, end, window)

    def row_of(self, machine: MachineRef) -> dict | None:
        """The machine's row of the last tick (``rows`` follow the machines' order), None before its first."""
        i, rows = self._index.get(machine), self.rows
        return rows[i] if i is not None and i < len(rows) else None

    def timelines(self, window: str = "last_1h") -> dict[MachineRef, dict]:
        """Every machine's state pieces in a window of its latest KPIs, in one go (the dashboard's view)."""
        with self._state_lock:
            return {row["machine"]: self._timeline(self._index[row["machine"]], row, None, None, window)
                    for row in self.rows}

    def _timeline(self, i: int, row: dict | None, start, end, window: str) -> dict:
        w = (row or {}).get("windows", {}).get(window) if window != "since_start" else (row or {}).get("window")
        a = start if start is not None else (w or {}).get("start")
        b = end if end is not None else (w or {}).get("end")
        if a is None or b is None:
            return {"start": a, "end": b, "pieces": []}
        s, e, c, r = self.engine.timeline.pieces(i, a, b)
        return {"start": a, "end": b, "pieces": [
            {"start": float(x), "end": float(y), "category": oee.CATEGORIES[int(k)], "reason": int(z)}
            for x, y, k, z in zip(s, e, c, r)]}

    def _store(self, items: list, machines: list[MachineRef] | None = None, snap: dict | None = None, now=None,
               line_refs: list[LineRef] | None = None, line_snap: dict | None = None) -> None:
        """Hand the new data (and, with a snapshot, every store_kpis_s the KPIs) to the sinks as line protocol."""
        out, refs = [], self.machines  # items carry the machine's index (only ever appended to)
        for m, kind, item in items:
            out += storage.batch_lines(refs[m], kind, item)
        wall = time.monotonic()
        if snap is not None and (wall - self._kpis_stored_at >= self.store_kpis_s or self._task is None):
            self._kpis_stored_at = wall
            out += storage.kpi_lines(machines, snap, now, line_refs, line_snap)
        for sink in self.sinks:
            sink.accept(out)

    def _publish_kpi(self, ref: MachineRef | LineRef, row: dict) -> None:
        info = self._client.publish(ref.topic(Kind.KPI), encode_kpi(row), qos=QOS[Kind.KPI], retain=True)
        self._pending.append(info)
        self.stats["kpi_published"] += 1

    async def drain(self, quiet_s: float = 0.3, timeout: float = 5.0) -> None:
        """Wait until no message has arrived for ``quiet_s`` (or ``timeout``): used on shutdown."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            seen = self.stats["messages"] + self.stats["dead_letters"]
            if seen == last:
                return
            last = seen
            await asyncio.sleep(quiet_s)

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None
        if self._client is None:
            return
        self.tick()
        await asyncio.to_thread(wait_published, list(self._pending), 10.0)
        self._pending = []
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        if self.sinks:  # what came in after the last tick still goes to storage
            with self._state_lock:
                self._fold_inbox()
                rest, self._to_store = self._to_store, []
            self._store(rest)
        if self.checkpoint_path:  # after the last message came in: it holds everything acknowledged
            self.checkpoint(self._capture())
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        for sink in self.sinks:
            await sink.stop()


MAIN_FIELDS = ("planned_s", "run_s", "operating_s", "not_scheduled_s", "breakdown_s", "stopped_s", "setup_s",
               "small_stop_s", "good", "reject", "total", "startup_reject", "ideal_s", "parts_without_ideal",
               "availability", "performance", "quality", "oee", "oee_simple", "utilisation", "teep",
               "failures", "mtbf_s", "mttr_s")
WINDOW_FIELDS = ("planned_s", "run_s", "good", "reject", "availability", "performance", "quality", "oee")
LOSSES = ("unplanned_stops", "planned_stops", "small_stops", "slow_cycles", "production_rejects", "startup_rejects")


def _kpi_fields(snap: dict, i: int) -> dict:
    """Row ``i`` of a snapshot: the since-start KPIs, the six big losses and the other windows in brief."""
    main = snap["since_start"]
    row = {k: plain(main[k][i], k in oee.COUNT_FIELDS) for k in MAIN_FIELDS}
    row["losses"] = {name: {"s": plain(main[f"loss_{name}_s"][i]), "pp": plain(main[f"loss_{name}_pp"][i])}
                     for name in LOSSES}
    row["windows"] = {name: {"start": plain(w["start"][i]), "end": plain(w["end"][i]),
                             **{k: plain(w[k][i], k in oee.COUNT_FIELDS) for k in WINDOW_FIELDS}}
                      for name, w in snap.items() if name != "since_start"}
    return row


def kpi_row(snap: dict, i: int) -> dict:
    """The KPI message of machine ``i`` (docs/contract.md, kind kpi): the since-start window at the
    top level, the six big losses, the other windows in brief, and the stop reasons of the shift."""
    main = snap["since_start"]
    code = int(main["state"][i])
    row = {"ts": plain(main["end"][i]),
           "window": {"name": "since_start", "start": plain(main["start"][i]), "end": plain(main["end"][i])},
           "state": code if code >= 0 else None, "state_name": state_name(int(main["model"][i]), code)}
    row.update(_kpi_fields(snap, i))
    row["windows"]["shift"]["stop_reasons"] = snap["shift"]["stop_reasons"][i][:10]
    return row


def line_kpi_row(line_snap: dict, j: int, machines: list[str]) -> dict:
    """The KPI message of line ``j`` (docs/contract.md, kpi of a line) from engine.group_snapshot(): the
    same shape as a machine's, without state and stop reasons, with the names and number of its machines."""
    main = line_snap["since_start"]
    row = {"ts": plain(main["end"][j]),
           "window": {"name": "since_start", "start": plain(main["start"][j]), "end": plain(main["end"][j])},
           "machines": list(machines), "n_machines": len(machines)}
    row.update(_kpi_fields(line_snap, j))
    return row


def _plain_list(a, whole: bool = False) -> list:
    """``[plain(x, whole) for x in a]`` with one conversion for the whole array (the tick's per-value cost)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return a.tolist()
    finite = np.isfinite(a)
    out = (np.where(finite, np.rint(a), 0).astype(np.int64) if whole else a).tolist()
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            out[i] = None
    return out


def _fields_of_all(snap: dict, n: int) -> list[dict]:
    """``_kpi_fields(snap, i)`` for i in range(n), each array converted once."""
    main = snap["since_start"]
    mains = [(k, _plain_list(main[k], k in oee.COUNT_FIELDS)) for k in MAIN_FIELDS]
    losses = [(name, _plain_list(main[f"loss_{name}_s"]), _plain_list(main[f"loss_{name}_pp"])) for name in LOSSES]
    windows = [(name, _plain_list(w["start"]), _plain_list(w["end"]),
                [(k, _plain_list(w[k], k in oee.COUNT_FIELDS)) for k in WINDOW_FIELDS])
               for name, w in snap.items() if name != "since_start"]
    return [{**{k: v[i] for k, v in mains},
             "losses": {name: {"s": ls[i], "pp": lp[i]} for name, ls, lp in losses},
             "windows": {name: {"start": ws[i], "end": we[i], **{k: v[i] for k, v in cols}}
                         for name, ws, we, cols in windows}}
            for i in range(n)]


def kpi_rows(snap: dict) -> list[dict]:
    """``[kpi_row(snap, i) for every machine]``, converting each KPI array once instead of value by value."""
    main = snap["since_start"]
    n = len(main["end"])
    start, end = _plain_list(main["start"]), _plain_list(main["end"])
    codes, models = main["state"].tolist(), main["model"].tolist()
    rows = []
    for i, fields in enumerate(_fields_of_all(snap, n)):
        code = codes[i]
        row = {"ts": end[i], "window": {"name": "since_start", "start": start[i], "end": end[i]},
               "state": code if code >= 0 else None, "state_name": state_name(models[i], code)}
        row.update(fields)
        row["windows"]["shift"]["stop_reasons"] = snap["shift"]["stop_reasons"][i][:10]
        rows.append(row)
    return rows


def line_kpi_rows(line_snap: dict, names: list[list[str]]) -> list[dict]:
    """``[line_kpi_row(line_snap, j, names[j]) for every line]``, each KPI array converted once."""
    main = line_snap["since_start"]
    start, end = _plain_list(main["start"]), _plain_list(main["end"])
    rows = []
    for j, fields in enumerate(_fields_of_all(line_snap, len(names))):
        row = {"ts": end[j], "window": {"name": "since_start", "start": start[j], "end": end[j]},
               "machines": list(names[j]), "n_machines": len(names[j])}
        row.update(fields)
        rows.append(row)
    return rows


class LineIndex:
    """Machine -> line index for the line KPIs, extended only when machines appear (the gateway never
    forgets one, so an offline machine still counts for its line)."""

    def __init__(self) -> None:
        self.refs: list[LineRef] = []
        self.names: list[list[str]] = []  # machine names per line, in the order they appeared
        self._index: dict[LineRef, int] = {}
        self._group = np.zeros(0, np.int64)

    def update(self, machines: list[MachineRef]) -> np.ndarray:
        """Per machine, the index of its line in ``refs``."""
        n = self._group.size
        if len(machines) > n:
            new = []
            for ref in machines[n:]:
                line = LineRef.of(ref)
                j = self._index.get(line)
                if j is None:
                    j = self._index[line] = len(self.refs)
                    self.refs.append(line)
                    self.names.append([])
                self.names[j].append(ref.machine)
                new.append(j)
            self._group = np.concatenate([self._group, np.array(new, np.int64)])
        return self._group[: len(machines)]
