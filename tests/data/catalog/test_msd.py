import pytest

from raddist.data import catalog
from tests.data.catalog import check_manifest, write_json, write_nifti

TASKS = {
    "msd_heart": ("Task02_Heart", "la", {"0": "background", "1": "left atrium"}, "MRI", "MR"),
    "msd_hippocampus": ("Task04_Hippocampus", "hippocampus", {"0": "background", "1": "Anterior", "2": "Posterior"},
                        "MRI", "MR"),
    "msd_spleen": ("Task09_Spleen", "spleen", {"0": "background", "1": "spleen"}, "CT", "CT"),
}


def write_task(root, name, n=6):
    task, prefix, labels, modality, _ = TASKS[name]
    base = root / task
    training = []
    for i in range(3, 3 + n):
        case = f"{prefix}_{i:03d}.nii.gz"
        write_nifti(str(base / "imagesTr" / case))
        write_nifti(str(base / "labelsTr" / case), dtype="uint8")
        (base / "imagesTr" / f"._{case}").write_bytes(b"\0\5\26\7 AppleDouble")  # as in the real tars
        training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
    write_nifti(str(base / "imagesTs" / f"{prefix}_001.nii.gz"))
    write_json(str(base / "dataset.json"), {"name": task, "modality": {"0": modality}, "labels": labels, "numTraining": n,
                                            "training": training, "test": [f"./imagesTs/{prefix}_001.nii.gz"]})


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory):
    root = tmp_path_factory.mktemp("decathlon")
    for name in TASKS:
        write_task(root, name)
    return root


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prepare(name, decathlon, tmp_path):
    task, prefix, labels, _, modality = TASKS[name]
    # the source may be the folder of all tasks or the task's own folder
    for source in (decathlon, decathlon / task):
        uri = catalog.prepare(name, str(source), str(tmp_path / "out"), val_size=1, test_size=2)
        frame, meta = check_manifest(uri, name)
        assert len(frame) == 6 and frame["sample_id"].str.startswith(f"{prefix}_").all()
        assert set(frame["modality"]) == {modality}
        assert meta["class_names"] == [labels[k] for k in sorted(labels)]
        assert meta["split_counts"] == {"train": 3, "val": 1, "test": 2}
    clip = meta["preprocessing"]["clip_percentiles"]
    assert clip == ([5.0, 95.0] if modality == "MR" else None)
    assert meta["preprocessing"]["slice_axis"] == 2


def test_defaults_are_the_reference_counts():
    opts = {d["name"]: d["options"] for d in catalog.list_datasets()}
    assert opts["msd_spleen"] == {"val_size": 10, "test_size": 15}
    assert opts["msd_hippocampus"] == {"val_size": 60, "test_size": 80}
