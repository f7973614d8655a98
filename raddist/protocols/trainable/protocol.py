"""What the trainable protocols (finetune, lora, bitfit) share: their parameters and their run.

run(): decode the task's images once (val carved from train by patient when the manifest has
none), fit every learning rate with Ray Train under Ray Tune, choose the (learning rate, epoch)
with the best validation macro AUROC, and score the test split ONCE with that checkpoint.
Probabilities as the frozen protocols give them: sigmoid for multilabel and binary (C = 1),
softmax for multiclass.
"""

from __future__ import annotations

from typing import List, Literal, Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, Prediction, TrainInputs
from raddist.protocols.selection import labels_of, select_best

TASK_TYPES = CLASSIFICATION


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs: List[PositiveFloat] = Field(default=[1e-4, 1e-3], min_length=1)  # the searched grid
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32  # per worker
    weight_decay: NonNegativeFloat = 0.05
    scheduler: Literal["grid", "asha"] = "grid"  # asha: stop poor learning rates early
    asha_grace_epochs: PositiveInt = 1
    max_failures: NonNegativeInt = 1  # worker-group restarts (from the last checkpoint) per fit


def num_classes(task_type: str, class_names: List[str]) -> int:
    return 1 if task_type == "binary" else len(class_names)


def model_spec(method: str, inputs: TrainInputs, lora: Optional[dict] = None) -> dict:
    from raddist.protocols.trainable.model import ModelSpec

    return ModelSpec(inputs.backbone, inputs.weights, num_classes(inputs.task_type, inputs.class_names),
                     inputs.task_type, method, lora).to_dict()


def check_model(spec: dict) -> None:
    """Fail in the cell, before any worker starts, on a model that cannot be built (e.g. LoRA on a CNN).
    On the meta device with random init: no weights are read and no memory is taken."""
    import torch

    from raddist.protocols.trainable.model import build_classifier

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        build_classifier({**spec, "weights": "random"})


def run(method: str, inputs: TrainInputs, params: TrainParams, seed: int, lora: Optional[dict] = None) -> Prediction:
    """lora: the adapters' settings (r, alpha, dropout, target_modules) for method 'lora'."""
    from raddist.protocols.trainable import data, fit, search

    if inputs.task_type not in TASK_TYPES:
        raise ValueError(f"{method} applies to {TASK_TYPES}, not {inputs.task_type!r}")
    if "volume_id" in inputs.manifest.column_names:  # it would train and score slices, not volumes
        raise ValueError(f"{method} does not yet score volume tasks per volume; use the frozen protocols "
                         "(which pool slice features per volume) or attention_mil")
    spec = model_spec(method, inputs, lora)
    check_model(spec)
    table = data.assign_splits(inputs.manifest, seed)
    datasets, rows, dropped = data.decode_splits(table, inputs.task_type, inputs.label_columns, inputs.contract)
    config = {"model": spec, "epochs": params.epochs, "batch_size": params.batch_size,
              "weight_decay": params.weight_decay, "seed": seed, "train_rows": datasets["train"].count()}
    runs = search.search_lr(datasets, config, params.lrs, inputs.checkpoint_dir, inputs.num_workers,
                            inputs.use_gpu, inputs.cell_cpus, params.max_failures, params.scheduler,
                            params.asha_grace_epochs)
    done = [r for r in runs if r is not None]
    if not done:
        raise RuntimeError(f"{method}: no learning rate reported a validated checkpoint")
    best, _, _ = select_best(done, lambda r: r.selection)  # lrs ascending: ties go to the lower one
    index, scores = fit.score(spec, best.checkpoint, datasets["test"], inputs.num_workers, inputs.use_gpu,
                              inputs.cell_cpus)
    test = rows["test"].take(pa.array(index))
    carved = "val" not in set(inputs.manifest["split"].to_pylist())
    selected = {"method": method, "lr": best.lr, "epoch": best.epoch, "epochs": params.epochs,
                "checkpoint": best.checkpoint, "val_auroc_by_lr": {f"{r.lr:g}": r.val_auroc for r in done},
                "dropped_rows": dropped, "val_carved_from_train": carved}
    return Prediction(
        sample_ids=np.asarray(test["sample_id"].to_pylist(), dtype=object),
        patient_ids=np.asarray(test["patient_id"].to_pylist(), dtype=object),
        labels=labels_of(test, inputs.task_type, inputs.label_columns),
        scores=scores,
        selected=selected,
        val_score=best.val_auroc,
    )
