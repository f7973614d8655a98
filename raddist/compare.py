"""Paired comparison of two backbones on the same test items.

- :func:`paired_bootstrap`: resample patients jointly for A and B and look at the bootstrap distribution of
  d* = metric(A*) - metric(B*). Two-sided p-value, with the +1 correction:
  ``p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))`` over the B replicates where
  d* is defined. A vs A gives d* = 0 everywhere, so p = 1.
- :func:`raddist.delong.delong_test`: DeLong's test of two correlated AUCs, clustered by patient.
- :func:`holm`: Holm-Bonferroni step-down adjusted p-values.
- :func:`compare_predictions`: the whole comparison over two backbones' predictions frames.
- :func:`compare_cases`: segmentation, a paired patient bootstrap of the report's headline statistics from
  the per-case results.

Few-shot (protocol "fewshot") is compared as the report shows it, the mean over draws, per variant: the params
without "draw" (shots, probe and its settings) and the seed. Each bootstrap replicate resamples the test
patients once, scores every draw on them and averages over the draws; the draws' training sets stay fixed, so
the test is conditional on them. No DeLong for few-shot.

Holm families (column ``family``; p_holm adjusts within a family, which controls the FWER of that family):
- ``boot:<metric>``: every bootstrap row of that metric in one call (compare_predictions, compare_backbones),
  over all tasks and protocol variants (params, seed, few-shot shots and probe): "does A differ from B in
  macro AUROC anywhere in this table".
- ``delong:<task>/<protocol>#<i>``: the per-class DeLong tests of the i-th (task, protocol variant) comparison
  of the call: "which classes differ, given this comparison". Reading the DeLong rows of several comparisons
  together needs a further correction.
A bootstrap p-value is at least 2 / (B + 1), so in a family of m tests with m * 2 / (B + 1) > alpha nothing can
be significant after Holm: that is warned about (raise n_boot).
"""

from __future__ import annotations

import json
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from raddist.delong import delong_test
from raddist.metrics import (SCALAR_METRICS, WeightedEvaluator, _nanmean, classification_metrics, group_codes,
                             normalize, percentile_ci, resample_counts, resampled_rows)

MetricFn = Callable[[np.ndarray, np.ndarray], float]

# ----------------------------------------------------------------------------------------------------------------
# Bootstrap and Holm


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


def _paired_all(task_type, draws, class_names, n_groups, n_boot, seed, alpha) -> Dict[str, dict]:
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
        d = np.concatenate(d) if d else np.zeros(0)
        low, high = percentile_ci(d, alpha)
        out[k] = dict(a=a, b=b, diff=a - b, ci_low=low, ci_high=high, p_value=_bootstrap_p(d))
    return out


def paired_bootstrap(labels, scores_a, scores_b, groups, metric: Union[str, MetricFn] = "auroc",
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, *, task_type: Optional[str] = None,
                     class_names: Optional[Sequence[str]] = None) -> dict:
    """Paired patient-level bootstrap of metric(A) - metric(B).

    metric: a name from raddist.metrics (auroc, accuracy, balanced_accuracy, f1_macro, auroc/<class>;
    vectorised), or fn(labels, scores) -> float, called once per resample on the resampled rows (slow,
    general). task_type is inferred from the shapes when omitted: scores with one column -> binary, 1-D labels
    -> multiclass, else multilabel. Returns dict(a, b, diff, ci_low, ci_high, p_value).
    """
    task_type = task_type or _infer_task_type(labels, scores_a)
    if class_names is None:
        class_names = [str(c) for c in range(normalize(task_type, labels, scores_a)[1].shape[1])]
    codes, n_groups = group_codes(groups)
    if isinstance(metric, str):
        res = _paired_all(task_type, [(labels, scores_a, scores_b, codes)], class_names, n_groups, n_boot, seed,
                          alpha)
        if metric not in res:
            raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(res)}")
        return res[metric]
    labels, scores_a = normalize(task_type, labels, scores_a)
    scores_b = normalize(task_type, labels, scores_b)[1]
    d = []
    for block in resample_counts(n_groups, n_boot, seed):
        for counts in block:
            idx = resampled_rows(codes, counts)
            d.append(metric(labels[idx], scores_a[idx]) - metric(labels[idx], scores_b[idx]))
    d = np.asarray(d, dtype=np.float64)
    a, b = float(metric(labels, scores_a)), float(metric(labels, scores_b))
    low, high = percentile_ci(d, alpha)
    return dict(a=a, b=b, diff=a - b, ci_low=low, ci_high=high, p_value=_bootstrap_p(d))


# ----------------------------------------------------------------------------------------------------------------
# Prediction frames


def _stack(column: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(v) for v in column]) if len(column) else np.zeros((0, 0))


def _align(a: pd.DataFrame, b: pd.DataFrame, where: str) -> pd.DataFrame:
    for name, frame in (("A", a), ("B", b)):
        if frame["sample_id"].duplicated().any():
            raise ValueError(f"{where}: backbone {name} has duplicated sample_ids (several cells per "
                             "task/protocol?); pass keys= to split them")
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


def _comparisons(frame: pd.DataFrame, keys: List[str]) -> Dict[tuple, pd.DataFrame]:
    """((column, value), ...) -> the rows of one comparison. Few-shot rows are grouped by keys, params without
    "draw" (written to their params column), seed and variant ("shots=4,probe=linear"); their draw: _draw."""
    few = frame["protocol"].eq("fewshot") if {"protocol", "params"} <= set(frame) else frame.index != frame.index
    out = {tuple(zip(keys, k)): g for k, g in frame[~few].groupby(keys, sort=True)}
    if few.any():
        fs, params = frame[few].copy(), [json.loads(p) for p in frame.loc[few, "params"]]
        fs["_draw"] = [p.pop("draw", 0) for p in params]
        fs["params"] = [json.dumps(p, sort_keys=True) for p in params]
        fs["variant"] = [f"shots={p.get('shots')},probe={p.get('probe')}" for p in params]
        fkeys = keys + [c for c in ("params", "seed") if c in fs and c not in keys] + ["variant"]
        out.update({tuple(zip(fkeys, k)): g for k, g in fs.groupby(fkeys, sort=True)})
    return out


def _aligned_draws(a: pd.DataFrame, b: pd.DataFrame, where: str) -> tuple:
    """The aligned frame of each draw both backbones have, patient codes per draw (shared by all), n_patients."""
    if "_draw" not in a:
        merged = [_align(a, b, where)]
    else:
        draws_a, draws_b = dict(iter(a.groupby("_draw"))), dict(iter(b.groupby("_draw")))
        if set(draws_a) != set(draws_b):
            warnings.warn(f"{where}: draws {sorted(set(draws_a) ^ set(draws_b))} are missing for one backbone; "
                          "comparing the means over the draws both have")
        merged = [_align(draws_a[d], draws_b[d], f"{where}, draw {d}") for d in sorted(set(draws_a) & set(draws_b))]
        if not merged:
            raise ValueError(f"{where}: the backbones have no few-shot draw in common")
    codes, n_groups = group_codes(np.concatenate([m["patient_id_a"].to_numpy() for m in merged]))
    return merged, np.split(codes, np.cumsum([len(m) for m in merged])[:-1]), n_groups


def _compare_rows(preds_a: pd.DataFrame, preds_b: pd.DataFrame, n_boot: int, seed: int, alpha: float,
                  class_names, keys: Sequence[str]) -> pd.DataFrame:
    """compare_predictions' rows, before Holm."""
    keys, rows = list(keys), []
    groups_a, groups_b = _comparisons(preds_a, keys), _comparisons(preds_b, keys)
    for key in sorted(set(groups_a) ^ set(groups_b), key=str):
        warnings.warn(f"{dict(key)}: only backbone {'A' if key in groups_a else 'B'} has predictions; skipped")
    for i, key in enumerate(sorted(set(groups_a) & set(groups_b), key=str)):
        a, base = groups_a[key], dict(key)
        task, task_type = a["task"].iloc[0], a["task_type"].iloc[0]
        merged, codes, n_groups = _aligned_draws(a, groups_b[key], str(base))
        draws = []
        for m, c in zip(merged, codes):
            labels, scores_a = normalize(task_type, _stack(m["labels_a"]), _stack(m["scores_a"]))
            draws.append((labels, scores_a, normalize(task_type, labels, _stack(m["scores_b"]))[1], c))
        names = list((class_names or {}).get(task, [str(c) for c in range(draws[0][1].shape[1])]))
        base.update(n_samples=len(set().union(*(m["sample_id"] for m in merged))), n_patients=n_groups)
        res = _paired_all(task_type, draws, names, n_groups, n_boot, seed, alpha)
        rows += [dict(base, metric=k, test="bootstrap", family=f"boot:{k}", **res[k]) for k in SCALAR_METRICS]
        if "_draw" in a:
            continue  # a mean over draws has no DeLong test
        labels, scores_a, scores_b, _ = draws[0]
        for c, name in enumerate(names):
            y = (labels == c) if task_type == "multiclass" else labels[:, c]
            if not 0 < y.sum() < len(y):
                continue  # AUROC undefined for this class
            t = delong_test(y, scores_a[:, c], scores_b[:, c], alpha, groups=merged[0]["patient_id_a"].to_numpy())
            rows.append(dict(base, metric=f"auroc/{name}", test="delong", a=t["auc_a"], b=t["auc_b"], diff=t["diff"],
                             ci_low=t["ci_low"], ci_high=t["ci_high"], p_value=t["p_value"],
                             family=f"delong:{task}/{base.get('protocol')}#{i}"))
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=keys + ROW_COLUMNS + ["family"])


def compare_predictions(preds_a: pd.DataFrame, preds_b: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05, class_names: Optional[Mapping[str, Sequence[str]]] = None,
                        keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Compare backbone A with backbone B, per (task, protocol) present in both frames.

    Frames have the predictions.parquet columns (task, protocol, task_type, sample_id, patient_id, labels,
    scores, ...). Items are aligned by sample_id; different item sets are an error. Rows (column ``test``):
    - ``bootstrap``: paired patient bootstrap of each scalar metric (auroc = macro AUROC, accuracy,
      balanced_accuracy, f1_macro).
    - ``delong``: DeLong per class (auroc/<class>; one row for binary tasks), clustered by patient, CI from the
      normal approximation. None for few-shot.
    p_holm: Holm within ``family`` (see the module docstring); warns when a bootstrap family cannot reach alpha.
    class_names: task -> names; default "0", "1", ... keys: the columns that identify one comparison (add e.g.
    "seed" when a frame holds several seeds). Few-shot rows (protocol "fewshot", with a params column) are
    compared as the mean over draws per keys, params without "draw" and seed, whatever keys says; their rows
    carry those columns and ``variant`` ("shots=4,probe=linear").
    """
    out = _compare_rows(preds_a, preds_b, n_boot, seed, alpha, class_names, keys)
    return with_holm(out, keys, n_boot=n_boot, alpha=alpha)


ROW_COLUMNS = ["metric", "test", "a", "b", "diff", "ci_low", "ci_high", "p_value", "n_samples", "n_patients"]


def with_holm(out: pd.DataFrame, keys: Sequence[str], n_boot: Optional[int] = None, alpha: float = 0.05):
    """p_holm: Holm's adjustment of p_value within each family of tests (rows' 'family'). With n_boot, warns
    about bootstrap families of m tests that cannot reach alpha: m * 2 / (n_boot + 1) > alpha. Columns: keys,
    the other key columns (few-shot rows': params, seed, variant), the results, family."""
    out, hopeless = out.copy(), []
    out["p_holm"] = np.nan
    for family, idx in out.groupby("family").groups.items():
        p = out.loc[idx, "p_value"].to_numpy(np.float64)
        out.loc[idx, "p_holm"] = holm(p)
        m = int(np.sum(~np.isnan(p)))
        if n_boot is not None and (out.loc[idx, "test"] == "bootstrap").all() and m * 2 / (n_boot + 1) > alpha:
            hopeless.append(f"{family} ({m} tests: needs n_boot >= {int(np.ceil(2 * m / alpha - 1 - 1e-9))})")
    if hopeless:
        warnings.warn(f"with {n_boot} bootstrap resamples no p-value is below 2 / ({n_boot} + 1), so after Holm "
                      f"nothing can be significant at alpha = {alpha} in the families {', '.join(hopeless)}")
    results = ROW_COLUMNS[:-2] + ["p_holm"] + ROW_COLUMNS[-2:] + ["family"]
    extra = [c for c in out.columns if c not in keys and c not in results]
    return out[list(keys) + extra + results]


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
    """Backbone a against b over a run's predictions.parquet (classification) and cases.parquet (segmentation)
    frames; Holm's adjustment runs over both together, by ``family`` (a column; see the module docstring).
    Few-shot predictions may come as they are: whatever keys says, they are compared per params without "draw"
    (shots, probe and its settings) and seed, as the mean over the draws (see compare_predictions)."""
    if a == b:
        raise ValueError(f"--a and --b are both '{a}': a backbone against itself has nothing to compare")
    frames = [f for f in (preds, cases) if f is not None and len(f)]
    have = set().union(*(set(f["backbone"]) for f in frames)) if frames else set()
    missing = {a, b} - have
    if missing:
        raise ValueError(f"no predictions for backbone(s) {sorted(missing)}; have {sorted(have)}")
    _require_common(frames, a, b, keys)
    parts = [pd.DataFrame(columns=list(keys) + ROW_COLUMNS + ["family"])]
    if preds is not None and len(preds):
        parts.append(_compare_rows(preds[preds["backbone"] == a], preds[preds["backbone"] == b], n_boot, seed, alpha,
                                   None, keys))
    if cases is not None and len(cases):
        parts.append(compare_cases(cases[cases["backbone"] == a], cases[cases["backbone"] == b], n_boot, seed, alpha,
                                   keys=keys))
    parts = [p for p in parts if len(p)] or parts[:1]
    return with_holm(pd.concat(parts, ignore_index=True), keys, n_boot=n_boot, alpha=alpha)


def _require_common(frames: List[pd.DataFrame], a: str, b: str, keys: Sequence[str]) -> None:
    """Refuse two backbones that share no comparison (no task x protocol x ... scored for both)."""
    have: Dict[str, set] = {a: set(), b: set()}
    for f in frames:
        cols = [k for k in keys if k in f and k != "params"] or ["task"]
        for name in (a, b):
            have[name] |= set(map(tuple, f.loc[f["backbone"] == name, cols].astype(str).to_numpy()))
    if not have[a] & have[b]:
        def show(name):
            return ", ".join("/".join(k) for k in sorted(have[name])[:4]) + (" ..." if len(have[name]) > 4 else "")
        raise ValueError(f"'{a}' and '{b}' have nothing in common to compare: '{a}' has {show(a)}; '{b}' has {show(b)}")
