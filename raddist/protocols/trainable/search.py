"""The learning-rate search: one Ray Train fit per learning rate, run as Ray Tune trials.

Ray Train V2 no longer takes a TorchTrainer as a Tune trainable (Tuner(trainer) is deprecated);
each trial is a function that runs its own TorchTrainer and streams the per-epoch metrics to Tune
through ray.tune.integration.ray_train.TuneReportCallback, so a scheduler (ASHA) can stop a poor
learning rate early. Trials reserve a token CPU (Tune refuses an empty request); the workers of
each fit reserve the rest, and as many fits run at once as the cluster holds.

The Tune experiment lives beside the fits in checkpoint_dir: a cell that runs again restores it
(Tuner.restore; finished trials are kept, unfinished and errored ones rerun), and each rerun fit
resumes from its own latest checkpoint. Selection does not trust Tune's bookkeeping: every run's
best epoch is read back from its Train checkpoints, and learning rates are compared in ascending
order, so ties go to the lower one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

from raddist.protocols.trainable.fit import FitSettings, RunBest, best_of_run, placement, run_name, trainer

TRIAL_CPUS = 0.01
EXPERIMENT = "tune"
SEARCH_EXPERIMENT = "search"  # a search: block's Tune experiment (search_space)
TRIAL_RUN = "trial_"  # + the Tune trial id: the Train run of one search trial
# How long a search trial's fit waits for its workers (unless the sweep bounded it, for GPUs): trials run
# one after another, and each waits for the last one's resources, which a trial ASHA stopped frees only once
# Train's PlacementGroupCleaner sees its controller gone; on a loaded 2-core box Train's 60 s is too short
SEARCH_WORKER_WAIT_S = 600.0


def _trial(tune_config: dict, datasets: dict, config: dict, storage: str, settings: FitSettings) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    lr = tune_config["lr"]
    trainer(datasets, {**config, "lr": lr}, storage, run_name(lr), settings, callbacks=[TuneReportCallback()]).fit()


def concurrent_fits(num_workers: int, use_gpu: bool, cell_cpus: float, lrs: int = 1) -> int:
    """How many of the lrs fits run at once (at least one): all of them, or as many as the cluster
    can hold where that is known (its autoscaler included: raddist.cluster.capacity), never as many as
    happen to fit what is up at the start (0 GPUs on a cluster that scales GPU nodes from zero)."""
    from raddist.cluster import capacity

    wanted = max(1, lrs)
    most = capacity()
    if most is None:
        return wanted
    per_fit = placement(num_workers, use_gpu, cell_cpus).worker
    fits = (most.get("CPU", 1.0) - cell_cpus) // (per_fit["CPU"] * num_workers + TRIAL_CPUS)
    if use_gpu:
        fits = min(fits, most.get("GPU", 0) // num_workers)
    return max(1, min(wanted, int(fits)))


def search_lr(datasets: dict, config: dict, lrs: Sequence[float], storage: str, settings: FitSettings,
              scheduler: str = "grid", grace_epochs: int = 1) -> List[Optional[RunBest]]:
    """Fit every learning rate (or let ASHA stop the poor ones); each one's best epoch, in lrs order."""
    from ray import tune

    from raddist import storage as storage_lib

    storage = storage_lib.normalize(storage)
    trial = tune.with_parameters(_trial, datasets=datasets, config=config, storage=storage, settings=settings)
    trainable = _trainable(trial, "lr_search_", storage)
    path = storage_lib.join(storage, EXPERIMENT)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        asha = None
        if scheduler == "asha":
            asha = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=config["epochs"],
                                                 grace_period=grace_epochs, reduction_factor=2)
        tuner = tune.Tuner(
            trainable,
            param_space={"lr": tune.grid_search(sorted(set(lrs)))},
            tune_config=tune.TuneConfig(metric="selection", mode="max", scheduler=asha,
                                        max_concurrent_trials=concurrent_fits(settings.num_workers, settings.use_gpu,
                                                                              settings.cell_cpus, len(set(lrs)))),
            run_config=tune.RunConfig(storage_path=storage, name=EXPERIMENT, verbose=0),
        )
    _fit(tuner, "learning-rate fits")
    return [best_of_run(storage, lr) for lr in sorted(set(lrs))]


def _trainable(trial, prefix: str, storage: str):
    from ray import tune

    # Tune registers trainables by name, per Ray job: cells searching at the same time in one sweep
    # must not share a name, or one cell's trials run with another's data and config.
    trial.__name__ = prefix + hashlib.sha1(storage.encode()).hexdigest()[:12]
    return tune.with_resources(trial, {"CPU": TRIAL_CPUS})


def _fit(tuner, what: str):
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} of {len(grid)} {what} failed; first: {grid.errors[0]}") \
            from grid.errors[0]
    return grid


def trial_config(config: dict, params, sampled: dict) -> dict:
    """The training config of one search trial: params (a TrainParams) with the sampled values."""
    p = params.with_trial(sampled)
    return {**config, "model": dataclasses.replace(config["model"], method=p.method()), "lr": p.lrs[0],
            "epochs": p.epochs, "batch_size": p.batch_size, "weight_decay": p.weight_decay}


def _search_trial(tune_config: dict, datasets: dict, config: dict, params, storage: str,
                  settings: FitSettings) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = TRIAL_RUN + tune.get_context().get_trial_id()
    before = _last_epoch(storage, name)
    result = trainer(datasets, trial_config(config, params, tune_config), storage, name, settings,
                     callbacks=[TuneReportCallback()]).fit()
    metrics = dict(result.metrics or {})
    if before is not None and "selection" in metrics and metrics.get("epoch") == before:
        # a rerun after the driver died whose fit had already trained every epoch: Train restored it and
        # reported nothing, and Tune's restored state may not hold its results; Tune needs its metric
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})


def _last_epoch(storage: str, name: str):
    """The last epoch a Train run in storage reported (None: no such run yet)."""
    from ray.train import Result

    from raddist import storage as storage_lib

    try:
        return (Result.from_path(storage_lib.join(storage, name)).metrics or {}).get("epoch")
    except Exception:  # noqa: BLE001 - no run, or one that never reported: nothing to restore
        return None


def search_space(datasets: dict, config: dict, params, storage: str, settings: FitSettings,
                 seed: int) -> Tuple[List[RunBest], Dict]:
    """Run params.search (a space.SearchSpec) as Tune trials, each one Ray Train fit chosen and reported
    on validation only. (each trial's best epoch, in trial order; what cell.json records of the search).
    An experiment already in storage is restored: finished trials kept, the searcher's state reloaded."""
    from ray import tune

    from raddist import storage as storage_lib
    from raddist.cluster import bound_train_worker_wait
    from raddist.protocols.trainable import space

    search = params.search
    storage = storage_lib.normalize(storage)
    seed = seed if search.seed is None else search.seed
    bound_train_worker_wait(SEARCH_WORKER_WAIT_S)  # Tune copies it into every trial
    trial = tune.with_parameters(_search_trial, datasets=datasets, config=config, params=params, storage=storage,
                                 settings=settings)
    trainable = _trainable(trial, "search_", storage)
    path = storage_lib.join(storage, SEARCH_EXPERIMENT)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        concurrent = search.max_concurrent or concurrent_fits(settings.num_workers, settings.use_gpu,
                                                              settings.cell_cpus, search.trials())
        tuner = tune.Tuner(
            trainable, param_space=space.tune_space(search),
            tune_config=tune.TuneConfig(metric="selection", mode="max", scheduler=asha_scheduler(search, params.epochs),
                                        search_alg=space.algorithm(search, concurrent, seed),
                                        num_samples=search.samples),
            run_config=tune.RunConfig(storage_path=storage, name=SEARCH_EXPERIMENT, verbose=0),
        )
    grid = _fit(tuner, "search trials")
    return _outcome(grid, params, storage, seed)


def asha_scheduler(search, epochs: int):
    """ASHA over a search's trials (None unless its scheduler is asha). max_t is one past the last epoch:
    ASHA stops (kills) a trial that reaches max_t, and a killed fit leaves its workers' resources to
    Train's PlacementGroupCleaner (which needs the state API); a trial that trains every epoch returns."""
    from ray import tune

    if search.scheduler != "asha":
        return None
    return tune.schedulers.ASHAScheduler(time_attr="training_iteration", grace_period=search.grace_epochs,
                                         max_t=search.largest("epochs", epochs) + 1, reduction_factor=2)


def _created(result) -> Tuple[int, str]:
    """A trial's place in the search: Tune's trial ids are random, its directory names
    <trainable>_<trial id>_<index>_<config> count the trials in the order the searcher proposed them."""
    import os

    trial_id = result.metrics["trial_id"]
    tag = os.path.basename(str(result.path).rstrip("/")).split(f"_{trial_id}_", 1)[-1].split("_", 1)[0]
    return (int(tag) if tag.isdigit() else 1 << 30), trial_id


def _outcome(grid, params, storage: str, seed: int) -> Tuple[List[RunBest], Dict]:
    search, runs, trials = params.search, [], []
    results = sorted((r for r in grid if "trial_id" in (r.metrics or {})), key=_created)
    for result in results:
        sampled = {k: result.config[k] for k in search.space}
        best = best_of_run(storage, params.with_trial(sampled).lrs[0], TRIAL_RUN + result.metrics["trial_id"], sampled)
        epochs = params.with_trial(sampled).epochs
        # epochs trained: a trial rerun after its driver died resumes its fit from the last checkpoint,
        # so its Tune iterations count only the epochs since; the last reported epoch counts them all
        ran = max(int(result.metrics.get("training_iteration", 0)), int(result.metrics.get("epoch", -1)) + 1)
        trials.append({"config": sampled, "epochs_run": ran, "stopped_early": ran < epochs,
                       "best_val_auroc": None if best is None else best.val_auroc})
        if best is not None:
            runs.append(best)
    record = {"algorithm": search.algorithm, "scheduler": search.scheduler, "num_samples": search.samples,
              "seed": seed, "trials": len(grid), "stopped_by_asha": sum(t["stopped_early"] for t in trials),
              "by_trial": trials}
    return runs, record
