"""Classification metrics with patient-level bootstrap confidence intervals.

Conventions (the same for the point estimate and for every bootstrap replicate):

- ``auroc`` is the unweighted mean of the per-class one-vs-rest AUROCs over the classes
  where AUROC is *defined* in the evaluated sample. A class whose labels take one value only
  (no positives, or no negatives) gets ``auroc/<class>`` = NaN and is left out of the macro
  mean. When every class is defined the macro equals sklearn's
  ``roc_auc_score(multi_class='ovr', average='macro')``.
- multilabel / binary (C = 1): a score >= 0.5 is a positive prediction. ``accuracy`` is the
  mean over labels of the per-label accuracy (not the exact-match subset accuracy);
  ``balanced_accuracy`` is the mean over labels of sklearn's per-label balanced accuracy;
  ``f1_macro`` is the mean over labels of the positive-class F1, leaving out labels with no
  positives and no predicted positives (sklearn ``zero_division=np.nan``). For binary tasks
  ``f1_macro`` is therefore the F1 of the positive class.
- multiclass: the prediction is the argmax of the scores; accuracy, balanced accuracy and
  macro F1 are sklearn's (balanced accuracy averages the recall of the classes present).

Bootstrap: percentile intervals over resamples of *patients* (groups) drawn with replacement;
a drawn patient brings all its rows. The macro AUROC of a resample averages the same classes
as the point estimate: a resample that lacks the positives (or negatives) of one of them
(a rare finding's few patients all left out) has an *undefined* macro AUROC, NaN, rather than
a mean over fewer classes. Intervals are over the defined resamples; ``score_prediction``
reports how many were undefined (``n_undefined``). A resample is a vector of per-patient multiplicities, so
every metric is a weighted count, computed for a block of resamples at once with numpy
(AUROC by the Mann-Whitney statistic on sorted scores with midranks for ties).
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score,
                             roc_auc_score)

SCALAR_METRICS = ("auroc", "accuracy", "balanced_accuracy", "f1_macro")
ALPHA = 0.05  # significance level and 1 - coverage of every interval, unless a caller says otherwise
BOOTSTRAP = 1000  # patient resamples for a confidence interval (raddist compare sizes its own to the family)
THRESHOLD = 0.5
_BLOCK = 64  # resamples evaluated together; bounds memory at ~_BLOCK * N * 8 bytes per array


def normalize(task_type: str, labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (N, C) int for multilabel/binary, (N,) int for multiclass; scores (N, C) float."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    if task_type in ("multilabel", "binary"):
        if labels.ndim == 1:
            labels = labels[:, None]
        if task_type == "binary" and scores.shape[1] == 2:  # (neg, pos) probabilities
            scores = scores[:, 1:]
        if labels.shape != scores.shape:
            raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    elif task_type == "multiclass":
        labels = labels.reshape(-1)
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {scores.shape[0]} score rows")
    else:
        raise ValueError(f"task_type {task_type!r} has no classification metrics; "
                         "expected multilabel, binary or multiclass")
    return labels.astype(np.int64), scores


def _onehot(task_type: str, labels: np.ndarray, n_classes: int) -> np.ndarray:
    if task_type == "multiclass":
        return (labels[:, None] == np.arange(n_classes)[None, :]).astype(np.int64)
    return labels


def classification_metrics(task_type: str, labels, scores,
                           class_names: Sequence[str]) -> Dict[str, float]:
    """Point estimates with sklearn; see the module docstring for the conventions."""
    labels, scores = normalize(task_type, labels, scores)
    n_classes = scores.shape[1]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} score columns")
    onehot = _onehot(task_type, labels, n_classes)
    out: Dict[str, float] = {}
    per_class = []
    for c, name in enumerate(class_names):
        y = onehot[:, c]
        auc = float(roc_auc_score(y, scores[:, c])) if 0 < y.sum() < len(y) else float("nan")
        out[f"auroc/{name}"] = auc
        per_class.append(auc)
    out["auroc"] = _nanmean(np.array(per_class))
    if task_type == "multiclass":
        pred = scores.argmax(axis=1)
        out["accuracy"] = float(accuracy_score(labels, pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(labels, pred))
        out["f1_macro"] = float(f1_score(labels, pred, average="macro",
                                         labels=np.arange(n_classes), zero_division=np.nan))
    else:
        pred = (scores >= THRESHOLD).astype(np.int64)
        out["accuracy"] = float(np.mean([accuracy_score(labels[:, c], pred[:, c])
                                         for c in range(n_classes)]))
        out["balanced_accuracy"] = float(np.mean(
            [_sk_balanced_accuracy(labels[:, c], pred[:, c]) for c in range(n_classes)]))
        out["f1_macro"] = _nanmean(np.array([  # per column: (N, 1) would read as 2 classes
            f1_score(labels[:, c], pred[:, c], zero_division=np.nan) for c in range(n_classes)]))
    return out


def _sk_balanced_accuracy(y, pred) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def _nanmean(x: np.ndarray, axis=None):
    """Mean over defined entries; NaN (without a warning) where none is defined."""
    x = np.asarray(x, dtype=np.float64)
    n = np.sum(~np.isnan(x), axis=axis)
    s = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return float(m) if np.ndim(m) == 0 else m


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# --------------------------------------------------------------------------------------------
# Weighted (resampled) evaluation


def group_codes(groups) -> Tuple[np.ndarray, int]:
    """Row -> patient index in [0, n_groups)."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1 if len(codes) else 0


def resample_counts(n_groups: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (b, n_groups) multiplicities: patients drawn with replacement, n_groups each."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BLOCK):
        b = min(_BLOCK, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = draws + (np.arange(b) * n_groups)[:, None]
        yield np.bincount(flat.ravel(), minlength=b * n_groups).reshape(b, n_groups)


def resampled_rows(codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row indices of one resample (counts: (n_groups,)): each patient's rows, count times."""
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(counts)))
    ends = np.searchsorted(codes[order], np.arange(len(counts)), side="right")
    return np.concatenate([np.tile(order[s:e], k) for s, e, k in zip(starts, ends, counts)
                           if k > 0] or [np.zeros(0, dtype=np.int64)])


class WeightedEvaluator:
    """Evaluates all metrics for blocks of patient multiplicities (b, n_groups) at once.

    With counts all ones it reproduces :func:`classification_metrics` (tested to 1e-12).
    """

    def __init__(self, task_type: str, labels, scores, class_names: Sequence[str], codes,
                 n_groups: int):
        labels, scores = normalize(task_type, labels, scores)
        self.task_type, self.class_names = task_type, list(class_names)
        n_classes = scores.shape[1]
        onehot = _onehot(task_type, labels, n_classes)
        self.n_groups = n_groups
        agg = lambda x: _per_group(codes, n_groups, x)  # (n, k) row counts -> (P, k)
        self.rows = agg(np.ones((len(codes), 1)))[:, 0]
        self.defined = np.array([0 < onehot[:, c].sum() < len(onehot) for c in range(n_classes)])
        # AUROC: per class, negatives sorted by score and, for each positive, how many
        # negatives score strictly below it (lo) and at most equal to it (hi).
        self.auc_parts = []
        for c in range(n_classes):
            y, s = onehot[:, c] == 1, scores[:, c]
            order = np.argsort(s[~y], kind="stable")
            s_neg = s[~y][order]
            self.auc_parts.append((codes[~y][order], codes[y],
                                   np.searchsorted(s_neg, s[y], "left"),
                                   np.searchsorted(s_neg, s[y], "right")))
        if task_type == "multiclass":
            pred = _onehot(task_type, scores.argmax(axis=1), n_classes)
            self.true, self.pred = agg(onehot), agg(pred)
            self.hit = agg(onehot * pred)
        else:
            pred = (scores >= THRESHOLD).astype(np.int64)
            self.tp, self.fn = agg(onehot * pred), agg(onehot * (1 - pred))
            self.fp, self.tn = agg((1 - onehot) * pred), agg((1 - onehot) * (1 - pred))

    def __call__(self, counts: np.ndarray) -> Dict[str, np.ndarray]:
        w = np.asarray(counts, dtype=np.float64)
        out: Dict[str, np.ndarray] = {}
        aucs = np.stack([self._auroc(w, *parts) for parts in self.auc_parts], axis=1)
        for c, name in enumerate(self.class_names):
            out[f"auroc/{name}"] = aucs[:, c]
        # the point estimate's classes in every resample: one of them undefined -> the macro is undefined
        out["auroc"] = np.mean(aucs[:, self.defined], axis=1) if self.defined.any() else np.full(len(w), np.nan)
        if self.task_type == "multiclass":
            true, pred, hit = w @ self.true, w @ self.pred, w @ self.hit
            out["accuracy"] = hit.sum(1) / (w @ self.rows)
            out["balanced_accuracy"] = _nanmean(_ratio(hit, true), axis=1)
            out["f1_macro"] = _nanmean(_ratio(2 * hit, true + pred), axis=1)
        else:
            tp, fn, fp, tn = w @ self.tp, w @ self.fn, w @ self.fp, w @ self.tn
            out["accuracy"] = ((tp + tn) / (w @ self.rows)[:, None]).mean(1)
            recalls = np.stack([_ratio(tp, tp + fn), _ratio(tn, tn + fp)])
            out["balanced_accuracy"] = _nanmean(recalls, axis=0).mean(1)
            out["f1_macro"] = _nanmean(_ratio(2 * tp, 2 * tp + fp + fn), axis=1)
        return out

    @staticmethod
    def _auroc(w, neg_codes, pos_codes, lo, hi) -> np.ndarray:
        # Mann-Whitney: sum over positives of weight * (weighted negatives below + half ties).
        cum = np.zeros((w.shape[0], len(neg_codes) + 1))
        np.cumsum(w[:, neg_codes], axis=1, out=cum[:, 1:])
        w_pos = w[:, pos_codes]
        num = np.einsum("bi,bi->b", w_pos, cum[:, lo] + cum[:, hi]) * 0.5
        return _ratio(num, w_pos.sum(1) * cum[:, -1])


def _per_group(codes: np.ndarray, n_groups: int, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.stack([np.bincount(codes, weights=x[:, k], minlength=n_groups)
                     for k in range(x.shape[1])], axis=1)


def bootstrap_replicates(task_type: str, labels, scores, class_names, groups,
                         n_boot: int = BOOTSTRAP, seed: int = 0) -> Dict[str, np.ndarray]:
    """metric -> (n_boot,) values over patient resamples (NaN where undefined)."""
    codes, n_groups = group_codes(groups)
    evaluate = WeightedEvaluator(task_type, labels, scores, class_names, codes, n_groups)
    blocks = [evaluate(c) for c in resample_counts(n_groups, n_boot, seed)]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def percentile_ci(replicates: np.ndarray, alpha: float = ALPHA) -> Tuple[float, float]:
    """Percentile interval over the defined replicates; (NaN, NaN) if none is defined."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(r, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_ci(task_type: str, labels, scores, class_names, groups, n_boot: int = BOOTSTRAP,
                 seed: int = 0, alpha: float = ALPHA) -> Dict[str, Tuple[float, float]]:
    """Percentile bootstrap CI of every metric, resampling groups (patients), not rows."""
    reps = bootstrap_replicates(task_type, labels, scores, class_names, groups, n_boot, seed)
    return {k: percentile_ci(v, alpha) for k, v in reps.items()}


def score_prediction(task_type: str, prediction, class_names: Sequence[str],
                     n_boot: int = BOOTSTRAP, seed: int = 0, alpha: float = ALPHA) -> List[dict]:
    """Rows {metric, value, ci_low, ci_high, n_undefined} for a protocols.base.Prediction.

    Scalar metrics first (auroc, accuracy, balanced_accuracy, f1_macro), then auroc/<class>.
    n_undefined: how many of the n_boot resamples left the metric undefined (the CI is over the
    others). n_boot = 0 gives NaN intervals.
    """
    if task_type == "segmentation":
        raise ValueError("segmentation predictions are scored per case: raddist.seg_metrics.score_cases")
    values = classification_metrics(task_type, prediction.labels, prediction.scores,
                                     class_names)
    reps = {}
    if n_boot > 0:
        reps = bootstrap_replicates(task_type, prediction.labels, prediction.scores, class_names,
                                    prediction.patient_ids, n_boot, seed)
    names = list(SCALAR_METRICS) + [f"auroc/{c}" for c in class_names]
    nan = (float("nan"), float("nan"))
    cis = {m: percentile_ci(reps[m], alpha) if m in reps else nan for m in names}
    return [dict(metric=m, value=values[m], ci_low=cis[m][0], ci_high=cis[m][1],
                 n_undefined=int(np.isnan(reps[m]).sum()) if m in reps else 0) for m in names]
