"""The run's outputs. Each finished cell is a directory of its own, complete once cell.json exists:

  OUTPUT/cells/<cell_id>/metrics.parquet      one row per metric, with bootstrap CI
  OUTPUT/cells/<cell_id>/predictions.parquet  classification: per-sample test scores (pseudonymised ids)
  OUTPUT/cells/<cell_id>/cases.parquet        segmentation: per case and class, Dice, Jaccard, HD95
  OUTPUT/cells/<cell_id>/cell.json            what ran, what was selected on validation, cost

`gather` turns them into the tidy tables beside them: results.parquet (one row per cell ×
metric), predictions.parquet and cases.parquet (raddist.cells.outputs has their columns).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import pyarrow as pa

from raddist import storage
from raddist.plan import Cell

PER_CELL_TABLES = ("predictions.parquet", "cases.parquet")


def cell_dir(output: str, cell_id: str) -> str:
    return storage.join(output, "cells", cell_id)


def is_done(output: str, cell_id: str) -> bool:
    return storage.exists(storage.join(cell_dir(output, cell_id), "cell.json"))


def write_cell(output: str, cell: Cell, metric_rows: List[dict], tables: Dict[str, pa.Table], info: dict) -> None:
    """tables: file name (one of PER_CELL_TABLES) -> table."""
    d = cell_dir(output, cell.id)
    for name, table in tables.items():
        storage.write_parquet(storage.join(d, name), table)
    desc = cell.describe()
    rows = [{**desc, **r} for r in metric_rows]
    storage.write_parquet(storage.join(d, "metrics.parquet"), pa.Table.from_pylist(rows))
    storage.write_json(storage.join(d, "cell.json"), {**desc, **info})  # last: marks the cell done


def write_failure(output: str, cell: Cell, error: str) -> None:
    storage.write_json(storage.join(cell_dir(output, cell.id), "failed.json"), {**cell.describe(), "error": error})


def gather(output: str, cells: List[Cell]) -> dict:
    """Concatenate the finished cells of this plan into results.parquet, predictions.parquet and
    cases.parquet."""
    metrics, infos, tables = [], [], {name: [] for name in PER_CELL_TABLES}
    for cell in cells:
        if not is_done(output, cell.id):
            continue
        d = cell_dir(output, cell.id)
        metrics.append(storage.read_parquet(storage.join(d, "metrics.parquet")))
        for name in PER_CELL_TABLES:
            if storage.exists(storage.join(d, name)):
                tables[name].append(storage.read_parquet(storage.join(d, name)))
        infos.append(storage.read_json(storage.join(d, "cell.json")))
    gathered = {"cells": infos}
    for name, parts in [("results.parquet", metrics)] + list(tables.items()):
        table = _concat(parts)
        if table is not None:
            storage.write_parquet(storage.join(output, name), table)
        gathered[name.removesuffix(".parquet")] = table
    return gathered


def _concat(tables: List[pa.Table]) -> Optional[pa.Table]:
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")
