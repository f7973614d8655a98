"""Each finished cell as one Weights & Biases run (spec: tracking: {wandb: {project: P}}), through Ray
Tune's own W&B callback, next to MLflow (raddist.tracking).

Tune's WandbLoggerCallback makes one W&B run per trial, logged by a Ray actor of its own. A raddist
trial runs a batch of cells and reports once per cell (raddist.trials), so this subclass starts that
actor per report instead, under a key per cell: the run's name and id are the cell id, its config the
cell's backbone, task, task type, protocol, seed and params, its summary the cell's metrics with their
CI bounds (`<metric>.ci_low`, `<metric>.ci_high`) and `ok`. A failed cell is a run with ok = 0 and
the error in its config. Whatever W&B does (not installed, offline, refused), the sweep goes on: a
failure loses the log, never a cell. WANDB_MODE=offline writes the runs under ./wandb only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional

from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem

from raddist.tracking import mlflow_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _CellKey:
    """Stands for a trial in the parent's per-trial tables: one logging actor per cell."""

    cell_id: str
    local_path: str


class CellsToWandb(WandbLoggerCallback):
    """WandbLoggerCallback with one W&B run per cell. cells: cell id -> Cell."""

    def __init__(self, project: str, group: Optional[str], cells: Dict[str, object], **kwargs):
        super().__init__(project=project, group=group, **kwargs)
        # what the runs need, not the Cells: Tune pickles its callbacks with the experiment state
        self.cells = {cid: {**cell.describe(), "params": cell.params} for cid, cell in cells.items()}
        self.failed = 0  # cells not logged

    def setup(self, *args, **kwargs):
        self._guarded("setup", super().setup, *args, **kwargs)

    def log_trial_start(self, trial) -> None:
        pass  # the runs are per cell, made as each reports

    def log_trial_result(self, iteration: int, trial, result: Dict) -> None:
        cell = self.cells.get(result.get("cell_id"))
        if cell is not None:
            self._guarded(f"cell {cell['cell_id']}", self._log_cell, cell, result, trial.local_path)

    def _log_cell(self, cell: dict, result: Dict, local_path: str) -> None:
        ok = bool(result.get("ok"))
        config = {**{k: cell[k] for k in ("backbone", "task", "task_type", "protocol", "seed")}, **cell["params"]}
        if not ok:
            config["error"] = str(result.get("error", ""))[:5000]
        key = _CellKey(cell["cell_id"], local_path)
        self._start_logging_actor(key, ["config"], id=cell["cell_id"], name=cell["cell_id"], resume=False,
                                  reinit=True, allow_val_change=True, group=self.group, project=self.project,
                                  config=config, **self.kwargs)
        metrics = mlflow_metrics(result.get("metric_rows", [])) if ok else {}
        self._trial_queues[key].put((_QueueItem.RESULT, {**metrics, "ok": int(ok)}))
        self._signal_logging_actor_stop(key)
        self._cleanup_logging_actors()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass

    def on_experiment_end(self, trials, **info):
        self._guarded("the last uploads", super().on_experiment_end, trials, **info)

    def _guarded(self, what: str, fn, *args, **kwargs) -> None:
        """W&B is a view of results.parquet: whatever it raises is one warning (the first), never the
        sweep's end."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self.failed:
                logger.warning("W&B (project %s): %s not logged, nor will later failures be reported: %s: %s",
                               self.project, what, type(e).__name__, e)
            self.failed += 1


def wandb_callbacks(project: str, group: str, cells: Dict[str, object]) -> list:
    """[CellsToWandb], or [] with one warning when wandb is not installed."""
    try:
        return [CellsToWandb(project, group, cells)]
    except RuntimeError as e:  # Tune's callback: "Wandb was not found"
        logger.warning("W&B: no run will be logged (%s); pip install 'raddist[wandb]'", e)
        return []
