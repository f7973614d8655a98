"""How cells become Tune trials (raddist.trials), without Tune: batches per embedding job, and a
batch suggested as soon as its job is done (or failed), never twice, never before."""

import json

from ray.tune.search import Searcher

from raddist import spec as spec_lib
from raddist.plan import make_plan
from raddist.trials import JobStates, ReadyCells, batches


def plan():
    return make_plan(spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "chest", "manifest": "/d/c.parquet", "type": "multilabel", "labels": ["a", "b"]},
                  {"name": "brain", "manifest": "/d/b.parquet", "type": "multiclass", "labels": ["label"],
                   "classes": ["x", "y", "z"]}],
        "protocols": [{"name": "knn"}, {"name": "logreg"}, {"name": "finetune"}],
        "seeds": [0, 1, 2],
    }))


def test_batches_group_a_jobs_cells_and_leave_trainable_cells_alone():
    p = plan()
    got = batches(p.cells, per_trial=4)
    assert sorted(c.id for b in got for c in b) == sorted(c.id for c in p.cells)  # each cell once
    frozen = [b for b in got if b[0].embedding_job is not None]
    trains = [b for b in got if b[0].embedding_job is None]
    assert len(trains) == 2 * 3 and all(len(b) == 1 for b in trains)  # finetune: one trial per cell
    assert sorted(len(b) for b in frozen) == [2, 2, 4, 4]  # 6 frozen cells per job: 4 + 2
    assert all(len({c.embedding_job for c in b}) == 1 for b in frozen)


def test_a_batch_is_suggested_once_its_job_is_done_or_failed(tmp_path):
    p = plan()
    by_task = {b[0].task.name: b for b in batches(p.cells, per_trial=6) if b[0].embedding_job is not None}
    chest, brain = by_task["chest"], by_task["brain"]
    jobs = JobStates(train_during_embedding=False)
    searcher = ReadyCells([chest, brain], jobs)
    assert searcher.suggest("t0") is None  # nothing ready: wait
    jobs.done(brain[0].embedding_job, "", error="storage failed: s3://x")
    config = searcher.suggest("t1")
    assert config == {"cells": [c.id for c in brain], "key": None, "job_error": "storage failed: s3://x",
                      "trains": False}  # a failed job's cells start, to record the failure
    assert searcher.suggest("t2") is None  # not twice
    searcher.save(str(tmp_path / "state.json"))
    assert json.loads((tmp_path / "state.json").read_text()) == {"waiting": [[c.id for c in chest]]}
    jobs.done(chest[0].embedding_job, "key-123")
    assert searcher.suggest("t3")["key"] == "key-123"
    assert searcher.suggest("t4") == Searcher.FINISHED


def test_trainable_cells_wait_for_the_embedding_unless_allowed():
    cell = next(c for c in plan().cells if c.embedding_job is None)
    waits = JobStates(train_during_embedding=False)
    assert waits.ready(cell) is None
    waits.finished = True
    assert waits.ready(cell) == {"cell_id": cell.id, "key": None, "job_error": None}
    assert JobStates().ready(cell) is not None
    frozen = next(c for c in plan().cells if c.embedding_job is not None)
    assert waits.ready(frozen)["job_error"] == "its embedding job did not run"  # never waits forever
