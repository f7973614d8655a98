"""The leaderboard across tasks: each backbone's mean rank over the tasks (rank-sum, as THUNDER does),
with a bootstrap interval that resamples the TASKS (the unit the mean runs over): per-task metric CIs
would say how sure each rank is, the task bootstrap says how much the mean rank hangs on which tasks
were chosen, which is the larger doubt when a study has a handful of tasks.

Ranks are within a task, 1 = best (higher headline metric), ties averaged; a backbone missing from a
task is left out of that task's ranks and its mean runs over the tasks it has (n_tasks says how many).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

N_BOOT = 1000


def task_ranks(board: pd.DataFrame) -> pd.DataFrame:
    """backbone x task: the rank of each backbone within each task (board: report.leaderboard's rows)."""
    value = board.pivot_table(index="backbone", columns="task", values="value", aggfunc="mean")
    return value.rank(ascending=False, method="average")


def mean_rank(board: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per backbone, best first: mean rank, its 95% bootstrap interval over resampled tasks,
    and the number of tasks it was ranked on."""
    cols = ["backbone", "value", "ci_low", "ci_high", "n_tasks"]
    if board.empty:
        return pd.DataFrame(columns=cols)
    ranks = task_ranks(board)
    r = ranks.to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, r.shape[1], size=(n_boot, r.shape[1]))
    with warnings.catch_warnings():  # a resample without a backbone's tasks: NaN for that draw
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(r[:, picks], axis=2)  # backbone x n_boot
        low, high = np.nanpercentile(boot, [2.5, 97.5], axis=1)
    out = pd.DataFrame({"backbone": ranks.index, "value": np.nanmean(r, axis=1), "ci_low": low, "ci_high": high,
                        "n_tasks": (~np.isnan(r)).sum(axis=1)})
    return out.sort_values(["value", "backbone"]).reset_index(drop=True)


def result_rows(table: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """The mean ranks as rows shaped like results.parquet's: task "all", metric "mean_rank"; params
    names the tasks and the metric and protocol each was ranked on."""
    tasks = {t.split("\n")[0]: t.split("\n", 1)[1] if "\n" in t else "" for t in board["task"].unique()}
    params = json.dumps({"tasks": tasks, "bootstrap": "tasks resampled", "n_boot": N_BOOT}, sort_keys=True)
    return table.assign(task="all", protocol="leaderboard", params=params, seed=0, metric="mean_rank")[
        ["task", "backbone", "protocol", "params", "seed", "metric", "value", "ci_low", "ci_high", "n_tasks"]]
