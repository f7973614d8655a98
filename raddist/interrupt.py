"""Ctrl-C and SIGTERM (what `ray job stop` and a pod eviction send) stop a run cleanly.

The first signal asks the run to stop: the embedding side stops at its next block and releases its
leases, Tune stops its trials (a cell stopped mid-way is incomplete, so the next run computes it
again), and the run ends as "interrupted" with exit status 128 + the signal's number. A second signal
releases the leases still held and exits at once. Neither prints a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Optional

from raddist.errors import RaddistError

_STOPS: Dict[str, "StopRequest"] = {}  # Tune pickles its stoppers: they find their request by id


class Interrupted(RaddistError):
    """Raised where work notices that the run was asked to stop."""


class StopRequest:
    """A run's stop flag, set by SIGINT or SIGTERM while installed (from the main thread)."""

    def __init__(self):
        import uuid

        self.id = uuid.uuid4().hex[:12]
        _STOPS[self.id] = self
        self.event = threading.Event()
        self.signum: Optional[int] = None
        self._cleanups: List[Callable[[], None]] = []
        self._on_request: List[Callable[[], None]] = []
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted("interrupted")

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        """Run cleanup (releasing leases) if a second signal ends the process at once."""
        self._cleanups.append(cleanup)

    def on_request(self, callback: Callable[[], None]) -> None:
        """Call back (in the main thread, from the signal handler) when the stop is first asked."""
        self._on_request.append(callback)

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        first = not self.event.is_set()
        self.event.set()
        for callback in self._on_request if first else ():
            callback()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only: whoever runs us there handles them
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        _STOPS.pop(self.id, None)

    def _handle(self, signum, frame) -> None:
        if not self.event.is_set():
            self.request(signum)
            print("stopping: Ctrl-C again exits at once", file=sys.stderr, flush=True)
            return
        for cleanup in self._cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - exiting now; an unreleased lease expires on its own
                pass
        print("interrupted again: exiting now; run the same command to continue", file=sys.stderr, flush=True)
        os._exit(128 + signum)


def get(stop_id: str) -> Optional[StopRequest]:
    return _STOPS.get(stop_id)
