"""report.md: one table per task, backbones × protocols, headline metric as value [95% CI]."""

from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from raddist import storage

HEADLINE = {"multilabel": "auroc", "binary": "auroc", "multiclass": "auroc", "segmentation": "dice"}
# params that make separate columns; the rest (draw, seed) are repeats averaged over
COLUMN_PARAMS = ("shots", "probe", "head")


def protocol_label(protocol: str, params_json: str) -> str:
    params = json.loads(params_json) if params_json else {}
    extra = [f"{k}={params[k]}" for k in COLUMN_PARAMS if k in params]
    return protocol + (f" ({', '.join(extra)})" if extra else "")


def summary_table(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task × backbone × protocol label: mean, CI of a single run, std over repeats."""
    df = results[results["metric"] == metric].copy()
    if df.empty:
        return df
    df["column"] = [protocol_label(p, q) for p, q in zip(df["protocol"], df["params"])]
    grouped = df.groupby(["task", "backbone", "column"], sort=True)
    out = grouped.agg(value=("value", "mean"), std=("value", "std"), n=("value", "size"),
                      ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean")).reset_index()
    return out


def _cell_text(row) -> str:
    if row["n"] > 1:
        return f"{row['value']:.3f} ± {row['std']:.3f} (n={row['n']})"
    if pd.notna(row["ci_low"]):
        return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return f"{row['value']:.3f}"


def render(results: pd.DataFrame, summary: dict, task_types: Optional[dict] = None) -> str:
    lines = ["# raddist report", ""]
    lines.append(
        f"{summary.get('cells_done', 0)}/{summary.get('cells_total', 0)} cells done, "
        f"{summary.get('cells_failed', 0)} failed; {summary.get('images_embedded', 0)} images embedded "
        f"({summary.get('embedding_jobs_computed', 0)} embedding jobs computed, "
        f"{summary.get('embedding_jobs_cached', 0)} from cache); {summary.get('input_errors', 0)} input errors."
    )
    lines.append("")
    lines.append("Each cell: test value [95% bootstrap CI over patients]; repeated draws or seeds: mean ± std.")
    for task in sorted(results["task"].unique()) if len(results) else []:
        sub = results[results["task"] == task]
        metric = _headline(sub, (task_types or {}).get(task))
        table = summary_table(sub, metric)
        if table.empty:
            continue
        table["text"] = table.apply(_cell_text, axis=1)
        wide = table.pivot(index="backbone", columns="column", values="text").fillna("—")
        lines += ["", f"## {task} — {metric}", "", _markdown(wide)]
    return "\n".join(lines) + "\n"


def _headline(sub: pd.DataFrame, task_type: Optional[str]) -> str:
    metric = HEADLINE.get(task_type or "", "auroc")
    return metric if metric in set(sub["metric"]) else sorted(sub["metric"].unique())[0]


def _markdown(wide: pd.DataFrame) -> str:
    cols = list(wide.columns)
    out = ["| backbone | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for backbone, row in wide.iterrows():
        out.append(f"| {backbone} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(out)


def write_report(output: str, gathered: dict, summary: dict) -> str:
    results = gathered["results"].to_pandas() if gathered.get("results") is not None else pd.DataFrame(
        columns=["task", "metric", "value"])
    task_types = {}
    if gathered.get("predictions") is not None:
        p = gathered["predictions"].select(["task", "task_type"]).to_pandas().drop_duplicates()
        task_types = dict(zip(p["task"], p["task_type"]))
    text = render(results, summary, task_types)
    uri = storage.join(output, "report.md")
    storage.write_text(uri, text)
    return uri
