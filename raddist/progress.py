"""Progress of a sweep in flight: a line per finished cell, and progress.json for `raddist status`."""

from __future__ import annotations

import time
from typing import Dict

from ray.tune import Callback

from raddist import storage


class ProgressCallback(Callback):
    def __init__(self, output: str, cells: Dict[str, object], total: int, quiet: bool = False):
        # holds no callables: Tune pickles its callbacks with the experiment state
        self.output, self.cells, self.total, self.quiet = output, cells, total, quiet
        self.done = self.failed = 0
        self.running = set()
        self.started = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._write()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cell = self.cells.get(trial.config.get("cell_id"))
        ok = bool(result.get("ok"))
        self.done += ok
        self.failed += not ok
        status = f"{result.get('seconds', 0):.1f}s" if ok else f"FAILED: {result.get('error')}"
        if cell is not None and not self.quiet:
            print(f"  [{self.done + self.failed}/{len(self.cells)}] {cell.backbone.label} × "
                     f"{cell.task.name} × {cell.protocol} {status}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self._write()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._write()

    def _write(self):
        storage.write_json(storage.join(self.output, "progress.json"), {
            "cells_total": self.total,
            "cells_pending_at_start": len(self.cells),
            "cells_done_now": self.done,
            "cells_failed_now": self.failed,
            "cells_running": len(self.running),
            "elapsed_seconds": round(time.time() - self.started, 1),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
