import pandas as pd
import pytest

from raddist.data import catalog
from raddist.data.catalog import chexpert
from tests.data.catalog import check_manifest, write_image

TOP = "CheXpert-v1.0-small"
COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
           "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
           "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def _row(path, view, **labels):
    row = {c: None for c in COLUMNS}  # blank = NaN, as in the real csv
    row.update({"Path": path, "Sex": "Female", "Age": 60, "Frontal/Lateral": view,
                "AP/PA": "AP" if view == "Frontal" else None, **labels})
    return row


def _write(root, split, patients):
    rows = []
    for p in patients:
        base = f"{TOP}/{split}/patient{p:05d}/study1"
        rows.append(_row(f"{base}/view1_frontal.jpg", "Frontal", Cardiomegaly=1.0, Edema=-1.0, Atelectasis=0.0))
        rows.append(_row(f"{base}/view2_lateral.jpg", "Lateral", Cardiomegaly=1.0))
        for r in rows[-2:]:
            write_image(str(root / r["Path"]), value=p % 256)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / TOP / f"{split}.csv", index=False)


@pytest.fixture
def chexpert_source(tmp_path):
    root = tmp_path / "chexpert"
    _write(root, "train", range(1, 11))
    _write(root, "valid", range(64541, 64544))
    return str(root)


def test_clean_labels():
    frame = pd.DataFrame({f: [1.0, None, -1.0] for f in chexpert.FINDINGS})
    frame.loc[0, "Edema"] = 0.0
    out = chexpert.clean_labels(frame)
    assert out["Cardiomegaly"].tolist() == [1, 0, 0]  # NaN -> 0, -1 -> 0
    assert out["Edema"].tolist() == [0, 0, 0]
    assert out["Uncertain"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("source_level", ["parent", "folder"])
def test_prepare(chexpert_source, tmp_path, source_level):
    source = chexpert_source if source_level == "parent" else f"{chexpert_source}/{TOP}"
    uri = catalog.prepare("chexpert", source, str(tmp_path / "out"), val_size=0.2)
    frame, meta = check_manifest(uri, "chexpert")
    assert not frame["sample_id"].str.contains("lateral").any()
    assert len(frame) == 13
    test = frame[frame.split == "test"]
    assert sorted(test["patient_id"]) == ["patient64541", "patient64542", "patient64543"]
    assert test["sample_id"].iloc[0] == "valid/patient64541/study1/view1_frontal"
    assert meta["patient_counts"] == {"train": 8, "val": 2, "test": 3}
    row = frame.iloc[0]
    assert (row.Cardiomegaly, row.Edema, row.Atelectasis, row["Pleural Effusion"], row.Uncertain) == (1, 0, 0, 0, 1)
    assert meta["label_columns"] == list(chexpert.FINDINGS) + ["Uncertain"]
    assert set(frame["sex"]) == {"F"} and set(frame["age_band"]) == {"40-64"}  # Sex, Age: for subgroups


def test_val_is_seeded(chexpert_source, tmp_path):
    def val_hash(seed, out):
        uri = catalog.prepare("chexpert", chexpert_source, str(tmp_path / out), seed=seed, val_size=3)
        return catalog.read_metadata(uri)["split_hashes"]

    a, b = val_hash(0, "a"), val_hash(0, "b")
    assert a == b
    others = [val_hash(s, f"s{s}")["val"] for s in range(1, 6)]
    assert any(h != a["val"] for h in others)
    assert all(val_hash(s, f"t{s}")["test"] == a["test"] for s in range(1, 3))  # test never moves
