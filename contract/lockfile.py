"""One process per state file: a second gateway over the same checkpoint, or a second edge agent over the same
outbox, would corrupt what the first writes (and send or count its data twice). ``hold`` takes an exclusive
lock beside the file, and refuses with the holder's pid if another process has it. The kernel lets go of the
lock when the process ends, however it ends (kill -9 included), so a crash never leaves a stale lock."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import ServiceError


class Held:
    """A held lock; ``release()`` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def hold(path: str | Path, what: str, fix: str) -> Held:
    """Lock ``<path>.lock`` for this process. ServiceError naming ``what``, the other process's pid and ``fix``
    if another process holds it."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ServiceError(f"{what} {path} is in use by another process (pid {holder}): two would corrupt it; "
                           f"{fix}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # the pid is only a hint: a full disk must not leave the lock held
        pass
    return Held(lock, fd)
