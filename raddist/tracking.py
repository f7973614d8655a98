"""Each finished cell as one MLflow run (spec: tracking: {mlflow: URI}), through Ray Tune's own
MLflow callback.

Tune's MLflowLoggerCallback makes one MLflow run per trial. A raddist trial runs a batch of cells
and reports once per cell (raddist.trials), so this subclass makes the run per report instead: its
name is the cell id; its tags say backbone, task, task type, protocol and seed; its params are the
protocol's params; its metrics are the cell's headline metrics with their CI bounds
(`<metric>.ci_low`, `<metric>.ci_high`). A failed cell is a FAILED run with the error as a tag.
Runs are written from the driver (Tune calls its callbacks there), so only the driver needs to
reach the tracking store. results.parquet stays the record; MLflow is a view of it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Dict

from ray.air.integrations.mlflow import MLflowLoggerCallback

logger = logging.getLogger(__name__)
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_\-. ]")  # what MLflow accepts in a metric name, less '/'


def mlflow_metrics(rows) -> Dict[str, float]:
    """A cell's metric rows as MLflow metrics: finite values only (MLflow rejects NaN in some stores);
    auroc/<class> becomes auroc.<class>: a file store cannot hold a metric 'auroc' beside 'auroc/x'."""
    out: Dict[str, float] = {}
    for row in rows:
        name = _NOT_IN_NAME.sub("_", str(row["metric"]).replace("/", "."))
        for suffix, field in (("", "value"), (".ci_low", "ci_low"), (".ci_high", "ci_high")):
            value = row.get(field)
            if value is not None and value == value and abs(value) != float("inf"):
                out[name + suffix] = float(value)
    return out


class CellsToMLflow(MLflowLoggerCallback):
    """MLflowLoggerCallback with one MLflow run per cell. cells: cell id -> Cell."""

    def __init__(self, tracking_uri: str, experiment_name: str, cells: Dict[str, object]):
        super().__init__(tracking_uri, experiment_name=experiment_name)
        # what the runs need, not the Cells: Tune pickles its callbacks with the experiment state
        self.cells = {cid: {**cell.describe(), "params": cell.params} for cid, cell in cells.items()}
        self.failed = 0  # cells not logged

    def log_trial_start(self, trial) -> None:
        pass  # the runs are per cell, made as each reports

    def log_trial_result(self, iteration: int, trial, result: Dict) -> None:
        cell = self.cells.get(result.get("cell_id"))
        if cell is None:
            return
        try:
            self._log_cell(cell, result)
        except Exception as e:  # noqa: BLE001 - MLflow is a view: its failure must not end the sweep
            if not self.failed:
                logger.warning("MLflow (%s): cell %s not logged, nor will later failures be reported: %s: %s",
                               self.tracking_uri, cell["cell_id"], type(e).__name__, e)
            self.failed += 1

    def _log_cell(self, cell: dict, result: Dict) -> None:
        tags = {**self.tags, **{k: str(cell[k]) for k in ("backbone", "task", "task_type", "protocol", "seed")}}
        ok = bool(result.get("ok"))
        if not ok:
            tags["error"] = str(result.get("error", ""))[:5000]
        run_id = self.mlflow_util.start_run(run_name=cell["cell_id"], tags=tags).info.run_id
        params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cell["params"].items()}
        self.mlflow_util.log_params(run_id=run_id, params_to_log=params or {"params": "defaults"})
        if ok:
            self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=mlflow_metrics(result.get("metric_rows", [])),
                                         step=0)
        self.mlflow_util.end_run(run_id=run_id, status="FINISHED" if ok else "FAILED")

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass
