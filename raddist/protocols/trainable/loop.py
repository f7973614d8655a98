"""The Ray Train loop every trainable protocol runs on each worker.

Per epoch: train on this worker's shard of 'train' (augmented, bf16 autocast on GPU, DDP through
ray.train.torch.prepare_model), then rank 0 scores the whole 'val' set, writes a checkpoint
(the method's trainable state, the optimiser and schedule, the val predictions) and every rank
reports. A restarted worker group resumes from ray.train.get_checkpoint(): the epoch after the
last one reported, with the optimiser and schedule where they were.

config keys: model (ModelSpec dict), lr, epochs, batch_size, weight_decay, seed, train_rows,
threads, and for tests crash_at_epoch + crash_marker (the worker dies once at that epoch).
"""

from __future__ import annotations

import math
import os
import tempfile

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


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from raddist.device import torch_device
    from raddist.protocols.trainable.model import (build_classifier, freeze_norm_statistics, load_trainable_state,
                                     loss_fn, trainable_parameters)

    torch.set_num_threads(int(config.get("threads", 1)))  # more threads than the CPU share stalls small boxes
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec, task_type = config["model"], config["model"]["task_type"]
    torch.manual_seed(config["seed"])  # the same head and adapter init on every worker and every retry
    device = torch_device(expect_gpu=config.get("use_gpu", False))
    model = build_classifier(spec).to(device)  # before the optimiser, so resumed state lands on the device
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config["lr"], weight_decay=config["weight_decay"])
    steps = config["epochs"] * max(1, math.ceil(config["train_rows"] // world / config["batch_size"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))  # cosine, per step

    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_trainable_state(model, spec["method"], torch.load(os.path.join(d, MODEL_FILE)))
            state = torch.load(os.path.join(d, TRAIN_STATE_FILE))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, history = state["epoch"] + 1, state["history"]

    ddp = ray.train.torch.prepare_model(model, move_to_device=False)  # DDP when world > 1; already on its device
    train = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val")
    on_gpu = device.type == "cuda"
    for epoch in range(start, config["epochs"]):
        _maybe_crash(config, epoch)
        torch.manual_seed(augmentation_seed(config["seed"], epoch, rank))  # this epoch's crops and flips
        ddp.train()
        freeze_norm_statistics(model, spec["method"])
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
        batches = train.iter_torch_batches(batch_size=config["batch_size"], device=device,
                                           local_shuffle_buffer_size=4 * config["batch_size"],
                                           local_shuffle_seed=config["seed"] + epoch)
        for batch in batches:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
                logits = ddp(batch["image"], augment=True)
            loss = loss_fn(logits.float(), batch["label"], task_type)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total[0] += loss.detach().double() * len(logits)
            total[1] += len(logits)
        if world > 1:
            torch.distributed.all_reduce(total)
        metrics = {"epoch": epoch, "start_epoch": start, "lr": config["lr"],
                   "train_loss": float(total[0] / total[1].clamp(min=1))}
        if rank == 0:
            _report_with_checkpoint(model, val, config, metrics, history, optimizer, schedule, device)
        else:
            ray.train.report(metrics)


def _report_with_checkpoint(model, val, config, metrics, history, optimizer, schedule, device) -> None:
    import json

    import ray.train
    import torch

    from raddist.protocols.selection import macro_auroc
    from raddist.protocols.trainable.model import trainable_state

    task_type = config["model"]["task_type"]
    index, probs, labels = _score_val(model, val, task_type, device, config["batch_size"])
    targets = np.eye(probs.shape[1], dtype=np.int64)[labels] if task_type == "multiclass" else labels
    val_auroc = macro_auroc(targets, probs)
    epoch = metrics["epoch"]
    metrics.update(val_auroc=val_auroc, selection=selection_key(val_auroc, epoch))
    history.append(dict(metrics))
    with tempfile.TemporaryDirectory() as d:
        torch.save(trainable_state(model, config["model"]["method"]), os.path.join(d, MODEL_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch,
                    "history": history}, os.path.join(d, TRAIN_STATE_FILE))
        with open(os.path.join(d, HISTORY_FILE), "w") as f:
            json.dump(history, f, indent=1)
        np.savez(os.path.join(d, VAL_PREDICTIONS_FILE), index=index, probs=probs)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")


def _score_val(model, val, task_type, device, batch_size):
    """Rank 0 scores all of val (unsplit): (row index, probabilities, labels)."""
    from raddist.protocols.trainable.model import predict

    labels = []

    def batches():
        for batch in val.iter_torch_batches(batch_size=batch_size, device=device):
            labels.append(batch["label"].cpu().numpy())
            yield batch

    index, probs = predict(model, batches(), task_type, device)
    return index, probs, np.concatenate(labels).astype(np.int64)


def _maybe_crash(config: dict, epoch: int) -> None:
    """Test hook: die like a lost worker at crash_at_epoch; with a crash_marker file, only once."""
    if config.get("crash_at_epoch") != epoch:
        return
    marker = config.get("crash_marker")
    if marker:
        if os.path.exists(marker):
            return
        open(marker, "w").close()
    import ray.train

    ray.train.get_all_reported_checkpoints()  # let the controller register the last checkpoint first
    os._exit(1)
