"""The report's "Hyperparameter searches": the validation curve (best so far by trial) and the budget of
every searched cell, from the cells' cell.json records; written into report.md with its figure."""

import pandas as pd
import pyarrow as pa

from raddist.report_search import FIGURE, best_so_far, search_section
from raddist.report_write import write_report


def _cell(backbone, vals, stopped=1, task="t", protocol="lora", trials=None):
    by_trial = [{"config": {"lr": 10.0 ** -(i + 3), "r": 4}, "epochs_run": 2, "stopped_early": False,
                 "best_val_auroc": v} for i, v in enumerate(vals)]
    search = {"algorithm": "optuna", "scheduler": "asha", "num_samples": len(vals), "seed": 7,
              "trials": trials or len(vals), "stopped_by_asha": stopped, "by_trial": by_trial,
              "winner": by_trial[max(range(len(vals)), key=lambda i: vals[i] or 0)]["config"]}
    return {"cell_id": f"c_{backbone}", "backbone": backbone, "task": task, "task_type": "binary",
            "protocol": protocol, "params": "{}", "seed": 0, "selected": {"search": search}}


def test_best_so_far_keeps_the_running_maximum_and_skips_trials_without_a_score():
    assert best_so_far([{"best_val_auroc": v} for v in (None, 0.6, 0.55, 0.8, None, 0.7)]) == \
        [None, 0.6, 0.6, 0.8, 0.8, 0.8]


def test_the_section_states_each_budget_and_curve(tmp_path):
    plain = {"cell_id": "k", "backbone": "vit", "task": "t", "protocol": "knn", "selected": {"k": 10}}
    text = search_section([_cell("vit", [0.61, 0.58, 0.74, 0.70]), _cell("cnn", [0.55, None, 0.66, 0.52], stopped=2),
                           plain], output=str(tmp_path))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert rows == [
        "| cnn | t | lora | 0 | 4 | 4 | optuna | asha | 2 | 0.550 → 0.550 → 0.660 → 0.660 | lr=1e-05, r=4 |",
        "| vit | t | lora | 0 | 4 | 4 | optuna | asha | 1 | 0.610 → 0.610 → 0.740 → 0.740 | lr=1e-05, r=4 |"]
    assert "- `lora` on t: 4 trials for each backbone (cnn, vit)." in text
    assert (tmp_path / FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({FIGURE})" in text


def test_unequal_budgets_are_named_and_no_search_means_no_section():
    text = search_section([_cell("vit", [0.6] * 4), _cell("cnn", [0.6] * 8)])
    assert "- `lora` on t: **unequal budgets** (cnn: 8; vit: 4): not a fair comparison." in text
    assert "![" not in text  # no output: no figure
    assert search_section([{"protocol": "knn", "selected": {}}]) == ""


def test_write_report_includes_the_section(tmp_path):
    results = pa.Table.from_pandas(pd.DataFrame([dict(
        cell_id="c_vit", task="t", task_type="binary", backbone="vit", protocol="lora", params="{}", seed=0,
        metric="auroc", value=0.7, ci_low=0.6, ci_high=0.8)]))
    write_report(str(tmp_path), {"results": results, "cells": [_cell("vit", [0.61, 0.74, 0.70])]},
                 {"cells_done": 1, "cells_total": 1})
    report = (tmp_path / "report.md").read_text()
    assert "## Hyperparameter searches" in report and "0.610 → 0.740 → 0.740" in report
    assert (tmp_path / FIGURE).exists()


def test_a_searched_entry_beside_a_plain_one_is_labelled_by_its_budget_not_its_json():
    from raddist.report import protocol_labels

    searched = '{"r": 4, "search": {"algorithm": "random", "num_samples": 3, "scheduler": "asha", "space": {}}}'
    assert protocol_labels(pd.Series(["lora", "lora"]), pd.Series(['{"r": 4}', searched])) == \
        ["lora", "lora (search=random ×3 + asha)"]
