"""Progress of a sweep in flight: progress.json for `raddist status`, and a line per finished cell.

progress.json is written at the start of a run (state "running", so `raddist status` never shows a
previous run as current), whenever an embedding group reports (images done / total, images per
second, ETA, at most every resources.progress_interval_s), whenever a cell starts or ends, and at
the end (state "finished").
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable, Dict

from ray.tune import Callback

from raddist import storage

_RUNS: Dict[str, "RunProgress"] = {}  # Tune pickles its callbacks: they find their run by id


class RunProgress:
    def __init__(self, output: str, cells_total: int, jobs_total: int):
        self.output, self.id = output, uuid.uuid4().hex[:12]
        self.lock = threading.Lock()
        self.state = {"run_id": self.id, "state": "running", "started": time.time(),
                      "embedding_jobs": {"total": jobs_total, "done": 0, "failed": 0}, "embedding": {},
                      "cells": {"total": cells_total, "pending_at_start": 0, "done_now": 0, "failed_now": 0,
                                "running": 0}}
        _RUNS[self.id] = self
        self.write()

    def update(self, change: Callable[[dict], None]) -> None:
        with self.lock:
            change(self.state)
            self.write()

    def embedding(self, group: dict) -> None:
        self.update(lambda s: s["embedding"].__setitem__(group["backbone"], {k: v for k, v in group.items()
                                                                            if k not in ("backbone", "started")}))

    def job_done(self, failed: bool) -> None:
        self.update(lambda s: s["embedding_jobs"].__setitem__("failed" if failed else "done",
                                                               s["embedding_jobs"]["failed" if failed else "done"] + 1))

    def finish(self, state: str = "finished") -> None:
        """state: "finished" | "interrupted"."""
        self.update(lambda s: s.__setitem__("state", state))
        _RUNS.pop(self.id, None)

    def write(self) -> None:
        self.state["updated"] = time.time()
        storage.write_json(storage.join(self.output, "progress.json"), self.state)


class CellProgress(Callback):
    """Counts cells into the run's progress and prints a line per finished cell. Holds no callables
    and no lock (Tune pickles its callbacks with the experiment state): it finds its run by id."""

    def __init__(self, run: RunProgress, cells: Dict[str, object], quiet: bool = False):
        self.run_id, self.cells, self.quiet = run.id, cells, quiet
        self.finished = 0

    def _count(self, key: str, step: int) -> None:
        run = _RUNS.get(self.run_id)
        if run:
            run.update(lambda s: s["cells"].__setitem__(key, max(0, s["cells"][key] + step)))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count("running", 1)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cell = self.cells.get(result.get("cell_id"))  # a trial reports once per cell of its batch
        ok = bool(result.get("ok"))
        self.finished += 1
        self._count("done_now" if ok else "failed_now", 1)
        status = f"{result.get('seconds', 0):.1f}s" if ok else f"FAILED: {result.get('error')}"
        if cell is not None and not self.quiet:
            print(f"  [{self.finished}/{len(self.cells)}] {cell.backbone.label} × {cell.task.name} × "
                  f"{cell.protocol} {status}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count("running", -1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count("running", -1)
        self._count("failed_now", 1)
