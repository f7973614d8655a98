"""progress.json as a run goes (raddist.progress): counts of jobs and cells, the embedding's rate,
and the run's state; the Tune callback counts cells by their reports."""

import json
import pickle
from types import SimpleNamespace

from raddist.progress import CellProgress, RunProgress


def read(tmp_path) -> dict:
    return json.loads((tmp_path / "progress.json").read_text())


def test_a_run_counts_jobs_and_embedding_and_finishes(tmp_path):
    run = RunProgress(str(tmp_path), cells_total=12, jobs_total=3)
    first = read(tmp_path)
    assert first["state"] == "running" and first["run_id"] == run.id  # written at once
    assert first["embedding_jobs"] == {"total": 3, "done": 0, "failed": 0} and first["cells"]["total"] == 12
    run.job_done(failed=False)
    run.job_done(failed=False)
    run.job_done(failed=True)
    run.embedding({"backbone": "tiny_vit", "images_done": 40, "images_total": 100, "started": 1.0,
                   "images_per_second": 20.0, "eta_seconds": 3.0})
    state = read(tmp_path)
    assert state["embedding_jobs"] == {"total": 3, "done": 2, "failed": 1}
    assert state["embedding"] == {"tiny_vit": {"images_done": 40, "images_total": 100, "images_per_second": 20.0,
                                               "eta_seconds": 3.0}}  # "started" is the driver's, not shown
    run.finish("interrupted")
    assert read(tmp_path)["state"] == "interrupted" and read(tmp_path)["updated"] >= first["updated"]


def test_cell_callback_counts_cells_and_survives_pickling(tmp_path, capsys):
    run = RunProgress(str(tmp_path), cells_total=3, jobs_total=1)
    cell = SimpleNamespace(backbone=SimpleNamespace(label="tiny_vit"), task=SimpleNamespace(name="chest"),
                           protocol="knn")
    callback = pickle.loads(pickle.dumps(CellProgress(run, {"c1": cell, "c2": cell, "c3": cell})))  # as Tune does
    callback.on_trial_start(0, [], None)
    callback.on_trial_result(0, [], None, {"cell_id": "c1", "ok": True, "seconds": 1.25})
    callback.on_trial_result(0, [], None, {"cell_id": "c2", "ok": False, "error": "ValueError: bad"})
    assert read(tmp_path)["cells"]["running"] == 1
    callback.on_trial_complete(0, [], None)
    callback.on_trial_error(0, [], None)  # a trial that died: it ran no more, one more failure
    cells = read(tmp_path)["cells"]
    assert (cells["done_now"], cells["failed_now"], cells["running"]) == (1, 2, 0)  # never below 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  [1/3] tiny_vit × chest × knn 1.2s", "  [2/3] tiny_vit × chest × knn FAILED: ValueError: bad"]
    run.finish()
    callback.on_trial_start(0, [], None)  # after the run finished, the callback no longer writes
    assert read(tmp_path)["state"] == "finished" and read(tmp_path)["cells"]["running"] == 0
