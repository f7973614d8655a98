"""Run a plan: embedding jobs first, then the evaluation cells that read them.

Finished cells are content-addressed directories in the output, so rerunning the same command
runs only what is missing. Cells run as Ray Tune trials with the resources their protocol needs;
Tune schedules them over whatever the cluster has and retries a trial whose node was lost.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Optional

import pyarrow as pa

from raddist import results, storage
from raddist.cells.run import CellContext
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


def run_sweep(spec: SweepSpec, output: Optional[str] = None, say: Callable[[str], None] = print) -> dict:
    import ray

    from raddist.embed.pipeline import actor_resources, run_embedding_jobs
    from raddist.privacy import deployment_salt

    from raddist.spec import require_vars

    started = time.time()
    require_vars(spec)
    output = storage.normalize(output or spec.storage.output)
    plan = make_plan(spec)
    validate_manifests(spec)
    ensure_ray()
    storage.makedirs(output)
    cache = EmbeddingCache(spec.storage.cache_uri())
    salt = deployment_salt()
    say(f"plan: {len(plan.cells)} cells, {len(plan.jobs)} embedding jobs → {output}")

    keys: Dict[str, str] = {}
    counts = {"computed": 0, "cached": 0, "images": 0}
    gpus = actor_resources(spec.resources)
    job_costs = []

    def record(job, outcome):
        keys[job.id] = outcome.key
        counts["computed" if outcome.computed else "cached"] += 1
        counts["images"] += outcome.images
        rate = outcome.images / max(outcome.seconds, 1e-9)
        verb = f"embedded {outcome.images} images in {outcome.seconds:.1f}s ({rate:.0f} img/s)" \
            if outcome.computed else "cached"
        say(f"  embeddings {job.backbone.label} × {job.task.name}: {verb}, {outcome.errors} input errors")
        job_costs.append({
            "job_id": job.id, "key": outcome.key, "backbone": job.backbone.label, "task": job.task.name,
            "computed": bool(outcome.computed), "images": outcome.images, "wall_seconds": round(outcome.seconds, 3),
            "gpu_seconds": round(outcome.seconds * gpus["actors"] * gpus["num_gpus"], 3) if outcome.computed else 0.0,
        })

    # one Dataset and actor pool per backbone: its weights load once for all of its tasks
    run_embedding_jobs(list(plan.jobs.values()), cache, spec.resources, salt, on_outcome=record)
    computed, cached_jobs, images = counts["computed"], counts["cached"], counts["images"]
    storage.write_json(storage.join(output, "embedding_jobs.json"), job_costs)
    input_errors = _write_input_errors(plan, keys, cache, output)

    pending = [c for c in plan.cells if not results.is_done(output, c.id)]
    say(f"cells: {len(plan.cells) - len(pending)} already done, {len(pending)} to run")
    ctx = CellContext(cache.root, output, spec.bootstrap, salt, spec.resources, train_gpu(spec.resources))
    outcomes = _run_cells(plan, pending, keys, ctx, say)

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


def train_gpu(resources) -> bool:
    """Whether trainable cells' Ray Train workers take GPUs: the spec's choice, else when the cluster has them."""
    import ray

    if resources.train_use_gpu is not None:
        return resources.train_use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def _run_cells(plan: Plan, pending: List[Cell], keys, ctx: CellContext, say) -> List[dict]:
    """Each pending cell is one Ray Tune trial, with the resources its protocol needs."""
    if not pending:
        return []
    from ray import tune

    from raddist.progress import ProgressCallback

    res = plan.spec.resources
    by_id = {c.id: c for c in pending}
    trainable = tune.with_parameters(_cell_trial, cells=by_id, keys=keys, ctx=ctx)
    trainable = tune.with_resources(trainable, lambda config: _trial_resources(by_id[config["cell_id"]], res))
    tune_fs, tune_path = storage.filesystem(storage.join(ctx.output, "tune"))
    progress = ProgressCallback(ctx.output, by_id, total=len(plan.cells), quiet=say is None)
    tuner = tune.Tuner(
        trainable,
        param_space={"cell_id": tune.grid_search(list(by_id))},
        # reuse_actors: a cell takes seconds; a fresh worker process per trial would cost more
        tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent_cells, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{plan.spec.name}-tune",
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            failure_config=tune.FailureConfig(max_failures=2),  # a lost node re-runs the trial
            callbacks=[progress],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        metrics = result.metrics or {}
        cell_id = (result.config or {}).get("cell_id")
        if metrics.get("ok"):
            outcomes.append({"cell_id": cell_id, "ok": True, "seconds": metrics.get("seconds", 0.0)})
        else:
            error = metrics.get("error") or (str(result.error) if result.error else "trial failed")
            outcomes.append({"cell_id": cell_id, "ok": False, "error": error})
    return outcomes


def _trial_resources(cell: Cell, res):
    from ray import tune

    from raddist import protocols

    trains = protocols.get(cell.protocol).trainable
    # a trainable cell only coordinates; its Ray Train workers hold their own CPUs and GPUs
    bundle = {"CPU": res.cpus_per_cell, "GPU": 0.0 if trains else res.gpus_per_cell}
    return tune.PlacementGroupFactory([bundle])


def _cell_trial(config, cells, keys, ctx):
    import ray
    from ray import tune

    from raddist.cells import evaluate_cell

    ray.data.DataContext.get_current().enable_progress_bars = False  # trainable cells read with Ray Data
    cell = cells[config["cell_id"]]
    outcome = evaluate_cell(cell, keys.get(cell.embedding_job), ctx)
    tune.report({k: v for k, v in outcome.items() if k != "cell_id"})


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
