"""fieldlab.cli.main() run in-process (as many tests do) leaves no log handler behind on a stream that is closed
later, and puts the root logger back as it found it."""
import io
import logging
import re
import sys

from fieldlab import logs
from fieldlab.cli import main


def test_main_twice_with_swapped_and_closed_stderr_writes_no_logging_error(monkeypatch):
    root = logging.getLogger()
    before = root.handlers[:], root.level
    log = logging.getLogger("fieldlab.test-log-setup")
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    assert main(["demo", "--list-scenarios"]) == 0  # sets the level to WARNING (the live table's terminal)
    first.close()  # what pytest does with a test's captured stderr when the test ends
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.warning("after the first run")
    assert main(["sim", "--list-scenarios"]) == 0
    log.warning("after the second run")
    assert "Logging error" not in second.getvalue(), second.getvalue()
    assert (root.handlers, root.level) == before  # pytest's own handlers are back, and its level


def test_the_handler_writes_logfmt_to_the_stderr_of_the_moment():
    restore = logs.setup(logging.INFO)
    try:
        for _ in range(2):
            now = io.StringIO()
            sys.stderr, saved = now, sys.stderr
            try:
                logging.getLogger("fieldlab.test-log-setup").warning("machine=%s down", "press-07")
            finally:
                sys.stderr = saved
            assert re.fullmatch(r"ts=\S+Z level=warning logger=fieldlab.test-log-setup msg='machine=press-07 down'\n",
                                now.getvalue()), now.getvalue()
        restore_again = logs.setup(logging.INFO)  # again: still one handler, not two
        assert len(logging.getLogger().handlers) == 1
        restore_again()
    finally:
        restore()
