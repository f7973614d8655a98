"""One cell end to end from a cache entry written directly (no backbone, no Ray): its inputs, its
protocol, its scores and its outputs; a failing cell; what it holds."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist.cells.run import CellContext, evaluate_cell, gpus_held
from raddist.embed.cache import EmbeddingCache, block_table, write_part
from raddist.plan import Cell
from raddist.spec import BackboneSpec, ResourcesSpec, TaskSpec
from tests.protocols.synthetic import blob_inputs

SALT = "cell-test-salt"


@pytest.fixture
def frozen_cell(tmp_path):
    """A binary task's manifest and the cache entry of its features (gaussian blobs)."""
    inputs = blob_inputs("binary", 1, sizes=(60, 20, 30), separation=2.0)
    rows, cls, patch = [], [], []
    for split, data in inputs.splits.items():
        for i, sid in enumerate(data.sample_ids):
            rows.append({"sample_id": sid, "uri": f"{sid}.png", "patient_id": data.patient_ids[i], "split": split,
                         "finding": int(data.labels[i, 0])})
        cls.append(data.features["cls"])
        patch.append(data.features["patch_mean"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    n = len(rows)
    cache = EmbeddingCache(str(tmp_path / "cache"))
    part = write_part(cache.entry("k1"), block_table({
        "row": np.arange(n), "slice": np.full(n, -1), "error": np.array([""] * n, dtype=object),
        "cls": np.concatenate(cls), "patch_mean": np.concatenate(patch)}))
    cache.finish("k1", [part], {"feature_names": ["cls", "patch_mean"], "block_dims": [8, 8, 8, 8]})
    task = TaskSpec(name="t", manifest=str(tmp_path / "manifest.parquet"), type="binary", labels=["finding"])
    cell = Cell(id="cell1", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="knn",
                params={"ks": [5, 10]}, seed=0, embedding_job="j1")
    ctx = CellContext(cache.root, str(tmp_path / "out"), n_boot=50, salt=SALT, resources=ResourcesSpec())
    return cell, ctx, [r["sample_id"] for r in rows]


def test_a_frozen_cell_writes_its_metrics_predictions_and_record(frozen_cell, tmp_path):
    cell, ctx, raw_ids = frozen_cell
    outcome = evaluate_cell(cell, "k1", ctx)
    assert outcome["ok"], outcome
    d = tmp_path / "out" / "cells" / "cell1"
    info = json.loads((d / "cell.json").read_text())
    assert info["n_test"] == 30 and info["selected"]["k"] in (5, 10) and info["embeddings"] == "k1"
    assert info["task_type"] == "binary" and info["gpu_seconds"] == 0.0
    metrics = pq.read_table(d / "metrics.parquet").to_pandas().set_index("metric")
    assert metrics.loc["auroc", "value"] > 0.9 and metrics.loc["auroc", "ci_low"] <= metrics.loc["auroc", "value"]
    preds = pq.read_table(d / "predictions.parquet").to_pandas()
    assert len(preds) == 30 and preds["scores"].map(len).eq(1).all()
    assert not set(preds["sample_id"]) & set(raw_ids)  # pseudonyms only
    assert not (d / "cases.parquet").exists()


def test_a_failing_cell_writes_failed_json_and_returns_its_error(frozen_cell, tmp_path):
    cell, ctx, _ = frozen_cell
    outcome = evaluate_cell(cell, "no-such-key", ctx)
    assert not outcome["ok"] and "not complete in the cache" in outcome["error"]
    failed = json.loads((tmp_path / "out" / "cells" / "cell1" / "failed.json").read_text())
    assert failed["cell_id"] == "cell1" and "FileNotFoundError" in failed["error"]
    assert not (tmp_path / "out" / "cells" / "cell1" / "cell.json").exists()


def test_gpu_seconds_count_the_gpus_a_cell_holds(frozen_cell):
    cell, ctx, _ = frozen_cell
    trains = Cell(**{**cell.__dict__, "protocol": "lora", "embedding_job": None})
    on_gpus = CellContext(ctx.cache_root, ctx.output, 0, SALT, ResourcesSpec(train_workers=2, gpus_per_cell=0.25),
                          train_gpu=True)
    assert gpus_held(trains, on_gpus) == 2.0 and gpus_held(cell, on_gpus) == 0.25
    assert gpus_held(trains, CellContext(ctx.cache_root, ctx.output, 0, SALT, ResourcesSpec(train_workers=2))) == 0.0


def test_a_cache_entry_that_misses_manifest_rows_fails_the_cell_clearly(frozen_cell, tmp_path):
    cell, ctx, _ = frozen_cell
    cache = EmbeddingCache(ctx.cache_root)
    meta = cache.meta("k1")
    short = write_part(cache.entry("k2"), block_table({
        "row": np.arange(10), "slice": np.full(10, -1), "error": np.array([""] * 10, dtype=object),
        "cls": np.zeros((10, 32), np.float32), "patch_mean": np.zeros((10, 8), np.float32)}))
    cache.finish("k2", [short], {k: meta[k] for k in ("feature_names", "block_dims")})
    outcome = evaluate_cell(cell, "k2", ctx)
    assert not outcome["ok"] and "cover 10 of 110 manifest rows" in outcome["error"]


def test_further_test_sets_are_scored_under_their_own_names():
    from raddist.cells.run import score_extra
    from raddist.protocols.base import Prediction

    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 30)

    def prediction(noise):
        scores = np.clip(labels + rng.normal(0, noise, 60), 0, 1)[:, None]
        return Prediction(sample_ids=np.arange(60).astype(str), patient_ids=(np.arange(60) // 2).astype(str),
                          labels=labels[:, None], scores=scores)

    main = prediction(0.1)
    main.extra = {"external/site_b": prediction(0.5), "corruption/jpeg/3": prediction(2.0)}
    task = TaskSpec(name="t", manifest="m", type="binary", labels=["finding"])
    cell = Cell(id="c", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="knn",
                params={}, seed=0, embedding_job="j")
    rows = {r["metric"]: r for r in score_extra(cell, main, ["finding"], n_boot=50)}
    assert {"external/site_b/auroc", "corruption/jpeg/3/auroc"} <= set(rows)
    assert rows["external/site_b/auroc"]["value"] > rows["corruption/jpeg/3/auroc"]["value"] + 0.1
    assert rows["external/site_b/auroc"]["ci_low"] < rows["external/site_b/auroc"]["value"]
    assert score_extra(cell, prediction(0.1), ["finding"], n_boot=10) == []
