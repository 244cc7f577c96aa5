"""Structured logs: one line per event, logfmt style (``ts=… level=… logger=… msg=…``)."""
from __future__ import annotations

import logging
import sys
import time


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} msg={record.getMessage()!r}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


class RepeatLimit(logging.Filter):
    """At most ``burst`` warnings or errors of one kind (logger, level, message template) per ``window_s`` s; the
    first record after a quiet window says how many were left out. Without it, one fault that repeats (file
    descriptors exhausted: asyncio logs every failed accept with a traceback) wrote 6 MB of log in 15 s and
    could fill the disk the state files need. ``now`` is a clock (time.monotonic), for the tests."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, now=time.monotonic):
        super().__init__()
        self.burst, self.window_s, self.now = burst, window_s, now
        self._seen: dict[tuple, list] = {}  # kind -> [window start, records in it, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:  # progress lines (a new machine, ...) are never a flood
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        t = self.now()
        seen = self._seen.get(key)
        if seen is None or t - seen[0] >= self.window_s:
            left_out = seen[2] if seen else 0
            if len(self._seen) > 1000:  # many kinds: forget the old windows rather than grow
                self._seen.clear()
            self._seen[key] = [t, 1, 0]
            if left_out:
                record.msg = f"{record.msg} ({left_out} more like this in the last {self.window_s:g} s left out)"
            return True
        seen[1] += 1
        if seen[1] <= self.burst:
            return True
        seen[2] += 1
        return False


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not what it was when the handler was made
    (as logging's own last-resort handler does). A handler holding the stream of its day kept writing to a
    test's captured stderr after pytest had closed it ("--- Logging error --- ValueError: I/O operation on closed
    file" in later tests)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def setup(level: int = logging.INFO, stream=None):
    """Make the root logger write logfmt lines to ``stream`` (default: sys.stderr at the time of each record), and
    nothing else. Calling it again replaces what it installed. Returns a function that puts the root logger's
    handlers and level back as they were (``fieldlab.cli.main`` calls it on the way out, so running ``main()``
    in-process, as the tests do, leaves no handler and no level behind)."""
    handler = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    before = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(level)

    def restore() -> None:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        handler.close()

    return restore
