"""Run a plan: embedding jobs first, then the evaluation cells that read them.

Finished cells are content-addressed directories in the output, so rerunning the same command
runs only what is missing. Cells run as Ray tasks with the resources the spec gives them.
"""

from __future__ import annotations

import logging
import time
import traceback
from functools import lru_cache
from typing import Callable, Dict, List, Optional

import pyarrow as pa

from raddist import results, storage
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import EmbeddingCache
from raddist.plan import Cell, Plan, make_plan
from raddist.spec import SweepSpec

log = logging.getLogger(__name__)


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def validate_manifests(spec: SweepSpec) -> None:
    """Fail before any work when a manifest is missing or breaks its schema."""
    for task in spec.tasks:
        table = manifest_lib.load(task.manifest)
        num_classes = len(task.classes) if task.classes else None
        manifest_lib.validate(table, task.manifest, task.labels, task.type, num_classes)


@lru_cache(maxsize=2)
def _task_inputs(task_json: str, key: str, cache_root: str):
    """Per worker process: the joined inputs of one (task, embeddings), reused by its cells."""
    from raddist.evaluate import frozen_inputs
    from raddist.spec import TaskSpec

    task = TaskSpec.model_validate_json(task_json)
    cached = EmbeddingCache(cache_root).load(key)
    return frozen_inputs(task, manifest_lib.load(task.manifest), cached)


def train_inputs(cell: Cell, resources, output: str):
    import ray

    from raddist.protocols.base import TrainInputs

    table = manifest_lib.load(cell.task.manifest)
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


def evaluate_cell(cell: Cell, key: Optional[str], cache_root: str, output: str, n_boot: int, salt: str,
                  resources=None) -> dict:
    from raddist.evaluate import predictions_table, run_cell

    try:
        if key is None:  # a trainable protocol: it reads images, not cached features
            inputs = train_inputs(cell, resources, output)
        else:
            inputs = _task_inputs(cell.task.model_dump_json(), key, cache_root)
        prediction, rows, seconds = run_cell(cell, inputs, n_boot)
        info = {
            "embeddings": key,
            "selected": prediction.selected,
            "val_score": prediction.val_score,
            "n_test": int(len(prediction.sample_ids)),
            "seconds": round(seconds, 3),
        }
        results.write_cell(output, cell, rows, predictions_table(cell, prediction, salt), info)
        return {"cell_id": cell.id, "ok": True, "seconds": seconds}
    except Exception as e:  # noqa: BLE001 - one failed cell must not end the sweep
        error = f"{type(e).__name__}: {e}"
        results.write_failure(output, cell, error + "\n" + traceback.format_exc(limit=5))
        return {"cell_id": cell.id, "ok": False, "error": error}


def run_sweep(spec: SweepSpec, output: Optional[str] = None, say: Callable[[str], None] = print) -> dict:
    import ray

    from raddist.embed.pipeline import run_embedding_job
    from raddist.privacy import deployment_salt

    started = time.time()
    output = storage.normalize(output or spec.storage.output)
    plan = make_plan(spec)
    validate_manifests(spec)
    ensure_ray()
    storage.makedirs(output)
    cache = EmbeddingCache(spec.storage.cache_uri())
    say(f"plan: {len(plan.cells)} cells, {len(plan.jobs)} embedding jobs → {output}")

    keys: Dict[str, str] = {}
    computed = cached_jobs = images = 0
    for job in plan.jobs.values():
        outcome = run_embedding_job(job, cache, spec.resources)
        keys[job.id] = outcome.key
        computed += outcome.computed
        cached_jobs += not outcome.computed
        images += outcome.images
        verb = f"embedded {outcome.images} images in {outcome.seconds:.1f}s" if outcome.computed else "cached"
        say(f"  embeddings {job.backbone.label} × {job.task.name}: {verb}, {outcome.errors} input errors")
    input_errors = _write_input_errors(plan, keys, cache, output)

    pending = [c for c in plan.cells if not results.is_done(output, c.id)]
    say(f"cells: {len(plan.cells) - len(pending)} already done, {len(pending)} to run")
    outcomes = _run_cells(plan, pending, keys, cache.root, output, deployment_salt(), say)

    gathered = results.gather(output, plan.cells)
    done = sum(results.is_done(output, c.id) for c in plan.cells)
    summary = {
        "cells_total": len(plan.cells),
        "cells_done": done,
        "cells_failed": sum(not o["ok"] for o in outcomes),
        "cells_run_now": len(outcomes),
        "embedding_jobs_computed": int(computed),
        "embedding_jobs_cached": int(cached_jobs),
        "images_embedded": int(images),
        "input_errors": input_errors,
        "wall_seconds": round(time.time() - started, 1),
        "cache": cache.root,
    }
    storage.write_json(storage.join(output, "summary.json"), summary)
    from raddist.report import write_report

    write_report(output, gathered, summary)
    return summary


def _run_cells(plan: Plan, pending: List[Cell], keys, cache_root, output, salt, say) -> List[dict]:
    import ray

    res = plan.spec.resources
    task = ray.remote(evaluate_cell).options(num_cpus=res.cpus_per_cell, num_gpus=res.gpus_per_cell, max_retries=2)
    in_flight, outcomes, queue = {}, [], list(pending)
    while queue or in_flight:
        while queue and len(in_flight) < res.max_concurrent_cells:
            cell = queue.pop(0)
            ref = task.remote(cell, keys.get(cell.embedding_job), cache_root, output, plan.spec.bootstrap, salt, res)
            in_flight[ref] = cell
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            cell = in_flight.pop(ref)
            outcome = ray.get(ref)
            outcomes.append(outcome)
            status = f"{outcome['seconds']:.1f}s" if outcome["ok"] else f"FAILED: {outcome['error']}"
            say(f"  [{len(outcomes)}/{len(pending)}] {cell.backbone.label} × {cell.task.name} × {cell.protocol} {status}")
    return outcomes


def _write_input_errors(plan: Plan, keys: Dict[str, str], cache: EmbeddingCache, output: str) -> int:
    """One row per task × file that could not be read, with its reason. Returns the count."""
    tables, seen = [], set()
    for job in plan.jobs.values():
        errors = storage.read_parquet(cache.uri(keys[job.id], "errors.parquet"))
        rows = [r for r in errors.to_pylist() if (job.task.name, r["sample_id"]) not in seen]
        seen.update((job.task.name, r["sample_id"]) for r in rows)
        if rows:
            tables.append(pa.Table.from_pylist([{"task": job.task.name, **r} for r in rows]))
    if tables:
        storage.write_parquet(storage.join(output, "errors.parquet"), pa.concat_tables(tables))
    return len(seen)
