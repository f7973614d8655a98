"""Calibration of a cell's test probabilities: expected calibration error (ECE) over equal-mass bins
and the Brier score, with patient-bootstrap intervals.

Conventions:

- ECE uses N_BINS = 15 *equal-mass* bins: the rows sorted by probability (stable) and cut into
  N_BINS runs of equal count (numpy.array_split sizes: the first N mod N_BINS runs one longer).
  ECE = sum over bins of |sum(y) - sum(p)| / N, i.e. sum_b (n_b / N) |mean y_b - mean p_b|.
  The metric is named ``ece_mass15`` so the binning travels with every value.
- multilabel / binary: per class, on that class's probability and 0/1 label (``ece_mass15/<class>``,
  ``brier/<class>`` for multilabel); ``ece_mass15`` and ``brier`` are the unweighted means over classes.
- multiclass: top-label ECE (confidence = the largest probability, hit = argmax is the label) and the
  multiclass Brier score: the mean over rows of sum_k (p_k - onehot_k)^2 (0 to 2), as sklearn's
  brier_score_loss with several classes.
- Only probabilities are scored: scores outside [0, 1], or multiclass rows that do not sum to 1,
  give no calibration rows.

Bootstrap: the same patient resamples as raddist.metrics (its group_codes and resample_counts with
the cell's seed), so a calibration interval pairs with the AUROC interval of the same cell. A
resample is a vector of patient multiplicities; equal-mass bins of a resample cut the resampled
rows (each row repeated by its patient's multiplicity) into N_BINS runs of equal count, computed
from cumulative sums without materialising the rows. All ones reproduces the point estimate.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from raddist import metrics

N_BINS = 15
ECE = f"ece_mass{N_BINS}"
BRIER = "brier"


def is_probabilistic(task_type: str, scores: np.ndarray) -> bool:
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        return False
    return task_type != "multiclass" or bool(np.allclose(s.sum(axis=1), 1.0, atol=1e-4))


def columns(task_type: str, labels, scores) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, p) for ECE, (N, K) each (multiclass: K = 1, top label), and the per-row squared error
    (N, K) whose mean is the Brier score (multiclass: K = 1, summed over classes)."""
    labels, scores = metrics.normalize(task_type, labels, scores)
    if task_type == "multiclass":
        onehot = labels[:, None] == np.arange(scores.shape[1])[None, :]
        y = (scores.argmax(axis=1) == labels).astype(np.float64)[:, None]
        p = scores.max(axis=1)[:, None]
        return y, p, ((scores - onehot) ** 2).sum(axis=1, keepdims=True)
    y = labels.astype(np.float64)
    return y, scores, (scores - y) ** 2


def _bin_edges(total: np.ndarray, n_bins: int) -> np.ndarray:
    """(b, n_bins + 1) positions cutting `total` rows into array_split runs."""
    total = np.asarray(total, dtype=np.int64)
    base, extra = total // n_bins, total % n_bins
    sizes = base[:, None] + (np.arange(n_bins)[None, :] < extra[:, None])
    return np.concatenate([np.zeros((len(total), 1), np.int64), np.cumsum(sizes, axis=1)], axis=1)


def weighted_ece(y: np.ndarray, p: np.ndarray, codes: np.ndarray, counts: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """ECE of one column for each row of patient multiplicities counts (b, n_patients); codes: each
    row's patient. The resample's rows (row i repeated counts[:, codes[i]] times) sorted by p and cut
    into n_bins equal runs. Prefix sums run down (N, b) arrays: contiguous across resamples."""
    order = np.argsort(p, kind="stable")
    gap = y[order] - p[order]  # a bin's |sum(y) - sum(p)| is |the sum of its gaps|
    w = np.ascontiguousarray(np.asarray(counts, dtype=np.float64).T)[codes[order]]  # (N, b)
    zero = np.zeros((1, w.shape[1]))
    cum_n = np.concatenate([zero, np.cumsum(w, axis=0)])
    cum_gap = np.concatenate([zero, np.cumsum(w * gap[:, None], axis=0)])
    total = cum_n[-1].round().astype(np.int64)
    edges = _bin_edges(total, n_bins)
    out = np.full(w.shape[1], np.nan)
    for b in np.flatnonzero(total > 0):
        j = np.searchsorted(cum_n[1:, b], edges[b], side="right")  # rows wholly before each edge
        part = edges[b] - cum_n[j, b]  # copies of row j before the edge
        before = cum_gap[j, b] + part * gap[np.minimum(j, len(gap) - 1)]
        out[b] = np.abs(np.diff(before)).sum() / total[b]
    return out


def ece(y, p, n_bins: int = N_BINS) -> float:
    """Equal-mass ECE of 0/1 outcomes y and probabilities p (1-D)."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return float(weighted_ece(y, p, np.arange(len(y)), np.ones((1, len(y))), n_bins)[0])


class CalibrationEvaluator:
    """ECE and Brier for blocks of patient multiplicities (b, n_groups); names as in the docstring."""

    def __init__(self, task_type: str, labels, scores, class_names: Sequence[str], codes, n_groups: int):
        self.y, self.p, sq = columns(task_type, labels, scores)
        self.codes = np.asarray(codes)
        self.names = [] if task_type != "multilabel" else list(class_names)
        self.sq_sums = np.stack([np.bincount(self.codes, weights=sq[:, k], minlength=n_groups)
                                 for k in range(sq.shape[1])], axis=1)  # (P, K) per-patient sums
        self.rows = np.bincount(self.codes, minlength=n_groups).astype(np.float64)

    def __call__(self, counts: np.ndarray) -> Dict[str, np.ndarray]:
        w = np.asarray(counts, dtype=np.float64)
        eces = np.stack([weighted_ece(self.y[:, k], self.p[:, k], self.codes, w) for k in range(self.y.shape[1])], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            briers = (w @ self.sq_sums) / (w @ self.rows)[:, None]
        out = {ECE: eces.mean(axis=1), BRIER: briers.mean(axis=1)}
        for k, name in enumerate(self.names):
            out[f"{ECE}/{name}"], out[f"{BRIER}/{name}"] = eces[:, k], briers[:, k]
        return out


def metric_names(task_type: str, class_names: Sequence[str]) -> List[str]:
    per_class = [f"{m}/{c}" for c in class_names for m in (ECE, BRIER)] if task_type == "multilabel" else []
    return [ECE, BRIER] + per_class


def score_calibration(task_type: str, prediction, class_names: Sequence[str], n_boot: int = metrics.BOOTSTRAP,
                      seed: int = 0, alpha: float = metrics.ALPHA) -> List[dict]:
    """Rows {metric, value, ci_low, ci_high, n_undefined} like metrics.score_prediction's; none when the
    scores are not probabilities (or the task is segmentation)."""
    if task_type not in ("multilabel", "binary", "multiclass"):
        return []
    _, scores = metrics.normalize(task_type, prediction.labels, prediction.scores)
    if not is_probabilistic(task_type, scores):
        return []
    codes, n_groups = metrics.group_codes(prediction.patient_ids)
    evaluate = CalibrationEvaluator(task_type, prediction.labels, prediction.scores, class_names, codes, n_groups)
    values = evaluate(np.ones((1, n_groups)))
    reps: Dict[str, np.ndarray] = {}
    if n_boot > 0:
        blocks = [evaluate(c) for c in metrics.resample_counts(n_groups, n_boot, seed)]
        reps = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    rows = []
    for m in metric_names(task_type, class_names):
        low, high = metrics.percentile_ci(reps[m], alpha) if m in reps else (float("nan"), float("nan"))
        rows.append(dict(metric=m, value=float(values[m][0]), ci_low=low, ci_high=high,
                         n_undefined=int(np.isnan(reps[m]).sum()) if m in reps else 0))
    return rows


def reliability_curve(task_type: str, labels, scores, n_bins: int = N_BINS) -> Tuple[np.ndarray, np.ndarray]:
    """(mean probability, observed frequency) per equal-mass bin; multilabel pools every class's
    (probability, label) pairs, multiclass uses the top label. Empty when not probabilities."""
    _, s = metrics.normalize(task_type, labels, scores)
    if not is_probabilistic(task_type, s):
        return np.zeros(0), np.zeros(0)
    y, p, _ = columns(task_type, labels, scores)
    y, p = y.reshape(-1), p.reshape(-1)
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(order))) if len(b)]
    return np.array([p[b].mean() for b in bins]), np.array([y[b].mean() for b in bins])


def reliability_png(output: str, cells) -> Optional[bytes]:
    """One task's reliability diagrams (raddist.figures.reliability_plot): a panel per row of cells
    (DataFrame: cell_id, task_type, backbone, column), read from each cell's predictions.parquet."""
    from raddist import figures, storage
    from raddist.results import cell_dir

    curves = {}
    for r in cells.itertuples():
        uri = storage.join(cell_dir(output, r.cell_id), "predictions.parquet")
        if not storage.exists(uri):
            continue
        preds = storage.read_parquet(uri)
        labels = np.array(preds["labels"].to_pylist())
        x, y = reliability_curve(r.task_type, labels if r.task_type != "multiclass" else labels[:, 0],
                                 np.array(preds["scores"].to_pylist()))
        if len(x):
            curves[(r.backbone, r.column)] = (x, y)
    return figures.reliability_plot(curves, cells["task"].iloc[0], N_BINS) if curves else None
