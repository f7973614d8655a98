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

import hashlib
from typing import List, Optional, Sequence

from raddist.protocols.trainable.fit import FitSettings, RunBest, best_of_run, placement, run_name, trainer

TRIAL_CPUS = 0.01
EXPERIMENT = "tune"


def _trial(tune_config: dict, datasets: dict, config: dict, storage: str, settings: FitSettings) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    lr = tune_config["lr"]
    trainer(datasets, {**config, "lr": lr}, storage, run_name(lr), settings, callbacks=[TuneReportCallback()]).fit()


def concurrent_fits(num_workers: int, use_gpu: bool, cell_cpus: float) -> int:
    """How many fits the cluster holds at once (at least one)."""
    import ray

    cluster = ray.cluster_resources()
    per_fit = placement(num_workers, use_gpu, cell_cpus).worker
    fits = (cluster.get("CPU", 1.0) - cell_cpus) // (per_fit["CPU"] * num_workers + TRIAL_CPUS)
    if use_gpu:
        fits = min(fits, cluster.get("GPU", 0) // num_workers)
    return max(1, int(fits))


def search_lr(datasets: dict, config: dict, lrs: Sequence[float], storage: str, settings: FitSettings,
              scheduler: str = "grid", grace_epochs: int = 1) -> List[Optional[RunBest]]:
    """Fit every learning rate (or let ASHA stop the poor ones); each one's best epoch, in lrs order."""
    from ray import tune

    from raddist import storage as storage_lib

    storage = storage_lib.normalize(storage)
    trial = tune.with_parameters(_trial, datasets=datasets, config=config, storage=storage, settings=settings)
    # Tune registers trainables by name, per Ray job: cells searching at the same time in one sweep
    # must not share a name, or one cell's trials run with another's data and config.
    trial.__name__ = "lr_search_" + hashlib.sha1(storage.encode()).hexdigest()[:12]
    trainable = tune.with_resources(trial, {"CPU": TRIAL_CPUS})
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
                                                                              settings.cell_cpus)),
            run_config=tune.RunConfig(storage_path=storage, name=EXPERIMENT, verbose=0),
        )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} of {len(grid)} learning-rate fits failed; "
                           f"first: {grid.errors[0]}") from grid.errors[0]
    return [best_of_run(storage, lr) for lr in sorted(set(lrs))]
