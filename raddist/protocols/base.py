"""What every protocol takes and returns: its inputs and its results, one type each.

  features      run(FrozenInputs, params, seed) -> Prediction     cached per-image features
  patch_tokens  run(SegInputs, params, seed)    -> SegPrediction  cached patch-token grids and masks
  images        run(TrainInputs, params, seed)  -> Prediction     trains the backbone (Ray Train)

A protocol reads the test split only to score it, once, after selecting on validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from raddist.tasks import CLASSIFICATION, TASK_TYPES  # noqa: F401  (the protocols import them from here)


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
    # 'train', 'test' and, when the manifest has one, 'val'; 'test:<name>' for each further test set
    # (selection.EXTRA_TEST)
    splits: Dict[str, SplitData]


@dataclass
class Prediction:
    """Test-set scores of one cell. Probabilities: (N, C) for every task type."""

    sample_ids: np.ndarray
    patient_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    selected: Dict[str, object] = field(default_factory=dict)  # hyperparameters chosen on validation
    val_score: Optional[float] = None
    # further test sets scored by the same selected head (selection.EXTRA_TEST): name -> its scores
    extra: Dict[str, "Prediction"] = field(default_factory=dict)


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
    cell_cpus: float = 0.5  # what the calling cell holds (spec resources.cpus_per_cell)


@dataclass
class SegSplit:
    """One split of a segmentation task, as cached patch tokens and masks, one row per image or slice."""

    tokens: List[np.ndarray]  # per cached block, the last block first: float16 (N, D_b, h_b, w_b)
    masks: np.ndarray  # uint8 (N, S, S) class indices at the output size
    sample_ids: np.ndarray
    patient_ids: np.ndarray
    case_ids: np.ndarray  # the image's own id, or its volume's
    slice_index: np.ndarray  # -1 for 2D images

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, idx: np.ndarray) -> "SegSplit":
        return SegSplit([t[idx] for t in self.tokens], self.masks[idx], self.sample_ids[idx],
                        self.patient_ids[idx], self.case_ids[idx], self.slice_index[idx])


@dataclass
class CaseGeometry:
    """Where a case's pixels sit. The heads train and validate on the output grid (the cached masks,
    S x S per slice); test is scored on the source grid (the label map as the manifest's mask_uri
    holds it)."""

    spacing: Tuple[float, ...]  # of the output grid, per axis: (S, S) or (D, S, S)
    source_shape: Tuple[int, ...]  # (H, W) or (D, H, W)
    affine: Optional[np.ndarray] = None  # NIfTI volumes: the source's (4, 4)
    # of the source grid, per axis, in the order of source_shape: a NIfTI volume's voxel sizes in mm
    # (from its affine); 2D images and slices listed in a manifest 1.0 per pixel (None: 1.0 per axis)
    source_spacing: Optional[Tuple[float, ...]] = None

    def source_spacing_or_pixels(self) -> Tuple[float, ...]:
        return tuple(self.source_spacing) if self.source_spacing is not None else (1.0,) * len(self.source_shape)


@dataclass
class SegInputs:
    task_type: str  # "segmentation"
    class_names: List[str]  # mask value i is class_names[i]; 0 is the background
    splits: Dict[str, SegSplit]
    geometry: Dict[str, CaseGeometry]  # case id -> geometry
    volumetric: bool  # cases are volumes assembled from slices
    # case id -> its ground truth on the source grid, read only when the case is scored
    # (data.volumes.read_source_labels): the uri of a 2D label map, or of a NIfTI label volume when
    # the case's geometry has an affine; a list of 2D label-map uris in slice order (slices listed
    # one per manifest row); or the label array itself
    source_masks: Dict[str, object] = field(default_factory=dict)


@dataclass
class SegCase:
    """One scored unit of a segmentation task: a 2D image, or a volume reassembled from its slices,
    on its source grid (the test cases of the segmentation protocols)."""

    case_id: str
    patient_id: str
    pred: np.ndarray  # integer labels, (H, W) or (D, H, W)
    truth: np.ndarray  # same shape
    spacing: Tuple[float, ...]  # one per axis of pred
    affine: Optional[np.ndarray] = None  # volumes: the source's (4, 4), to write the prediction back
    source_shape: Optional[Tuple[int, ...]] = None  # the source's shape, (H, W) or (D, H, W)


@dataclass
class SegPrediction:
    """The test cases of one segmentation cell, with their predicted and true label maps."""

    cases: List[SegCase]
    # further test sets (selection.EXTRA_TEST): none are scored for segmentation yet, so always empty
    extra: Dict[str, object] = field(default_factory=dict)
    # hyperparameters chosen on validation, and how long the chosen head trained (epochs_trained,
    # best_epoch): the cell stage writes this dict into cell.json
    selected: Dict[str, object] = field(default_factory=dict)
    val_score: Optional[float] = None
