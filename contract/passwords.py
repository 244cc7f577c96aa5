"""Salted password hashes in the form Mosquitto 2.x stores them (``$7$``: PBKDF2-SHA512), shared by
`fieldlab deploy` (the broker's password file) and the gateway's web login (PINs in its users file)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password as Mosquitto 2.x stores it: ``$7$<iterations>$<salt>$<PBKDF2-SHA512>`` (base64)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def hash_matches(stored: str, password: str) -> bool:
    """Whether a ``$7$`` entry of a Mosquitto password file is this password (False for other formats)."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(mosquitto_hash(password, salt, int(parts[2])), stored)
