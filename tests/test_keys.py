"""raddist.keys: every key follows what its content is computed from, and nothing else."""

import os

import pyarrow as pa
import pytest
import torch

from raddist import keys
from raddist.keys import JobSource, ManifestDigest, job_keys, weights_identity


def _table(**cols):
    base = {"sample_id": ["a", "b", "c", "d"], "uri": ["/x/a", "/x/b", "/x/c", "/x/d"],
            "patient_id": ["p1", "p1", "p2", "p3"], "split": ["train", "train", "val", "test"],
            "finding": [0, 1, 0, 1]}
    return pa.table({**base, **cols})


def test_manifest_digest_separates_images_labels_and_rows():
    base = ManifestDigest.of(_table(), masks=False, labels=["finding"])
    relabelled = ManifestDigest.of(_table(finding=[1, 1, 0, 1]), masks=False, labels=["finding"])
    assert relabelled.images == base.images and relabelled.rows == base.rows
    assert relabelled.labels != base.labels and relabelled.results != base.results
    moved = ManifestDigest.of(_table(split=["train", "val", "val", "test"]), masks=False, labels=["finding"])
    assert moved.images == base.images and moved.labels == base.labels and moved.rows != base.rows
    new_image = ManifestDigest.of(_table(uri=["/x/a", "/x/b", "/x/c", "/y/d"]), masks=False, labels=["finding"])
    assert new_image.images != base.images and new_image.results != base.results
    sliced = ManifestDigest.of(_table(slice_index=[0, 1, 2, 3]), masks=False, labels=["finding"])
    assert sliced.images != base.images  # which slice a row is changes what it embeds
    masks = _table(mask_uri=["/m/a", "/m/b", "/m/c", "/m/d"])
    other_masks = _table(mask_uri=["/m/a", "/m/b", "/m/c", "/m/e"])
    assert ManifestDigest.of(masks, True).images != ManifestDigest.of(other_masks, True).images
    assert ManifestDigest.of(masks, False).images == ManifestDigest.of(other_masks, False).images


def test_the_manifest_digest_is_of_the_raw_content_whatever_the_salt(synthetic_data):
    from raddist.data import manifest as manifest_lib

    uri = os.path.join(synthetic_data, "chest", "manifest.parquet")
    raw = ManifestDigest.of(manifest_lib.load(uri), masks=False)
    assert raw == ManifestDigest.of(manifest_lib.load(uri), masks=False)
    salted = [ManifestDigest.of(manifest_lib.load(uri, salt), masks=False).images for salt in ("s1", "s2")]
    assert salted[0] != salted[1]  # which is why keys hash the raw manifest, loaded without a salt


def _keys(device="cpu", device_jpeg=False, **over):
    args = dict(backbone="tiny_vit", weights_id="random", contract={"size": 64}, features={"n_last_blocks": 1},
                manifest=ManifestDigest("img", "lab", "rows", "res"), masks=False, volumes=False)
    return job_keys(JobSource(**{**args, **over}), device, device_jpeg)


def test_job_keys_follow_what_the_features_depend_on(monkeypatch):
    base = _keys()
    assert _keys() == base  # deterministic
    variants = [
        _keys(weights_id="file:/w.pth|size=1|mtime_ns=2"),
        _keys(contract={"size": 96}),
        _keys(features={"n_last_blocks": 4}),
        _keys(manifest=ManifestDigest("img2", "lab", "rows", "res")),
        _keys(volumes=True),  # slice by slice
        _keys(device="gpu"),  # bf16 on a GPU
        _keys(device="gpu", device_jpeg=True),  # JPEGs decoded by nvjpeg
    ]
    # labels, splits and patients never change what is embedded
    assert _keys(manifest=ManifestDigest("img", "other", "other", "other")) == base
    # the pixel cache follows the images and the contract, not the backbone or its features
    assert _keys(backbone="tiny_cnn", features={"n_last_blocks": 4}).pixels == base.pixels
    assert _keys(contract={"size": 96}).pixels != base.pixels
    monkeypatch.setattr(keys, "DECODE_VERSION", keys.DECODE_VERSION + 1)  # the decoded pixels change
    variants.append(_keys())
    monkeypatch.setattr(keys, "EMBEDDER_VERSION", keys.EMBEDDER_VERSION + 1)
    variants.append(_keys())
    assert len({v.features for v in variants} | {base.features}) == len(variants) + 1


def test_cell_keys_follow_labels_and_what_the_cell_reads():
    definition = {"protocol": "knn", "params": {"k": 10}, "seed": 0}
    key = keys.cell_key(definition, "features-a", "results-a")
    assert key == keys.cell_key(dict(definition), "features-a", "results-a")
    assert len({key, keys.cell_key(definition, "features-b", "results-a"),
                keys.cell_key(definition, "features-a", "results-b"),
                keys.cell_key({**definition, "seed": 1}, "features-a", "results-a")}) == 4


def test_weights_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(keys, "_REVISIONS", {})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert weights_identity("random") == "random"
    assert weights_identity("hub", "timm/vit_base_patch14_dinov2.lvd142m") == \
        "hub:timm/vit_base_patch14_dinov2.lvd142m@unresolved"
    ref = tmp_path / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("0123abcd\n")  # what a hub download leaves: the revision it resolved
    assert weights_identity("hub", "timm/vit_small_patch14_dinov2.lvd142m") == \
        "hub:timm/vit_small_patch14_dinov2.lvd142m@0123abcd"
    with pytest.raises(ValueError):
        weights_identity("hub")
    path = str(tmp_path / "w.pth")
    torch.save({"a": torch.zeros(3)}, path)
    first = weights_identity(path)
    assert first == weights_identity(path) == weights_identity("file://" + path)
    assert path in first and f"size={os.path.getsize(path)}" in first
    torch.save({"a": torch.zeros(30)}, path)
    assert weights_identity(path) != first
    with pytest.raises(FileNotFoundError):
        weights_identity(str(tmp_path / "missing.pth"))
