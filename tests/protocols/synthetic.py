"""Gaussian-blob features built directly as FrozenInputs: no backbone, no cache, no Ray."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from raddist.protocols.base import FrozenInputs, SplitData


def blob_inputs(
    task_type: str = "multiclass",
    n_classes: int = 3,
    sizes: Sequence[int] = (120, 40, 60),  # train, val, test images; val 0 = no val split
    block_dims: Sequence[int] = (8, 8, 8, 8),
    patch_dim: int = 8,
    separation: float = 1.0,
    images_per_patient: int = 2,
    seed: int = 0,
) -> FrozenInputs:
    """Classes are blobs around random centres (multiclass); a label adds its own direction (multilabel,
    binary). separation scales centres and directions against unit noise per dimension."""
    rng = np.random.default_rng(seed)
    width = sum(block_dims) + patch_dim
    centres = rng.normal(size=(n_classes, width)) * separation
    splits = {}
    for name, n in zip(("train", "val", "test"), sizes):
        if n == 0:
            continue
        if task_type == "multiclass":
            labels = np.arange(n) % n_classes
            rng.shuffle(labels)
            x = centres[labels]
        else:
            labels = (rng.random((n, n_classes)) < 0.4).astype(np.int64)
            x = labels @ centres
        x = x + rng.normal(size=(n, width))
        features = {"cls": x[:, : sum(block_dims)]}
        if patch_dim:
            features["patch_mean"] = x[:, sum(block_dims) :]
        splits[name] = SplitData(
            features=features,
            labels=labels,
            sample_ids=np.array([f"{name}-s{i:05d}" for i in range(n)]),
            patient_ids=np.array([f"{name}-p{i // images_per_patient:04d}" for i in range(n)]),
        )
    names = [f"c{i}" for i in range(n_classes)] if task_type != "binary" else ["positive"]
    return FrozenInputs(task_type=task_type, class_names=names, block_dims=list(block_dims), splits=splits)


def with_test(inputs: FrozenInputs, labels=None, features=None) -> FrozenInputs:
    """A copy of inputs whose test split has other labels and/or features (poisoning)."""
    test = inputs.splits["test"]
    test = dataclasses.replace(
        test,
        labels=test.labels if labels is None else labels,
        features=test.features if features is None else features,
    )
    return dataclasses.replace(inputs, splits={**inputs.splits, "test": test})


def flipped_labels(inputs: FrozenInputs, seed: int = 1) -> np.ndarray:
    """Test labels that differ from the true ones everywhere (multiclass: shifted class; else 1 - y)."""
    labels = inputs.splits["test"].labels
    if inputs.task_type == "multiclass":
        return (labels + 1 + np.random.default_rng(seed).integers(0, len(inputs.class_names) - 1, len(labels))) % len(
            inputs.class_names
        )
    return 1 - labels


def auroc(inputs: FrozenInputs, prediction) -> float:
    """Macro AUROC of a Prediction on its test labels (sklearn, per class)."""
    from sklearn.metrics import roc_auc_score

    from raddist.protocols.features import label_matrix

    targets = label_matrix(inputs, prediction.labels)
    return float(np.mean([roc_auc_score(targets[:, c], prediction.scores[:, c]) for c in range(targets.shape[1])]))
