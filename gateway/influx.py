"""InfluxDB sink: line protocol to InfluxDB 1.x's HTTP ``/write`` (also 2.x and 3.x in compatibility mode).

A sink accepts lines (from gateway/storage.py) and never blocks the gateway: they go into a
bounded buffer in memory; a writer task posts them in batches (``batch_lines``) and removes a
batch only after the database answered 204. If the database is unreachable or answers 5xx,
the batch is kept and retried with exponential back-off (0.5 s doubling up to 30 s), so a
database restart within the buffer's bound loses nothing. Beyond ``max_lines`` the oldest
lines are dropped and counted (``stats["dropped"]``). Lines the database refuses as invalid
(HTTP 400, e.g. a field that changed type) are not retried: counted in ``stats["rejected"]``
and logged with the database's reason.

Plain urllib in a worker thread: the 1.x write API is one POST, no client library needed.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import logging
import time
import urllib.error
import urllib.parse
import urllib.request

from .lineproto import PRECISION

log = logging.getLogger("fieldlab.gateway.influx")


class InfluxV1Sink:
    def __init__(self, url: str, database: str = "fieldlab", *, username: str | None = None,
                 password: str | None = None, retention_policy: str | None = None, batch_lines: int = 5000,
                 max_lines: int = 1_000_000, timeout_s: float = 10.0, create_database: bool = True,
                 max_backoff_s: float = 30.0):
        self.url, self.database = url.rstrip("/"), database
        self.batch_lines, self.max_lines, self.timeout_s = batch_lines, max_lines, timeout_s
        self.create_database, self.max_backoff_s = create_database, max_backoff_s
        params = {"db": database, "precision": PRECISION, **({"rp": retention_policy} if retention_policy else {})}
        self._write_url = f"{self.url}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._buffer: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warned_at = -float("inf")
        self.stats = {"written": 0, "dropped": 0, "rejected": 0, "retries": 0, "last_error": None,
                      "last_rejection": None, "write_seconds": 0.0}

    def __str__(self) -> str:
        return f"InfluxDB {self.url} database {self.database}"

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    def accept(self, new_lines: list[str]) -> None:
        """Queue lines for writing (the event loop's thread); the oldest go beyond ``max_lines``."""
        if not new_lines:
            return
        self._buffer.extend(new_lines)
        over = len(self._buffer) - self.max_lines
        if over > 0:
            for _ in range(over):
                self._buffer.popleft()
            self.stats["dropped"] += over
            if time.monotonic() - self._warned_at > 10.0:  # one line per 10 s, not one per tick
                self._warned_at = time.monotonic()
                log.warning("InfluxDB buffer full, oldest lines dropped sink=%s dropped_total=%d", self,
                            self.stats["dropped"])
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="influx-writer")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Write what is buffered (up to ``drain_s``), then stop; what is left is counted as dropped."""
        deadline = time.monotonic() + drain_s
        while self._buffer and time.monotonic() < deadline and self._task and not self._task.done():
            self._wake.set()
            await asyncio.sleep(0.05)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._buffer:
            self.stats["dropped"] += len(self._buffer)
            log.warning("stopping with lines not written sink=%s lines=%d", self, len(self._buffer))
            self._buffer.clear()

    async def _run(self) -> None:
        backoff = 0.5
        if self.create_database:
            await self._create_database()
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
            n = min(self.batch_lines, len(self._buffer))
            batch = [self._buffer[i] for i in range(n)]
            dropped_before = self.stats["dropped"]
            outcome = await asyncio.to_thread(self._post, batch)
            # accept() appends on the right and, when full, drops on the left: the oldest lines, which are
            # this batch's first. Those are gone from the buffer already.
            gone = min(n, self.stats["dropped"] - dropped_before)
            if outcome == "retry":
                self.stats["retries"] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.5
            self.stats["dropped"] -= gone  # written (or counted as rejected) after all
            for _ in range(n - gone):
                self._buffer.popleft()

    def _post(self, batch: list[str]) -> str:
        """One write; "ok", "rejected" (do not retry) or "retry". Runs in a worker thread."""
        body = ("\n".join(batch) + "\n").encode()
        req = urllib.request.Request(self._write_url, data=body, headers=self._headers, method="POST")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                r.read()
            self.stats["written"] += len(batch)
            self.stats["write_seconds"] += time.perf_counter() - started
            if self.stats["last_error"]:
                log.info("InfluxDB writes again sink=%s", self)
            self.stats["last_error"] = None
            return "ok"
        except urllib.error.HTTPError as e:
            reason = _reason(e)
            if e.code == 400:  # invalid lines: retrying cannot help
                self.stats["rejected"] += len(batch)
                self.stats["last_rejection"] = reason  # kept: the database is fine, the lines were not
                log.error("InfluxDB refused lines sink=%s lines=%d reason=%r", self, len(batch), reason)
                return "rejected"
            if e.code == 404 and "database not found" in reason and self.create_database:
                self._create_database_sync()
            why = f"HTTP {e.code}: {reason}" + (" (check the username and password)" if e.code in (401, 403) else "")
        except (OSError, TimeoutError) as e:
            why = f"cannot reach {self.url}: {getattr(e, 'reason', None) or e}"
        if why != self.stats["last_error"]:
            log.warning("InfluxDB write failed, keeping the lines and retrying sink=%s reason=%r backlog=%d",
                        self, why, len(self._buffer))
        self.stats["last_error"] = why
        return "retry"

    async def _create_database(self) -> None:
        await asyncio.to_thread(self._create_database_sync)

    def _create_database_sync(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x; failures are left to the write path to report."""
        data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{self.database}"'}).encode()
        headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        req = urllib.request.Request(f"{self.url}/query", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                r.read()
        except (OSError, TimeoutError):
            pass


def _reason(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    return text.strip()[:300] or str(e.reason)
