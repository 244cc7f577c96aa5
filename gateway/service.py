"""The gateway service: MQTT in, KPIs out (retained MQTT messages).

Every message on a machine topic is decoded straight into NumPy arrays; what
does not follow the contract is logged with its reason, counted, and parked on
the dead-letter topic, and never reaches a machine's state. Decoded batches are
folded for all machines together once per tick, then KPIs are published.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid

import numpy as np

from contract import (
    BINARY_MAGIC, DEADLETTER_TOPIC, QOS, ROOT, ContractError, Kind, LineRef, MachineRef, decode, encode_kpi,
    encode_command, encode_operator, encode_status, parse_topic,
)
from contract.errors import ServiceError
from contract.lockfile import hold
from contract.mqtt import BrokerUrl, connect, wait_published
from contract.topics import gateway_status_topic
from contract.tasks import cancel_and_wait

from . import checkpoint, oee, storage
from .config import SiteConfig
from .oee import plain
from .engine import KpiEngine, state_name
from .worker import DaemonWorker

log = logging.getLogger("fieldlab.gateway")

INGEST_KINDS = (Kind.STATE, Kind.COUNTS, Kind.TELEMETRY, Kind.STATUS, Kind.OPERATOR)
FORGET = "forget"  # an inbox entry: the machine starts afresh (Gateway._command)
MAX_MACHINES = 1000  # default cap on machines per gateway (docs/RELIABILITY.md: memory and tick time per machine)
MQTT_GRACE_S = 30.0  # /healthz fails once MQTT has been down this long
STATUS_S = 10.0  # the gateway's retained status is repeated this often (a heartbeat with its health)
STOP_TICK_S = 15.0  # at stop, the last computation gets this long; a hung one is given up (gateway/worker.py)
SINK_DROP_WINDOW_S = 60.0  # /healthz fails while a sink has dropped lines within this time
UNKNOWN_LOG_S = 60.0  # an ignored message on an unknown topic is logged at most this often
_KINDS = frozenset(k.value for k in Kind)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_client_id(scope: list[str], site: str = "+", host: str | None = None) -> str:
    """The gateway's MQTT client id: stable across restarts (the broker keeps its session) and unique per
    scope and host, so two gateways never take each other's session by default (docs/RELIABILITY.md)."""
    if len(scope) == 1 and scope[0] == f"{site}/+/+":
        what = "all" if site == "+" else site
    else:  # unambiguous for any set of patterns (names may contain dots)
        what = hashlib.sha1("|".join(sorted(scope)).encode()).hexdigest()[:12]
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", host if host is not None else socket.gethostname())[:40] or "host"
    return f"fieldlab-gateway-{what}-{host}"


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
                 scope: list[str] | None = None, state_dir=None, checkpoint_s: float = 10.0,
                 max_machines: int = MAX_MACHINES, mqtt_grace_s: float = MQTT_GRACE_S, status_s: float = STATUS_S):
        """``scope``: the part of the plant this gateway owns, as site/area/line patterns (``+`` = any), e.g.
        ["acme/hall-1/+"]; several gateways with disjoint scopes share one broker, each machine's state
        owned by exactly one of them. Without it: every machine of ``site``.

        ``max_machines``: messages of machines beyond this many are dead-lettered (one producer cannot
        exhaust the gateway with made-up machine ids). ``mqtt_grace_s``: how long MQTT may be down before
        ``health()`` fails. ``status_s``: how often the retained gateway status is repeated."""
        self.broker, self.site, self.publish_s = broker, site, publish_s
        self.scope = parse_scope(scope) if scope else [f"{site}/+/+"]
        # sinks (gateway/influx.py) get every decoded message and, every store_kpis_s, the KPIs per window
        self.sinks = list(sinks or [])
        self.store_kpis_s = store_kpis_s
        self._to_store: list = []
        self._kpis_stored_at = -float("inf")
        # stable per scope and host: the broker keeps this gateway's session (its subscriptions and the QoS 1
        # messages that arrive while it restarts or reconnects) and hands them over when it is back
        self.client_id = client_id or default_client_id(self.scope, site)
        if not _CLIENT_ID.match(self.client_id):
            raise ServiceError(f"client id {self.client_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
                                f"starting with a letter or digit")
        self.status_topic = gateway_status_topic(self.client_id)
        self.instance = uuid.uuid4().hex[:12]  # this process: tells a second gateway with our client id apart
        self.max_machines, self.mqtt_grace_s, self.status_s = max_machines, mqtt_grace_s, status_s
        self.started_at = time.time()
        self.ready = False  # state restored and subscribed: /healthz says "starting" until then
        self._ready_mono: float | None = None
        self.last_tick_at: float | None = None  # monotonic time of the last tick that completed
        self._disconnected_since: float | None = None
        self._sink_dropped: dict[int, tuple[int, float]] = {}  # sink index -> (dropped count, when it last grew)
        self._status_at = -float("inf")
        # restart safety (gateway/checkpoint.py): the engine's state on disk every checkpoint_s and at stop
        self.checkpoint_path = checkpoint.path_for(state_dir, self.client_id) if state_dir else None
        self.checkpoint_s, self._checkpointed_at = checkpoint_s, time.monotonic()
        self._checkpoint_lock, self._checkpoint_seq, self._checkpoint_written = threading.Lock(), 0, 0
        self._state_hold = None  # the lock on the state file (contract/lockfile.py)
        self._journal: checkpoint.Journal | None = None  # accepted messages since the last checkpoint, for a crash
        self._journal_seq = 0
        self.engine = KpiEngine(config)
        self.machines: list[MachineRef] = []
        self._index: dict[MachineRef, int] = {}
        self.status: dict[int, str] = {}
        self.forgotten: dict[int, float] = {}  # machine index -> when it was forgotten (hidden until it sends again)
        self.stats = {"messages": 0, "samples": 0, "dead_letters": 0, "kpi_published": 0, "mqtt_connects": 0,
                      "client_id_collisions": 0, "tick_failures": 0, "unknown_topics": 0, "sparkplug_errors": 0, "sparkplug_rebirths": 0}
        # Sparkplug B groups of the site file (gateway/sparkplug.py): their devices become machines
        self.sparkplug = None
        if config is not None and getattr(config, "sparkplug", None) is not None:
            from .sparkplug import SparkplugIn
            self.sparkplug = SparkplugIn(config.sparkplug, self._ingest, lambda t, p: self._client.publish(t, p),
                                         self.stats)
        self._unknown_logged_at = -float("inf")  # when an unknown topic was last logged (_unknown_topic)
        self.last_error: str | None = None
        self.last_message_at: float | None = None
        self.rows: list[dict] = []
        self._rows_by_machine: dict[MachineRef, dict] = {}
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
        self._tick_lock = threading.Lock()
        self._inbox: list = []  # (machine index, kind, decoded item) in arrival order, not yet folded
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._status_task: asyncio.Task | None = None
        # one thread of its own for the computation and the checkpoint: HTTP requests that wait for the
        # machines' state (the default pool) cannot delay them, and they never run two at a time
        self._worker = DaemonWorker("fieldlab-kpi")
        self.stop_tick_s = STOP_TICK_S
        self._pending: list = []

    # -- MQTT side (paho's network thread)
    def _on_message(self, client, userdata, msg) -> None:
        try:
            if self.sparkplug is not None and msg.topic.startswith("spBv1.0/"):
                self.sparkplug.on_message(msg.topic, msg.payload)  # -> self._ingest, as contract messages
            else:
                self._ingest(msg.topic, msg.payload)
        except ContractError as e:
            self._dead_letter(msg.topic, msg.payload, str(e), client)
        except Exception as e:  # a bug of ours must not stop ingest (paho's thread would die with it)
            log.exception("failed to ingest topic=%s", msg.topic)
            self._dead_letter(msg.topic, msg.payload, f"internal error: {type(e).__name__}: {e}", client)

    def _ingest(self, topic: str, payload: bytes, journal: bool = True) -> None:
        """Decode and queue one message (paho's thread). Only the queueing holds the ingest lock; folding
        into the machines' state happens in the tick (``_take_inbox``), which never holds up this thread.
        ``journal=False``: a replay of the journal at start (statuses in it are already stamped)."""
        try:
            ref, kind = parse_topic(topic)  # (cached: a plant has a bounded set of topics)
        except ContractError:
            if self._unknown_topic(topic):
                return
            raise  # a machine topic with a bad level: a dead letter
        if kind is Kind.CMD:
            self._command(ref, topic, payload, journal)
            return
        if kind not in INGEST_KINDS:
            return
        item = decode(kind, payload)
        if kind is Kind.STATUS and journal:
            # stamped on arrival: a last will carries the time its agent connected, not when it died, and
            # third-party wills often say 0 (docs/contract.md, status); the sender's time is kept beside it.
            # Journaled as stamped, so a replay after a crash keeps the time it arrived (and stores the same
            # point again, not a new one at the restart)
            item.info["sent_ts"], item.ts = item.ts, time.time()
            payload = encode_status(item.ts, item.status, **item.info)
        if kind is Kind.OPERATOR:
            self._check_entry(ref, item)
        if kind is Kind.TELEMETRY:
            samples = item.ts.size * len(item.signals)
        else:
            samples = 0 if kind in (Kind.STATUS, Kind.OPERATOR) else item.ts.size
        new = False
        with self._lock:
            m = self._index.get(ref)
            if m is None:  # the engine learns of it when the tick folds (_fold_inbox)
                if len(self.machines) >= self.max_machines:
                    raise ContractError(f"machine {ref.path} refused: this gateway already has {self.max_machines} "
                                        f"machines, its limit (--max-machines); give another gateway a scope "
                                        f"for more")
                m = self._index[ref] = len(self.machines)
                self.machines.append(ref)
                new = True
            if journal and self._journal is not None:  # on disk before it counts (gateway/checkpoint.py)
                self._journal.append(topic, payload)
            if kind is Kind.STATUS:
                self.status[m] = item.status
            if m in self.forgotten and (kind is not Kind.STATUS or item.info.get("sent_ts", 0) > self.forgotten[m]):
                del self.forgotten[m]  # it sends again: a new start (a status older than the forget is not news)
                log.info("forgotten machine is back machine=%s", ref.path)
            self._inbox.append((m, kind, item))
            self.stats["messages"] += 1
            self.stats["samples"] += samples
            self.last_message_at = time.time()  # wall clock: /metrics shows how long ago data came
        if new:
            log.info("new machine machine=%s", ref.path)

    def _command(self, ref: MachineRef, topic: str, payload: bytes, journal: bool) -> None:
        """A command on a machine's cmd topic. The gateway acts on ``forget`` (``fieldlab gateway forget``): the
        machine's history and KPIs are dropped and it leaves the KPIs, the page and the API until it sends
        again. Other commands are for the machine's simulator or edge agent."""
        try:
            cmd = decode(Kind.CMD, payload)
        except ContractError:  # commands are for the machine's simulator or agent, which judge them: not a dead letter
            return
        if cmd.cmd != "forget":
            return
        at = cmd.args.get("at") if not journal else time.time()  # replayed: the time it first arrived
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            at = time.time()
        with self._lock:
            m = self._index.get(ref)
            if m is None:
                log.info("forget: no such machine here machine=%s", ref.path)
                return
            if journal and self._journal is not None:
                self._journal.append(topic, encode_command("forget", **{**cmd.args, "at": at}))
            self.forgotten[m] = float(at)
            self._inbox.append((m, FORGET, None))
            self.stats["messages"] += 1
        log.info("forgot machine=%s by=%s", ref.path, cmd.args.get("by", "?"))
        client = self._client
        if client is not None and journal:  # its retained KPIs go too (an empty retained message clears them)
            client.publish(ref.topic(Kind.KPI), b"", qos=1, retain=True)

    def _check_entry(self, ref: MachineRef, entry) -> None:
        """An operator entry (a stop's reason, rejects counted by hand) names a machine of this gateway and a
        reason its site knows; else ContractError (a dead letter). The engine checks the rest when it folds."""
        if ref not in self._index:
            raise ContractError(f"operator: no machine {ref.path} at this gateway (it has sent no data)")
        if entry.reason is not None and entry.reason not in self.engine.known_reasons():
            raise ContractError(f"operator.reason: {entry.reason} is not a reason code of this site; use one of "
                                f"{', '.join(map(str, sorted(self.engine.known_reasons())))} or name it in the "
                                f"site file's reasons:")

    def _unknown_topic(self, topic: str) -> bool:
        """Whether ``topic`` is no machine topic at all (outside fieldlab/v1/, other levels, or a kind the contract
        does not have): then it is counted and logged at most once a minute, not dead-lettered (which would loop on
        the dead-letter topic itself). Such messages come through an old subscription of the persistent session or a
        bridge (docs/contract.md, Dead letters)."""
        parts = topic.split("/")
        if topic.startswith(ROOT + "/") and len(parts) == 7 and parts[6] in _KINDS:
            return False
        now = time.monotonic()
        with self._lock:
            self.stats["unknown_topics"] += 1
            n, quiet = self.stats["unknown_topics"], now - self._unknown_logged_at >= UNKNOWN_LOG_S
            if quiet:
                self._unknown_logged_at = now
        if quiet:
            log.warning("ignored a message on a topic the gateway does not understand topic=%s unknown_topics=%d "
                        "(expected %s/<site>/<area>/<line>/<machine>/<kind>; logged at most once a minute)",
                        json.dumps(topic), n, ROOT)
        return True

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

    def _dead_letter(self, topic: str, payload: bytes, reason: str, client=None) -> None:
        """Count, log and republish a rejected message. ``client``: the one that received it (during connect(),
        a retained or queued message arrives before ``self._client`` is set)."""
        with self._lock:
            self.stats["dead_letters"] += 1
            self.last_error = reason
        log.warning("rejected message topic=%s reason=%s", topic, json.dumps(reason))
        body = {"v": 1, "topic": topic, "error": reason, "ts": time.time()}
        if payload[:4] == BINARY_MAGIC or topic.startswith("spBv1.0/"):  # binary (telemetry, Sparkplug's
            # protobuf) would be mangled as text
            body["payload_base64"] = base64.b64encode(payload[:1024]).decode()
        else:
            body["payload"] = payload[:1024].decode("utf-8", "replace")
        (client or self._client).publish(DEADLETTER_TOPIC, json.dumps(body), qos=1)

    # -- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sink in self.sinks:
            await sink.start()
        self.restore()  # before subscribing: redelivered messages meet the state they were folded into
        self._client = await asyncio.to_thread(
            connect, self.broker, self.client_id, on_message=self._on_message, persistent=True,
            will=(self.status_topic, self._status_payload("offline")), on_connect=self._on_connect,
            subscriptions=[(f"{ROOT}/{s}/+/{k.value}", 1) for s in self.scope for k in (*INGEST_KINDS, Kind.CMD)]
            + (self.sparkplug.subscriptions() if self.sparkplug else []))
        self.ready, self._ready_mono = True, time.monotonic()
        self._publish_status(force=True)  # the one sent on connecting said "starting"
        self._task = asyncio.create_task(self._run())
        self._status_task = asyncio.create_task(self._heartbeat())
        log.info("gateway up broker=%s client_id=%s instance=%s", self.broker, self.client_id, self.instance)

    # -- health: /healthz, the retained status and its last will (docs/RELIABILITY.md)
    def _status_payload(self, status: str, health: dict | None = None) -> bytes:
        """The gateway's retained status. The will (``offline``) carries no time: it is sent when we die, and
        a time fixed at connect would lie; receivers stamp it on arrival."""
        doc = {"v": 1, "status": status, "client_id": self.client_id, "instance": self.instance,
               "host": socket.gethostname(), "pid": os.getpid(), "started": round(self.started_at, 3),
               "scope": self.scope}
        if health is not None:
            doc.update(ts=round(time.time(), 3), ok=health["status"] == "ok", reasons=health["reasons"])
        return json.dumps(doc, separators=(",", ":")).encode()

    def _on_connect(self, client) -> None:  # paho's thread, after every (re)connect
        client.on_disconnect = self._on_disconnect  # (set here: before connect() returns, no drop goes unseen)
        self.stats["mqtt_connects"] += 1
        self.stats["client_id_collisions"] = client.fieldlab_collisions  # (contract.mqtt counts them)
        self._disconnected_since = None
        self._publish_status(client, force=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # paho's thread
        if self._disconnected_since is None:
            self._disconnected_since = time.monotonic()

    def _publish_status(self, client=None, force: bool = False) -> None:
        now = time.monotonic()
        client = client or self._client
        if client is None or not client.is_connected() or not (force or now - self._status_at >= self.status_s):
            return  # (while disconnected paho would queue them, and send stale ones after the reconnect)
        self._status_at = now
        client.publish(self.status_topic, self._status_payload("online", self.health()), qos=1, retain=True)

    def health(self) -> dict:
        """{"status": "ok" | "failing", "reasons": [...], ...}: fails while starting, when the last KPI
        computation is older than a few intervals, when MQTT has been down longer than ``mqtt_grace_s``, when
        a sink dropped data in the last minute, or while another process uses our client id."""
        now = time.monotonic()
        reasons = []
        client = self._client
        connected = client is not None and client.is_connected()
        stale_s = 3 * self.publish_s + 2.0
        tick_age = None if self.last_tick_at is None else now - self.last_tick_at
        if not self.ready:
            reasons.append("starting: restoring state and subscribing")
        elif (tick_age if tick_age is not None else now - self._ready_mono) > stale_s:
            reasons.append(f"KPIs are stale: the last computation finished "
                           f"{'never' if tick_age is None else f'{tick_age:.0f} s ago'} (expected every "
                           f"{self.publish_s:g} s; {self.stats['tick_failures']} failed)")
        if self._disconnected_since is not None and now - self._disconnected_since > self.mqtt_grace_s:
            why = getattr(client, "fieldlab_last_error", None)
            reasons.append(f"MQTT disconnected for {now - self._disconnected_since:.0f} s from {self.broker}"
                           + (f": {why}" if why else ""))
        for i, sink in enumerate(self.sinks):
            dropped = getattr(sink, "stats", {}).get("dropped", 0)
            seen, at = self._sink_dropped.get(i, (0, -float("inf")))
            if dropped > seen:
                seen, at = dropped, now
                self._sink_dropped[i] = (seen, at)
            if now - at < SINK_DROP_WINDOW_S:
                reasons.append(f"sink {sink} dropped data in the last {SINK_DROP_WINDOW_S:g} s "
                               f"({seen} lines in all): its backlog is full")
        if client is not None and client.fieldlab_collision and now - client.fieldlab_collision_at < 60.0:
            reasons.append(client.fieldlab_collision + " (--client-id, or --scope for a share of the plant)")
        return {"status": "failing" if reasons else "ok", "reasons": reasons, "client_id": self.client_id,
                "instance": self.instance, "uptime_s": round(time.time() - self.started_at, 3),
                "last_tick_age_s": None if tick_age is None else round(tick_age, 3), "mqtt_connected": connected,
                "machines": len(self.machines), "ticks": self.ticks}


    def restore(self) -> bool:
        """Load this gateway's checkpoint, if there is a usable one (a bad one is moved aside, with a warning),
        then replay the journals of what was accepted after it, and open a new journal."""
        if not self.checkpoint_path:
            return False
        if self._state_hold is None:  # one process per state file (two would corrupt it)
            self._state_hold = hold(self.checkpoint_path, "the gateway's state file", "stop the other gateway, or "
                                    "give this one its own --client-id (or --scope) or --state-dir")
        restored = False
        with self._state_lock, self._lock:
            extra: dict = {}
            got = checkpoint.load(self.checkpoint_path, self.engine, extra)
            if got is not None:
                self.machines, self.status = got
                self.forgotten = extra.get("forgotten", {})
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

    def _release_state(self) -> None:
        """Close the journal and let go of the state file's lock (at stop, or after a failed start)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._state_hold is not None:
            self._state_hold.release()
            self._state_hold = None

    def _open_journal(self) -> None:
        self._journal = checkpoint.Journal(checkpoint.journal_path(self.checkpoint_path, self._journal_seq))

    def _capture(self) -> tuple[int, dict, dict]:
        with self._state_lock:
            with self._lock:  # the inbox and the journal change together: a message is in exactly one of
                # (folded before this capture, journal after it)
                self._checkpointed_at = time.monotonic()
                self._checkpoint_seq += 1
                seq = self._checkpoint_seq
                rotated = self._journal is not None
                old = self._journal
                if rotated:  # from here on, messages go to the next journal (opened first: if that fails, for
                    self._journal_seq += 1  # want of file descriptors say, the old one stays in use)
                    try:
                        self._open_journal()
                    except OSError:
                        self._journal_seq, self._journal = self._journal_seq - 1, old
                        raise
                journal = self._journal_seq - 1
                items, self._inbox = self._inbox, []
                n, status, forgotten = len(self.machines), dict(self.status), dict(self.forgotten)
            if rotated:  # a thread join and an fsync (on an SD card: long): not while paho's thread waits to
                old.close()  # queue a message; nothing writes to the old journal any more
            self._inbox_taken(items, n)
            arrays, doc = checkpoint.capture(self.engine, self.machines[:n], status)
            if rotated:
                doc["journal"] = journal
            doc["forgotten"] = {str(i): t for i, t in forgotten.items()}
            return seq, arrays, doc

    def _inbox_taken(self, items: list, n: int) -> None:
        """Fold messages taken from the inbox into the engine (with _state_lock held)."""
        engine = self.engine
        while engine.n < n:
            engine.add_machine()
        for m, kind, item in items:
            if kind is FORGET:
                engine.forget(m)
            elif kind is Kind.STATE:
                engine.add_state(m, item)
            elif kind is Kind.COUNTS:
                engine.add_counts(m, item)
            elif kind is Kind.TELEMETRY:
                engine.add_telemetry(m, item)
            elif kind is Kind.OPERATOR:
                engine.add_operator(m, item)
        engine.fold()
        for m, entry, why in engine.refused:  # a stop that is not there (any more), too many rejects ...
            self._refuse_entry(m, entry, why)
        applied, engine.refused, engine.applied = engine.applied, [], []
        if self.sinks:  # operator entries only as applied, with the pieces they classified (storage.batch_lines)
            self._to_store += [it for it in items if it[1] is not FORGET and it[1] is not Kind.OPERATOR]
            self._to_store += [(m, Kind.OPERATOR, (entry, starts)) for m, entry, starts in applied]

    def _refuse_entry(self, m: int, entry, why: str) -> None:
        """An operator entry the engine could not apply: logged, counted and dead-lettered like a bad message
        (only logged while the journal is replayed at start, before MQTT is up)."""
        ref = self.machines[m]
        topic, payload = ref.topic(Kind.OPERATOR), encode_operator(entry.ts, entry.by, entry.reason, entry.reject,
                                                                  entry.at)
        if self._client is None:
            log.warning("operator entry not applied machine=%s reason=%s", ref.path, json.dumps(why))
            return
        self._dead_letter(topic, payload, f"operator: {why}")

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

    async def _heartbeat(self) -> None:
        """The retained status every status_s, on its own: a computation that hangs shows in it as failing."""
        while True:
            await asyncio.sleep(self.status_s)
            self._publish_status()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.publish_s)
            try:  # off the event loop: /healthz and the page answer however long a computation takes
                await asyncio.get_running_loop().run_in_executor(self._worker, self.tick)
            except Exception:  # keep publishing next tick; the log says what went wrong, /healthz too
                self.stats["tick_failures"] += 1
                log.exception("KPI tick failed")
            if self.checkpoint_path and time.monotonic() - self._checkpointed_at >= self.checkpoint_s:
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._worker, lambda: self.checkpoint(self._capture()))  # not on the loop: it folds, copies
                except Exception:  # KPIs go on without it; the next try is checkpoint_s later
                    log.exception("checkpoint failed")

    def tick(self) -> list[dict]:
        """Fold what arrived, compute KPIs for all machines, publish them retained. One at a time: the loop's
        runs in a worker thread, and stop() (or a test) may call one while it is still running."""
        with self._tick_lock:
            return self._tick()

    def _tick(self) -> list[dict]:
        started, wall = time.perf_counter(), time.time()
        with self._state_lock:
            n, status = self._fold_inbox()
            self.engine.prune()  # history no live window needs (cheap: the engine decides when there is any)
            snap = self.engine.snapshot()
            machines = self.machines[:n]
            to_store, self._to_store = self._to_store, []
            now = self.engine.now_ts[: len(machines)].copy()
            # lines: each line's windows end at its latest machine's time; its machines' totals in those
            # windows are summed (vectorised over a machine -> line index), then derived
            group = self.lines.update(machines)
            line_refs, line_names = list(self.lines.refs), [list(n) for n in self.lines.names]
            line_snap = self.engine.line_snapshot(group, len(line_refs))
            buffers = [[] for _ in line_refs]  # each line's input buffers (for /api/lines and the line view)
            for m, (ts, level, cap) in sorted(self.engine.buffers.items()):
                if m < len(machines):
                    buffers[group[m]].append({"machine": machines[m].machine, "level": level, "capacity": cap,
                                              "ts": ts})
        if self.sinks:
            try:
                self._store(to_store, machines, snap, now, line_refs, line_snap, line_names)
            except Exception:  # storage is a sink: KPIs go on without it (its counters say what was lost)
                log.exception("handing data to the sinks failed")
        # KPIs are retained: only the newest matter. While the broker is away they are not queued (paho would
        # keep every tick's in memory); the first tick after the reconnect publishes the current ones.
        client = self._client
        publish = client is not None and client.is_connected()
        self._pending = []
        rows = []
        with self._lock:  # paho's thread adds to it
            forgotten = set(self.forgotten)
        for i, (ref, row) in enumerate(zip(machines, kpi_rows(snap))):
            if i in forgotten:
                continue
            row["status"] = status.get(i)
            row["tick_ts"] = wall
            if publish and row["ts"] is not None:  # a machine heard of only by its status has no KPIs yet
                self._publish_kpi(ref, row)
            rows.append({"machine": ref, **row})
        self.rows, self._rows_by_machine = rows, {r["machine"]: r for r in rows}
        line_rows = []
        for line, row in zip(line_refs, line_kpi_rows(line_snap, line_names)):  # after the machines': one per line
            row["tick_ts"] = wall
            if publish and row["ts"] is not None:
                self._publish_kpi(line, row)
            line_rows.append({"line": line, **row, "buffers": buffers[len(line_rows)]})  # not in the KPI message
        self.line_rows = line_rows
        self.ticks += 1
        self.tick_seconds = time.perf_counter() - started
        self.last_tick_at = time.monotonic()
        return rows

    def timeline(self, machine: MachineRef, start: float | None = None, end: float | None = None,
                 window: str = "last_1h") -> dict | None:
        """A machine's state pieces in a window of its latest KPIs (or between start and end)."""
        with self._engine_for_reading():
            i = self._index.get(machine)
            if i is None or i >= self.engine.n or i in self.forgotten:
                return None
            return self._timeline(i, self.row_of(machine), start, end, window)

    def row_of(self, machine: MachineRef) -> dict | None:
        """The machine's row of the last tick, None before its first (or while it is forgotten)."""
        return self._rows_by_machine.get(machine)

    def timelines(self, window: str = "last_1h") -> dict[MachineRef, dict]:
        """Every machine's state pieces in a window of its latest KPIs, in one go (the dashboard's view)."""
        with self._engine_for_reading():
            return {row["machine"]: self._timeline(self._index[row["machine"]], row, None, None, window)
                    for row in self.rows}

    def stops(self, machine: MachineRef, min_s: float | None = None) -> list[dict] | None:
        """The machine's stops in the current shift that have no reason yet and last at least ``min_s`` (never
        less than the micro-stop threshold), oldest first (the operator terminal's list); None: no such machine."""
        with self._engine_for_reading():
            i, row = self._index.get(machine), self.row_of(machine)
            shift = (row or {}).get("windows", {}).get("shift") or {}
            if i is None or i >= self.engine.n or shift.get("start") is None:
                return None
            return self.engine.stops(i, shift["start"], shift["end"], min_s)

    @contextlib.contextmanager
    def _engine_for_reading(self, timeout: float = 2.0):
        """The engine's lock for a reader (the HTTP API), waiting at most ``timeout``: a computation that hangs
        must not hang every page that asks for a timeline too. ServiceError (HTTP 503) if it is not free."""
        if not self._state_lock.acquire(timeout=timeout):
            raise ServiceError(f"the KPI computation has held the machines' state for over {timeout:g} s; "
                               f"try again shortly (see /healthz)")
        try:
            yield
        finally:
            self._state_lock.release()

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
               line_refs: list[LineRef] | None = None, line_snap: dict | None = None,
               line_names: list[list[str]] | None = None) -> None:
        """Hand the new data (and, with a snapshot, every store_kpis_s the KPIs) to the sinks as line protocol."""
        out, refs = [], self.machines  # items carry the machine's index (only ever appended to)
        for m, kind, item in items:
            out += storage.batch_lines(refs[m], kind, item)
        wall = time.monotonic()
        if snap is not None and (wall - self._kpis_stored_at >= self.store_kpis_s or self._task is None):
            self._kpis_stored_at = wall
            out += storage.kpi_lines(machines, snap, now, line_refs, line_snap, line_names)
        for sink in self.sinks:  # a sink takes lines on the event loop's thread; the tick runs in a worker
            if self._loop is not None and not _on_loop(self._loop):
                self._loop.call_soon_threadsafe(sink.accept, out)
            else:
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
        for task in (self._task, self._status_task):
            if task:
                await cancel_and_wait(task)
        self._task = self._status_task = None
        if self._client is None:
            self._release_state()
            return
        hung = False
        try:  # after a computation the cancelled loop may have left running, in the same worker
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._worker, self.tick),
                                   self.stop_tick_s)
        except TimeoutError:
            hung = True
            log.error("the KPI computation has not finished in %.0f s: stopping without the last KPIs and "
                      "without a checkpoint (the journal holds what arrived since the last one)", self.stop_tick_s)
        except Exception:  # the last KPIs are lost, not the state: the checkpoint below still holds it
            self.stats["tick_failures"] += 1
            log.exception("KPI tick failed")
        if self._client.is_connected():  # the same "offline" the will would say, without waiting for it
            self._pending.append(self._client.publish(self.status_topic, self._status_payload("offline"),
                                                      qos=1, retain=True))
        await asyncio.to_thread(wait_published, list(self._pending), 10.0)
        self._pending = []
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        if self.sinks and not hung:  # what came in after the last tick still goes to storage
            with self._state_lock:
                self._fold_inbox()
                rest, self._to_store = self._to_store, []
            self._store(rest)
        if self.checkpoint_path and not hung:  # after the last message came in: it holds everything acknowledged
            self.checkpoint(self._capture())
        self._release_state()
        for sink in self.sinks:
            await sink.stop()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # a worker thread
        return False


MAIN_FIELDS = ("planned_s", "run_s", "operating_s", "not_scheduled_s", "breakdown_s", "stopped_s", "setup_s",
               "small_stop_s", "external_s", "good", "reject", "total", "startup_reject", "ideal_s", "parts_without_ideal",
               "availability", "performance", "quality", "oee", "oee_simple", "utilisation", "teep",
               "failures", "mtbf_s", "mttr_s")
WINDOW_FIELDS = ("planned_s", "run_s", "good", "reject", "availability", "performance", "quality", "oee")
LOSSES = ("unplanned_stops", "external", "planned_stops", "small_stops", "slow_cycles", "production_rejects",
          "startup_rejects")  # the six big losses, and starved/blocked time (external) apart from the machine's own


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
    same shape as a machine's, without state and stop reasons, with the names and number of its machines and
    its bottleneck (oee.bottleneck: a machine's name, or None)."""
    main = line_snap["since_start"]
    b = int(main["bottleneck"][j])
    row = {"ts": plain(main["end"][j]),
           "window": {"name": "since_start", "start": plain(main["start"][j]), "end": plain(main["end"][j])},
           "machines": list(machines), "n_machines": len(machines), "bottleneck": machines[b] if b >= 0 else None}
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
    bottleneck = main["bottleneck"].tolist()
    for j, fields in enumerate(_fields_of_all(line_snap, len(names))):
        b = bottleneck[j]
        row = {"ts": end[j], "window": {"name": "since_start", "start": start[j], "end": end[j]},
               "machines": list(names[j]), "n_machines": len(names[j]),
               "bottleneck": names[j][b] if 0 <= b < len(names[j]) else None}
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
