"""Writing a run's report: a finished run's report written again from its files, and a run in
flight rendered from the cells it finished without writing anything."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from raddist.report_write import in_flight, rewrite

ROWS = [{"task": "chest", "task_type": "binary", "backbone": b, "protocol": "linear", "params": "{}", "seed": 0,
         "metric": "auroc", "value": v, "ci_low": v - 0.05, "ci_high": v + 0.04} for b, v in (("vit", 0.812), ("cnn", 0.703))]


def test_a_run_in_flight_is_rendered_from_its_finished_cells_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    for i, row in enumerate(ROWS[:1]):
        d = out / "cells" / f"c{i}"
        d.mkdir(parents=True)
        (d / "cell.json").write_text(json.dumps({"id": f"c{i}"}))
        pq.write_table(pa.Table.from_pylist([row]), d / "metrics.parquet")
    (out / "cells" / "c9").mkdir()  # a cell still running: no cell.json yet
    (out / "progress.json").write_text(json.dumps({"state": "running", "updated": time.time() - 5,
                                                   "cells": {"total": 4, "failed_now": 0}}))
    text = in_flight(str(out))
    assert text.startswith("Run in flight (progress.json: running")
    assert "1/4 cells done, 0 failed" in text and "0.812 [0.762, 0.852]" in text and "cnn" not in text
    assert not (out / "report.md").exists()


def test_a_finished_run_is_written_again_from_its_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS), out / "results.parquet")
    (out / "summary.json").write_text(json.dumps({"state": "finished", "cells_done": 2, "cells_total": 2}))
    (out / "report.md").write_text("an old report")
    rewrite(str(out))
    text = (out / "report.md").read_text()
    assert "| vit | 0.812 [0.762, 0.852] |" in text and "| cnn | 0.703 [0.653, 0.743] |" in text
    assert (out / "report.html").exists()
    assert in_flight(str(out)) is None  # finished, its report current
