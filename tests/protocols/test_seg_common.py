"""Segmentation is scored on each case's source grid: cells.inputs.seg_inputs points every case at its
original label map (the manifest's mask_uri), and seg_common resizes the logits to it. A head that
returns stored logits stands in for a trained one, so the scores depend on the grid alone."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raddist.cells.inputs import seg_inputs
from raddist.data import volumes
from raddist.data.volumes import nifti_bytes, png_bytes, resize_labels
from raddist.embed.cache import CachedEmbeddings
from raddist.protocols import seg_common
from raddist.seg_metrics import case_metrics, mean_dice
from raddist.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest.py)

AFFINE = np.array([[-0.7, 0.0, 0.0, 12.5], [0.0, -0.9, 0.0, -3.0], [0.0, 0.0, 3.0, 40.0], [0, 0, 0, 1.0]])


class StoredLogits(torch.nn.Module):
    """A 'head' whose logits for a row are given: the row's index travels as its only token."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits  # per cached row, (K, h, w)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # seg_common finds the device through it

    def forward(self, tokens):
        return torch.stack([self.logits[int(i)] for i in tokens[0][:, 0, 0, 0].round()])


def one_hot_logits(labels, n_classes):
    return torch.from_numpy(np.stack([labels == c for c in range(n_classes)]).astype(np.float32) * 10)


def cached(masks, shapes, size, volumes_=False, affines=None, rows=None, slices=None):
    n = len(masks)
    extras = {"mask": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(masks)),
              "shape": pa.array([list(map(int, s)) for s in shapes], pa.list_(pa.int64()))}
    if volumes_:
        extras["affine"] = pa.array([list(a.reshape(-1)) for a in affines], pa.list_(pa.float64()))
    return CachedEmbeddings(
        key="k", rows=np.arange(n) if rows is None else np.asarray(rows),
        slices=np.full(n, -1) if slices is None else np.asarray(slices), features={}, block_dims=[],
        meta={"volumes": volumes_, "contract": {"size": size}, "dense_names": ["patch_tokens"]},
        errors=pa.table({"row": pa.array([], pa.int64())}),
        dense={"patch_tokens": np.arange(n, dtype=np.float16).reshape(n, 1, 1, 1)}, extras=pa.table(extras))


def task(classes):
    return TaskSpec.model_construct(name="t", manifest="m.parquet", type="segmentation", labels=[], classes=classes)


def organs(shape=(512, 512)):
    """An adrenal-sized structure (6 x 14 px) and a gallbladder-sized one (40 x 30 px) on a 512 grid."""
    labels = np.zeros(shape, np.uint8)
    labels[203:209, 301:315] = 1
    labels[100:140, 180:210] = 2
    return labels


def images_2d(tmp_path, sources, size):
    """Manifest and cache of 2D images, one per source label map, the first two train and the last test."""
    uris = []
    for i, labels in enumerate(sources):
        (tmp_path / f"m{i}.png").write_bytes(png_bytes(labels))
        uris.append(str(tmp_path / f"m{i}.png"))
    n = len(sources)
    table = pa.table({"sample_id": [f"img{i}" for i in range(n)], "uri": uris, "patient_id": [f"p{i}" for i in range(n)],
                      "split": ["train"] * (n - 1) + ["test"], "mask_uri": uris})
    masks = np.stack([resize_labels(s, (size, size)) for s in sources])
    return table, cached(masks, [(1, *s.shape) for s in sources], size)


def test_a_small_structure_perfect_on_the_model_grid_is_not_perfect_on_its_source_grid(tmp_path, monkeypatch):
    size, source = 224, organs()
    table, cache = images_2d(tmp_path, [source, source], size)
    inputs = seg_inputs(task(["background", "adrenal", "gallbladder"]), table, cache)
    test = inputs.splits["test"]
    assert inputs.geometry["img1"].source_shape == (512, 512) and inputs.geometry["img1"].source_spacing == (1.0, 1.0)
    assert inputs.geometry["img1"].spacing == pytest.approx((512 / 224, 512 / 224))  # the output grid's, as before

    # perfect at the model's size: the argmax of its logits IS the cached 224 mask
    model_grid = StoredLogits([one_hot_logits(test.masks[0], 3)] * 2)  # rows 0 and 1 hold the same map
    stats = [(np.zeros(1, np.float32), np.ones(1, np.float32))]
    assert seg_common.val_dice(model_grid, test, stats, 4, 3) == 1.0  # what validation sees

    reads = []
    read_bytes = volumes.storage.read_bytes
    monkeypatch.setattr(volumes.storage, "read_bytes", lambda uri: reads.append(uri) or read_bytes(uri))
    [case] = seg_common.source_cases(inputs, test, model_grid, stats, batch_size=4)
    assert reads == [table["mask_uri"][1].as_py()]  # the test case's own label map, read once
    np.testing.assert_array_equal(case.truth, source)  # the original, not the cached 224 mask
    assert case.pred.shape == (512, 512) and case.spacing == (1.0, 1.0)
    dice = case_metrics(case.pred, case.truth, 3, case.spacing)["dice"]
    assert dice[0] < 0.95 and dice[1] < 1.0 and dice[0] < dice[1]  # the smaller, the more a coarse grid flatters it

    source_grid = StoredLogits([one_hot_logits(source, 3)] * 2)
    [perfect] = seg_common.source_cases(inputs, test, source_grid, stats, batch_size=4)
    scores = case_metrics(perfect.pred, perfect.truth, 3, perfect.spacing)
    assert list(scores["dice"]) == [1.0, 1.0] and list(scores["hd95"]) == [0.0, 0.0]
    assert mean_dice([perfect], 3) == 1.0


def test_logits_are_resized_bilinearly_to_the_source_and_argmaxed_there(tmp_path):
    source = np.zeros((90, 70), np.uint8)
    source[30:60, 20:50] = 1
    table, cache = images_2d(tmp_path, [source, source], 16)
    inputs = seg_inputs(task(["background", "organ"]), table, cache)
    logits = torch.randn(2, 2, 4, 4)
    [case] = seg_common.source_cases(inputs, inputs.splits["test"], StoredLogits(list(logits)),
                                     [(np.zeros(1, np.float32), np.ones(1, np.float32))], batch_size=2)
    want = torch.nn.functional.interpolate(logits[1:], size=(90, 70), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(case.pred, want[0].argmax(0).numpy())


def test_volumes_are_predicted_and_scored_on_their_voxel_grid_with_its_spacing(tmp_path):
    rng = np.random.default_rng(0)
    shape, size = (5, 40, 30), 16
    labels = [(rng.random(shape) < 0.3).astype(np.uint8) * rng.integers(1, 3, shape).astype(np.uint8) for _ in range(2)]
    uris = []
    for i, lab in enumerate(labels):
        (tmp_path / f"v{i}.nii.gz").write_bytes(nifti_bytes(lab, AFFINE))
        uris.append(str(tmp_path / f"v{i}.nii.gz"))
    table = pa.table({"sample_id": ["v0", "v1"], "uri": uris, "patient_id": ["p0", "p1"], "split": ["train", "test"],
                      "mask_uri": uris, "volume_id": ["v0", "v1"]})
    rows, slices = np.repeat([0, 1], 5), np.tile([3, 0, 4, 1, 2], 2)  # slices in any order
    masks = np.stack([resize_labels(labels[r][z], (size, size)) for r, z in zip(rows, slices)])
    cache = cached(masks, [shape] * 10, size, True, [AFFINE] * 10, rows, slices)
    inputs = seg_inputs(task(["background", "a", "b"]), table, cache)
    geometry = inputs.geometry["v1"]
    assert geometry.source_spacing == pytest.approx((3.0, 0.9, 0.7)) and inputs.source_masks["v1"] == uris[1]
    # a perfect prediction per slice, at the source's (H, W): the row's slice z of volume r
    logits = [one_hot_logits(labels[r][z], 3) for r, z in zip(rows, slices)]
    [case] = seg_common.source_cases(inputs, inputs.splits["test"], StoredLogits(logits),
                                     [(np.zeros(1, np.float32), np.ones(1, np.float32))], batch_size=2)
    assert case.case_id == "v1" and case.pred.shape == case.truth.shape == shape
    np.testing.assert_array_equal(case.truth, labels[1])
    np.testing.assert_array_equal(case.pred, labels[1])
    assert case.spacing == pytest.approx((3.0, 0.9, 0.7)) and case.source_shape == shape


def test_slices_listed_in_a_manifest_are_stacked_with_their_own_label_maps(tmp_path):
    shape = (3, 24, 20)
    labels = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.uint8)
    names, rows = [], []
    for vol in ("a", "b"):
        for z in (2, 0, 1):
            (tmp_path / f"{vol}{z}.png").write_bytes(png_bytes(labels[z]))
            names.append(str(tmp_path / f"{vol}{z}.png"))
            rows.append((vol, z))
    table = pa.table({"sample_id": [f"{v}{z}" for v, z in rows], "uri": names, "patient_id": [v for v, _ in rows],
                      "split": ["train"] * 3 + ["test"] * 3, "mask_uri": names,
                      "volume_id": [v for v, _ in rows], "slice_index": [z for _, z in rows]})
    masks = np.stack([resize_labels(labels[z], (8, 8)) for _, z in rows])
    inputs = seg_inputs(task(["background", "x", "y"]), table, cached(masks, [(1, 24, 20)] * 6, 8))
    assert inputs.volumetric and inputs.source_masks["b"] == [str(tmp_path / f"b{z}.png") for z in (0, 1, 2)]
    assert inputs.geometry["b"].source_shape == shape and inputs.geometry["b"].source_spacing == (1.0, 1.0, 1.0)
    logits = [one_hot_logits(labels[z], 3) for _, z in rows]
    [case] = seg_common.source_cases(inputs, inputs.splits["test"], StoredLogits(logits),
                                     [(np.zeros(1, np.float32), np.ones(1, np.float32))], batch_size=8)
    np.testing.assert_array_equal(case.truth, labels)
    np.testing.assert_array_equal(case.pred, labels)


def test_a_label_map_that_changed_since_embedding_is_refused(tmp_path):
    source = organs((64, 64))
    table, cache = images_2d(tmp_path, [source, source], 16)
    inputs = seg_inputs(task(["background", "a", "b"]), table, cache)
    (tmp_path / "m1.png").write_bytes(png_bytes(np.zeros((60, 64), np.uint8)))
    with pytest.raises(ValueError, match="changed since"):
        seg_common.source_cases(inputs, inputs.splits["test"], StoredLogits([torch.zeros(3, 4, 4)] * 2),
                                [(np.zeros(1, np.float32), np.ones(1, np.float32))], batch_size=2)
