"""Run a plan: the embedding jobs in the driver, and beside them the cells, each started as soon as what it
reads exists (raddist.trials).

Before Ray starts, everything checkable is checked (raddist.preflight); with Ray up, the cluster's
side (raddist.cluster): shared storage, the device, the salt. Finished cells are content-addressed
directories in the output, so rerunning the same command runs only what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from raddist import cluster, preflight, provenance, results, storage
from raddist.cells.run import CellContext
from raddist.embed.cache import EmbeddingCache
from raddist.plan import make_plan
from raddist.spec import SweepSpec

log = logging.getLogger(__name__)


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local one.
    Ray's own output goes to its log files (the session directory), not to this console."""
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.tune", "ray.train"):  # their INFO lines belong in Ray's log files
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal").setLevel(logging.ERROR)  # "progress bars disabled": we disabled them


def run_sweep(spec: SweepSpec, output: Optional[str] = None, say: Callable[[str], None] = print) -> dict:
    from raddist.embed.jobs import EmbeddingRun
    from raddist.privacy import deployment_salt, fingerprint
    from raddist.progress import RunProgress
    from raddist.trials import JobStates, run_cells

    started = time.time()
    output = storage.normalize(output or spec.storage.output)
    cache = EmbeddingCache(spec.storage.cache_uri(output))
    plan = make_plan(spec)
    preflight.before_ray(spec, output, cache.root)
    salt = deployment_salt()
    preflight.same_salt(spec, output, fingerprint(salt))
    ensure_ray()
    cluster.keep_credentials_out_of_runtime_envs()
    cluster.require_shared_storage(spec, output, cache.root)
    if cluster.is_multi_node():
        cluster.check_nodes_reach([output, cache.root])
    device = cluster.resolve_device(spec.resources.device, say, spec.resources.gpu_wait_s)
    plan, sources = provenance.bind(plan, device, spec.resources.gpu_jpeg_decode)
    done = results.done_cells(output)
    pending = [c for c in plan.cells if c.id not in done]
    say(f"plan: {len(plan.cells)} cells, {len(plan.jobs)} embedding jobs → {output} (device: {device})")
    say(f"cells: {len(plan.cells) - len(pending)} already done, {len(pending)} to run")
    changes = provenance.changes(output, sources, pending)
    for change in changes:
        say(provenance.describe(change))
    provenance.write_record(output, sources)

    progress = RunProgress(output, len(plan.cells), len(plan.jobs))
    progress.update(lambda s: s["cells"].__setitem__("pending_at_start", len(pending)))
    jobs = JobStates(train_during_embedding=device == "gpu")
    records: List[dict] = []

    def record(job, outcome):
        jobs.done(job.id, outcome.key, outcome.error)
        progress.job_done(outcome.error is not None)
        records.append(_job_record(job, outcome, device))
        verb = {"cached": "cached", "failed": f"FAILED: {outcome.error}"}.get(
            outcome.source, f"embedded {outcome.images} images in {outcome.seconds:.1f}s "
                            f"({outcome.images / max(outcome.seconds, 1e-9):.0f} img/s, {outcome.source})")
        say(f"  embeddings {job.backbone.label} × {job.task.name}: {verb}, {outcome.errors} input errors")

    embedding = EmbeddingRun(cache, spec.resources, device, say, progress.embedding)
    failure: Dict[str, BaseException] = {}

    def embed_all():
        try:
            embedding.run(list(plan.jobs.values()), spec.max_input_error_rate, record)
        except BaseException as e:  # noqa: BLE001 - reported below, after the cells that can run have run
            failure["error"] = e
        finally:
            jobs.finished = True

    thread = threading.Thread(target=embed_all, name="raddist-embedding", daemon=True)
    thread.start()
    ctx = CellContext(cache.root, output, spec.bootstrap, salt, spec.resources, train_gpu=device == "gpu")
    outcomes = run_cells(spec, pending, jobs, ctx, progress, say)
    thread.join()
    storage.write_json(storage.join(output, "embedding_jobs.json"), records)
    if "error" in failure:
        raise failure["error"]
    input_errors = results.write_input_errors(output, [(plan.jobs[r["job_id"]].task, r["key"]) for r in records
                                                       if r["source"] != "failed"], cache, salt)
    gathered = results.gather(output, plan.cells)
    summary = {
        "cells_total": len(plan.cells),
        "cells_done": len(gathered["cells"]),
        "cells_failed": sum(not o["ok"] for o in outcomes),
        "cells_run_now": len(outcomes),
        "changes": [{**c, "line": provenance.describe(c)} for c in changes],
        "embedding_jobs_computed": sum(r["computed"] for r in records),
        "embedding_jobs_cached": sum(r["source"] == "cached" for r in records),
        "embedding_jobs_failed": sum(r["source"] == "failed" for r in records),
        "images_embedded": sum(r["images"] for r in records),
        "input_errors": input_errors,
        "device": device,
        "mode": spec.mode,
        "wall_seconds": round(time.time() - started, 1),
        "cache": cache.root,
    }
    storage.write_json(storage.join(output, "summary.json"), summary)
    progress.finish()
    from raddist.report import write_report

    write_report(output, gathered, summary)
    return summary


def _job_record(job, outcome, device: str) -> dict:
    """A line of embedding_jobs.json: what the job cost, where its pixels came from, when it ended."""
    return {"job_id": job.id, "key": outcome.key, "backbone": job.backbone.label, "task": job.task.name,
            "computed": bool(outcome.computed), "source": outcome.source, "images": outcome.images,
            "errors": outcome.errors, "error": outcome.error, "wall_seconds": round(outcome.seconds, 3),
            "gpu_seconds": round(outcome.seconds, 3) if outcome.computed and device == "gpu" else 0.0,
            "finished_at": round(outcome.finished_at, 3)}

