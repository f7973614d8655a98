"""What a finished cell leaves beside its metrics: per-sample predictions, per-case segmentation
results, and predicted label maps. Every id in them is a keyed pseudonym (raddist.privacy).

  predictions.parquet  classification: one row per test sample (labels, scores), so that any
                       statistic, and any paired comparison, can be recomputed
  cases.parquet        segmentation: one row per test case x foreground class: whether the class is
                       in the truth, dice, jaccard, hd95 and the voxel counts tp, fp, fn
  masks/               segmentation: predicted label maps on the source's grid (NIfTI or PNG)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from raddist import storage
from raddist.plan import Cell
from raddist.privacy import pseudonym
from raddist.protocols.base import Prediction, SegPrediction


def _cell_columns(cell: Cell, n: int) -> Dict[str, list]:
    return {k: [v] * n for k, v in cell.describe().items()}


def predictions_table(cell: Cell, prediction: Prediction, salt: str, groups: Optional[dict] = None) -> pa.Table:
    """groups: subgroup column -> each sample's coarse group, small groups already pooled
    (raddist.subgroups), written as columns beside the pseudonymous ids."""
    n = len(prediction.sample_ids)
    return pa.table({
        **_cell_columns(cell, n),
        "sample_id": [pseudonym(s, salt) for s in prediction.sample_ids],
        "patient_id": [pseudonym(p, salt) for p in prediction.patient_ids],
        "labels": pa.array(np.asarray(prediction.labels).reshape(n, -1).tolist(), pa.list_(pa.int64())),
        "scores": pa.array(np.asarray(prediction.scores, dtype=np.float64).tolist(), pa.list_(pa.float64())),
        **{col: pa.array([str(v) for v in values], pa.string()) for col, values in (groups or {}).items()},
    })


CASE_VALUES = ("dice", "jaccard", "hd95", "tp", "fp", "fn")


def cases_table(cell: Cell, prediction: SegPrediction, per_case: Dict[str, np.ndarray],
                class_names: Sequence[str], salt: str) -> pa.Table:
    """per_case: seg_metrics.per_case's (n_cases, n_classes - 1) arrays, in prediction.cases order."""
    foreground: List[str] = list(class_names[1:])
    n = len(prediction.cases) * len(foreground)
    columns = {
        **_cell_columns(cell, n),
        "case_id": np.repeat([pseudonym(c.case_id, salt) for c in prediction.cases], len(foreground)).tolist(),
        "patient_id": np.repeat([pseudonym(c.patient_id, salt) for c in prediction.cases], len(foreground)).tolist(),
        "class": foreground * len(prediction.cases),
        "present": (per_case["tp"] + per_case["fn"] > 0).reshape(-1).tolist(),
    }
    for name in CASE_VALUES:
        columns[name] = pa.array(np.asarray(per_case[name], np.float64).reshape(-1), pa.float64())
    return pa.table(columns)


def write_masks(prediction: SegPrediction, cell_dir: str, salt: str) -> int:
    """Predicted label maps of a segmentation cell (already on each case's source grid) into
    cell_dir/masks/: NIfTI volumes with the source's affine (<pseudonym>.nii.gz), 2D images as PNG.
    Returns the count."""
    from raddist.data.volumes import nifti_bytes, png_bytes

    written = 0
    for case in prediction.cases:
        name = storage.join(cell_dir, "masks", pseudonym(case.case_id, salt))
        if case.affine is not None:
            storage.write_bytes(name + ".nii.gz", nifti_bytes(case.pred, case.affine))
        elif case.pred.ndim == 2:
            storage.write_bytes(name + ".png", png_bytes(case.pred))
        else:
            continue  # slices listed in a manifest: no affine to write a volume with
        written += 1
    return written
