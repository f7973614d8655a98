"""What every protocol takes and returns.

A frozen-feature protocol is a function ``run(inputs: FrozenInputs, params, seed) -> Prediction``.
It reads cached features, never the backbone, and never the test labels while it selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

TASK_TYPES = ("multilabel", "binary", "multiclass", "segmentation")


@dataclass
class SplitData:
    """One split of one task, as cached features.

    features: 'cls' -> (N, sum(block_dims)) the class tokens of the last n blocks, concatenated
              from the earliest to the last; 'patch_mean' -> (N, D) the mean patch token of the
              last block (absent for backbones without one).
    labels:   multilabel/binary: (N, C) in {0, 1} (binary has C = 1);
              multiclass: (N,) class indices.
    """

    features: Dict[str, np.ndarray]
    labels: np.ndarray
    sample_ids: np.ndarray
    patient_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, idx: np.ndarray) -> "SplitData":
        return SplitData(
            features={k: v[idx] for k, v in self.features.items()},
            labels=self.labels[idx],
            sample_ids=self.sample_ids[idx],
            patient_ids=self.patient_ids[idx],
        )


@dataclass
class FrozenInputs:
    task_type: str  # multilabel | binary | multiclass
    class_names: List[str]
    block_dims: List[int]  # widths of the blocks concatenated in features['cls']
    splits: Dict[str, SplitData]  # 'train', 'test' and, when the manifest has one, 'val'


@dataclass
class Prediction:
    """Test-set scores of one cell. Probabilities: (N, C) for every task type."""

    sample_ids: np.ndarray
    patient_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    selected: Dict[str, object] = field(default_factory=dict)  # hyperparameters chosen on validation
    val_score: Optional[float] = None


@dataclass
class TrainInputs:
    """What a trainable protocol (fine-tune, LoRA, BitFit) gets: the images, not cached features.

    It trains with Ray Train from inside its cell, reading images through the same decode as the
    embedding pipeline, selects on validation and scores test once.
    """

    task_type: str
    class_names: List[str]
    label_columns: List[str]
    manifest: object  # pyarrow.Table, uris resolved; splits train/val(optional)/test
    backbone: str  # registry name
    weights: str  # "hub" | "random" | uri
    contract: dict  # PreprocessContract as a dict (size, window, clip_percentiles)
    checkpoint_dir: str  # storage URI for this cell's checkpoints (local or s3://)
    num_workers: int = 1
    use_gpu: bool = False
