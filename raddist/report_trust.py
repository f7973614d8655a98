"""The report's sections on whether a headline number holds up: calibration (ECE, Brier, reliability
diagrams) and subgroups (per-group values, the largest gap and its test)."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from raddist import storage
from raddist.report import _markdown, _summary_lines, protocol_labels


def calibration_lines(results: pd.DataFrame, output: Optional[str] = None) -> list:
    """Per task: ECE (equal-mass bins) and Brier tables with CIs, and its reliability diagrams."""
    from raddist.calibration import BRIER, ECE, N_BINS, reliability_png

    lines = []
    for task in sorted(results["task"].unique()) if ECE in set(results.get("metric", [])) else []:
        sub = results[results["task"] == task]
        lines += _summary_lines(sub, f"### {task} — ECE ({ECE}: {N_BINS} equal-mass bins; lower is better)", ECE)
        lines += _summary_lines(sub, f"### {task} — Brier score (lower is better)", BRIER)
        cells = sub[(sub["metric"] == ECE) & (sub["protocol"] != "fewshot")].copy()
        if output is not None and not cells.empty:
            cells["column"] = protocol_labels(cells["protocol"], cells["params"])
            png = reliability_png(output, cells.sort_values("seed").drop_duplicates(["backbone", "column"]))
            if png:
                storage.write_bytes(storage.join(output, f"reliability_{task}.png"), png)
                lines += ["", f"![reliability diagrams {task}](reliability_{task}.png)"]
    return ["", "## Calibration", "", f"Expected calibration error over {N_BINS} equal-mass bins of the test "
            "probabilities (multilabel: per finding, averaged; multiclass: the top label) and the Brier score, "
            "each with its patient-bootstrap CI."] + lines if lines else []


def subgroup_lines(results: pd.DataFrame) -> list:
    """Per task: the headline metric per subgroup, the largest gap, its CI and test (raddist.subgroups)."""
    from raddist.subgroups import summary

    df = results[results["metric"].str.startswith("subgroup/") & (results["protocol"] != "fewshot")].copy() \
        if "metric" in results else pd.DataFrame()
    if df.empty:
        return []
    df["column"] = protocol_labels(df["protocol"], df["params"])
    table = summary(df)
    lines = ["", "## Subgroups", "", "Each group: value [95% CI] (n = test patients); groups with fewer than the "
             "task's min_group_patients are pooled into 'other' and not listed alone. Intervals resample "
             "patients; the gap is the largest minus the smallest group, its p-value a bootstrap test of the "
             "range over all groups (first seed)."]
    for task, t in table.groupby("task"):
        wide = t.set_index(["backbone", "protocol", "subgroup", "metric"])[["groups", "largest gap [95% CI]", "p"]]
        lines += ["", f"### {task} — subgroups", "", _markdown(wide, "backbone / protocol / subgroup / metric")]
    return lines


def external_lines(results: pd.DataFrame, metric: str = "auroc") -> list:
    """Per task: each backbone x protocol's in-domain value, its value on each external test set and the
    drop, each with its CI (raddist.external; the lowest seed of each cell)."""
    from raddist.external import DROP, PREFIX

    if "metric" not in results or not results["metric"].str.startswith(PREFIX).any():
        return []
    df = _first_seeds(results)
    at = df.set_index(["task", "backbone", "column", "metric"])
    names = sorted({m[len(PREFIX):-len(metric) - 1] for m in df["metric"]
                    if m.startswith(PREFIX) and m.endswith("/" + metric) and f"/{DROP}/" not in m})
    text = _ci_text
    rows = []
    for (task, backbone, column), _ in df.groupby(["task", "backbone", "column"]):
        for name in names:
            key = lambda m: (task, backbone, column, m)  # noqa: E731
            if key(f"{PREFIX}{name}/{metric}") in at.index and key(metric) in at.index:
                rows.append({"task": task, "backbone": backbone, "protocol": column, "external": name,
                             "in-domain": text(at.loc[key(metric)]),
                             "external test set": text(at.loc[key(f"{PREFIX}{name}/{metric}")]),
                             "drop": text(at.loc[key(f"{PREFIX}{name}/{DROP}/{metric}")])
                             if key(f"{PREFIX}{name}/{DROP}/{metric}") in at.index else "—"})
    lines = ["", "## External validation", "", f"{metric.upper()} of the heads selected on each task's own "
             "validation split, on its test split (in-domain) and on each external test set, with patient-bootstrap "
             "95% CIs; the drop is in-domain minus external, its CI the percentiles of the difference of the two "
             "bootstraps, drawn independently (the two test sets hold different patients). Lowest seed of each cell."]
    for task, t in pd.DataFrame(rows).groupby("task") if rows else []:
        lines += ["", f"### {task} — external validation", "",
                  _markdown(t.drop(columns="task").set_index(["backbone", "protocol", "external"]),
                            "backbone / protocol / external")]
    return lines if rows else []


def robustness_lines(results: pd.DataFrame, metric: str = "auroc") -> list:
    """Per task: each backbone x protocol's clean test value and, per corruption, the drop at each severity
    with its paired patient-bootstrap CI (raddist.robustness, raddist.cells.corrupted; lowest seed of each cell)."""
    from raddist.cells.corrupted import DROP
    from raddist.robustness import PREFIX

    if "metric" not in results or not results["metric"].str.startswith(PREFIX).any():
        return []
    df = _first_seeds(results)
    at = df.set_index(["task", "backbone", "column", "metric"])
    found = sorted({tuple(m[len(PREFIX):].split("/")[:2]) for m in df["metric"]
                    if m.startswith(PREFIX) and m.endswith(f"/{DROP}/{metric}")}, key=lambda k: (k[0], int(k[1])))
    severities = sorted({int(s) for _, s in found})
    rows = []
    for (task, backbone, column), _ in df.groupby(["task", "backbone", "column"]):
        if (task, backbone, column, metric) not in at.index:
            continue
        for kind in sorted({k for k, _ in found}):
            drops = {f"severity {s}": _ci_text(at.loc[(task, backbone, column, f"{PREFIX}{kind}/{s}/{DROP}/{metric}")])
                     for s in severities if (task, backbone, column, f"{PREFIX}{kind}/{s}/{DROP}/{metric}") in at.index}
            if drops:
                rows.append({"task": task, "backbone": backbone, "protocol": column, "corruption": kind,
                             "clean": _ci_text(at.loc[(task, backbone, column, metric)]), **drops})
    lines = ["", "## Robustness", "", f"{metric.upper()} of the heads selected on the clean validation split, on the "
             "clean test split (with its patient-bootstrap 95% CI), and its drop (clean minus corrupted; positive: "
             "worse) when the test images are corrupted at decode time, per severity (1 mild .. 5 severe). The drop "
             "is paired (the same test patients), its 95% CI from one patient bootstrap resampling both. "
             "Classification (2D images, and volumes of slice images); not whole NIfTI volumes. Lowest seed of "
             "each cell."]
    for task, t in pd.DataFrame(rows).groupby("task") if rows else []:
        lines += ["", f"### {task} — robustness", "",
                  _markdown(t.set_index(["backbone", "protocol", "corruption"]).reindex(
                      columns=["clean"] + [f"severity {s}" for s in severities]).fillna("—"),
                      "backbone / protocol / corruption")]
    return lines if rows else []


def _first_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task x backbone x protocol column's lowest seed (few-shot left out), with `column`."""
    df = results[results["protocol"] != "fewshot"].copy()
    df["column"] = protocol_labels(df["protocol"], df["params"])
    return df[df["seed"] == df.groupby(["task", "backbone", "column"])["seed"].transform("min")]


def _ci_text(row) -> str:
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
