"""report.md: per task, a table of backbones × protocols (value [95% CI]), the few-shot curves
(mean ± std over seeded draws) as a table and a PNG, and the input errors."""

from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from raddist import figures, storage
from raddist.report_search import search_label

HEADLINE = {"multilabel": "auroc", "binary": "auroc", "multiclass": "auroc", "segmentation": "dice"}
# tables after the headline's: segmentation's pooled Dice (every voxel of the test set at once) and
# boundary error, which the per-case mean Dice hides
SECONDARY = {"segmentation": ["dice_pooled", "hd95"]}
SECONDARY_NOTES = {"dice_pooled": " (all test voxels pooled)", "hd95": " (95th-percentile Hausdorff, lower is better)"}
# params that only repeat a measurement (few-shot draws), averaged over like seeds
REPEAT_PARAMS = ("draw",)


def _params(params_json: str) -> dict:
    return json.loads(params_json) if params_json else {}


def protocol_labels(protocols: pd.Series, params_json: pd.Series) -> list:
    """A column label per row: the protocol, and the params that tell its entries apart (those whose
    values differ between cells of one protocol), so two entries are two columns, never averaged."""
    params = [_params(p) for p in params_json]
    varying = {}
    for proto, p in zip(protocols, params):
        for k, v in p.items():
            varying.setdefault(proto, {}).setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    for proto, p in zip(protocols, params):  # a key only some entries have (a search: block) tells them apart
        for k in set(varying.get(proto, {})) - set(p):
            varying[proto][k].add(None)
    labels = []
    for proto, p in zip(protocols, params):
        keys = [k for k, vs in varying.get(proto, {}).items() if len(vs) > 1 and k not in REPEAT_PARAMS]
        extra = [f"{k}={search_label(p[k]) if k == 'search' else json.dumps(p[k], sort_keys=True)}"
                 for k in sorted(keys) if k in p]
        labels.append(proto + (f" ({', '.join(extra)})" if extra else ""))
    return labels


def _aggregate(df: pd.DataFrame, keys) -> pd.DataFrame:
    return df.groupby(keys, sort=True).agg(
        value=("value", "mean"), std=("value", "std"), n=("value", "size"),
        ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean")).reset_index()


def summary_table(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task × backbone × protocol column: the value, its CI, and mean ± std over repeats."""
    df = results[(results["metric"] == metric) & (results["protocol"] != "fewshot")].copy()
    if df.empty:
        return df
    df["column"] = protocol_labels(df["protocol"], df["params"])
    return _aggregate(df, ["task", "backbone", "column"])


def fewshot_table(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    df = results[(results["metric"] == metric) & (results["protocol"] == "fewshot")].copy()
    if df.empty:
        return df
    params = [_params(p) for p in df["params"]]
    df["shots"] = [int(p["shots"]) for p in params]
    df["probe"] = [p.get("probe", "") for p in params]
    return _aggregate(df, ["task", "backbone", "probe", "shots"])


def _cell_text(row) -> str:
    if row["n"] > 1 and not row["std"] > 1e-12 and pd.notna(row["ci_low"]):
        # repeats that agree to the last digit (seeds of a deterministic protocol): the spread says
        # nothing, the CI still does
        return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n={row['n']}, identical)"
    if row["n"] > 1:
        return f"{row['value']:.3f} ± {row['std']:.3f} (n={row['n']})"
    if pd.notna(row["ci_low"]):
        return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return f"{row['value']:.3f}"


def _markdown(wide: pd.DataFrame, index_name: str) -> str:
    cols = list(wide.columns)
    out = [f"| {index_name} | " + " | ".join(str(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in wide.iterrows():
        label = " / ".join(idx) if isinstance(idx, tuple) else idx
        out.append(f"| {label} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(out)


LEADERBOARD_PROTOCOLS = ("linear", "seg_linear", "knn")  # the leaderboard's protocol: the first a task has


def leaderboard(results: pd.DataFrame, task_types: dict) -> pd.DataFrame:
    """Backbone x task: the task's headline metric under one protocol (the first of
    LEADERBOARD_PROTOCOLS it has, never the best on test), seeds averaged."""
    rows = []
    for task in sorted(results["task"].unique()) if len(results) else []:
        sub = results[results["task"] == task]
        metric = _headline(sub, task_types.get(task))
        protocol = next((p for p in LEADERBOARD_PROTOCOLS if p in set(sub["protocol"])), None)
        if protocol is None:
            continue
        table = summary_table(sub[sub["protocol"] == protocol], metric)
        for _, r in table.iterrows():
            rows.append({"task": f"{task}\n{metric}, {r['column']}", "backbone": r["backbone"], "value": r["value"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    return pd.DataFrame(rows)


def modality_of(task: str, results: pd.DataFrame) -> str:
    """The task's modality: the results' own column where there is one, else the catalogue's entry of a
    dataset of that name (DX, CT, MR), else blank."""
    if "modality" in results:
        values = results.loc[results["task"] == task, "modality"].dropna().unique()
        if len(values):
            return ", ".join(sorted(map(str, values)))
    from raddist.data import catalog

    try:
        return catalog.get(task).modality
    except Exception:  # noqa: BLE001 - a user's own task: no catalogue entry
        return ""


def board_rows(results: pd.DataFrame, task_types: dict) -> pd.DataFrame:
    """Every task x backbone x protocol column of the task's headline metric (few-shot aside: it has
    its curves), with its CI and modality."""
    frames = []
    for task in sorted(results["task"].unique()) if len(results) else []:
        sub = results[results["task"] == task]
        metric = _headline(sub, task_types.get(task))
        table = summary_table(sub, metric)
        if not table.empty:
            frames.append(table.assign(metric=metric, modality=modality_of(task, results)))
    if not frames:
        return pd.DataFrame(columns=["task", "modality", "protocol", "backbone", "metric", "value", "ci_low", "ci_high", "n"])
    rows = pd.concat(frames, ignore_index=True).rename(columns={"column": "protocol"})
    return rows.sort_values(["task", "value"], ascending=[True, False]).reset_index(drop=True)


def rank_lines(board: pd.DataFrame) -> list:
    """The leaderboard across tasks (raddist.ranking): mean rank of each backbone over the tasks."""
    from raddist.ranking import mean_rank

    ranks = mean_rank(board)
    if ranks.empty or board["task"].nunique() < 2:
        return []
    ranks["mean rank [95% CI]"] = [f"{r.value:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in ranks.itertuples()]
    wide = ranks.set_index("backbone")[["mean rank [95% CI]", "n_tasks"]]
    return ["", "## Across tasks — mean rank", "",
            f"Rank of each backbone within each of the {board['task'].nunique()} tasks above (1 = best; the "
            "leaderboard's metric and protocol), averaged over tasks; the interval resamples the tasks "
            "(1,000 bootstrap draws). Also in leaderboard.parquet (task 'all', metric 'mean_rank').",
            "", _markdown(wide, "backbone")]


def published_lines(results: pd.DataFrame, published: pd.DataFrame) -> list:
    """Where a cell matches a published value (raddist.published): both, raddist's CI, and whether
    the published value lies inside it."""
    from raddist.published import compare

    cells, few = [], []
    for metric in sorted(set(published["metric"]) & set(results["metric"])) if len(results) else []:
        table = summary_table(results, metric)
        if not table.empty:
            cells.append(table.assign(metric=metric, protocol=table["column"].str.split(" (", regex=False).str[0]))
        fs = fewshot_table(results, metric)
        if not fs.empty:
            few.append(fs.assign(metric=metric))
    joined = compare(published, pd.concat(cells) if cells else pd.DataFrame(),
                     pd.concat(few) if few else pd.DataFrame())
    lines = ["", "## Published numbers", "",
             f"{len(published)} published values ({', '.join(sorted(set(published['table'])))}); "
             f"{len(joined)} match a cell of this run (task, backbone, protocol, metric, shots)."]
    if joined.empty:
        return lines
    joined["raddist [95% CI]"] = [f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in joined.itertuples()]
    joined["published"] = joined["published"].map(lambda v: f"{v:.3f}")
    joined["inside CI"] = joined["inside"].map({True: "yes", False: "no"})
    joined["shots"] = joined["shots"].astype(str).replace("", "—")
    wide = joined.set_index(["task", "backbone", "column", "shots", "metric"])[
        ["published", "raddist [95% CI]", "inside CI", "source"]]
    return lines + ["", _markdown(wide, "task / backbone / protocol / shots / metric")]


def render(results: pd.DataFrame, summary: dict, task_types: Optional[dict] = None, output: Optional[str] = None) -> str:
    lines = ["# raddist report", ""]
    if summary.get("state") == "interrupted":
        lines += ["**Interrupted**: the run was stopped before it finished; run the same command to continue.", ""]
    counts = f"{summary.get('cells_done', 0)}/{summary.get('cells_total', 0)} cells done, {summary.get('cells_failed', 0)} failed"
    if "images_embedded" not in summary:  # a run in flight: only its cells are known
        lines.append(counts + ".")
    else:
        lines.append(
            f"{counts}; {summary.get('images_embedded', 0)} images embedded "
            f"({summary.get('embedding_jobs_computed', 0)} embedding jobs computed, "
            f"{summary.get('embedding_jobs_cached', 0)} from cache); {summary.get('input_errors', 0)} input errors"
            + (" (see errors.parquet)." if summary.get("input_errors") else "."))
    resamples = f" of {summary['bootstrap']:,} patient resamples" if summary.get("bootstrap") else ", resampling patients"
    lines += ["", f"Each entry: test value [95% bootstrap CI{resamples}]; repeated seeds or draws: "
              "mean ± std (n). Model selection used validation only."]
    board = leaderboard(results, task_types or {})
    if output is not None and not board.empty:
        storage.write_bytes(storage.join(output, "leaderboard.png"), figures.leaderboard_plot(board))
        lines += ["", "![leaderboard: backbone × task, each task's headline metric and protocol](leaderboard.png)"]
    lines += rank_lines(board)
    for task in sorted(results["task"].unique()) if len(results) else []:
        sub = results[results["task"] == task]
        task_type = (task_types or {}).get(task)
        metric = _headline(sub, task_type)
        lines += _summary_lines(sub, f"## {task} — {metric}", metric)
        for extra in SECONDARY.get(task_type or "", []):
            if extra in set(sub["metric"]):
                lines += _summary_lines(sub, f"### {task} — {extra}{SECONDARY_NOTES.get(extra, '')}", extra)
        few = fewshot_table(sub, metric)
        if not few.empty:
            few["text"] = few.apply(_cell_text, axis=1)
            wide = few.pivot(index=["backbone", "probe"], columns="shots", values="text").fillna("—")
            wide.columns = [f"{c}-shot" for c in wide.columns]
            lines += ["", f"### {task} — few-shot {metric}", "", _markdown(wide, "backbone / probe")]
            if output is not None:
                name = f"fewshot_{task}.png"
                storage.write_bytes(storage.join(output, name), figures.fewshot_plot(few, task, metric))
                lines += ["", f"![few-shot {task}]({name})"]
    return "\n".join(lines) + "\n"


def _summary_lines(sub: pd.DataFrame, heading: str, metric: str) -> list:
    table = summary_table(sub, metric)
    if table.empty:
        return []
    table["text"] = table.apply(_cell_text, axis=1)
    wide = table.pivot(index="backbone", columns="column", values="text").fillna("—")
    coverage = auroc_coverage(sub) if metric == "auroc" else None
    if coverage:
        heading += f" ({coverage[0]})"
    return ["", heading, "", _markdown(wide, "backbone")] + (["", coverage[1]] if coverage else [])


def auroc_coverage(sub: pd.DataFrame) -> Optional[tuple]:
    """(heading note, sentence) when the macro AUROC of these cells leaves classes out: a class with no
    test positives (or no negatives) has no AUROC (auroc/<class> is NaN) and is not in the mean."""
    per_class = sub[sub["metric"].str.startswith("auroc/")]
    if per_class.empty:
        return None
    names = list(dict.fromkeys(m.split("/", 1)[1] for m in per_class["metric"]))
    missing = sorted({m.split("/", 1)[1] for m in per_class.loc[per_class["value"].isna(), "metric"]})
    if not missing:
        return None
    covered = [n for n in names if n not in missing]
    cells = per_class.loc[per_class["value"].isna(), "cell_id"].nunique() if "cell_id" in per_class else None
    where = f" in {cells} of {per_class['cell_id'].nunique()} cells" if cells and cells < per_class["cell_id"].nunique() else ""
    return (f"macro over {len(covered)} of {len(names)} classes",
            f"Macro AUROC covers {', '.join(covered) or 'no class'}{where}: {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no test positives (or no negatives), so no AUROC.")


def _headline(sub: pd.DataFrame, task_type: Optional[str]) -> str:
    metric = HEADLINE.get(task_type or "", "auroc")
    return metric if metric in set(sub["metric"]) else sorted(sub["metric"].unique())[0]


def cost_section(output: str, cell_infos: list) -> str:
    from raddist.cost import paper_gpu_hours, sweep_costs

    jobs_uri = storage.join(output, "embedding_jobs.json")
    jobs = storage.read_json(jobs_uri) if storage.exists(jobs_uri) else []
    costs = sweep_costs(cell_infos, jobs)
    lines = ["", "## Cost", ""]
    if costs:
        lines += ["Per backbone (seconds; embedding counted where it was computed in this output's runs):", "",
                  _markdown(costs["per_backbone"].round(1), "backbone"), "", "Per protocol (seconds):", "",
                  _markdown(costs["per_protocol"].round(1), "protocol")]
    try:
        paper = paper_gpu_hours()
        embed, train = paper[paper["kind"] == "embedding"], paper[paper["kind"] != "embedding"]
        by_backbone = paper.groupby("backbone", sort=False)["gpu_hours"].sum().round(2)
        lines += ["", f"The reference study's grid (`paper`) would take about **{paper['gpu_hours'].sum():.1f} H100 "
                  f"GPU-hours**: {embed['gpu_hours'].sum():.1f} to embed its classification datasets once (14 "
                  f"backbones; the segmentation volumes are not counted yet) and {train['gpu_hours'].sum():.1f} for "
                  f"its {len(train)} fine-tuning, LoRA and BitFit cells, at forward rates capped by 16-core "
                  f"decoding (rates partly assumed, see raddist/cost.py). Frozen protocols read the cache and add "
                  f"no GPU time. Per backbone: " + ", ".join(f"{b} {h}" for b, h in by_backbone.items()) + "."]
    except Exception as e:  # noqa: BLE001 - the estimate is a courtesy, never a failure
        lines += ["", f"(paper-grid estimate unavailable: {e})"]
    return "\n".join(lines) + "\n"
