from raddist.data import catalog
from raddist.data.catalog import amos
from tests.data.catalog import check_manifest, write_json, write_nifti

TRAIN_IDS, VAL_IDS = (1, 2, 3, 4, 5, 6, 507, 508), (7, 8, 540)  # ids >= 500 are MRI


def write_amos(root):
    base = root / "amos22"
    labels = {str(i): name for i, name in enumerate(amos.CLASSES)}
    entries = {}
    for folder, ids in (("Tr", TRAIN_IDS), ("Va", VAL_IDS)):
        entries[folder] = []
        for i in ids:
            entries[folder].append({"image": f"./images{folder}/amos_{i:04d}.nii.gz",
                                    "label": f"./labels{folder}/amos_{i:04d}.nii.gz"})
            write_nifti(str(base / f"images{folder}" / f"amos_{i:04d}.nii.gz"))
            write_nifti(str(base / f"labels{folder}" / f"amos_{i:04d}.nii.gz"), dtype="uint8")
    write_nifti(str(base / "imagesTs" / "amos_0009.nii.gz"))  # no labels: not used
    write_json(str(base / "dataset.json"), {"name": "AMOS", "labels": labels, "training": entries["Tr"],
                                            "validation": entries["Va"], "test": []})
    return str(root)


def test_prepare_ct_only_official_validation_as_test(tmp_path):
    uri = catalog.prepare("amos", write_amos(tmp_path / "src"), str(tmp_path / "out"), val_size=2)
    frame, meta = check_manifest(uri, "amos")
    assert not frame["sample_id"].isin(["amos_0507", "amos_0508", "amos_0540"]).any()
    assert sorted(frame.loc[frame.split == "test", "sample_id"]) == ["amos_0007", "amos_0008"]
    assert meta["split_counts"] == {"train": 4, "val": 2, "test": 2}
    assert len(meta["class_names"]) == 16 and meta["class_names"][15] == "prostate/uterus"
    assert set(frame["modality"]) == {"CT"} and meta["preprocessing"]["hu_clip"] == [-1024.0, 600.0]
    assert frame["mask_uri"].str.contains("/labels(?:Tr|Va)/", regex=True).all()
