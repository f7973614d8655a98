"""Paired comparison of two backbones on the same test items.

- :func:`paired_bootstrap`: resample patients jointly for A and B and look at the bootstrap
  distribution of d* = metric(A*) - metric(B*). Two-sided p-value, with the +1 correction:
  ``p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))`` over the B
  replicates where d* is defined. A vs A gives d* = 0 everywhere, so p = 1.
- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for two correlated ROC curves,
  computed with the midrank algorithm of Sun & Xu (2014), O(n log n).
- :func:`holm`: Holm-Bonferroni step-down adjusted p-values.
- :func:`compare_predictions`: the whole comparison over two backbones' predictions frames.
- :func:`compare_cases`: segmentation, a paired patient bootstrap of the report's headline
  statistics from the per-case results.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from raddist.metrics import (SCALAR_METRICS, WeightedEvaluator, classification_metrics,
                             group_codes, normalize, percentile_ci, resample_counts,
                             resampled_rows)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def holm(p_values) -> np.ndarray:
    """Holm step-down: p_(i) -> max_{j<=i} min(1, (m - j + 1) p_(j)). NaNs stay NaN, m counts
    only the defined p-values."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _bootstrap_p(d: np.ndarray) -> float:
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    below, above = (1 + np.sum(d <= 0)) / (d.size + 1), (1 + np.sum(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def _infer_task_type(labels: np.ndarray, scores: np.ndarray) -> str:
    scores = np.asarray(scores)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return "binary"
    return "multiclass" if np.asarray(labels).ndim == 1 else "multilabel"


def _paired_all(task_type, labels, scores_a, scores_b, class_names, groups, n_boot, seed,
                alpha) -> Dict[str, dict]:
    """Paired bootstrap of every metric of raddist.metrics at once."""
    point_a = classification_metrics(task_type, labels, scores_a, class_names)
    point_b = classification_metrics(task_type, labels, scores_b, class_names)
    codes, n_groups = group_codes(groups)
    eval_a = WeightedEvaluator(task_type, labels, scores_a, class_names, codes, n_groups)
    eval_b = WeightedEvaluator(task_type, labels, scores_b, class_names, codes, n_groups)
    diffs: Dict[str, list] = {k: [] for k in point_a}
    for counts in resample_counts(n_groups, n_boot, seed):  # the same patients for A and B
        ra, rb = eval_a(counts), eval_b(counts)
        for k in diffs:
            diffs[k].append(ra[k] - rb[k])
    out = {}
    for k in point_a:
        d = np.concatenate(diffs[k]) if diffs[k] else np.zeros(0)
        low, high = percentile_ci(d, alpha)
        out[k] = dict(a=point_a[k], b=point_b[k], diff=point_a[k] - point_b[k],
                      ci_low=low, ci_high=high, p_value=_bootstrap_p(d))
    return out


def paired_bootstrap(labels, scores_a, scores_b, groups, metric: Union[str, MetricFn] = "auroc",
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, *,
                     task_type: Optional[str] = None,
                     class_names: Optional[Sequence[str]] = None) -> dict:
    """Paired patient-level bootstrap of metric(A) - metric(B).

    metric: a name from raddist.metrics (auroc, accuracy, balanced_accuracy, f1_macro,
    auroc/<class>; vectorised), or fn(labels, scores) -> float, called once per resample on
    the resampled rows (slow, general). task_type is inferred from the shapes when omitted:
    scores with one column -> binary, 1-D labels -> multiclass, else multilabel.
    Returns dict(a, b, diff, ci_low, ci_high, p_value).
    """
    task_type = task_type or _infer_task_type(labels, scores_a)
    if class_names is None:
        class_names = [str(c) for c in range(normalize(task_type, labels, scores_a)[1].shape[1])]
    if isinstance(metric, str):
        res = _paired_all(task_type, labels, scores_a, scores_b, class_names, groups, n_boot,
                          seed, alpha)
        if metric not in res:
            raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(res)}")
        return res[metric]
    labels, scores_a = normalize(task_type, labels, scores_a)
    scores_b = normalize(task_type, labels, scores_b)[1]
    codes, n_groups = group_codes(groups)
    d = []
    for block in resample_counts(n_groups, n_boot, seed):
        for counts in block:
            idx = resampled_rows(codes, counts)
            d.append(metric(labels[idx], scores_a[idx]) - metric(labels[idx], scores_b[idx]))
    d = np.asarray(d, dtype=np.float64)
    a, b = float(metric(labels, scores_a)), float(metric(labels, scores_b))
    low, high = percentile_ci(d, alpha)
    return dict(a=a, b=b, diff=a - b, ci_low=low, ci_high=high, p_value=_bootstrap_p(d))


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (average ranks for ties) along the last axis, 1-based."""
    return rankdata(x, method="average", axis=-1)


def delong_components(labels_binary, score_matrix) -> tuple:
    """Sun & Xu (2014): AUCs (k,) and structural components V10 (k, m), V01 (k, n) of k
    score vectors (k, N) against one binary label vector, from midranks."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    s = np.atleast_2d(np.asarray(score_matrix, dtype=np.float64))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative labels")
    tz = _midrank(np.concatenate([pos, neg], axis=1))
    tx, ty = _midrank(pos), _midrank(neg)
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    return aucs, v10, v01


def delong_test(labels_binary, scores_a, scores_b, alpha: float = 0.05) -> dict:
    """Paired DeLong test of AUC(A) = AUC(B). Returns auc_a, auc_b, diff, var (of the diff),
    z, p_value (two-sided) and a normal-approximation (1 - alpha) CI of the diff. With zero
    variance (e.g. identical scores) z = 0 and p = 1 when diff = 0."""
    aucs, v10, v01 = delong_components(labels_binary, np.vstack([np.ravel(scores_a),
                                                                 np.ravel(scores_b)]))
    m, n = v10.shape[1], v01.shape[1]
    cov = (np.cov(v10) if m > 1 else np.zeros((2, 2))) / m + \
          (np.cov(v01) if n > 1 else np.zeros((2, 2))) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-300:
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    else:
        z = diff / np.sqrt(var)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0))
    return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, var=var, z=float(z),
                p_value=float(2 * norm.sf(abs(z))), ci_low=diff - half, ci_high=diff + half)


# --------------------------------------------------------------------------------------------
# Prediction frames


def _stack(column: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(v) for v in column]) if len(column) else np.zeros((0, 0))


def _align(a: pd.DataFrame, b: pd.DataFrame, where: str) -> pd.DataFrame:
    for name, frame in (("A", a), ("B", b)):
        if frame["sample_id"].duplicated().any():
            raise ValueError(f"{where}: backbone {name} has duplicated sample_ids (several "
                             "cells per task/protocol?); pass keys= to split them")
    ids_a, ids_b = set(a["sample_id"]), set(b["sample_id"])
    if ids_a != ids_b:
        raise ValueError(f"{where}: the backbones were scored on different items "
                         f"({len(ids_a - ids_b)} only in A, {len(ids_b - ids_a)} only in B)")
    m = a.merge(b, on="sample_id", suffixes=("_a", "_b"), validate="one_to_one")
    if (m["patient_id_a"] != m["patient_id_b"]).any():
        raise ValueError(f"{where}: patient ids differ between the backbones")
    if not np.array_equal(_stack(m["labels_a"]), _stack(m["labels_b"])):
        raise ValueError(f"{where}: labels differ between the backbones")
    return m


def compare_predictions(preds_a: pd.DataFrame, preds_b: pd.DataFrame, n_boot: int = 1000,
                        seed: int = 0, alpha: float = 0.05,
                        class_names: Optional[Mapping[str, Sequence[str]]] = None,
                        keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Compare backbone A with backbone B, per (task, protocol) present in both frames.

    Frames have the predictions.parquet columns (task, protocol, task_type, sample_id,
    patient_id, labels, scores, ...). Items are aligned by sample_id; different item sets
    are an error. Rows (column ``test``):
    - ``bootstrap``: paired patient bootstrap of each scalar metric (auroc = macro AUROC,
      accuracy, balanced_accuracy, f1_macro); p_holm adjusts each metric across all
      (task, protocol) pairs.
    - ``delong``: DeLong per class (auroc/<class>; one row for binary tasks), CI from the
      normal approximation; p_holm adjusts across the classes of that (task, protocol).
    class_names: task -> names; default "0", "1", ... keys: the columns that identify one
    comparison (add e.g. "cell_seed" when a frame holds several seeds).
    """
    keys = list(keys)
    rows = []
    groups_a = dict(iter(preds_a.groupby(keys, sort=True)))
    groups_b = dict(iter(preds_b.groupby(keys, sort=True)))
    for key in sorted(set(groups_a) ^ set(groups_b), key=str):
        side = "A" if key in groups_a else "B"
        warnings.warn(f"{dict(zip(keys, key))}: only backbone {side} has predictions; skipped")
    for key in sorted(set(groups_a) & set(groups_b), key=str):
        a = groups_a[key]
        base = dict(zip(keys, key))
        m = _align(a, groups_b[key], str(base))
        task, task_type = a["task"].iloc[0], a["task_type"].iloc[0]
        labels, scores_a = normalize(task_type, _stack(m["labels_a"]), _stack(m["scores_a"]))
        scores_b = normalize(task_type, labels, _stack(m["scores_b"]))[1]
        n_classes = scores_a.shape[1]
        names = list((class_names or {}).get(task, [str(c) for c in range(n_classes)]))
        base.update(n_samples=len(m), n_patients=m["patient_id_a"].nunique())
        res = _paired_all(task_type, labels, scores_a, scores_b, names,
                          m["patient_id_a"].to_numpy(), n_boot, seed, alpha)
        for metric in SCALAR_METRICS:
            rows.append(dict(base, metric=metric, test="bootstrap", family=f"boot:{metric}",
                             **res[metric]))
        for c, name in enumerate(names):
            y = (labels == c) if task_type == "multiclass" else labels[:, c]
            if not 0 < y.sum() < len(y):
                continue  # AUROC undefined for this class
            t = delong_test(y, scores_a[:, c], scores_b[:, c], alpha)
            rows.append(dict(base, metric=f"auroc/{name}", test="delong", family=f"delong:{key}",
                             a=t["auc_a"], b=t["auc_b"], diff=t["diff"], ci_low=t["ci_low"],
                             ci_high=t["ci_high"], p_value=t["p_value"]))
    return with_holm(pd.DataFrame(rows, columns=keys + ROW_COLUMNS + ["family"]), keys)


ROW_COLUMNS = ["metric", "test", "a", "b", "diff", "ci_low", "ci_high", "p_value", "n_samples", "n_patients"]


def with_holm(out: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """p_holm: Holm's adjustment of p_value within each family of tests (rows' 'family')."""
    out = out.copy()
    out["p_holm"] = np.nan
    for _, idx in out.groupby("family").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy())
    columns = list(keys) + ROW_COLUMNS[:-2] + ["p_holm"] + ROW_COLUMNS[-2:]
    return out[columns + (["family"] if "family" in out else [])]


SEG_VALUES = ("dice", "jaccard", "hd95", "tp", "fp", "fn")


def _case_values(frame: pd.DataFrame, cases: Sequence[str], classes: Sequence[str]) -> Dict[str, np.ndarray]:
    """cases.parquet rows -> seg_metrics.per_case's (n_cases, n_classes) arrays, in the given order."""
    wide = frame.set_index(["case_id", "class"])
    index = pd.MultiIndex.from_product([cases, classes])
    return {k: wide[k].reindex(index).to_numpy(np.float64).reshape(len(cases), len(classes)) for k in SEG_VALUES}


def compare_cases(cases_a: pd.DataFrame, cases_b: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05, keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Segmentation: a paired patient bootstrap of the report's headline statistics (seg_metrics:
    dice, the mean over classes of each class's mean over the cases that contain it; dice_pooled;
    hd95), from the per-case results of cases.parquet. Rows as compare_predictions'."""
    from raddist.seg_metrics import aggregate

    keys, rows = list(keys), []
    groups_a = dict(iter(cases_a.groupby(keys, sort=True)))
    groups_b = dict(iter(cases_b.groupby(keys, sort=True)))
    for key in sorted(set(groups_a) & set(groups_b), key=str):
        a, b, base = groups_a[key], groups_b[key], dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        if set(zip(a["case_id"], a["class"])) != set(zip(b["case_id"], b["class"])):
            raise ValueError(f"{base}: the backbones were scored on different cases")
        cases = sorted(set(a["case_id"]))
        classes = list(dict.fromkeys(a["class"]))
        values_a, values_b = _case_values(a, cases, classes), _case_values(b, cases, classes)
        patient = a.drop_duplicates("case_id").set_index("case_id")["patient_id"].reindex(cases).to_numpy()
        codes, n_groups = group_codes(patient)
        point_a, point_b = (aggregate(v, np.ones((1, len(cases)))) for v in (values_a, values_b))
        diffs = {m: [] for m in SEG_HEADLINE}
        for counts in resample_counts(n_groups, n_boot, seed):  # the same patients for A and B
            ra, rb = aggregate(values_a, counts[:, codes]), aggregate(values_b, counts[:, codes])
            for m in SEG_HEADLINE:
                diffs[m].append(ra[m] - rb[m])
        for m in SEG_HEADLINE:
            d = np.concatenate(diffs[m]) if diffs[m] else np.zeros(0)
            low, high = percentile_ci(d, alpha)
            rows.append(dict(base, metric=m, test="bootstrap", family=f"boot:{m}", a=float(point_a[m][0]),
                             b=float(point_b[m][0]), diff=float(point_a[m][0] - point_b[m][0]), ci_low=low,
                             ci_high=high, p_value=_bootstrap_p(d), n_samples=len(cases), n_patients=n_groups))
    return pd.DataFrame(rows)


SEG_HEADLINE = ("dice", "dice_pooled", "hd95")


def compare_backbones(preds: Optional[pd.DataFrame], a: str, b: str, cases: Optional[pd.DataFrame] = None,
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                      keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Backbone a against b over a run's predictions.parquet (classification) and cases.parquet
    (segmentation) frames; Holm's adjustment runs over both together, by family."""
    frames = [f for f in (preds, cases) if f is not None and len(f)]
    have = set().union(*(set(f["backbone"]) for f in frames)) if frames else set()
    missing = {a, b} - have
    if missing:
        raise ValueError(f"no predictions for backbone(s) {sorted(missing)}; have {sorted(have)}")
    parts = []
    if preds is not None and len(preds):
        parts.append(compare_predictions(preds[preds["backbone"] == a], preds[preds["backbone"] == b],
                                         n_boot, seed, alpha, keys=keys))
    if cases is not None and len(cases):
        parts.append(compare_cases(cases[cases["backbone"] == a], cases[cases["backbone"] == b],
                                   n_boot, seed, alpha, keys=keys))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(keys) + ROW_COLUMNS[:-2] + ["p_holm"] + ROW_COLUMNS[-2:])
    return with_holm(pd.concat(parts, ignore_index=True), keys).drop(columns=["family"])
