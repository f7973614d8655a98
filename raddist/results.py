"""The run's outputs. Each finished cell is a directory of its own, complete once cell.json exists:

  OUTPUT/cells/<cell_id>/metrics.parquet      one row per metric, with bootstrap CI
  OUTPUT/cells/<cell_id>/predictions.parquet  classification: per-sample test scores (pseudonymised ids)
  OUTPUT/cells/<cell_id>/cases.parquet        segmentation: per case and class, Dice, Jaccard, HD95
  OUTPUT/cells/<cell_id>/cell.json            what ran, what was selected on validation, cost

`gather` turns them into the tidy tables beside them: results.parquet (one row per cell ×
metric), predictions.parquet and cases.parquet (raddist.cells.outputs has their columns). At study
scale (3,192 cells, ~10,000 files on S3) it lists the cells once and reads their files in parallel.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Set

import pyarrow as pa
import pyarrow.fs as pafs

from raddist import storage
from raddist.plan import Cell

PER_CELL_TABLES = ("predictions.parquet", "cases.parquet")
READ_THREADS = 32  # object stores serve parallel GETs; one at a time, 3,192 cells took minutes


def cell_dir(output: str, cell_id: str) -> str:
    return storage.join(output, "cells", cell_id)


def is_done(output: str, cell: Cell) -> bool:
    return all(storage.exists(storage.join(cell_dir(output, cell.id), name)) for name in cell_files(cell))


def listing(output: str) -> Dict[str, Set[str]]:
    """cell id -> the files its directory holds, from one recursive listing of OUTPUT/cells."""
    fs, path = storage.filesystem(storage.join(output, "cells"))
    files: Dict[str, Set[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True)):
        if info.type == pafs.FileType.File:
            rel = posixpath.relpath(info.path, path).split("/")
            if len(rel) == 2:  # <cell_id>/<file>; checkpoints and masks lie deeper
                files.setdefault(rel[0], set()).add(rel[1])
    return files


def cell_files(cell: Cell) -> Set[str]:
    """The files a finished cell holds: cell.json (written last), its metrics and its per-sample table."""
    return {"cell.json", "metrics.parquet", "cases.parquet" if cell.task.type == "segmentation" else "predictions.parquet"}


def done_cells(output: str, cells: List[Cell]) -> Set[str]:
    """The ids of these cells whose every file is there; a cell missing one is computed again."""
    files = listing(output)
    return {c.id for c in cells if cell_files(c) <= files.get(c.id, set())}


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


def write_input_errors(output: str, jobs: List[tuple], cache, salt: str) -> int:
    """errors.parquet: one row per task x image that could not be read, with the reason, under the
    image's pseudonym and its manifest row (never its uri: file names may carry patient ids; `raddist
    errors OUTPUT --reveal` shows them where the salt is). jobs: (task spec, cache key). Returns the count."""
    from raddist.data import manifest as manifest_lib
    from raddist.privacy import pseudonym

    rows, seen = [], set()
    for task, key in jobs:
        errors = cache.errors(key).to_pylist()
        if not errors:
            continue
        ids = manifest_lib.load(task.manifest, salt)["sample_id"].to_pylist()
        for e in errors:
            if (task.name, e["row"], e["slice"]) in seen:
                continue
            seen.add((task.name, e["row"], e["slice"]))
            sample = ids[e["row"]] if e["slice"] < 0 else f"{ids[e['row']]}:{e['slice']}"
            rows.append({"task": task.name, "sample_id": pseudonym(sample, salt), "row": e["row"],
                         "slice": e["slice"], "error": e["error"]})
    _write_or_remove(storage.join(output, "errors.parquet"), pa.Table.from_pylist(rows) if rows else None)
    return len(rows)


def gather(output: str, cells: List[Cell]) -> dict:
    """Concatenate the finished cells of this plan into results.parquet, predictions.parquet and
    cases.parquet, each rewritten from this plan alone (removed when it has nothing to hold): one
    listing, then every file read in parallel."""
    files = listing(output)
    done = [c.id for c in cells if cell_files(c) <= files.get(c.id, set())]

    def read(cell_id: str):
        d = cell_dir(output, cell_id)
        extra = {name: storage.read_parquet(storage.join(d, name)) for name in PER_CELL_TABLES if name in files[cell_id]}
        return storage.read_parquet(storage.join(d, "metrics.parquet")), extra, storage.read_json(storage.join(d, "cell.json"))

    with ThreadPoolExecutor(READ_THREADS) as pool:
        read_cells = list(pool.map(read, done))
    metrics = [m for m, _, _ in read_cells]
    infos = [i for _, _, i in read_cells]
    tables = {name: [extra[name] for _, extra, _ in read_cells if name in extra] for name in PER_CELL_TABLES}
    gathered = {"cells": infos}
    for name, parts in [("results.parquet", metrics)] + list(tables.items()):
        table = _concat(parts)
        _write_or_remove(storage.join(output, name), table)
        gathered[name.removesuffix(".parquet")] = table
    return gathered


def _concat(tables: List[pa.Table]) -> Optional[pa.Table]:
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def _write_or_remove(uri: str, table: Optional[pa.Table]) -> None:
    """An output table matches its run: written when the run has rows for it, else removed (an older
    run's would describe cells or images this run does not have)."""
    if table is not None:
        storage.write_parquet(uri, table)
    elif storage.exists(uri):
        storage.delete_file(uri)
