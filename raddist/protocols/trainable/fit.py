"""One Ray Train fit, its best checkpoint, and scoring a checkpoint.

Resources: the calling cell already holds a CPU share (cell_cpus: the spec's
resources.cpus_per_cell). Each worker asks for a fraction of the cluster's CPUs that leaves one
worker's share free for Ray Data decode tasks and scorers (of this or another cell):
(CPUs - cell_cpus) / (workers + 1), at most 1 -- 0.75 each for 1 worker on 2 CPUs. Ray Train V2's controller reserves no CPU (ScalingConfig.trainer_resources is
deprecated there). A fit and a scorer read materialised datasets only, so once placed they need
no further task and finish: whatever waits for their CPUs waits, but never forever.

Checkpoints: RunConfig(storage_path=checkpoint_dir, name=<run>); Ray keeps the best checkpoint by
'selection' (val AUROC, earlier epoch on ties) and the latest, for resuming. Running a trainer
again with the same storage path and name restores that run (Train V2's replacement for
TorchTrainer.restore); FailureConfig(max_failures) restarts a lost worker group from the latest
checkpoint within one fit.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

MIN_WORKER_CPUS = 0.1


@dataclass(frozen=True)
class Placement:
    worker: Dict[str, float]  # resources_per_worker
    threads: int  # torch threads per worker


@dataclass(frozen=True)
class RunBest:
    """The epoch a run's validation chose."""

    lr: float
    epoch: int
    val_auroc: float
    selection: float
    checkpoint: str  # URI of the checkpoint directory
    memory: Dict = field(default_factory=dict)  # micro_batch, accumulation_steps, grad_checkpointing, strategy
    config: Dict = field(default_factory=dict)  # a search trial's sampled values (search.search_space)
    head: Optional[int] = None  # of a grid of heads (ModelSpec.heads): the one validation chose


MEMORY_KEYS = ("micro_batch", "accumulation_steps", "grad_checkpointing", "strategy")


@dataclass(frozen=True)
class FitSettings:
    """How each learning rate's fit runs: its workers, where they land, how often it may restart."""

    num_workers: int = 1
    use_gpu: bool = False
    cell_cpus: float = 0.5
    max_failures: int = 1
    node_resources: Tuple[Tuple[str, float], ...] = ()  # per worker: the node type the estimate chose

    @classmethod
    def of(cls, inputs, params, estimate=None) -> "FitSettings":
        node = estimate.node.resources if estimate is not None and estimate.node is not None else ()
        return cls(inputs.num_workers, inputs.use_gpu, inputs.cell_cpus, params.max_failures, tuple(node))


def placement(num_workers: int, use_gpu: bool, cell_cpus: float,
              node_resources: Tuple[Tuple[str, float], ...] = ()) -> Placement:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    share = min(1.0, max(MIN_WORKER_CPUS, (cpus - cell_cpus) / (num_workers + 1)))
    share = float(np.floor(share * 100) / 100)  # Ray rounds resources to 1e-4; keep round numbers
    worker = {"CPU": share, **({"GPU": 1.0} if use_gpu else {}), **dict(node_resources)}
    return Placement(worker, max(1, int(share)))


def trainer(datasets: dict, config: dict, storage: str, name: str, settings: FitSettings, callbacks: Sequence = (),
            on_epoch: Optional[Callable[[int], None]] = None):
    """A TorchTrainer for one learning rate: 'train' sharded to the workers, 'val' whole to each.
    on_epoch: called on every worker at the start of each epoch (tests inject faults with it)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raddist import storage as storage_lib
    from raddist.protocols.trainable.loop import train_loop_per_worker

    use_gpu = settings.use_gpu
    where = placement(settings.num_workers, use_gpu, settings.cell_cpus, settings.node_resources)
    loop = train_loop_per_worker if on_epoch is None else functools.partial(train_loop_per_worker, on_epoch=on_epoch)
    return TorchTrainer(
        loop,
        train_loop_config={**config, "threads": where.threads, "use_gpu": use_gpu},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=where.worker),
        torch_config=_torch_config(use_gpu),
        run_config=RunConfig(
            storage_path=storage_lib.normalize(storage),
            name=name,
            # a worker group that cannot start (no GPU within resources.gpu_wait_s) fails the fit,
            # where Train's default would retry it forever
            failure_config=FailureConfig(max_failures=settings.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="selection",
                                               checkpoint_score_order="max"),
            callbacks=list(callbacks),
        ),
        # seeded block order and order-preserving ingest: a rerun sees the same batches, and so
        # trains the same model (with one worker; several share blocks as they come)
        datasets={"train": datasets["train"].randomize_block_order(seed=config["seed"]), "val": datasets["val"]},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=_ordered_ingest()),
    )


def _torch_config(use_gpu: bool):
    """NCCL needs real GPUs: the fake GPU nodes of Ray's test clusters (RADDIST_FAKE_GPUS) use gloo."""
    from ray.train.torch import TorchConfig

    from raddist.device import FAKE_GPUS_ENV

    fake = use_gpu and os.environ.get(FAKE_GPUS_ENV) == "1"
    return TorchConfig(backend="gloo") if fake else None


def _ordered_ingest():
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def run_name(lr: float) -> str:
    return f"lr_{lr:.3g}"


def best_of_run(storage: str, lr: float, name: Optional[str] = None, config: Optional[Dict] = None) -> Optional[RunBest]:
    """The best reported checkpoint of the run for lr (named name, default run_name(lr)), read back from
    storage (None: nothing reported)."""
    from ray.train import Result

    from raddist import storage as storage_lib

    path = storage_lib.join(storage_lib.normalize(storage), name or run_name(lr))
    try:
        result = Result.from_path(path)
    except RuntimeError:  # the run never reported a checkpoint
        return None
    scored = [(m["selection"], c, m) for c, m in result.best_checkpoints or [] if "selection" in m]
    if not scored:
        return None
    selection, checkpoint, metrics = max(scored, key=lambda t: t[0])
    val_auroc = metrics["val_auroc"]  # NaN comes back from the run's JSON state as None
    return RunBest(lr, int(metrics["epoch"]), float("nan") if val_auroc is None else float(val_auroc),
                   float(selection), _uri(checkpoint, storage), {k: metrics[k] for k in MEMORY_KEYS if k in metrics},
                   dict(config or {}), metrics.get("head"))


def _uri(checkpoint, storage: str) -> str:
    from raddist import storage as storage_lib

    if storage_lib.is_remote(storage):
        scheme = storage.split("://", 1)[0]
        return f"{scheme}://{checkpoint.path.lstrip('/')}"
    return checkpoint.path


def load_checkpoint(spec, checkpoint: str):
    """The classifier of spec with a checkpoint's trainable state (the base from its own weights)."""
    import torch
    from ray.train import Checkpoint

    from raddist.protocols.trainable.loop import MODEL_FILE
    from raddist.protocols.trainable.model import build_classifier

    model = build_classifier(spec)
    with Checkpoint(checkpoint).as_directory() as d:
        spec.method.load(model, torch.load(os.path.join(d, MODEL_FILE)))
    return model.eval()


def score(spec, checkpoint: str, dataset, num_workers: int, use_gpu: bool, cell_cpus: float,
          batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """(row index, probabilities) of every row of dataset under a checkpoint, in one Ray task."""
    import ray

    where = placement(num_workers, use_gpu, cell_cpus)
    # "DEFAULT": not captured by a calling Tune trial's placement group (a trainable cell's bundle
    # holds a CPU share and no GPU); the scorer takes a worker's share of the cluster, as the fits did.
    task = ray.remote(_score).options(num_cpus=where.worker["CPU"], num_gpus=1 if use_gpu else 0, max_retries=1,
                                      scheduling_strategy="DEFAULT")
    return ray.get(task.remote(spec, checkpoint, dataset, batch_size, where.threads))


def _score(spec, checkpoint: str, dataset, batch_size: int, threads: int):
    import torch

    from raddist.device import torch_device
    from raddist.protocols.trainable.model import predict

    torch.set_num_threads(threads)
    device = torch_device()
    model = load_checkpoint(spec, checkpoint).to(device)
    # Iterate the materialised blocks as they are: any Ray Data op here (select_columns, map) would
    # need a task, and so a CPU that the other cells' decoders, fits and scorers may all be holding.
    batches = dataset.iter_torch_batches(batch_size=batch_size)
    return predict(model, batches, spec.task_type, device)
