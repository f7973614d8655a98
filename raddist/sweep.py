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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from raddist import cluster, preflight, provenance, results, storage
from raddist.cells.run import CellContext
from raddist.embed.cache import EmbeddingCache
from raddist.embed.jobs import Source
from raddist.plan import Plan, make_plan
from raddist.spec import SweepSpec

log = logging.getLogger(__name__)
STOP_GRACE_S = 3.0  # after Ctrl-C, how long the embedding may take to reach its next block


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
    """Run a sweep into its output; the summary it writes. Ctrl-C or SIGTERM stops it cleanly
    (raddist.interrupt): the summary's state is then "interrupted"."""
    from raddist.interrupt import StopRequest

    started = time.time()
    output = storage.normalize(output or spec.storage.output)
    cache = EmbeddingCache(spec.storage.cache_uri(output))
    plan = make_plan(spec)
    preflight.before_ray(spec, output, cache.root)
    provenance.require_same_sweep(output, spec.name)
    stop = StopRequest()
    try:
        run = _start(spec, plan, output, cache, say)
        stop.install()  # after Ray's own handlers: ours decide what a Ctrl-C does
        outcomes, records = _embed_and_run_cells(run, stop, say)
        return _finish(run, outcomes, records, stop, started, say)
    finally:
        if not stop.requested:  # stopping: a second Ctrl-C during Ray's shutdown still exits at once
            stop.uninstall()


@dataclass
class _Run:
    """What a started run holds: its bound plan, output, cache, salt, device and progress."""

    spec: SweepSpec
    plan: Plan
    output: str
    cache: EmbeddingCache
    salt: str
    device: str
    pending: list
    changes: list
    progress: object


def _start(spec: SweepSpec, plan, output: str, cache: EmbeddingCache, say) -> _Run:
    """Ray up, the cluster checked, the plan bound to what it reads, and what changed said."""
    from raddist.privacy import deployment_salt, fingerprint, require_durable_salt
    from raddist.progress import RunProgress

    ensure_ray()
    require_durable_salt()  # before a head-local salt is made or recorded in the output
    salt = deployment_salt()
    preflight.same_salt(spec, output, fingerprint(salt))
    cluster.keep_credentials_out_of_runtime_envs()
    cluster.require_shared_storage(spec, output, cache.root)
    if cluster.is_multi_node():
        cluster.check_nodes_reach([output, cache.root])
    device = cluster.resolve_device(spec.resources.device, say, spec.resources.gpu_wait_s)
    plan, sources = provenance.bind(plan, device, spec.resources.gpu_jpeg_decode)
    done = results.done_cells(output, plan.cells)
    pending = [c for c in plan.cells if c.id not in done]
    say(f"plan: {len(plan.cells)} cells, {len(plan.jobs)} embedding jobs → {output} (device: {device})")
    say(f"cells: {len(plan.cells) - len(pending)} already done, {len(pending)} to run")
    changes = provenance.changes(output, sources, pending)
    for change in changes:
        say(provenance.describe(change))
    provenance.write_record(output, sources, spec.name)
    progress = RunProgress(output, len(plan.cells), len(plan.jobs))
    progress.update(lambda s: s["cells"].__setitem__("pending_at_start", len(pending)))
    return _Run(spec, plan, output, cache, salt, device, pending, changes, progress)


def _embed_and_run_cells(run: _Run, stop, say) -> Tuple[List[dict], List[dict]]:
    """The embedding jobs in a thread of the driver, the cells as Tune trials beside them."""
    from raddist.embed.jobs import EmbeddingRun
    from raddist.interrupt import Interrupted
    from raddist.trials import JobStates, run_cells

    jobs = JobStates(train_during_embedding=run.device == "gpu")
    records: List[dict] = []

    def record(job, outcome):
        jobs.done(job.id, outcome.key, outcome.error)
        run.progress.job_done(outcome.error is not None)
        records.append(_job_record(job, outcome, run.device))
        verb = {Source.CACHED: "cached", Source.FAILED: f"FAILED: {outcome.error}"}.get(
            outcome.source, f"embedded {outcome.images} images in {outcome.seconds:.1f}s "
                            f"({outcome.images / max(outcome.seconds, 1e-9):.0f} img/s, {outcome.source.value})")
        if not stop.requested:  # once asked to stop, what the abandoned pipeline reports is noise
            say(f"  embeddings {job.backbone.label} × {job_label(job)}: {verb}, {outcome.errors} input errors")

    embedding = EmbeddingRun(run.cache, run.spec.resources, run.device, say, run.progress.embedding, stop)
    failure: Dict[str, BaseException] = {}

    def embed_all():
        try:
            embedding.run(list(run.plan.jobs.values()), run.spec.max_input_error_rate, record)
            jobs.finished = True
        except Interrupted:
            pass  # the cells still waiting for a job stay waiting: Tune is stopping
        except BaseException as e:  # noqa: BLE001 - reported below, after the cells that can run have run
            failure["error"] = e
            jobs.finished = True

    thread = threading.Thread(target=embed_all, name="raddist-embedding", daemon=True)
    thread.start()
    ctx = CellContext(run.cache.root, run.output, run.spec.bootstrap, run.salt, run.spec.resources,
                      train_gpu=run.device == "gpu")
    outcomes = run_cells(run.spec, run.pending, jobs, ctx, run.progress, say, stop)
    grace = time.time() + STOP_GRACE_S
    while thread.is_alive() and not (stop.requested and time.time() > grace):
        thread.join(0.2)  # a timed join: the main thread still takes a second Ctrl-C
    if thread.is_alive():  # asked to stop, and no block came in the grace: Ray's shutdown ends the pipeline
        embedding.leases.close()
        for name in ("ray", "ray.data"):  # ...and its thread's complaints about it belong nowhere
            logging.getLogger(name).setLevel(logging.CRITICAL)
    storage.write_json(storage.join(run.output, "embedding_jobs.json"), records)
    if "error" in failure:
        raise failure["error"]
    return outcomes, records


def _finish(run: _Run, outcomes: List[dict], records: List[dict], stop, started: float, say) -> dict:
    """The run's tables, summary and report, each from this run's plan alone."""
    plan, output = run.plan, run.output
    input_errors = results.write_input_errors(output, [(plan.jobs[r["job_id"]].task, r["key"]) for r in records
                                                       if r["source"] != Source.FAILED],
                                              run.cache, run.salt)
    gathered = results.gather(output, plan.cells)
    interrupted = stop.requested
    failed = run.progress.state["cells"]["failed_now"] if interrupted else sum(not o["ok"] for o in outcomes)
    summary = {
        "state": "interrupted" if interrupted else "finished",
        "cells_total": len(plan.cells),
        "cells_done": len(gathered["cells"]),
        "cells_failed": failed,
        "cells_run_now": len(outcomes),
        "changes": [{**c, "line": provenance.describe(c)} for c in run.changes],
        "embedding_jobs_computed": sum(r["computed"] for r in records),
        "embedding_jobs_cached": sum(r["source"] == Source.CACHED for r in records),
        "embedding_jobs_failed": sum(r["source"] == Source.FAILED for r in records),
        "images_embedded": sum(r["images"] for r in records),
        "input_errors": input_errors,
        "device": run.device,
        "mode": run.spec.mode,
        "bootstrap": run.spec.bootstrap,  # patient resamples of the report's CIs
        "wall_seconds": round(time.time() - started, 1),
        "cache": run.cache.root,
    }
    if interrupted:
        summary["exit_code"] = stop.exit_code
    storage.write_json(storage.join(output, "summary.json"), summary)
    run.progress.finish(summary["state"])
    from raddist.report_write import write_report

    write_report(output, gathered, summary)
    if interrupted:
        say(f"interrupted: {summary['cells_done']}/{summary['cells_total']} cells done; "
            "run the same command to continue")
    return summary


def _job_record(job, outcome, device: str) -> dict:
    """A line of embedding_jobs.json: what the job cost, where its pixels came from, when it ended."""
    corruption = job.contract.get("corruption")  # a corrupted test split (raddist.robustness)
    return {"job_id": job.id, "key": outcome.key, "backbone": job.backbone.label, "task": job.task.name,
            **({"corruption": corruption} if corruption else {}),
            "computed": bool(outcome.computed), "source": outcome.source.value, "images": outcome.images,
            "errors": outcome.errors, "error": outcome.error, "wall_seconds": round(outcome.seconds, 3),
            "gpu_seconds": round(outcome.seconds, 3) if outcome.computed and device == "gpu" else 0.0,
            "finished_at": round(outcome.finished_at, 3)}


def job_label(job) -> str:
    """How the run's lines name a job's task: its name, and a corrupted test split's corruption/<kind>/<severity>."""
    from raddist.robustness import test_set_name

    corruption = job.contract.get("corruption")
    return f"{job.task.name} ({test_set_name(corruption)}, test rows)" if corruption else job.task.name
