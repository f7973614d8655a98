"""The leaderboard across tasks: mean rank per backbone over tasks, with a task-bootstrap interval."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raddist.ranking import mean_rank, task_ranks
from raddist.report_write import write_report


def _board(values: dict) -> pd.DataFrame:
    """values: task -> {backbone: value}."""
    return pd.DataFrame([{"task": f"{t}\nauroc, linear", "backbone": b, "value": v, "ci_low": v - 0.01,
                          "ci_high": v + 0.01} for t, row in values.items() for b, v in row.items()])


def test_mean_rank_ties_missing_backbones_and_interval():
    board = _board({"a": {"x": 0.9, "y": 0.8, "z": 0.7}, "b": {"x": 0.6, "y": 0.6, "z": 0.9},
                    "c": {"x": 0.8, "y": 0.7}})  # tie on b; z missing on c
    ranks = task_ranks(board)
    assert ranks.loc["x"].tolist() == [1.0, 2.5, 1.0] and ranks.loc["y"].tolist() == [2.0, 2.5, 2.0]
    table = mean_rank(board, n_boot=2000).set_index("backbone")
    assert list(table.index) == ["x", "z", "y"]  # best (lowest) mean rank first: z 2.0 < y 2.17
    assert abs(table.loc["x", "value"] - 4.5 / 3) < 1e-12 and abs(table.loc["y", "value"] - 6.5 / 3) < 1e-12
    assert table.loc["z", "value"] == 2.0 and table.loc["z", "n_tasks"] == 2 and table.loc["x", "n_tasks"] == 3
    # resampling tasks: x's rank is 1 or 2.5, so its interval spans exactly [1, 2.5]
    assert table.loc["x", "ci_low"] == 1.0 and table.loc["x", "ci_high"] == 2.5
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    again = mean_rank(board, n_boot=2000).set_index("backbone")
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_write_report_writes_leaderboard_parquet(tmp_path):
    rows = [dict(task=t, task_type="binary", backbone=b, protocol="linear", params="{}", seed=0, metric="auroc",
                 value=v, ci_low=v - 0.02, ci_high=v + 0.02)
            for t, vals in (("t1", (0.9, 0.8)), ("t2", (0.7, 0.75)), ("t3", (0.95, 0.6))) for b, v in zip("pq", vals)]
    write_report(str(tmp_path), {"results": pa.Table.from_pandas(pd.DataFrame(rows)), "cells": []}, {})
    board = pq.read_table(tmp_path / "leaderboard.parquet").to_pandas().set_index("backbone")
    assert set(board["task"]) == {"all"} and set(board["metric"]) == {"mean_rank"}
    assert abs(board.loc["p", "value"] - 4 / 3) < 1e-12 and abs(board.loc["q", "value"] - 5 / 3) < 1e-12
    assert board.loc["p", "n_tasks"] == 3
    text = (tmp_path / "report.md").read_text()
    assert "## Across tasks — mean rank" in text and "| p | 1.33 [1.00, 2.00] | 3 |" in text
    # one task: nothing to rank across, and an older leaderboard.parquet is removed
    write_report(str(tmp_path), {"results": pa.Table.from_pandas(pd.DataFrame(rows[:2])), "cells": []}, {})
    assert not (tmp_path / "leaderboard.parquet").exists()
    assert "mean rank" not in (tmp_path / "report.md").read_text()
