"""One thread of the gateway's own for the KPI computation and checkpoints (off the event loop).

Unlike ``ThreadPoolExecutor``, whose threads the interpreter joins at exit, this thread is a daemon: a
computation that hangs for good cannot also hang the process's stop (``Gateway.stop`` gives up on it after
``stop_tick_s``, and the process exits; systemd would otherwise have to kill it at its stop timeout).
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading


class DaemonWorker(concurrent.futures.Executor):
    """Runs submitted calls one after another on a single daemon thread."""

    def __init__(self, name: str):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        f: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put((f, fn, args, kwargs))
        return f

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            f, fn, args, kwargs = item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to whoever waits for the future
                f.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._q.put(None)
        if wait:
            self._thread.join()
