"""Paired bootstrap and Holm's adjustment: the statistics under raddist.compare.

- :func:`paired_bootstrap`: resample patients jointly for A and B and look at the bootstrap distribution of
  d* = metric(A*) - metric(B*). Two-sided p-value, with the +1 correction:
  ``p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))`` over the B replicates where
  d* is defined (:func:`bootstrap_p`). A vs A gives d* = 0 everywhere, so p = 1.
- :func:`holm`: Holm-Bonferroni step-down adjusted p-values.
- :func:`family_bootstrap`: the B that lets a Holm family of m bootstrap tests reach alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np

from raddist.metrics import (ALPHA, BOOTSTRAP, WeightedEvaluator, _nanmean, classification_metrics, group_codes,
                             normalize, percentile_ci, resample_counts, resampled_rows)

MetricFn = Callable[[np.ndarray, np.ndarray], float]
NBoot = Union[int, str]  # a number of resamples, or "auto": sized to the family (family_bootstrap)


def holm(p_values) -> np.ndarray:
    """Holm step-down: p_(i) -> max_{j<=i} min(1, (m - j + 1) p_(j)). NaNs stay NaN, m counts only the defined
    p-values."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def family_bootstrap(m: int, alpha: float) -> int:
    """Resamples for a Holm family of m bootstrap tests. The smallest bootstrap p is 2 / (B + 1) and Holm multiplies
    the smallest by m, so anything can be significant only if B >= 2m / alpha - 1. Twice that (the floor of the
    adjusted p is then alpha / 2: a test with one replicate past zero can still be significant), rounded up to a
    thousand, and at least BOOTSTRAP. m = 59 at alpha 0.05: 5,000; m <= 12: 1,000."""
    need = 2 * int(np.ceil(2 * m / alpha - 1e-9))
    return int(max(BOOTSTRAP, -(-need // 1000) * 1000))


REFINE = 5  # "auto": BOOTSTRAP resamples first, the family's B where a p-value is within REFINE Monte Carlo SEs of alpha


def resolve_bootstrap(n_boot: NBoot, m: int, alpha: float) -> int:
    """n_boot as a number: "auto" -> family_bootstrap(m, alpha); a number of resamples as it is."""
    if isinstance(n_boot, str) and n_boot == "auto":
        return family_bootstrap(m, alpha)
    if isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot >= 0:
        return int(n_boot)
    raise ValueError(f"bootstrap resamples must be a number >= 0 or 'auto', not {n_boot!r}")


def bootstrap_p(d: np.ndarray) -> float:
    """Two-sided p of the replicates d of A - B with the +1 correction, over the defined ones (NaN if none)."""
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    below, above = (1 + np.sum(d <= 0)) / (d.size + 1), (1 + np.sum(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def bootstrap_summary(a: float, b: float, d: np.ndarray, alpha: float) -> dict:
    """A bootstrap row's results from the point values and the replicates d of the difference (NaN: undefined)."""
    low, high = percentile_ci(d, alpha)
    undefined = int(np.isnan(d).sum())
    note = f"undefined in {undefined} of {d.size} resamples; p and CI over the rest" if undefined else ""
    return dict(a=a, b=b, diff=a - b, ci_low=low, ci_high=high, p_value=bootstrap_p(d), n_boot=d.size, note=note)


def _infer_task_type(labels: np.ndarray, scores: np.ndarray) -> str:
    scores = np.asarray(scores)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return "binary"
    return "multiclass" if np.asarray(labels).ndim == 1 else "multilabel"


def paired_all(task_type, draws, class_names, n_groups, n_boot, seed, alpha) -> Dict[str, dict]:
    """Paired bootstrap of every metric of raddist.metrics at once. draws: (labels, scores_a, scores_b, codes),
    codes into the same n_groups patients; a backbone's value is the mean over the draws of the metric (one
    draw: the metric itself), in every replicate as in the point estimate."""
    points = [[classification_metrics(task_type, y, s, class_names) for s in (sa, sb)] for y, sa, sb, _ in draws]
    evals = [[WeightedEvaluator(task_type, y, s, class_names, codes, n_groups) for s in (sa, sb)]
             for y, sa, sb, codes in draws]
    diffs: Dict[str, list] = {k: [] for k in points[0][0]}
    for counts in resample_counts(n_groups, n_boot, seed):  # the same patients for A, B and every draw
        res = [(ea(counts), eb(counts)) for ea, eb in evals]
        for k in diffs:
            diffs[k].append(_nanmean(np.stack([r[0][k] for r in res]), axis=0)
                            - _nanmean(np.stack([r[1][k] for r in res]), axis=0))
    out = {}
    for k, d in diffs.items():
        a, b = (_nanmean(np.array([p[side][k] for p in points])) for side in (0, 1))
        out[k] = bootstrap_summary(a, b, np.concatenate(d) if d else np.zeros(0), alpha)
    return out


@dataclass(frozen=True)
class Paired:
    """Two backbones' scores on the same rows: labels, scores_a, scores_b, groups (patient ids). task_type is
    inferred from the shapes when None (scores with one column: binary; 1-D labels: multiclass; else
    multilabel); class_names default to "0", "1", ..."""
    labels: np.ndarray
    scores_a: np.ndarray
    scores_b: np.ndarray
    groups: np.ndarray
    task_type: Optional[str] = None
    class_names: Optional[Sequence[str]] = None


def paired_bootstrap(data: Paired, metric: Union[str, MetricFn] = "auroc", n_boot: int = BOOTSTRAP, seed: int = 0,
                     alpha: float = ALPHA) -> dict:
    """Paired patient-level bootstrap of metric(A) - metric(B).

    metric: a name from raddist.metrics (auroc, accuracy, balanced_accuracy, f1_macro, auroc/<class>;
    vectorised), or fn(labels, scores) -> float, called once per resample on the resampled rows (slow,
    general). Returns dict(a, b, diff, ci_low, ci_high, p_value, n_boot, note).
    """
    task_type = data.task_type or _infer_task_type(data.labels, data.scores_a)
    labels, scores_a = normalize(task_type, data.labels, data.scores_a)
    codes, n_groups = group_codes(data.groups)
    data = Paired(labels, scores_a, normalize(task_type, labels, data.scores_b)[1], codes, task_type,
                  data.class_names or [str(c) for c in range(scores_a.shape[1])])
    if not isinstance(metric, str):
        return _paired_callable(metric, data, n_groups, n_boot, seed, alpha)
    res = paired_all(task_type, [(labels, scores_a, data.scores_b, codes)], data.class_names, n_groups, n_boot, seed,
                      alpha)
    if metric not in res:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(res)}")
    return res[metric]


def _paired_callable(metric: MetricFn, data: Paired, n_groups: int, n_boot: int, seed: int, alpha: float) -> dict:
    """paired_bootstrap for a metric function; data normalised, groups as codes into n_groups patients."""
    y, sa, sb = data.labels, data.scores_a, data.scores_b
    d = [metric(y[idx], sa[idx]) - metric(y[idx], sb[idx]) for block in resample_counts(n_groups, n_boot, seed)
         for idx in (resampled_rows(data.groups, c) for c in block)]
    a, b = float(metric(y, sa)), float(metric(y, sb))
    return bootstrap_summary(a, b, np.asarray(d, dtype=np.float64), alpha)
