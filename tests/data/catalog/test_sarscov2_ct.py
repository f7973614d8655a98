import pytest

from raddist.data import catalog
from raddist.data.catalog import sarscov2_ct
from tests.data.catalog import SARS_SLICES, check_manifest, write_image, write_sars


def test_class_folders():
    assert [sarscov2_ct.class_of(c) for c in ("COVID", "Covid", "non-COVID", "Healthy", "Others")] == [1, 1, 0, 0, 0]
    with pytest.raises(catalog.CatalogError, match="Pneumonia"):
        sarscov2_ct.class_of("Pneumonia")


def test_prepare(tmp_path):
    source = write_sars(tmp_path / "sars")
    uri = catalog.prepare("sarscov2_ct", source, str(tmp_path / "out"), val_size=2, test_size=2)
    frame, meta = check_manifest(uri, "sarscov2_ct")
    assert len(frame) == 8 * 3 and meta["unit"] == "slice"
    vol = frame[frame.volume_id == "COVID/Patient 1"]
    assert vol["slice_index"].tolist() == [0, 1, 2]
    assert [u.rsplit("/", 1)[-1] for u in vol["uri"]] == SARS_SLICES
    assert set(vol["label"]) == {1} and set(frame[frame.volume_id.str.startswith("non")]["label"]) == {0}
    assert (frame["patient_id"] == frame["volume_id"]).all()
    assert meta["patient_counts"] == {"train": 4, "val": 2, "test": 2}
    for split in ("val", "test"):  # stratified: each held-out split has both classes
        assert set(frame[frame.split == split]["label"]) == {0, 1}


def test_reference_layout_covid_healthy_others(tmp_path):
    source = write_sars(tmp_path / "sars", classes=("Covid", "Healthy", "Others"), patients=3)
    uri = catalog.prepare("sarscov2_ct", source, str(tmp_path / "out"), val_size=0.2, test_size=0.3)
    frame, _ = check_manifest(uri, "sarscov2_ct")
    assert frame.groupby("label")["volume_id"].nunique().to_dict() == {0: 6, 1: 3}


def test_flat_class_folders_are_rejected(tmp_path):
    write_image(str(tmp_path / "flat" / "COVID" / "Covid (1).png"))
    with pytest.raises(catalog.CatalogError, match="<class>/<patient>/<slice>.png"):
        catalog.prepare("sarscov2_ct", str(tmp_path / "flat"), str(tmp_path / "out"))
