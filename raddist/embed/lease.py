"""One writer per cache entry: a lease that a run takes before it computes an entry, renews while it
works, and that expires when its holder dies, so concurrent runs wait for each other instead of
computing the same key twice, and a killed run never blocks the next one.

lease.json holds who (a random token per run), since when and until when. Taking one: read it; if it
is absent or expired, write ours, wait SETTLE_S, read it back: ours means held (a competitor that wrote
in between overwrote it and holds it). Object stores give read-after-write consistency, so of two runs
that race, exactly one reads back its own token. On a local (or shared POSIX) filesystem an absent
lease is claimed at once instead, by an atomic hard link that fails if the file exists: no wait, which
a laptop's sweep of many small jobs would feel. A holder renews every TTL/3; a waiter takes over an
entry whose lease expired without meta.json appearing.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Dict, Optional

from raddist import storage

TTL_S = float(os.environ.get("RADDIST_LEASE_TTL_S", "120"))
SETTLE_S = 1.0


class Leases:
    """The leases one run holds, renewed by a background thread while any is held."""

    def __init__(self, ttl_s: float = TTL_S):
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.ttl_s = ttl_s
        self.held: Dict[str, None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"holder": self.token, "taken": now, "expires": now + self.ttl_s}).encode()

    @staticmethod
    def read(uri: str) -> Optional[dict]:
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as expired
            return {"holder": "?", "expires": 0}

    def try_take(self, uri: str) -> bool:
        """Take the lease at uri unless another live holder has it."""
        if not storage.is_remote(uri) and self._claim_absent(uri):
            self._hold(uri)
            return True
        current = self.read(uri)
        if current is not None and current.get("holder") != self.token and current.get("expires", 0) > time.time():
            return False
        storage.write_bytes(uri, self._record())
        time.sleep(SETTLE_S)
        current = self.read(uri)
        if current is None or current.get("holder") != self.token:
            return False
        self._hold(uri)
        return True

    def _claim_absent(self, uri: str) -> bool:
        """Locally: create lease.json with our record if no file is there (os.link refuses to replace)."""
        _, path = storage.filesystem(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{self.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._record())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _hold(self, uri: str) -> None:
        with self._lock:
            self.held[uri] = None
        self._start()

    def holder(self, uri: str) -> Optional[dict]:
        """The live lease at uri, or None when there is none (absent or expired)."""
        current = self.read(uri)
        return current if current is not None and current.get("expires", 0) > time.time() else None

    def release(self, uri: str) -> None:
        with self._lock:
            self.held.pop(uri, None)
        current = self.read(uri)
        if current is not None and current.get("holder") == self.token:
            storage.delete_file(uri)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._renew, name="raddist-leases", daemon=True)
            self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                uris = list(self.held)
            for uri in uris:
                try:
                    storage.write_bytes(uri, self._record())
                except OSError:  # the next renewal tries again; the lease lasts TTL_S
                    pass

    def close(self) -> None:
        self._stop.set()
        for uri in list(self.held):
            self.release(uri)
