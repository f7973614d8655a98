"""Segmentation metrics through MONAI, with patient-level bootstrap confidence intervals.

A *case* is what one score is computed on: a 2D image, or a volume reassembled from its slices
(raddist.protocols.base.SegCase: pred, truth, spacing, patient_id).
Per case and foreground class (background is never scored):
  dice     MONAI DiceMetric; NaN when the class is absent from the case's ground truth
  jaccard  MONAI MeanIoU; NaN likewise
  hd95     MONAI HausdorffDistanceMetric, 95th percentile, symmetric, in the case's spacing units
           (mm for volumes, source pixels for 2D images); NaN when the class is absent from the
           ground truth; when it is present but never predicted, the case's diagonal (the largest
           distance the grid holds) instead of MONAI's inf, so that means stay finite.
Reported (rows {metric, value, ci_low, ci_high}, the format of raddist.metrics):
  dice, jaccard, hd95          per case: <metric>/<class> is the mean over the cases that contain
                               the class, and the headline the mean over classes
  dice_pooled, jaccard_pooled  pooled over voxels: TP, FP, FN summed over every case per class,
                               then the mean over classes (a false positive in a case without the
                               class counts here, and only here)
  dice/<class>, jaccard/<class>, hd95/<class>
The cases are on their SOURCE grid (protocols.seg_common: logits resized to the source, truth read
from the manifest's mask_uri), so a structure a few pixels wide is not flattered by a coarse grid.
The reference study scored neither per case nor on the source grid: torchmetrics Dice and Jaccard
(macro over the foreground classes) accumulated over every test pixel on its 448 x 448 resized grid
(masks resized nearest), i.e. pooled like dice_pooled; its Jaccard, with ignore_index=0, also drops
every pixel whose truth is background, so foreground predicted there costs nothing.
Bootstrap: patients drawn with replacement (metrics.resample_counts); a resample is a weight per
case, so every statistic above is a weighted sum of per-case numbers, for a block of resamples at once.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np

from raddist.metrics import _nanmean, _ratio, group_codes, percentile_ci, resample_counts

HEADLINE = ("dice", "dice_pooled", "jaccard", "jaccard_pooled", "hd95")
PER_CLASS = ("dice", "jaccard", "hd95")


def case_metrics(pred: np.ndarray, truth: np.ndarray, n_classes: int, spacing: Sequence[float],
                 hd: bool = True) -> Dict[str, np.ndarray]:
    """Per foreground class (n_classes - 1 entries): dice, jaccard, hd95, and the voxel counts tp, fp, fn."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    fg = n_classes - 1
    out = {**confusion_counts(pred, truth, n_classes),
           "dice": np.full(fg, np.nan), "jaccard": np.full(fg, np.nan), "hd95": np.full(fg, np.nan)}
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(truth.shape, spacing))))
    for c in range(1, n_classes):
        t = truth == c
        if not t.any():
            continue
        p = pred == c
        # one-hot [background, class c], batch of one: what every MONAI metric takes
        y_pred = torch.from_numpy(np.stack([~p, p])[None])
        y = torch.from_numpy(np.stack([~t, t])[None])
        out["dice"][c - 1] = float(dice(y_pred, y)[0, 0])
        out["jaccard"][c - 1] = float(iou(y_pred, y)[0, 0])
        if hd:
            if p.any():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out["hd95"][c - 1] = float(hd95(y_pred, y, spacing=list(spacing))[0, 0])
            else:
                out["hd95"][c - 1] = diagonal
        for m in (dice, iou, hd95):
            m.reset()
    return out


def confusion_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> Dict[str, np.ndarray]:
    """Voxel counts tp, fp, fn per foreground class (n_classes - 1 entries each), float64."""
    pairs = np.asarray(truth).ravel().astype(np.int64) * n_classes + np.asarray(pred).ravel().astype(np.int64)
    cm = np.bincount(pairs, minlength=n_classes * n_classes)[: n_classes * n_classes].reshape(n_classes, n_classes)
    tp = np.diag(cm)[1:].astype(np.float64)
    return {"tp": tp, "fp": cm[:, 1:].sum(0) - tp, "fn": cm[1:, :].sum(1) - tp}


def dice_of_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """The headline Dice from per-case counts ((n_cases, n_classes - 1) each): per class the mean over
    the cases whose truth holds it, then the mean over classes; what `aggregate` gives for 'dice'."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    present = tp + fn > 0
    dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(_nanmean(_ratio(dice.sum(0), present.sum(0))))


def per_case(cases: Sequence, n_classes: int, hd: bool = True) -> Dict[str, np.ndarray]:
    """Every case_metrics entry stacked: (n_cases, n_classes - 1) each."""
    rows = [case_metrics(c.pred, c.truth, n_classes, c.spacing, hd) for c in cases]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def aggregate(values: Dict[str, np.ndarray], case_weights: np.ndarray) -> Dict[str, np.ndarray]:
    """Statistics for (b, n_cases) case weights: each (b,) headline, and (b, n_classes - 1) per class."""
    w = np.asarray(case_weights, dtype=np.float64)
    out = {}
    for name in PER_CLASS:
        v = values[name]
        defined = ~np.isnan(v)
        out[f"{name}/class"] = _ratio(w @ np.where(defined, v, 0.0), w @ defined)
        out[name] = _nanmean(out[f"{name}/class"], axis=1)
    tp, fp, fn = (w @ values[k] for k in ("tp", "fp", "fn"))
    out["dice_pooled"] = _nanmean(_ratio(2 * tp, 2 * tp + fp + fn), axis=1)
    out["jaccard_pooled"] = _nanmean(_ratio(tp, tp + fp + fn), axis=1)
    return out


def score_cases(cases: Sequence, class_names: Sequence[str], n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> Tuple[List[dict], Dict[str, np.ndarray]]:
    """(metric rows, per-case values). class_names[0] is the background."""
    if not cases:
        raise ValueError("no test cases to score")
    n_classes = len(class_names)
    values = per_case(cases, n_classes)
    codes, n_groups = group_codes([c.patient_id for c in cases])
    point = aggregate(values, np.ones((1, len(cases))))
    reps = None
    if n_boot > 0:
        blocks = [aggregate(values, counts[:, codes]) for counts in resample_counts(n_groups, n_boot, seed)]
        reps = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    rows = []
    names = list(HEADLINE) + [(m, i, c) for m in PER_CLASS for i, c in enumerate(class_names[1:])]
    for name in names:
        if isinstance(name, tuple):
            metric, i, cls = name
            value = point[f"{metric}/class"][0, i]
            low, high = percentile_ci(reps[f"{metric}/class"][:, i], alpha) if reps else (np.nan, np.nan)
            name = f"{metric}/{cls}"
        else:
            value = point[name][0]
            low, high = percentile_ci(reps[name], alpha) if reps else (np.nan, np.nan)
        rows.append(dict(metric=name, value=float(value), ci_low=float(low), ci_high=float(high)))
    return rows, values


def mean_dice(cases: Sequence, n_classes: int) -> float:
    """The headline Dice of a set of cases, from voxel counts alone (no HD95, no intervals)."""
    counts = [confusion_counts(c.pred, c.truth, n_classes) for c in cases]
    return dice_of_counts(*(np.stack([c[k] for c in counts]) for k in ("tp", "fp", "fn")))
