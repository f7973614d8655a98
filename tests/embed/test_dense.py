"""Dense features, volumes and masks through the real pipeline on a local Ray cluster, then the
segmentation heads and the pooled volume classification on what it cached."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist.data import manifest as manifest_lib
from raddist.data.readers import read_nifti
from raddist.data.synthetic_seg import SEG2D_CLASSES, SEG3D_CLASSES
from raddist.data.volumes import read_mask, resize_labels
from raddist.embed.cache import EmbeddingCache
from raddist.embed.jobs import run_embedding_job
from raddist import protocols
from raddist.cells.inputs import frozen_inputs
from raddist.cells.outputs import write_masks
from raddist.cells.run import score
from raddist.plan import Cell, EmbeddingJob
from raddist.spec import BackboneSpec, ResourcesSpec, TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread in every test here

RESOURCES = ResourcesSpec(embed_batch_size=32)


def run_cell(cell, inputs, n_boot):
    """(prediction, metric rows, per-case values or None), as the cell stage computes them."""
    record = protocols.get(cell.protocol)
    prediction = record.run(inputs, record.parse(cell.params), cell.seed)
    return (prediction, *score(cell, prediction, inputs.class_names, n_boot))




def _task(name, manifest, type_, **kw):
    # built without validation: a segmentation task has no label columns once the spec allows it
    return TaskSpec.model_construct(name=name, manifest=manifest, type=type_, labels=kw.pop("labels", []), **kw)


def _job(task, patch_tokens, backbone="tiny_vit"):
    features = {"n_last_blocks": 1, "patch_mean": True, **({"patch_tokens": patch_tokens} if patch_tokens else {})}
    return EmbeddingJob(id=f"{task.name}-{backbone}-{patch_tokens}", backbone=BackboneSpec(name=backbone, weights="random"),
                        task=task, contract={"size": 64, "window": "auto", "clip_percentiles": None}, features=features)


@pytest.fixture(scope="module")
def seg3d(ray_local, synthetic_seg_data, tmp_path_factory):
    cache = EmbeddingCache(str(tmp_path_factory.mktemp("cache")))
    task = _task("seg3d", synthetic_seg_data["seg3d"], "segmentation", classes=list(SEG3D_CLASSES))
    outcome = run_embedding_job(_job(task, 5), cache, RESOURCES)
    return task, cache, outcome


def test_volume_rows_expand_to_one_row_per_slice(seg3d, synthetic_seg_data):
    task, cache, outcome = seg3d
    assert outcome.computed and outcome.errors == 0 and outcome.images == 12 * 16
    cached = cache.load(outcome.key)
    table = manifest_lib.load(synthetic_seg_data["seg3d"])
    pairs = set(zip(cached.rows.tolist(), cached.slices.tolist()))
    assert pairs == {(r, z) for r in range(table.num_rows) for z in range(16)} and len(cached.rows) == len(pairs)
    extras = cached.extras.to_pylist()
    first = table.to_pylist()[0]
    labels, affine = read_nifti(first["mask_uri"], open(first["mask_uri"], "rb").read())
    for row, extra in zip(cached.rows, extras):
        if row == 0:
            np.testing.assert_allclose(np.reshape(extra["affine"], (4, 4)), affine)
            assert tuple(extra["shape"]) == labels.shape
    masks = cached.extras["mask"].combine_chunks().to_numpy_ndarray()
    i = next(k for k, (r, z) in enumerate(zip(cached.rows, cached.slices)) if r == 0 and z == 7)
    np.testing.assert_array_equal(masks[i], labels[7].astype(np.uint8))  # 64 x 64 source: no resize


def test_dense_tokens_are_float16_and_a_rerun_computes_nothing(seg3d):
    task, cache, outcome = seg3d
    cached = cache.load(outcome.key)
    schema = pq.read_schema(cache.part_uris(outcome.key, cached.meta)[0])
    assert cached.meta["dense_names"] == ["patch_tokens", "patch_tokens_2", "patch_tokens_3", "patch_tokens_4"]
    for name in cached.meta["dense_names"]:  # tiny_vit has 4 blocks: 5 asked, 4 given
        assert schema.field(name).type.value_type == pa.float16()
        assert cached.dense[name].dtype == np.float16 and cached.dense[name].shape == (192, 64, 8, 8)
    again = run_embedding_job(_job(task, 5), cache, RESOURCES)
    assert not again.computed and again.key == outcome.key and again.images == 0
    other = run_embedding_job(dataclasses.replace(_job(task, 1), id="one"), cache, RESOURCES)
    assert other.computed and other.key != outcome.key  # the feature spec is part of the key
    assert cache.load(other.key).meta["dense_names"] == ["patch_tokens"]


# one pass an epoch (min_epoch_steps 1; the default makes 4 here): this checks that the heads segment volumes,
# not how long they train (tests/protocols/test_seg_heads.py does)
@pytest.mark.parametrize("name, params", [
    ("seg_linear", {"lrs": [0.03, 0.1, 0.3], "epochs": 20, "min_epoch_steps": 1}),
    ("seg_unet", {"lrs": [0.001, 0.01], "channels": [32, 16], "up_blocks": 2, "epochs": 15, "min_epoch_steps": 1}),
])
def test_heads_segment_the_synthetic_volumes(seg3d, synthetic_seg_data, tmp_path, name, params):
    task, cache, outcome = seg3d
    inputs = frozen_inputs(task, manifest_lib.load(synthetic_seg_data["seg3d"]), cache.load(outcome.key))
    assert inputs.volumetric and {k: len(v) for k, v in inputs.splits.items()} == {"train": 112, "val": 32, "test": 48}
    cell = Cell(id="c", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol=name,
                params=params, seed=0, embedding_job="j")
    prediction, rows, per_case = run_cell(cell, inputs, n_boot=50)
    values = {r["metric"]: r for r in rows}
    assert {"dice", "dice_pooled", "jaccard", "hd95", "dice/liver", "hd95/kidney"} <= set(values)
    assert values["dice"]["value"] > 0.5 and values["hd95"]["value"] < 20  # mm
    assert per_case["dice"].shape == per_case["tp"].shape == (3, 3)  # per test volume and organ
    assert write_masks(prediction, str(tmp_path), "salt") == 3
    nii = sorted((tmp_path / "masks").iterdir())[0]
    volume, affine = read_nifti(str(nii), nii.read_bytes())
    assert volume.shape == (16, 64, 64)
    np.testing.assert_allclose(affine, inputs.geometry[prediction.cases[0].case_id].affine)


def test_2d_masks_are_cached_at_the_model_size(ray_local, synthetic_seg_data, tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"))
    task = _task("seg2d", synthetic_seg_data["seg2d"], "segmentation", classes=list(SEG2D_CLASSES))
    outcome = run_embedding_job(_job(task, 1, "tiny_cnn"), cache, RESOURCES)
    cached = cache.load(outcome.key)
    assert outcome.images == 60 and cached.dense["patch_tokens"].shape == (60, 96, 2, 2)
    table = manifest_lib.load(synthetic_seg_data["seg2d"]).to_pylist()
    row = table[int(cached.rows[5])]
    expected = resize_labels(read_mask(row["mask_uri"], open(row["mask_uri"], "rb").read()), (64, 64))
    np.testing.assert_array_equal(cached.extras["mask"].combine_chunks().to_numpy_ndarray()[5], expected)
    inputs = frozen_inputs(task, manifest_lib.load(synthetic_seg_data["seg2d"]), cached)
    assert not inputs.volumetric and inputs.geometry[row["sample_id"]].spacing == (1.5, 1.5)


def test_slices_of_volumes_pool_into_one_row_per_volume(ray_local, synthetic_seg_data, tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"))
    task = _task("covid", synthetic_seg_data["volcls"], "binary", labels=["label"], pool="mean")
    outcome = run_embedding_job(_job(task, 0), cache, RESOURCES)
    cached = cache.load(outcome.key)
    assert outcome.images == 320 and set(cached.slices) == {-1} and not cached.dense  # slices listed one per row
    table = manifest_lib.load(synthetic_seg_data["volcls"])
    inputs = frozen_inputs(task, table, cached)
    n = sum(len(s) for s in inputs.splits.values())
    assert n == 40 and inputs.splits["test"].features["cls"].shape == (10, 64)
    test = inputs.splits["test"]
    vid = test.sample_ids[0]
    volume_of = np.asarray(table["volume_id"].to_pylist(), dtype=object)[cached.rows]
    np.testing.assert_allclose(test.features["cls"][0], cached.features["cls"][volume_of == vid].mean(0), rtol=1e-6)
    assert test.features["slices"][0].shape == (8, 128)  # [cls | patch_mean] per slice
    assert set(test.patient_ids) == set(test.sample_ids)  # one volume per patient here
    for name in ("knn", "attention_mil"):
        params = {"epochs": 10} if name == "attention_mil" else {}
        cell = Cell(id="c", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol=name,
                    params=params, seed=0, embedding_job="j")
        prediction, metric_rows, _ = run_cell(cell, inputs, n_boot=20)
        assert len(prediction.sample_ids) == 10
        assert metric_rows[0]["metric"] == "auroc" and 0 <= metric_rows[0]["value"] <= 1


def test_a_segmentation_cell_runs_through_the_cell_stage(seg3d, tmp_path):
    """evaluate_cell, as a sweep runs it: the steps after the protocol (further test sets, their drops)
    take a segmentation prediction too."""
    import json

    from raddist.cells.run import CellContext, evaluate_cell

    task, cache, outcome = seg3d
    cell = Cell(id="seg", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="seg_linear",
                params={"lrs": [0.1], "epochs": 5}, seed=0, embedding_job="j")
    ctx = CellContext(cache.root, str(tmp_path / "out"), n_boot=20, salt="s", resources=RESOURCES)
    result = evaluate_cell(cell, outcome.key, ctx)
    assert result["ok"], result.get("error")
    info = json.loads((tmp_path / "out" / "cells" / "seg" / "cell.json").read_text())
    assert info["n_test"] == 3 and pq.read_table(tmp_path / "out" / "cells" / "seg" / "metrics.parquet").num_rows > 5
