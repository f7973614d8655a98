"""Run one evaluation cell where Ray placed it: its inputs, its protocol, its scores, its outputs.

Frozen protocols get their task's cached features joined to the manifest; trainable ones get the
images. A failing cell writes failed.json and reports it; it never ends the sweep.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

from raddist import protocols, results, storage
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import EmbeddingCache
from raddist.plan import Cell


@dataclass(frozen=True)
class CellContext:
    """What every cell of a sweep shares, decided once by the driver."""

    cache_root: str
    output: str
    n_boot: int
    salt: str
    resources: object  # spec.ResourcesSpec
    train_gpu: bool = False  # trainable cells' Ray Train workers take a GPU each


@lru_cache(maxsize=2)
def _frozen_inputs(task_json: str, key: str, cache_root: str, salt: str, external_keys: str = "{}"):
    """Per worker process: the joined inputs of one (task, embeddings), reused by its cells; with its
    external test sets' (external_keys: JSON of test-set name -> cache key; raddist.external)."""
    from raddist.cells.corrupted import with_corrupted
    from raddist.cells.inputs import frozen_inputs, load_external
    from raddist.spec import TaskSpec

    task = TaskSpec.model_validate_json(task_json)
    cached = EmbeddingCache(cache_root).load(key)
    inputs = frozen_inputs(task, manifest_lib.load(task.manifest, salt), cached)
    external = json.loads(external_keys)
    inputs = load_external(inputs, task, external, cache_root, salt) if task.external else inputs
    return with_corrupted(inputs, task, external, cache_root, salt)  # corruption/ test sets (robustness)


def gpus_held(cell: Cell, ctx: CellContext) -> float:
    """GPUs the cell holds for its wall time: its Ray Train workers' when it trains, else its own."""
    if protocols.get(cell.protocol).trainable:
        return float(ctx.resources.train_workers) if ctx.train_gpu else 0.0
    return float(ctx.resources.gpus_per_cell)


def score(cell: Cell, prediction, class_names: List[str], n_boot: int,
          groups: Optional[dict] = None) -> Tuple[List[dict], Optional[dict]]:
    """(metric rows, per-case values or None): metrics with patient-bootstrap intervals; for
    classification also calibration (raddist.calibration) and, given groups (column -> each test
    sample's group), subgroup rows (raddist.subgroups)."""
    if cell.task.type == "segmentation":
        from raddist.seg_metrics import score_cases

        return score_cases(prediction.cases, class_names, n_boot=n_boot, seed=cell.seed)
    from raddist.calibration import score_calibration
    from raddist.metrics import score_prediction
    from raddist.subgroups import score_subgroups

    rows = score_prediction(cell.task.type, prediction, class_names, n_boot=n_boot, seed=cell.seed)
    rows += score_calibration(cell.task.type, prediction, class_names, n_boot=n_boot, seed=cell.seed)
    if groups:
        rows += score_subgroups(cell.task.type, prediction, class_names, groups, cell.task.min_group_patients,
                                n_boot=n_boot, seed=cell.seed)
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row every column (a table takes the first's)
    return [{k: r.get(k) for k in keys} for r in rows], None


def score_extra(cell: Cell, prediction, class_names: List[str], n_boot: int) -> List[dict]:
    """The metric rows of the further test sets the selected head scored (protocols.selection.EXTRA_TEST),
    each metric named <test set>/<metric> (e.g. external/shenzhen/auroc), with its own patient bootstrap."""
    from raddist.metrics import score_prediction

    rows = []
    for name, extra in sorted(getattr(prediction, "extra", {}).items()):
        for row in score_prediction(cell.task.type, extra, class_names, n_boot=n_boot, seed=cell.seed):
            rows.append({**row, "metric": f"{name}/{row['metric']}"})
    return rows


def subgroup_values(cell: Cell, prediction, salt: str) -> Optional[dict]:
    """column -> each test sample's group, pooled (raddist.subgroups); None without subgroups."""
    if not cell.task.subgroups or cell.task.type == "segmentation":
        return None
    from raddist.subgroups import manifest_values, pool_small

    table = manifest_lib.load(cell.task.manifest, salt)
    values = manifest_values(cell.task, table, prediction.sample_ids, prediction.patient_ids)
    return {c: pool_small(v, prediction.patient_ids, cell.task.min_group_patients) for c, v in values.items()}


def evaluate_cell(cell: Cell, key: Optional[str], ctx: CellContext) -> dict:
    """Run the cell and write its outputs; key: its embedding job's cache key (None: it trains)."""
    from raddist.cells.inputs import train_inputs
    from raddist.cells.outputs import cases_table, predictions_table, write_masks
    from raddist.cells.corrupted import drop_rows as corruption_drops
    from raddist.external import attach_labels, drop_rows

    wall0, cpu0 = time.time(), time.process_time()
    record = protocols.get(cell.protocol)
    cell_dir = results.cell_dir(ctx.output, cell.id)
    try:
        if record.trainable:
            table = manifest_lib.load(cell.task.manifest, ctx.salt)
            inputs = train_inputs(cell, table, storage.join(cell_dir, "checkpoints"), ctx.resources, ctx.train_gpu)
        else:
            inputs = _frozen_inputs(cell.task.model_dump_json(), key, ctx.cache_root, ctx.salt,
                                    json.dumps(cell.external_keys, sort_keys=True))
        start = time.time()
        prediction = record.run(inputs, record.parse(cell.params), cell.seed)
        attach_labels(cell, prediction, ctx.salt)  # the external test sets' labels: read only now, to score
        groups = subgroup_values(cell, prediction, ctx.salt)
        rows, per_case = score(cell, prediction, inputs.class_names, ctx.n_boot, groups)
        if prediction.extra:  # further test sets (classification only): their scores and drops
            rows += score_extra(cell, prediction, inputs.class_names, ctx.n_boot)
            rows += drop_rows(cell, prediction, inputs.class_names, ctx.n_boot)
            rows += corruption_drops(cell, prediction, inputs.class_names, ctx.n_boot)  # paired, same patients
        seconds = time.time() - start
        if per_case is not None:
            tables = {"cases.parquet": cases_table(cell, prediction, per_case, inputs.class_names, ctx.salt)}
            masks = write_masks(prediction, cell_dir, ctx.salt)
            n_test = len(prediction.cases)
        else:
            tables = {"predictions.parquet": predictions_table(cell, prediction, ctx.salt, groups)}
            masks, n_test = 0, len(prediction.sample_ids)
        wall = time.time() - wall0
        info = {
            "embeddings": key,
            "selected": prediction.selected,
            "val_score": prediction.val_score,
            "n_test": int(n_test),
            **({"masks_written": masks} if masks else {}),
            "seconds": round(seconds, 3),
            "started_at": round(wall0, 3), "finished_at": round(time.time(), 3),  # Unix seconds
            # cost: this process's CPU time, and the GPUs held for the cell's wall time
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
            "gpu_seconds": round(wall * gpus_held(cell, ctx), 3),
        }
        results.write_cell(ctx.output, cell, rows, tables, info)
        # the metrics travel with the report for Tune's callbacks (raddist.tracking)
        metric_rows = [{k: r.get(k) for k in ("metric", "value", "ci_low", "ci_high")} for r in rows]
        return {"cell_id": cell.id, "ok": True, "seconds": seconds, "metric_rows": metric_rows}
    except Exception as e:  # noqa: BLE001 - one failed cell must not end the sweep
        error = f"{type(e).__name__}: {e}"
        results.write_failure(ctx.output, cell, error + "\n" + traceback.format_exc(limit=5))
        return {"cell_id": cell.id, "ok": False, "error": error}
