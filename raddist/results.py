"""The run's outputs. Each finished cell is a directory of its own, complete once cell.json exists:

  OUTPUT/cells/<cell_id>/metrics.parquet      one row per metric, with bootstrap CI
  OUTPUT/cells/<cell_id>/predictions.parquet  per-sample test scores (pseudonymised ids)
  OUTPUT/cells/<cell_id>/cell.json            what ran, what was selected on validation, cost

`gather` turns them into the tidy tables beside them: results.parquet (one row per cell ×
metric) and predictions.parquet.
"""

from __future__ import annotations

import json
from typing import List, Optional

import pyarrow as pa

from raddist import storage
from raddist.plan import Cell

RESULT_COLUMNS = ["cell_id", "task", "backbone", "protocol", "params", "seed", "metric", "value", "ci_low", "ci_high"]


def cell_dir(output: str, cell_id: str) -> str:
    return storage.join(output, "cells", cell_id)


def is_done(output: str, cell_id: str) -> bool:
    return storage.exists(storage.join(cell_dir(output, cell_id), "cell.json"))


def write_cell(output: str, cell: Cell, metric_rows: List[dict], predictions: pa.Table, info: dict) -> None:
    d = cell_dir(output, cell.id)
    storage.write_parquet(storage.join(d, "predictions.parquet"), predictions)
    desc = cell.describe()
    rows = [{**desc, **r} for r in metric_rows]
    storage.write_parquet(storage.join(d, "metrics.parquet"), pa.Table.from_pylist(rows))
    storage.write_json(storage.join(d, "cell.json"), {**desc, **info})  # last: marks the cell done


def write_failure(output: str, cell: Cell, error: str) -> None:
    storage.write_json(storage.join(cell_dir(output, cell.id), "failed.json"), {**cell.describe(), "error": error})


def gather(output: str, cells: List[Cell]) -> dict:
    """Concatenate the finished cells of this plan into results.parquet and predictions.parquet."""
    metrics, preds, infos = [], [], []
    for cell in cells:
        if not is_done(output, cell.id):
            continue
        d = cell_dir(output, cell.id)
        metrics.append(storage.read_parquet(storage.join(d, "metrics.parquet")))
        preds.append(storage.read_parquet(storage.join(d, "predictions.parquet")))
        infos.append(storage.read_json(storage.join(d, "cell.json")))
    results = _concat(metrics)
    if results is not None:
        storage.write_parquet(storage.join(output, "results.parquet"), results)
    predictions = _concat(preds)
    if predictions is not None:
        storage.write_parquet(storage.join(output, "predictions.parquet"), predictions)
    return {"results": results, "predictions": predictions, "cells": infos}


def _concat(tables: List[pa.Table]) -> Optional[pa.Table]:
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def load_results(output: str) -> pa.Table:
    return storage.read_parquet(storage.join(output, "results.parquet"))


def load_cell_infos(output: str, cells: List[Cell]) -> List[dict]:
    return [json.loads(storage.read_text(storage.join(cell_dir(output, c.id), "cell.json")))
            for c in cells if is_done(output, c.id)]
