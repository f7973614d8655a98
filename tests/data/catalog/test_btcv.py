import pytest

from raddist.data import catalog
from tests.data.catalog import check_manifest, write_nifti


def write_btcv(root, n=8):
    raw = root / "Abdomen" / "RawData"
    for i in range(1, n + 1):
        write_nifti(str(raw / "Training" / "img" / f"img{i:04d}.nii.gz"), value=-1000)
        write_nifti(str(raw / "Training" / "label" / f"label{i:04d}.nii.gz"), value=i % 14, dtype="uint8")
    write_nifti(str(raw / "Testing" / "img" / "img0061.nii.gz"))  # no labels: not used
    return str(root)


def test_prepare(tmp_path):
    uri = catalog.prepare("btcv", write_btcv(tmp_path / "src"), str(tmp_path / "out"), val_size=2, test_size=2)
    frame, meta = check_manifest(uri, "btcv")
    assert frame["sample_id"].tolist() == [f"img{i:04d}" for i in range(1, 9)]  # one row per volume
    assert meta["unit"] == "volume" and meta["split_counts"] == {"train": 4, "val": 2, "test": 2}
    assert meta["preprocessing"]["hu_clip"] == [-1024.0, 600.0]
    assert len(meta["class_names"]) == 14 and meta["class_names"][0] == "background"
    row = frame.iloc[0]
    assert row.uri.endswith("Training/img/img0001.nii.gz") and row.mask_uri.endswith("label0001.nii.gz")
    assert (row.modality, row.volume_id, row.patient_id) == ("CT", "img0001", "img0001")


def test_unlabelled_training_volume_is_named(tmp_path):
    source = write_btcv(tmp_path / "src")
    (tmp_path / "src" / "Abdomen" / "RawData" / "Training" / "label" / "label0003.nii.gz").unlink()
    with pytest.raises(catalog.CatalogError, match="img0003"):
        catalog.prepare("btcv", source, str(tmp_path / "out"), val_size=2, test_size=2)
