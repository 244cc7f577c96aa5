"""InfluxDB sinks: line protocol to InfluxDB 1.x's HTTP ``/write`` (also 2.x and 3.x in compatibility
mode) and to InfluxDB 2.x's native ``/api/v2/write`` through influxdb-client (token, org, bucket).

A sink accepts lines (from gateway/storage.py) and never blocks the gateway: they go into a
bounded buffer in memory; a writer task posts them in batches (``batch_lines``) and removes a
batch only after the database accepted it (204). If the database is unreachable or answers 5xx
(or 429), the batch is kept and retried with exponential back-off (0.5 s doubling up to 30 s),
so a database restart within the buffer's bound loses nothing. Beyond ``max_lines`` the oldest
lines are dropped and counted (``stats["dropped"]``). Lines the database refuses as invalid
(HTTP 400; 2.x also 413 and 422) are not retried: counted in ``stats["rejected"]`` and logged
with the database's reason.

The buffer, the writer task and the accounting are :class:`BufferedSink`'s; a sink adds one
blocking ``_post(batch)`` that runs in a worker thread. 1.x: one POST per batch over a kept-alive
HTTP connection (http.client; a new TCP connection per batch cost time a bare writer does not spend).
2.x: influxdb-client's synchronous WriteApi with our own line protocol strings.
"""
from __future__ import annotations

from contract.tasks import cancel_and_wait
import asyncio
import base64
import collections
import http.client
import itertools
import logging
import threading
import time
import urllib.parse
import urllib.request

from .lineproto import PRECISION

log = logging.getLogger("fieldlab.gateway.influx")


class BufferedSink:
    """A bounded line buffer drained by a writer task; subclasses implement :meth:`_post`.

    ``_post(batch)`` runs in a worker thread, writes the lines and says what became of them:
    ``"ok"`` (written: report with :meth:`_ok`), ``"rejected"`` (invalid, do not retry: :meth:`_refused`)
    or ``"retry"`` (keep the batch, back off: :meth:`_failed`).
    """

    def __init__(self, *, batch_lines: int = 5000, max_lines: int = 1_000_000, timeout_s: float = 10.0,
                 max_backoff_s: float = 30.0):
        self.batch_lines, self.max_lines, self.timeout_s = batch_lines, max_lines, timeout_s
        self.max_backoff_s = max_backoff_s
        self._buffer: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(): accept() hands lines over to it
        self._loop_thread = 0
        self._inflight: asyncio.Future | None = None  # the batch being posted, in a worker thread
        self._inflight_n = self._inflight_dropped = 0
        self._warned_at = -float("inf")
        self.stats = {"written": 0, "dropped": 0, "rejected": 0, "retries": 0, "last_error": None,
                      "last_rejection": None, "write_seconds": 0.0}

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    def accept(self, new_lines: list[str]) -> None:
        """Queue lines for writing; the oldest go beyond ``max_lines``. From any thread: the buffer and the
        writer's wake-up event belong to the event loop's thread, so a call from another thread is handed
        over to it (an ``asyncio.Event`` set from another thread may leave the writer asleep)."""
        if not new_lines:
            return
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._accept, list(new_lines))
        else:
            self._accept(new_lines)

    def _accept(self, new_lines: list[str]) -> None:
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
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self._task = asyncio.create_task(self._run(), name="influx-writer")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Write what is buffered (up to ``drain_s``), then stop; what is left is counted as dropped."""
        deadline = time.monotonic() + drain_s
        while self._buffer and time.monotonic() < deadline and self._task and not self._task.done():
            self._wake.set()
            await asyncio.sleep(0.05)
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None
        if self._inflight is not None:  # a batch being posted: let it finish (it has its own timeout)
            try:
                outcome = await self._inflight
            except Exception:  # _post catches what a write can raise; anything else: the batch stays
                outcome = "retry"
            if outcome != "retry":  # written or refused: it leaves the buffer, as in _run
                self._settle(self._inflight_n, self._inflight_dropped)
            self._inflight = None
        if self._buffer:
            self.stats["dropped"] += len(self._buffer)
            log.warning("stopping with lines not written sink=%s lines=%d", self, len(self._buffer))
            self._buffer.clear()
        self._close()

    async def _prepare(self) -> None:
        """Before the first write (e.g. create the database)."""

    def _close(self) -> None:
        """After the writer stopped (e.g. close a client's connections)."""

    async def _run(self) -> None:
        backoff = 0.5
        await self._prepare()
        prepared = None  # (lines, dropped count when taken, future of their body): the next batch, made ahead
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
            # the batch, the lines after it and the drop count are taken together, before any await: accept()
            # may drop the oldest lines meanwhile, and the drop count is what ties the buffer's positions to
            # these lists (a slice taken after an await could start past lines never written)
            n = min(self.batch_lines, len(self._buffer))
            dropped = self.stats["dropped"]
            ahead = list(itertools.islice(self._buffer, n, n + self.batch_lines))
            if prepared is not None and len(prepared[0]) == n and prepared[1] == dropped:
                # made while the previous batch was in flight: the buffer's first n lines are these (lines only
                # join at the end, and none were dropped since)
                batch, body = prepared[0], prepared[2]
            else:
                batch, body = list(itertools.islice(self._buffer, n)), None
                if prepared is not None:
                    await prepared[2]  # stale (lines dropped, or more arrived): let its thread finish, make anew
            body = await body if body is not None else await asyncio.to_thread(self._encode, batch)
            prepared = None
            self._inflight_n, self._inflight_dropped = n, dropped
            # shielded: a stop() waits for the write in flight instead of abandoning it in its thread
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._post, batch, body))
            if ahead:  # the next body is built while this one is posted (the POST waits on the network)
                prepared = (ahead, dropped, asyncio.ensure_future(asyncio.to_thread(self._encode, ahead)))
            outcome = await asyncio.shield(self._inflight)
            self._inflight = None
            if outcome == "retry":  # the same lines again: the body made ahead is not theirs
                if prepared is not None:
                    await prepared[2]
                    prepared = None
                self.stats["retries"] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.5
            self._settle(n, self._inflight_dropped)

    def _settle(self, n: int, dropped_before: int) -> None:
        """A batch of the ``n`` oldest lines was written (or refused): it leaves the buffer. accept() drops
        the oldest lines when full, which are this batch's first: those are gone already, and were not
        lost after all."""
        gone = min(n, self.stats["dropped"] - dropped_before)
        self.stats["dropped"] -= gone
        for _ in range(n - gone):
            self._buffer.popleft()

    def _encode(self, batch: list[str]):
        """What ``_post`` sends for these lines, made ahead in a worker thread (None: ``_post`` makes it)."""
        return None

    def _post(self, batch: list[str], body=None) -> str:
        """One write of ``batch`` (``body``: its ``_encode``); "ok", "rejected" (do not retry) or "retry".
        Runs in a worker thread."""
        raise NotImplementedError

    def _ok(self, batch: list[str], started: float) -> str:
        self.stats["written"] += len(batch)
        self.stats["write_seconds"] += time.perf_counter() - started
        if self.stats["last_error"]:
            log.info("InfluxDB writes again sink=%s", self)
        self.stats["last_error"] = None
        return "ok"

    def _refused(self, batch: list[str], reason: str) -> str:
        self.stats["rejected"] += len(batch)
        self.stats["last_rejection"] = reason  # kept: the database is fine, the lines were not
        log.error("InfluxDB refused lines sink=%s lines=%d reason=%r", self, len(batch), reason)
        return "rejected"

    def _failed(self, why: str) -> str:
        if why != self.stats["last_error"]:
            log.warning("InfluxDB write failed, keeping the lines and retrying sink=%s reason=%r backlog=%d",
                        self, why, len(self._buffer))
        self.stats["last_error"] = why
        return "retry"


class InfluxV1Sink(BufferedSink):
    def __init__(self, url: str, database: str = "fieldlab", *, username: str | None = None,
                 password: str | None = None, retention_policy: str | None = None, batch_lines: int = 5000,
                 max_lines: int = 1_000_000, timeout_s: float = 10.0, create_database: bool = True,
                 max_backoff_s: float = 30.0):
        super().__init__(batch_lines=batch_lines, max_lines=max_lines, timeout_s=timeout_s,
                         max_backoff_s=max_backoff_s)
        self.url, self.database = url.rstrip("/"), database
        self.create_database = create_database
        params = {"db": database, "precision": PRECISION, **({"rp": retention_policy} if retention_policy else {})}
        base = urllib.parse.urlsplit(self.url).path.rstrip("/")
        self._write_path = f"{base}/write?{urllib.parse.urlencode(params)}"
        self._conn: http.client.HTTPConnection | None = None  # used by one worker thread at a time
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def __str__(self) -> str:
        return f"InfluxDB {self.url} database {self.database}"

    async def _prepare(self) -> None:
        if self.create_database:
            await self._create_database()

    def _encode(self, batch: list[str]) -> bytes:
        return ("\n".join(batch) + "\n").encode()

    def _post(self, batch: list[str], body: bytes | None = None) -> str:
        """One write; "ok", "rejected" (do not retry) or "retry". Runs in a worker thread (one at a time)."""
        if body is None:
            body = self._encode(batch)
        started = time.perf_counter()
        for attempt in (1, 2):
            fresh = self._conn is None
            try:
                status, reason = self._request(body)
                break
            except (http.client.HTTPException, OSError, TimeoutError) as e:
                self._disconnect()
                # the server closed a kept-alive connection since the last write (idle timeout, restart): once
                # more on a new one. Writing a batch twice is harmless: the same series and time is one point.
                if attempt == 1 and not fresh and isinstance(e, (http.client.RemoteDisconnected, ConnectionError)):
                    continue
                return self._failed(f"cannot reach {self.url}: {getattr(e, 'reason', None) or e}")
        if status in (200, 204):
            return self._ok(batch, started)
        if status == 400:  # invalid lines: retrying cannot help
            return self._refused(batch, reason)
        if status == 404 and "database not found" in reason and self.create_database:
            self._create_database_sync()
        return self._failed(f"HTTP {status}: {reason}" + (" (check the username and password)"
                                                          if status in (401, 403) else ""))

    def _request(self, body: bytes) -> tuple[int, str]:
        """POST the body on the kept-alive connection (opened if needed); (status, error text or "")."""
        if self._conn is None:
            u = urllib.parse.urlsplit(self.url)
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(u.hostname, u.port, timeout=self.timeout_s)
        self._conn.request("POST", self._write_path, body, self._headers)
        r = self._conn.getresponse()
        text = r.read()  # read to the end, so the connection can carry the next request
        if r.will_close:
            self._disconnect()
        if r.status in (200, 204):
            return r.status, ""
        return r.status, text.decode("utf-8", "replace").strip()[:300] or (r.reason or "")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _close(self) -> None:
        self._disconnect()

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


REFUSED_V2 = frozenset({400, 413, 422})  # invalid lines, a too large request, unprocessable points


class InfluxV2Sink(BufferedSink):
    """InfluxDB 2.x's ``/api/v2/write`` through influxdb-client: ``token`` (an API token with write access to
    the bucket), ``org`` (name or ID) and ``bucket``; the same buffer, batches and retries as InfluxV1Sink.

    The lines are our own line protocol (gateway/lineproto.py), handed to the synchronous WriteApi as strings
    with millisecond precision; influxdb-client's own retries are off, the writer task does them. HTTP 400, 413
    and 422 count the batch as rejected; 401/403/404 (token, org, bucket), 429, 5xx and connection errors retry.
    """

    def __init__(self, url: str, org: str, bucket: str, token: str, *, batch_lines: int = 5000,
                 max_lines: int = 1_000_000, timeout_s: float = 10.0, max_backoff_s: float = 30.0):
        super().__init__(batch_lines=batch_lines, max_lines=max_lines, timeout_s=timeout_s,
                         max_backoff_s=max_backoff_s)
        # imported here: influxdb-client takes a third of a second to import and only this sink needs it
        import urllib3
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        self.url, self.org, self.bucket = url.rstrip("/"), org, bucket
        self._client = InfluxDBClient(url=self.url, token=token, org=org, timeout=int(timeout_s * 1000),
                                      retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._precision = WritePrecision.MS
        self._api_error = ApiException
        self._net_errors = (urllib3.exceptions.HTTPError, OSError)

    def __str__(self) -> str:
        return f"InfluxDB {self.url} org {self.org} bucket {self.bucket}"

    def _post(self, batch: list[str], body=None) -> str:
        """One write; "ok", "rejected" (do not retry) or "retry". Runs in a worker thread."""
        started = time.perf_counter()
        try:
            self._write_api.write(self.bucket, self.org, record=batch, write_precision=self._precision)
            return self._ok(batch, started)
        except self._api_error as e:
            status, reason = e.status or 0, _api_reason(e)
            if status in REFUSED_V2:  # retrying the same lines cannot help
                return self._refused(batch, reason)
            hint = {401: " (check the token in FIELDLAB_INFLUX_TOKEN)", 403: " (the token may not write to the bucket)",
                    404: " (check the organisation and the bucket)"}.get(status, "")
            why = f"HTTP {status}: {reason}{hint}" if status else reason  # status 0: e.g. a TLS error
        except self._net_errors as e:
            why = f"cannot reach {self.url}: {e}"
        return self._failed(why)

    def _close(self) -> None:
        self._client.close()


def _api_reason(e) -> str:
    """The server's message of an influxdb-client ApiException (the JSON "message", or the body, or the reason)."""
    text = (getattr(e, "message", None) or e.body) if getattr(e, "response", None) is not None else e.reason
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).strip()[:300] or f"HTTP {e.status}"
