import pytest

from raddist.data import catalog
from raddist.data.catalog import nih_chestxray14 as nih
from tests.data.catalog import check_manifest, write_image, write_text

# patient -> number of images, in the sorted order of train_val_list.txt
TRAIN_VAL = {1: 2, 2: 1, 3: 3, 4: 2, 5: 1, 6: 2}
TEST = {7: 2, 8: 1}
FINDINGS = ["Cardiomegaly|Effusion", "No Finding", "Hernia", "Pleural_Thickening|Mass|Nodule"]


def _names(patients):
    return [f"{p:08d}_{i:03d}.png" for p, n in patients.items() for i in range(n)]


@pytest.fixture
def nih_source(tmp_path):
    root = tmp_path / "nih"
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    for k, name in enumerate(_names(TRAIN_VAL) + _names(TEST)):
        age, sex = (412 if k == 0 else 30 + 10 * k), "MF"[k % 2]  # 412: an age as the real file has some
        rows.append(f"{name},{FINDINGS[k % 4]},{int(name[9:12])},{int(name[:8])},{age},{sex},PA,8,8,0.14,0.14,")
        # the images are spread over two of the twelve archives, as in the real release
        write_image(str(root / f"images_00{1 + k % 2}" / "images" / name), value=k)
    write_text(str(root / "Data_Entry_2017.csv"), "\n".join(rows) + "\n")
    write_text(str(root / "train_val_list.txt"), "\n".join(_names(TRAIN_VAL)) + "\n")
    write_text(str(root / "test_list.txt"), "\n".join(_names(TEST)) + "\n")
    return str(root)


@pytest.mark.parametrize("val_count, val_patients", [
    (3, {"5", "6"}),        # the cut falls between patients
    (4, {"4", "5", "6"}),   # patient 4 straddles 1:1 -> a tie goes to val
    (6, {"4", "5", "6"}),   # patient 3 straddles 1 val : 2 train -> train
])
def test_val_is_the_last_rows_patient_adjusted(val_count, val_patients):
    train_val, test = _names(TRAIN_VAL), _names(TEST)
    patient_of = {n: str(int(n[:8])) for n in train_val + test}
    split = nih.official_split(train_val, test, patient_of, val_count)
    assert {patient_of[n] for n, s in split.items() if s == "val"} == val_patients
    assert [n for n, s in split.items() if s == "test"] == test


def test_prepare(nih_source, tmp_path):
    uri = catalog.prepare("nih_chestxray14", nih_source, str(tmp_path / "out"), val_count=4)
    frame, meta = check_manifest(uri, "nih_chestxray14")
    assert frame.loc[frame.split == "test", "sample_id"].tolist() == [n[:-4] for n in _names(TEST)]
    assert sorted(frame.loc[frame.split == "val", "patient_id"].unique()) == ["4", "5", "6"]
    assert meta["split_counts"] == {"train": 6, "val": 5, "test": 3}
    assert list(meta["label_columns"]) == list(nih.LABELS) and len(nih.LABELS) == 15
    first = frame.set_index("sample_id").loc["00000001_000"]
    assert (first["Cardiomegaly"], first["Effusion"], first["No Finding"]) == (1, 1, 0)
    assert frame[list(nih.LABELS)].sum(axis=1).min() >= 1  # every row has a finding or No Finding
    assert frame.set_index("sample_id").loc["00000001_001", "No Finding"] == 1
    assert "/images_00" in first["uri"]
    # the subgroup columns: sex as F/M, age in coarse bands, an impossible age left unknown
    by_row = frame.set_index("sample_id").loc[[n[:-4] for n in _names(TRAIN_VAL) + _names(TEST)]]
    assert by_row["sex"].tolist()[:4] == ["M", "F", "M", "F"]
    assert by_row["age_band"].fillna("unknown").tolist()[:5] == ["unknown", "40-64", "40-64", "40-64", "65+"]  # 412, 40..70


def test_missing_image_is_named(nih_source, tmp_path):
    import os

    os.remove(os.path.join(nih_source, "images_001", "images", "00000001_000.png"))
    with pytest.raises(catalog.CatalogError, match="00000001_000.png"):
        catalog.prepare("nih_chestxray14", nih_source, str(tmp_path / "out"), val_count=4)
