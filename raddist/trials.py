"""The cells of a sweep as Ray Tune trials, each started as soon as what it reads exists.

A trial runs a batch of cells that read one embedding job (resources.cells_per_trial of them, in plan
order; a cell that trains the backbone is a trial of its own): Tune's bookkeeping per trial then
stays small beside the work at 3,192 cells (benchmarks/sweep_overhead.py), and the batch reads its
job's features once. Every cell still writes its own outputs, so resuming is per cell: a trial
rerun after its node was lost skips the cells it had finished.

A cell that reads cached features waits for its own embedding job, not for the sweep's last one: the
searcher (ReadyCells) hands Tune the cells whose jobs are done, in plan order, while the embedding
jobs run in the driver beside it. Cells that train the backbone read images: on GPUs they start at
once; on a CPU-only cluster they wait for the embedding jobs, whose actors hold the CPUs their
training workers need (started at once, they only stalled there, holding cell slots that ready
frozen cells could use: the demo took 337 s instead of 276). A cell whose job failed runs too, only
to record that failure as its own (failed.json). Trials ask for the resources their protocol needs;
Tune reruns a trial whose node was lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import Dict, List, Optional

from ray.tune.search import Searcher

from raddist import interrupt, protocols, storage
from raddist.cells.run import CellContext
from raddist.plan import Cell


_STATES: Dict[str, "JobStates"] = {}  # Tune pickles its searcher: it finds its JobStates by id


class JobStates:
    """What the embedding side tells the cells: each job's key, or why it failed. Thread-safe."""

    def __init__(self, train_during_embedding: bool = True):
        self.id = uuid.uuid4().hex[:12]
        _STATES[self.id] = self
        self._lock = threading.Lock()
        self.keys: Dict[str, str] = {}
        self.errors: Dict[str, str] = {}
        self.finished = False
        self.stopped = False  # the run was asked to stop: start no more cells
        self.train_during_embedding = train_during_embedding

    def done(self, job_id: str, key: str, error: Optional[str] = None) -> None:
        with self._lock:
            if error:
                self.errors[job_id] = error
            else:
                self.keys[job_id] = key

    def ready(self, cell: Cell) -> Optional[dict]:
        """The trial config of a cell that can start now, else None."""
        with self._lock:
            job = cell.embedding_job
            if job is None:
                ready = self.train_during_embedding or self.finished
                return {"cell_id": cell.id, "key": None, "job_error": None} if ready else None
            needed = [job, *cell.external_jobs.values()]  # and its external test sets' (raddist.external)
            if all(j in self.keys or j in self.errors for j in needed):
                # a corrupted test split that failed (volumes) is left out; the cell scores the rest
                fatal = [job, *(j for n, j in cell.external_jobs.items() if not n.startswith("corruption/"))]
                error = next((self.errors[j] for j in fatal if j in self.errors), None)
                return {"cell_id": cell.id, "key": self.keys.get(job), "job_error": error}
            if self.finished:  # the embedding side stopped without this job: never wait forever
                return {"cell_id": cell.id, "key": None, "job_error": "its embedding job did not run"}
            return None


def batches(cells: List[Cell], per_trial: int) -> List[List[Cell]]:
    """The cells of each embedding job in batches of per_trial, in plan order; trainable cells alone."""
    out: List[List[Cell]] = []
    open_batch: Dict[tuple, List[Cell]] = {}
    for cell in cells:
        if protocols.get(cell.protocol).trainable:
            out.append([cell])
            continue
        reads = (cell.embedding_job, *sorted(cell.external_jobs.values()))  # a batch waits for its first cell's jobs
        batch = open_batch.get(reads)
        if batch is None or len(batch) == per_trial:
            batch = open_batch[reads] = []
            out.append(batch)
        batch.append(cell)
    return out


class ReadyCells(Searcher):
    """Suggests each batch of pending cells once, as soon as JobStates says it can start."""

    def __init__(self, batches: List[List[Cell]], jobs: JobStates):
        super().__init__()
        self.waiting, self.jobs_id = list(batches), jobs.id

    def suggest(self, trial_id: str):
        jobs = _STATES[self.jobs_id]
        if jobs.stopped:
            return Searcher.FINISHED
        for i, batch in enumerate(self.waiting):
            config = jobs.ready(batch[0])
            if config is not None:
                del self.waiting[i]
                return {"cells": [c.id for c in batch], "key": config["key"], "job_error": config["job_error"],
                        "trains": protocols.get(batch[0].protocol).trainable}
        return Searcher.FINISHED if not self.waiting else None

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        pass

    def save(self, checkpoint_path: str) -> None:
        """A rerun finds finished cells in the output, not here: record only what is left."""
        with open(checkpoint_path, "w") as f:
            json.dump({"waiting": [[c.id for c in b] for b in self.waiting]}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass


def _end_tune_now() -> None:
    """Ray Tune ends its run loop at once on SIGUSR1 (tune.py's _setup_signal_catching installs that
    handler, whatever TUNE_DISABLE_SIGINT_HANDLER says), and then stops its trials. Raised only while
    that handler is in place: SIGUSR1's default action would kill the process."""
    import signal

    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        os.kill(os.getpid(), signal.SIGUSR1)


def run_cells(spec, pending: List[Cell], jobs: JobStates, ctx: CellContext, run_progress, say,
              stop: Optional[interrupt.StopRequest] = None) -> List[dict]:
    """Run the pending cells as Tune trials; one outcome per cell, read back from the output."""
    if not pending:
        return []
    from ray import tune

    if stop is not None:
        stop.on_request(lambda: setattr(jobs, "stopped", True))
        # Tune's "interrupted ... resume with Tuner.restore", "trials did not complete" and its last
        # state upload racing Ray's shutdown: rerunning the same command resumes, as raddist's own line says
        stop.on_request(lambda: logging.getLogger("ray.tune").setLevel(logging.CRITICAL))
        stop.on_request(_end_tune_now)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # raddist.interrupt handles Ctrl-C: one line, no restore hint
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune's older reporter prints nothing
    # each cell writes its own outputs: Tune's CSV, JSON and TensorBoard files per trial would only
    # add writes (uploads, on s3://) that nothing reads
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # ...so the ResultGrid that fit() returns finds no metrics files, and says so for every trial
    # (nothing here reads it: the cells' outcomes are read back from the output)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    from raddist.progress import CellProgress

    res = spec.resources
    by_id = {c.id: c for c in pending}
    work = batches(pending, res.cells_per_trial)
    trainable = tune.with_parameters(_cell_trial, cells=by_id, ctx=ctx)
    # the resources come from the config alone: a function closing over the cells would be unpickled,
    # with every pending cell, each time Tune places a trial (O(cells) per trial)
    cpus, gpus = res.cpus_per_cell, res.gpus_per_cell
    trainable = tune.with_resources(trainable, lambda config: trial_resources(config["trains"], cpus, gpus))
    tune_fs, tune_path = storage.filesystem(storage.join(ctx.output, "tune"))
    tuner = tune.Tuner(
        trainable,
        # reuse_actors: a cell takes seconds; a fresh worker process per trial would cost more
        tune_config=tune.TuneConfig(search_alg=ReadyCells(work, jobs), num_samples=len(work),
                                    max_concurrent_trials=res.max_concurrent_cells, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-tune",
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            failure_config=tune.FailureConfig(max_failures=2),  # a lost node re-runs the trial
            callbacks=[CellProgress(run_progress, by_id, quiet=say is None), *tracking_callbacks(spec, by_id)],
            verbose=0,
        ),
    )
    tuner.fit()
    from raddist import results

    done = results.done_cells(ctx.output, pending)
    return [{"cell_id": c.id, "ok": c.id in done, **({} if c.id in done else {"error": "see failed.json"})}
            for c in pending]


def tracking_callbacks(spec, cells: Dict[str, Cell]) -> list:
    """Tune callbacks that send each finished cell elsewhere: MLflow with spec.tracking.mlflow, W&B with
    spec.tracking.wandb (a W&B that cannot start loses the log, never the sweep)."""
    callbacks = []
    if spec.tracking.mlflow:
        from raddist.tracking import CellsToMLflow

        callbacks.append(CellsToMLflow(spec.tracking.mlflow, spec.tracking.experiment or spec.name, cells))
    if spec.tracking.wandb:
        from raddist.tracking_wandb import wandb_callbacks

        callbacks += wandb_callbacks(spec.tracking.wandb.project, spec.tracking.wandb.group or spec.name, cells)
    return callbacks


def trial_resources(trains: bool, cpus: float, gpus: float):
    from ray import tune

    # a trainable cell only coordinates; its Ray Train workers hold their own CPUs and GPUs
    bundle = {"CPU": cpus, "GPU": 0.0 if trains else gpus}
    return tune.PlacementGroupFactory([bundle])


def _cell_trial(config, cells, ctx):
    import ray
    from ray import tune

    from raddist import results
    from raddist.cells import evaluate_cell

    ray.data.DataContext.get_current().enable_progress_bars = False  # trainable cells read with Ray Data
    for cell_id in config["cells"]:
        cell = cells[cell_id]
        if results.is_done(ctx.output, cell):  # a trial rerun after its node was lost
            continue
        if config.get("job_error"):
            error = f"embedding job failed: {config['job_error']}"
            results.write_failure(ctx.output, cell, error)
            outcome = {"cell_id": cell_id, "ok": False, "error": error}
        else:
            outcome = evaluate_cell(cell, config.get("key"), ctx)
        tune.report(outcome)
