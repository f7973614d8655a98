"""Run one evaluation cell where Ray placed it, and write its outputs.

Frozen protocols get their task's cached features joined to the manifest; trainable ones get
the images. A failing cell writes failed.json and reports it; it never ends the sweep.
"""

from __future__ import annotations

import time
import traceback
from functools import lru_cache
from typing import Optional

from raddist import results, storage
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import EmbeddingCache
from raddist.plan import Cell

@lru_cache(maxsize=2)
def _task_inputs(task_json: str, key: str, cache_root: str, salt: str):
    """Per worker process: the joined inputs of one (task, embeddings), reused by its cells."""
    from raddist.evaluate import frozen_inputs
    from raddist.spec import TaskSpec

    task = TaskSpec.model_validate_json(task_json)
    cached = EmbeddingCache(cache_root).load(key)
    return frozen_inputs(task, manifest_lib.load(task.manifest, salt), cached)


def train_inputs(cell: Cell, resources, output: str, salt: str):
    import ray

    from raddist.protocols.base import TrainInputs

    table = manifest_lib.load(cell.task.manifest, salt)
    use_gpu = resources.train_use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    return TrainInputs(
        task_type=cell.task.type,
        class_names=cell.task.class_names,
        label_columns=list(cell.task.labels),
        manifest=table,
        backbone=cell.backbone.name,
        weights=cell.backbone.weights,
        contract=cell.contract,
        checkpoint_dir=storage.join(results.cell_dir(output, cell.id), "checkpoints"),
        num_workers=resources.train_workers,
        use_gpu=bool(use_gpu),
    )


def _gpus_held(cell: Cell, resources) -> float:
    if resources is None:
        return 0.0
    if cell.embedding_job is None:  # trainable: its Ray Train workers hold the GPUs
        return float(resources.train_workers) if getattr(resources, "train_use_gpu", False) else 0.0
    return float(resources.gpus_per_cell)


def evaluate_cell(cell: Cell, key: Optional[str], cache_root: str, output: str, n_boot: int, salt: str,
                  resources=None) -> dict:
    from raddist.evaluate import predictions_table, run_cell, write_masks

    wall0, cpu0 = time.time(), time.process_time()
    try:
        if key is None:  # a trainable protocol: it reads images, not cached features
            inputs = train_inputs(cell, resources, output, salt)
        else:
            inputs = _task_inputs(cell.task.model_dump_json(), key, cache_root, salt)
        prediction, rows, seconds = run_cell(cell, inputs, n_boot)
        masks = write_masks(prediction, results.cell_dir(output, cell.id), salt)  # segmentation: label maps
        wall = time.time() - wall0
        info = {
            "embeddings": key,
            "selected": prediction.selected,
            "val_score": prediction.val_score,
            "n_test": int(len(prediction.sample_ids)),
            **({"masks_written": masks} if masks else {}),
            "seconds": round(seconds, 3),
            # cost: this process's CPU time, and the GPUs held for the cell's wall time
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
            "gpu_seconds": round(wall * _gpus_held(cell, resources), 3),
        }
        results.write_cell(output, cell, rows, predictions_table(cell, prediction, salt), info)
        return {"cell_id": cell.id, "ok": True, "seconds": seconds}
    except Exception as e:  # noqa: BLE001 - one failed cell must not end the sweep
        error = f"{type(e).__name__}: {e}"
        results.write_failure(output, cell, error + "\n" + traceback.format_exc(limit=5))
        return {"cell_id": cell.id, "ok": False, "error": error}


