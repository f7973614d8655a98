"""Keyed pseudonyms for sample and patient ids in everything raddist writes.

The key (salt) is per deployment: $RADDIST_SALT, else a random one kept in ~/.config/raddist/salt.
The driver reads it once and hands it to the workers, so every node pseudonymises alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets


def deployment_salt() -> str:
    salt = os.environ.get("RADDIST_SALT")
    if salt:
        return salt
    path = os.path.expanduser("~/.config/raddist/salt")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt)
    return salt


def pseudonym(value, salt: str) -> str:
    return hmac.new(salt.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:16]
