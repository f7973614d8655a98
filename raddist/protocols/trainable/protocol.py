"""What the trainable protocols (finetune, lora, bitfit, dora) share: their parameters and their run.

run(): estimate the memory (memory.py: the node type, micro-batch, checkpointing, DDP or FSDP;
a cell that nothing holds fails here, in one line), decode the task's images once (val carved from
train by patient when the manifest has none), fit every learning rate with Ray Train under Ray
Tune, choose the (learning rate, epoch) with the best validation macro AUROC, and score the test
split ONCE with that checkpoint. Probabilities as the frozen protocols give them: sigmoid for
multilabel and binary (C = 1), softmax for multiclass.

Each protocol's Params says which training method it is (Params.method(): a method.Method).
"""

from __future__ import annotations

import dataclasses

from typing import List, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      model_serializer, model_validator)

from raddist.protocols.base import CLASSIFICATION, Prediction, TrainInputs
from raddist.protocols.selection import labels_of, select_best
from raddist.protocols.trainable.space import SearchSpec, check_against

TASK_TYPES = CLASSIFICATION


class HeadGrid(BaseModel):
    """The reference's grid of linear heads, trained at once on one backbone (model.HeadGrid): one head
    per (blocks, avgpool, lr); validation chooses the head (and the epoch), which alone scores test."""
    model_config = ConfigDict(extra="forbid")

    lrs: List[PositiveFloat] = Field(min_length=1)
    blocks: List[PositiveInt] = Field(default=[1], min_length=1)  # the class tokens of the last n blocks
    avgpool: List[bool] = Field(default=[False], min_length=1)  # + the last block's mean patch token


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs: List[PositiveFloat] = Field(default=[1e-4, 1e-3], min_length=1)  # the searched grid
    epochs: PositiveInt = 10
    # images per optimiser step on each worker: a training setting. Memory decides only the micro-batch
    batch_size: PositiveInt = 32
    micro_batch: Optional[PositiveInt] = None  # images per forward and backward; default: sized to the card
    fsdp: bool = False  # shard weights, gradients and optimiser states over the workers, even if they fit one
    weight_decay: NonNegativeFloat = 0.05
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9, the reference's
    # multilabel BCE summed over labels, mean over images; batch_sum: summed over the batch, mean over labels
    multilabel_loss: Literal["label_sum", "batch_sum"] = "label_sum"
    # a grid of heads, each at its own rate; lrs is then the backbone's rate (the reference's 1e-5)
    head_grid: Optional[HeadGrid] = None
    scheduler: Literal["grid", "asha"] = "grid"  # asha: stop poor learning rates early
    asha_grace_epochs: PositiveInt = 1
    max_failures: NonNegativeInt = 1  # worker-group restarts (from the last checkpoint) per fit
    # a Ray Tune search over these fields (space.py) in place of the lrs grid; absent: the lrs grid
    search: Optional[SearchSpec] = None

    @model_validator(mode="after")
    def _check_search(self) -> "TrainParams":
        # with a search, lrs is used only when the space has no lr (one rate), and scheduler not at all
        if self.search is not None:
            check_against(self.search, self)
        return self

    @model_serializer(mode="wrap")
    def _no_empty_search(self, handler):
        data = handler(self)
        # at their defaults: the params (and so the cell ids) as before these settings existed
        for key, default in (("search", None), ("optimizer", "adamw"), ("multilabel_loss", "label_sum"),
                             ("head_grid", None)):
            if key in data and data[key] == default:
                data.pop(key)
        return data

    def with_trial(self, config: dict) -> "TrainParams":
        """These params with one trial's sampled values (lr goes to lrs)."""
        update = {k: v for k, v in config.items() if k != "lr"}
        if "lr" in config:
            update["lrs"] = [config["lr"]]
        return type(self).model_validate({**self.model_dump(exclude={"search"}), **update})

    def method(self):
        """The training method (a raddist.protocols.trainable.method.Method) these params describe."""
        raise NotImplementedError(f"{type(self).__name__} names no training method")


def num_classes(task_type: str, class_names: List[str]) -> int:
    return 1 if task_type == "binary" else len(class_names)


def model_spec(params: TrainParams, inputs: TrainInputs):
    from raddist.backbones.registry import get_config
    from raddist.protocols.trainable.model import ModelSpec, head_grid

    grid = params.head_grid
    heads = () if grid is None else head_grid(get_config(inputs.backbone), grid.lrs, grid.blocks, grid.avgpool)
    return ModelSpec(inputs.backbone, inputs.weights, num_classes(inputs.task_type, inputs.class_names),
                     inputs.task_type, params.method(), heads)


def check_model(spec) -> None:
    """Fail in the cell, before any worker starts, on a model that cannot be built (e.g. LoRA on a CNN).
    On the meta device with random init: no weights are read and no memory is taken."""
    import torch

    from raddist.protocols.trainable.model import build_classifier

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        build_classifier(spec.randomly_initialised())


def memory_plan(params: TrainParams, inputs: TrainInputs, node_types: Optional[Sequence] = None):
    """(the training loop's memory settings, the estimate or None): on a GPU, from memory.estimate over
    node_types (default memory.NODE_TYPES); it raises, in one line, when none holds the cell. On a CPU:
    the whole batch at once."""
    from raddist.backbones.registry import get_config
    from raddist.protocols.trainable import memory

    if not inputs.use_gpu:
        return {"micro_batch": params.micro_batch, "grad_checkpointing": False, "strategy": "ddp"}, None
    est = memory.estimate(get_config(inputs.backbone), params, inputs.contract["size"], inputs.num_workers,
                          memory.NODE_TYPES if node_types is None else node_types)
    if est.node is None:
        raise ValueError(est.describe())
    # the worker measures its own card unless the spec fixed the micro-batch
    return {**est.training_config(), "micro_batch": params.micro_batch}, est


def _largest(params: TrainParams) -> TrainParams:
    """The params the memory estimate sizes: a search's largest batch and rank where it searches them."""
    if params.search is None:
        return params
    return params.with_trial({k: params.search.largest(k, None) for k in ("batch_size", "r")
                              if k in params.search.space})


def _head_record(spec) -> dict:
    n, pool, lr = spec.heads[spec.head]
    return {"head": {"blocks": n, "avgpool": pool, "lr": lr}, "heads": len(spec.heads)}


def run(inputs: TrainInputs, params: TrainParams, seed: int) -> Prediction:
    from raddist.protocols.trainable import data, fit, search

    method = params.method().name
    if inputs.task_type not in TASK_TYPES:
        raise ValueError(f"{method} applies to {TASK_TYPES}, not {inputs.task_type!r}")
    if "volume_id" in inputs.manifest.column_names:  # it would train and score slices, not volumes
        raise ValueError(f"{method} does not yet score volume tasks per volume; use the frozen protocols "
                         "(which pool slice features per volume) or attention_mil")
    spec = model_spec(params, inputs)
    check_model(spec)
    memory, estimate = memory_plan(_largest(params), inputs)
    table = data.assign_splits(inputs.manifest, seed)
    datasets, rows, dropped = data.decode_splits(table, inputs.task_type, inputs.label_columns, inputs.contract)
    config = {"model": spec, "epochs": params.epochs, "batch_size": params.batch_size,
              "weight_decay": params.weight_decay, "optimizer": params.optimizer,
              "multilabel_loss": params.multilabel_loss, "seed": seed, "train_rows": datasets["train"].count(),
              "image_size": inputs.contract["size"], "memory": memory}
    settings = fit.FitSettings.of(inputs, params, estimate)
    tuning = {k: datasets[k] for k in ("train", "val")}  # the test split never reaches a trial
    if params.search is None:
        runs = search.search_lr(tuning, config, params.lrs, inputs.checkpoint_dir, settings,
                                params.scheduler, params.asha_grace_epochs)
        done, record = [r for r in runs if r is not None], None
    else:
        done, record = search.search_space(tuning, config, params, inputs.checkpoint_dir, settings, seed)
    if not done:
        raise RuntimeError(f"{method}: no trial reported a validated checkpoint")
    # on validation only; ties go to the earlier: the lower lr, or the earlier trial
    best, _, _ = select_best(done, lambda r: r.selection)
    if record is not None:  # the winner's own model (its rank, dropout)
        spec = model_spec(params.with_trial(best.config), inputs)
    if best.head is not None:  # a grid: the head validation chose scores test, the others never do
        spec = dataclasses.replace(spec, head=best.head)
    index, scores = fit.score(spec, best.checkpoint, datasets["test"], inputs.num_workers, inputs.use_gpu,
                              inputs.cell_cpus)
    test = rows["test"].take(pa.array(index))
    carved = "val" not in set(inputs.manifest["split"].to_pylist())
    selected = {"method": method, "lr": best.lr, "epoch": best.epoch, "epochs": params.with_trial(best.config).epochs,
                "checkpoint": best.checkpoint,
                **({"val_auroc_by_lr": {f"{r.lr:g}": r.val_auroc for r in done}} if record is None else
                   {"search": {**record, "winner": best.config}}),
                **({"optimizer": params.optimizer} if params.optimizer != "adamw" else {}),
                **(_head_record(spec) if spec.head is not None else {}),
                "dropped_rows": dropped, "val_carved_from_train": carved, **best.memory,
                **({"memory_estimate": estimate.describe()} if estimate is not None else {})}
    return Prediction(
        sample_ids=np.asarray(test["sample_id"].to_pylist(), dtype=object),
        patient_ids=np.asarray(test["patient_id"].to_pylist(), dtype=object),
        labels=labels_of(test, inputs.task_type, inputs.label_columns),
        scores=scores,
        selected=selected,
        val_score=best.val_auroc,
    )
