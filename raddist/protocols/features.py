"""Which cached columns a frozen protocol reads, and labels as one (N, C) matrix.

features['cls'] holds the class tokens of the last n blocks, earliest to last; features['patch_mean']
the mean patch token of the last block. Laid side by side as [cls | patch_mean], every feature set the
protocols use -- the last b blocks' class tokens, with or without the patch mean -- is one contiguous
column range, so the linear grid slices one matrix instead of copying one per variant.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Tuple

import numpy as np

from raddist.protocols.base import FrozenInputs, SplitData

# Named feature sets of the neighbour and logistic-regression protocols: (blocks, with patch mean).
FeatureSet = Literal["cls_last", "cls_all", "cls_patch"]
_FEATURE_SETS: Dict[str, Tuple[int | None, bool]] = {
    "cls_last": (1, False),  # the last block's class token (DINO's kNN)
    "cls_all": (None, False),  # the class tokens of every cached block
    "cls_patch": (1, True),  # last class token and mean patch token (dinov2's avgpool variant)
}


def has_patch_mean(split: SplitData) -> bool:
    return "patch_mean" in split.features


def stacked(split: SplitData) -> np.ndarray:
    """[cls | patch_mean] as one matrix; the column ranges of column_range() index it."""
    if not has_patch_mean(split):
        return split.features["cls"]
    return np.concatenate([split.features["cls"], split.features["patch_mean"]], axis=1)


def column_range(block_dims: List[int], blocks: int, with_patch: bool, patch_dim: int) -> Tuple[int, int]:
    """Columns of stacked() holding the last `blocks` class tokens (and the patch mean)."""
    if not 1 <= blocks <= len(block_dims):
        raise ValueError(f"blocks={blocks} but the cache holds {len(block_dims)} block(s)")
    cls_dim = sum(block_dims)
    start = cls_dim - sum(block_dims[-blocks:])
    return start, cls_dim + (patch_dim if with_patch else 0)


def named_features(inputs: FrozenInputs, split: SplitData, name: str) -> np.ndarray:
    """The matrix of one named feature set (see FeatureSet)."""
    blocks, with_patch = _FEATURE_SETS[name]
    if with_patch and not has_patch_mean(split):
        raise ValueError(f"features='{name}' needs a 'patch_mean' feature, which this backbone's cache lacks")
    patch_dim = split.features["patch_mean"].shape[1] if with_patch else 0
    start, end = column_range(inputs.block_dims, blocks or len(inputs.block_dims), with_patch, patch_dim)
    return stacked(split)[:, start:end]


def num_classes(inputs: FrozenInputs, labels: np.ndarray) -> int:
    if inputs.task_type == "multiclass":
        return len(inputs.class_names)
    return labels.reshape(len(labels), -1).shape[1]


def label_matrix(inputs: FrozenInputs, labels: np.ndarray) -> np.ndarray:
    """(N, C) float targets: one-hot for multiclass, the 0/1 columns otherwise (binary: C = 1)."""
    if inputs.task_type == "multiclass":
        return np.eye(len(inputs.class_names))[labels.astype(int)]
    return labels.reshape(len(labels), -1).astype(float)


def features_and_targets(inputs: FrozenInputs, split: SplitData, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(named feature matrix, (N, C) targets) of one split: what the neighbour protocols read."""
    return named_features(inputs, split, name), label_matrix(inputs, split.labels)
