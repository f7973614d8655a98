"""The Ray Train loop every trainable protocol runs on each worker.

Per epoch: train on this worker's shard of 'train' (augmented, bf16 autocast on GPU, DDP or FSDP
through ray.train.torch.prepare_model), each optimiser step one batch of batch_size images run in
micro-batches (step.py), then rank 0 scores the whole 'val' set, writes a checkpoint (the method's
trainable state, the optimiser and schedule, the val predictions) and every rank reports. Under
FSDP every rank takes part in scoring and in gathering the state. A restarted worker group resumes
from ray.train.get_checkpoint(): the epoch after the last one reported, with the optimiser and
schedule where they were.

config keys: model (ModelSpec), lr, optimizer (adamw | sgd), multilabel_loss, epochs, batch_size,
weight_decay, seed, train_rows, threads, use_gpu, image_size, and memory ({micro_batch (None: sized
on the card), grad_checkpointing, strategy}: memory.Estimate.training_config). Tests inject hooks
with ``on_epoch``, not the config.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Optional

import numpy as np

MODEL_FILE = "model.pt"  # the trainable state: what scoring needs
TRAIN_STATE_FILE = "train_state.pt"  # optimiser, schedule, epoch: what resuming needs
VAL_PREDICTIONS_FILE = "val_predictions.npz"
HISTORY_FILE = "history.json"  # every epoch's metrics up to this checkpoint, across restarts
# The augmentation seed of (seed, epoch, rank): seed * SEED_STRIDE + epoch * EPOCH_STRIDE + rank.
# Primes larger than any epoch count or world size, so no two (seed, epoch, rank) share a stream.
SEED_STRIDE, EPOCH_STRIDE = 1_000_003, 1009


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    return seed * SEED_STRIDE + epoch * EPOCH_STRIDE + rank


def selection_key(val_auroc: float, epoch: int) -> float:
    """Checkpoints rank by val macro AUROC; NaN ranks last; ties go to the earlier epoch."""
    score = val_auroc if np.isfinite(val_auroc) else -1.0
    return float(score - 1e-9 * epoch)


def train_loop_per_worker(config: dict, on_epoch: Optional[Callable[[int], None]] = None) -> None:
    import ray.train
    import torch

    from raddist.device import torch_device
    from raddist.protocols.trainable import step
    from raddist.protocols.trainable.model import build_classifier, optimizer as make_optimizer, set_grad_checkpointing

    torch.set_num_threads(int(config.get("threads", 1)))  # more threads than the CPU share stalls small boxes
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec, memory = config["model"], config.get("memory") or {}
    torch.manual_seed(config["seed"])  # the same head and adapter init on every worker and every retry
    device = torch_device(expect_gpu=config.get("use_gpu", False))
    model = build_classifier(spec).to(device)  # before the optimiser, so resumed state lands on the device
    if memory.get("grad_checkpointing"):
        set_grad_checkpointing(model)
    optimizer = make_optimizer(model, config.get("optimizer", "adamw"), config["lr"], config["weight_decay"],
                               spec.heads)
    steps = config["epochs"] * max(1, math.ceil(config["train_rows"] // world / config["batch_size"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))  # cosine, per step
    start, history = _resume(model, spec, optimizer, schedule)
    micro = _micro_batch(model, config, device)
    strategy = memory.get("strategy", "ddp")
    wrapped = step.parallel(model, model, strategy)  # a single worker: the model itself
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(start, config["epochs"]):
        if on_epoch is not None:
            on_epoch(epoch)
        torch.manual_seed(augmentation_seed(config["seed"], epoch, rank))  # this epoch's crops and flips
        wrapped.train()
        spec.method.freeze_norm_statistics(model)
        total = _train_epoch(wrapped, model, train, optimizer, schedule, config, micro, epoch, device)
        if world > 1:
            torch.distributed.all_reduce(total)
        metrics = {"epoch": epoch, "start_epoch": start, "lr": config["lr"],
                   "train_loss": float(total[0] / total[1].clamp(min=1)), "micro_batch": micro,
                   "accumulation_steps": step.accumulation_steps(config["batch_size"], micro),
                   "grad_checkpointing": bool(memory.get("grad_checkpointing")), "strategy": strategy}
        if rank == 0 or strategy == "fsdp":
            _report_with_checkpoint(wrapped, model, val, config, metrics, history, optimizer, schedule, device, rank)
        else:
            ray.train.report(metrics)


def _train_epoch(wrapped, model, train, optimizer, schedule, config, micro, epoch, device):
    import torch

    from raddist.protocols.trainable.step import accumulate_gradients

    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    batches = train.iter_torch_batches(batch_size=config["batch_size"], device=device,
                                       local_shuffle_buffer_size=4 * config["batch_size"],
                                       local_shuffle_seed=config["seed"] + epoch)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        total[0] += accumulate_gradients(wrapped, model, batch["image"], batch["label"], micro,
                                         config["model"].task_type,
                                         batch_sum=config.get("multilabel_loss") == "batch_sum")
        optimizer.step()
        schedule.step()
        total[1] += len(batch["image"])
    return total


def _micro_batch(model, config, device) -> int:
    from raddist.protocols.trainable.step import sized_micro_batch

    batch = config["batch_size"]
    chosen = (config.get("memory") or {}).get("micro_batch")
    if chosen:
        return min(int(chosen), batch)
    if device.type != "cuda":
        return batch
    spec = config["model"]
    return sized_micro_batch(model, model, batch, config["image_size"], spec.num_classes, spec.task_type, device)


def _resume(model, spec, optimizer, schedule):
    """(first epoch, history) from the run's latest checkpoint, its state loaded; (0, []) when fresh."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        spec.method.load(model, torch.load(os.path.join(d, MODEL_FILE)))
        state = torch.load(os.path.join(d, TRAIN_STATE_FILE))
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["epoch"] + 1, state["history"]


def _report_with_checkpoint(wrapped, model, val, config, metrics, history, optimizer, schedule, device,
                            rank) -> None:
    import json

    import ray.train
    import torch

    from raddist.protocols.selection import macro_auroc, select_best
    from raddist.protocols.trainable.step import full_state

    task_type, strategy = config["model"].task_type, metrics["strategy"]
    index, probs, labels = _score_val(wrapped if strategy == "fsdp" else model, val, task_type, device,
                                      config["batch_size"])
    with full_state(wrapped, strategy) as state_dict:
        state = config["model"].method.state(model, state_dict)
    if rank != 0:
        ray.train.report(metrics)
        return
    targets = np.eye(probs.shape[-1], dtype=np.int64)[labels] if task_type == "multiclass" else labels
    if probs.ndim == 3:  # a grid of heads: this epoch's best on validation (ties: the first) stands for it
        head, val_auroc, _ = select_best(range(probs.shape[1]), lambda h: macro_auroc(targets, probs[:, h]))
        probs = probs[:, head]
        metrics["head"] = head
    else:
        val_auroc = macro_auroc(targets, probs)
    epoch = metrics["epoch"]
    metrics.update(val_auroc=val_auroc, selection=selection_key(val_auroc, epoch))
    history.append(dict(metrics))
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, MODEL_FILE))
        # FSDP shards the optimiser over the ranks: a resumed FSDP run restarts its moments from zero
        optimiser = {} if strategy == "fsdp" else {"optimizer": optimizer.state_dict()}
        torch.save({**optimiser, "schedule": schedule.state_dict(), "epoch": epoch, "history": history},
                   os.path.join(d, TRAIN_STATE_FILE))
        with open(os.path.join(d, HISTORY_FILE), "w") as f:
            json.dump(history, f, indent=1)
        np.savez(os.path.join(d, VAL_PREDICTIONS_FILE), index=index, probs=probs)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")


def _score_val(model, val, task_type, device, batch_size):
    """All of val (unsplit): (row index, probabilities, labels)."""
    from raddist.protocols.trainable.model import predict

    labels = []

    def batches():
        for batch in val.iter_torch_batches(batch_size=batch_size, device=device):
            labels.append(batch["label"].cpu().numpy())
            yield batch

    index, probs = predict(model, batches(), task_type, device)
    return index, probs, np.concatenate(labels).astype(np.int64)
