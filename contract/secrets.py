"""Secrets for the command line: from a file readable only by the service, or from the environment,
never from an option (the command line shows in the process list)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ServiceError


def read_secret(option: str, path: str | None, env: str) -> str | None:
    """A secret from a file (first line) or the environment; None if neither is given."""
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ServiceError(f"{option} {path}: cannot read it ({e.strerror or e})") from None
        if not text:
            raise ServiceError(f"{option} {path}: the file is empty")
        return text.splitlines()[0].strip()
    return os.environ.get(env, "").strip() or None
