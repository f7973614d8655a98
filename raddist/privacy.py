"""Keyed pseudonyms for sample and patient ids in everything raddist writes.

The key (salt) is a deployment secret: the same salt gives the same pseudonyms, so results of
different runs line up, and only whoever holds it can link a pseudonym back to a manifest row.
Where it comes from, first found:
  RADDIST_SALT       the salt itself (a local run; on a cluster this would sit in a logged runtime env)
  RADDIST_SALT_FILE  a URI of a file holding it (s3://bucket/private/raddist-salt on a cluster: it
                     outlives `ray down`); created with a random salt if it does not exist
  ~/.config/raddist/salt on the driver's machine, created likewise (lost with a cluster's head)
The driver reads it once and hands it to the workers. A run records only its fingerprint, a one-way
hash, so that a resubmission with another salt into the same output is refused (mixed pseudonyms).
On a cluster whose work runs on other nodes, the local file is refused before any work
(require_durable_salt): it would live on the head, and a new head (`ray down` / `ray up`, a RayJob
applied again, a head pod rescheduled) would make another salt and be refused on resubmission.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from raddist import storage
from raddist.errors import ConfigError

LOCAL_SALT = "~/.config/raddist/salt"


def salt_source() -> str:
    """Where deployment_salt() takes the salt from: RADDIST_SALT, RADDIST_SALT_FILE or 'local'."""
    for var in ("RADDIST_SALT", "RADDIST_SALT_FILE"):
        if os.environ.get(var):
            return var
    return "local"


def require_durable_salt() -> None:
    """With Ray up: refuse the head's local salt file on a cluster whose work runs on other nodes,
    before the salt is made or recorded in any output (raddist.cluster.is_multi_node)."""
    if salt_source() != "local":
        return
    from raddist import cluster

    if cluster.is_multi_node():
        raise ConfigError(
            f"RADDIST_SALT_FILE is not set: on a cluster the salt would be made in the head's {LOCAL_SALT} and "
            "lost with the head, so resuming this run on a new head would be refused ('another salt'). Set "
            "RADDIST_SALT_FILE to a URI the cluster's role can read and write, e.g. s3://bucket/private/raddist-salt")


def deployment_salt() -> str:
    salt = os.environ.get("RADDIST_SALT")
    if salt:
        return salt
    uri = os.environ.get("RADDIST_SALT_FILE")
    if uri:
        if not storage.exists(uri):
            storage.write_text(uri, secrets.token_hex(16))
        return storage.read_text(uri).strip()
    path = os.path.expanduser(LOCAL_SALT)
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt)
    return salt


def fingerprint(salt: str) -> str:
    """Tells two salts apart without revealing either."""
    return hashlib.sha256(b"raddist-salt-fingerprint\0" + salt.encode()).hexdigest()[:16]


def pseudonym(value, salt: str) -> str:
    return hmac.new(salt.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:16]
