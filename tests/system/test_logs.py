"""Structured logs: a fault that repeats cannot flood the log (and fill the disk the state files need)."""
import io
import logging

from fieldlab.logs import LogfmtFormatter, RepeatLimit


def _logger(clock):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(RepeatLimit(burst=3, window_s=10.0, now=lambda: clock[0]))
    log = logging.getLogger(f"test-repeat-{id(clock)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, out


def test_a_repeated_error_is_logged_a_few_times_per_window_then_summed_up():
    clock = [0.0]
    log, out = _logger(clock)
    for i in range(1000):
        log.error("socket.accept() out of system resource fd=%d", i)
        log.warning("another kind %s", i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6  # three of each kind
    clock[0] = 10.0  # the next window: one line says how many were left out
    log.error("socket.accept() out of system resource fd=%d", 1000)
    last = out.getvalue().splitlines()[-1]
    assert "fd=1000 (997 more like this in the last 10 s left out)" in last
    clock[0] = 25.0  # a quiet window since: nothing was left out, nothing to say
    log.error("socket.accept() out of system resource fd=%d", 1001)
    assert out.getvalue().splitlines()[-1].endswith("fd=1001'")


def test_progress_lines_are_never_limited():
    clock = [0.0]
    log, out = _logger(clock)
    for i in range(50):
        log.info("new machine machine=%s", f"m{i}")
    assert len(out.getvalue().splitlines()) == 50
