"""Paired comparison of two backbones on the same test items.

- :func:`raddist.paired.paired_bootstrap`: the paired patient bootstrap of metric(A) - metric(B), and
  :func:`raddist.paired.holm`, Holm-Bonferroni step-down adjusted p-values.
- :func:`raddist.delong.delong_test`: DeLong's test of two correlated AUCs, clustered by patient.
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
be significant after Holm. So by default (``n_boot="auto"``) B is sized to the family: :func:`family_bootstrap`
(the paper grid's boot:auroc, 59 tests at alpha 0.05: 5,000 resamples). To spend that only where it can change
a decision, a comparison is first bootstrapped BOOTSTRAP times, and rerun with the family's B (same seed: the
rows a full run would give) when one of its p-values is at most alpha plus REFINE = 5 Monte Carlo standard
errors (1,000 resamples, alpha 0.05: p <= 0.085). A p-value above that is, all but surely, above alpha at any B,
so not significant; and it comes later in Holm's order than every refined one, so it changes none of their
adjusted p-values. The column ``n_boot`` says which B each row used. An explicit B is used for every row, and
warned about when it cannot reach alpha. The report's CIs keep their own B (spec.bootstrap).

DeLong rows with too few patients on a side (raddist.delong.MIN_PATIENTS) have no p-value; column ``note`` says
why. A bootstrap row's note counts the replicates where its metric was undefined (macro AUROC: a class without
positives or negatives in the resample); its p-value and CI are over the other replicates.
"""

from __future__ import annotations

import json
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from raddist.delong import delong_test
from raddist.metrics import ALPHA, BOOTSTRAP, SCALAR_METRICS, group_codes, normalize, resample_counts
from raddist.paired import (REFINE, NBoot, Paired, bootstrap_summary, family_bootstrap, holm, paired_all,
                            paired_bootstrap, resolve_bootstrap)

__all__ = ["Paired", "compare_backbones", "compare_cases", "compare_predictions", "family_bootstrap", "holm",
           "paired_bootstrap", "with_holm"]

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


def _compare_rows(preds_a: pd.DataFrame, preds_b: pd.DataFrame, n_boot: NBoot, seed: int, alpha: float,
                  class_names, keys: Sequence[str]) -> pd.DataFrame:
    """compare_predictions' rows, before Holm; n_boot "auto" is sized to the number of comparisons."""
    keys, rows = list(keys), []
    groups_a, groups_b = _comparisons(preds_a, keys), _comparisons(preds_b, keys)
    for key in sorted(set(groups_a) ^ set(groups_b), key=str):
        warnings.warn(f"{dict(key)}: only backbone {'A' if key in groups_a else 'B'} has predictions; skipped")
    common = sorted(set(groups_a) & set(groups_b), key=str)
    full = resolve_bootstrap(n_boot, len(common), alpha)
    first = min(BOOTSTRAP, full) if n_boot == "auto" else full
    for i, key in enumerate(common):
        a, base = groups_a[key], dict(key)
        task, task_type = a["task"].iloc[0], a["task_type"].iloc[0]
        merged, codes, n_groups = _aligned_draws(a, groups_b[key], str(base))
        draws = []
        for m, c in zip(merged, codes):
            labels, scores_a = normalize(task_type, _stack(m["labels_a"]), _stack(m["scores_a"]))
            draws.append((labels, scores_a, normalize(task_type, labels, _stack(m["scores_b"]))[1], c))
        names = list((class_names or {}).get(task, [str(c) for c in range(draws[0][1].shape[1])]))
        base.update(n_samples=len(set().union(*(m["sample_id"] for m in merged))), n_patients=n_groups)
        res = paired_all(task_type, draws, names, n_groups, first, seed, alpha)
        near = alpha + REFINE * np.sqrt(alpha * (1 - alpha) / max(first, 1))  # Monte Carlo SEs of a p at alpha
        if full > first and min(res[k]["p_value"] for k in SCALAR_METRICS) <= near:
            res = paired_all(task_type, draws, names, n_groups, full, seed, alpha)
        rows += [dict(base, metric=k, test="bootstrap", family=f"boot:{k}", **res[k]) for k in SCALAR_METRICS]
        if "_draw" not in a:  # a mean over draws has no DeLong test
            family = f"delong:{task}/{base.get('protocol')}#{i}"
            rows += _delong_rows(base, draws[0], names, task_type, merged[0]["patient_id_a"].to_numpy(), alpha, family)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=keys + ROW_COLUMNS + ["family"])


def _delong_rows(base: dict, draw: tuple, names, task_type: str, patients, alpha: float, family: str) -> List[dict]:
    """Per class, DeLong's test clustered by patient; classes whose AUROC is undefined are left out."""
    labels, scores_a, scores_b, _ = draw
    rows = []
    for c, name in enumerate(names):
        y = (labels == c) if task_type == "multiclass" else labels[:, c]
        if not 0 < y.sum() < len(y):
            continue
        t = delong_test(y, scores_a[:, c], scores_b[:, c], alpha, groups=patients)
        rows.append(dict(base, metric=f"auroc/{name}", test="delong", a=t["auc_a"], b=t["auc_b"], diff=t["diff"],
                         ci_low=t["ci_low"], ci_high=t["ci_high"], p_value=t["p_value"], family=family,
                         note=t["note"]))
    return rows


def compare_predictions(preds_a: pd.DataFrame, preds_b: pd.DataFrame, n_boot: NBoot = "auto", seed: int = 0,
                        alpha: float = ALPHA, class_names: Optional[Mapping[str, Sequence[str]]] = None,
                        keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Compare backbone A with backbone B, per (task, protocol) present in both frames.

    Frames have the predictions.parquet columns (task, protocol, task_type, sample_id, patient_id, labels,
    scores, ...). Items are aligned by sample_id; different item sets are an error. Rows (column ``test``):
    - ``bootstrap``: paired patient bootstrap of each scalar metric (auroc = macro AUROC, accuracy,
      balanced_accuracy, f1_macro), with n_boot resamples ("auto": sized to the family, family_bootstrap).
    - ``delong``: DeLong per class (auroc/<class>; one row for binary tasks), clustered by patient, CI from
      Student's t; no p-value (and a note) with too few patients on a side. None for few-shot.
    p_holm: Holm within ``family`` (see the module docstring); warns when a bootstrap family cannot reach alpha.
    class_names: task -> names; default "0", "1", ... keys: the columns that identify one comparison (add e.g.
    "seed" when a frame holds several seeds). Few-shot rows (protocol "fewshot", with a params column) are
    compared as the mean over draws per keys, params without "draw" and seed, whatever keys says; their rows
    carry those columns and ``variant`` ("shots=4,probe=linear").
    """
    out = _compare_rows(preds_a, preds_b, n_boot, seed, alpha, class_names, keys)
    return with_holm(out, keys, alpha=alpha, warn=n_boot != "auto")


ROW_COLUMNS = ["metric", "test", "a", "b", "diff", "ci_low", "ci_high", "p_value", "n_samples", "n_patients"]


def with_holm(out: pd.DataFrame, keys: Sequence[str], alpha: float = ALPHA, warn: bool = True) -> pd.DataFrame:
    """p_holm: Holm's adjustment of p_value within each family of tests (rows' 'family'). warn: about bootstrap
    families of m tests that cannot reach alpha with their rows' n_boot, m * 2 / (n_boot + 1) > alpha (not for
    n_boot "auto", whose B reaches alpha wherever a p-value is near it). Columns:
    keys, the other key columns (few-shot rows': params, seed, variant), the results, family, n_boot, note."""
    out, hopeless = out.copy(), []
    out["p_holm"] = np.nan
    out["n_boot"] = out["n_boot"] if "n_boot" in out else np.nan
    out["note"] = out["note"].fillna("") if "note" in out else ""
    for family, idx in out.groupby("family").groups.items():
        p = out.loc[idx, "p_value"].to_numpy(np.float64)
        out.loc[idx, "p_holm"] = holm(p)
        m, n_boot = int(np.sum(~np.isnan(p))), out.loc[idx, "n_boot"].max()
        if warn and (out.loc[idx, "test"] == "bootstrap").all() and m * 2 / (n_boot + 1) > alpha:
            hopeless.append(f"{family} ({m} tests, {n_boot:.0f} resamples: needs n_boot >= "
                            f"{int(np.ceil(2 * m / alpha - 1 - 1e-9))})")
    if hopeless:
        warnings.warn(f"a bootstrap p-value is at least 2 / (n_boot + 1), so after Holm nothing can be significant "
                      f"at alpha = {alpha} in the families {', '.join(hopeless)}; n_boot='auto' sizes B to the family")
    results = ROW_COLUMNS[:-2] + ["p_holm"] + ROW_COLUMNS[-2:] + ["family", "n_boot", "note"]
    extra = [c for c in out.columns if c not in keys and c not in results]
    return out[list(keys) + extra + results]


SEG_VALUES = ("dice", "jaccard", "hd95", "tp", "fp", "fn")


def _case_values(frame: pd.DataFrame, cases: Sequence[str], classes: Sequence[str]) -> Dict[str, np.ndarray]:
    """cases.parquet rows -> seg_metrics.per_case's (n_cases, n_classes) arrays, in the given order."""
    wide = frame.set_index(["case_id", "class"])
    index = pd.MultiIndex.from_product([cases, classes])
    return {k: wide[k].reindex(index).to_numpy(np.float64).reshape(len(cases), len(classes)) for k in SEG_VALUES}


def compare_cases(cases_a: pd.DataFrame, cases_b: pd.DataFrame, n_boot: NBoot = "auto", seed: int = 0,
                  alpha: float = ALPHA, keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Segmentation: a paired patient bootstrap of the report's headline statistics (seg_metrics:
    dice, the mean over classes of each class's mean over the cases that contain it; dice_pooled;
    hd95), from the per-case results of cases.parquet. Rows as compare_predictions'."""
    from raddist.seg_metrics import aggregate

    keys, rows = list(keys), []
    groups_a = dict(iter(cases_a.groupby(keys, sort=True)))
    groups_b = dict(iter(cases_b.groupby(keys, sort=True)))
    common = sorted(set(groups_a) & set(groups_b), key=str)
    n_boot = resolve_bootstrap(n_boot, len(common), alpha)
    for key in common:
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
            rows.append(dict(base, metric=m, test="bootstrap", family=f"boot:{m}", n_samples=len(cases),
                             n_patients=n_groups, **bootstrap_summary(float(point_a[m][0]), float(point_b[m][0]), d, alpha)))
    return pd.DataFrame(rows)


SEG_HEADLINE = ("dice", "dice_pooled", "hd95")


def compare_backbones(preds: Optional[pd.DataFrame], a: str, b: str, cases: Optional[pd.DataFrame] = None,
                      n_boot: NBoot = "auto", seed: int = 0, alpha: float = ALPHA,
                      keys: Sequence[str] = ("task", "protocol")) -> pd.DataFrame:
    """Backbone a against b over a run's predictions.parquet (classification) and cases.parquet (segmentation)
    frames; Holm's adjustment runs over both together, by ``family`` (a column; see the module docstring).
    n_boot "auto": the classification rows' B is sized to the number of classification comparisons (the size of
    each boot:<metric> family), the segmentation rows' to the segmentation ones (column n_boot).
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
    return with_holm(pd.concat(parts, ignore_index=True), keys, alpha=alpha, warn=n_boot != "auto")


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
