"""One login for every page that changes something (presenter mode, operator terminal).

A session is a cookie ``fieldlab_session``: the user's name, scopes and login time, signed with HMAC-SHA256
(``sign``/``check``: pure functions given the time and the key, like gateway/oee.py). It is valid one shift
(``SHIFT_S``); HttpOnly, SameSite=Strict. Who may log in:

- whoever has the **token**: random per start unless given (``FIELDLAB_WEB_TOKEN`` or a file), printed in the
  terminal as a login link as Jupyter does (``/login?token=...``); it grants every scope;
- the **users** of a users file outside git (``FIELDLAB_WEB_USERS``): one line per user,
  ``name:scope,scope:hash`` with the PIN's salted hash in Mosquitto's ``$7$`` form (contract/passwords.py;
  ``user_line()`` writes one).

The signing key comes from a file (``FIELDLAB_WEB_KEY_FILE`` or ``$FIELDLAB_WEB_KEY``), else it is random per
start (every session then ends with a restart). Failed logins are throttled per client address.
The aiohttp side (the middleware that turns the cookie into ``request["user"]`` and ``requires(scope)``) is
in gateway/http.py. docs/web.md has the whole picture.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from contract.errors import ServiceError
from contract.passwords import hash_matches, mosquitto_hash
from contract.secrets import read_secret

SHIFT_S = 9 * 3600  # a session lasts one shift (and a bit)
COOKIE = "fieldlab_session"
SCOPES = ("presenter", "operator")


@dataclass(frozen=True)
class User:
    name: str
    scopes: frozenset[str]


def _mac(body: str, key: bytes) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign(user: str, scopes, now: float, key: bytes) -> str:
    """The session cookie's value for ``user`` with ``scopes``, logged in at ``now`` (Unix seconds)."""
    body = base64.urlsafe_b64encode(json.dumps([user, sorted(scopes), int(now)]).encode()).decode().rstrip("=")
    return f"{body}.{_mac(body, key)}"


def check(cookie: str | None, now: float, key: bytes, max_age_s: float = SHIFT_S) -> User | None:
    """The user of a session cookie, or None if it is missing, forged, altered, expired or from the future."""
    if not cookie or cookie.count(".") != 1:
        return None
    body, mac = cookie.split(".")
    if not hmac.compare_digest(mac, _mac(body, key)):
        return None
    try:
        user, scopes, t = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(t, int) or not 0 <= now - t <= max_age_s:
        return None
    return User(str(user), frozenset(scopes))


def user_line(name: str, scopes, pin: str) -> str:
    """One line of the users file (for `fieldlab deploy` and people editing the file by hand)."""
    return f"{name}:{','.join(scopes)}:{mosquitto_hash(pin)}"


def read_users(path: str) -> dict[str, tuple[frozenset[str], str]]:
    """The users file: {name: (scopes, PIN hash)}; a mistake names the file, the line and the fix."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ServiceError(f"users file {path}: cannot read it ({e.strerror or e})") from None
    users = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2].startswith("$7$"):
            raise ServiceError(f"users file {path}, line {n}: expected name:scopes:hash (write one with "
                               "gateway.auth.user_line)")
        scopes = frozenset(s.strip() for s in parts[1].split(",") if s.strip())
        if not scopes or not scopes <= set(SCOPES):
            raise ServiceError(f"users file {path}, line {n}: scopes must be some of {', '.join(SCOPES)}, "
                               f"got {parts[1]!r}")
        users[parts[0]] = (scopes, parts[2])
    return users


class Throttle:
    """At most ``failures`` failed logins per client address in ``window_s``; then refused until it passes."""

    def __init__(self, failures: int = 5, window_s: float = 60.0):
        self.failures, self.window_s = failures, window_s
        self._seen: dict[str, list[float]] = {}

    def blocked(self, client: str, now: float) -> bool:
        recent = [t for t in self._seen.get(client, []) if now - t < self.window_s]
        self._seen[client] = recent
        return len(recent) >= self.failures

    def failed(self, client: str, now: float) -> None:
        if len(self._seen) > 10_000:  # many addresses: forget them rather than grow
            self._seen.clear()
        self._seen.setdefault(client, []).append(now)


class Auth:
    """The credentials of one HTTP service: the signing key, the token and the users."""

    def __init__(self, key: bytes | None = None, token: str | None = None,
                 users: dict[str, tuple[frozenset[str], str]] | None = None):
        self.key = key or secrets.token_bytes(32)
        self.token = token or secrets.token_urlsafe(18)
        self.users = users or {}
        self.throttle = Throttle()  # per client address
        # per user name, from any address: a 6-digit PIN also guards presenter mode's faults; 20 tries in 5 min
        # make guessing one take months, and a user locked out by someone else's tries waits 5 minutes
        self.user_throttle = Throttle(failures=20, window_s=300.0)

    @classmethod
    def from_environment(cls) -> Auth:
        """Key, token and users as configured (docs/web.md); random key and token where nothing is."""
        key = read_secret("FIELDLAB_WEB_KEY_FILE", os.environ.get("FIELDLAB_WEB_KEY_FILE"), "FIELDLAB_WEB_KEY")
        token = read_secret("FIELDLAB_WEB_TOKEN_FILE", os.environ.get("FIELDLAB_WEB_TOKEN_FILE"),
                            "FIELDLAB_WEB_TOKEN")
        users = os.environ.get("FIELDLAB_WEB_USERS")
        return cls(key.encode() if key else None, token, read_users(users) if users else None)

    def by_token(self, token: str) -> User | None:
        if token and hmac.compare_digest(token.encode(), self.token.encode()):
            return User("presenter", frozenset(SCOPES))  # whoever read the terminal: they run this service
        return None

    def by_pin(self, name: str, pin: str) -> User | None:
        found = self.users.get(name)
        if found and pin and hash_matches(found[1], pin):
            return User(name, found[0])
        return None
