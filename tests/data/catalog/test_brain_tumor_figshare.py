import os

import numpy as np
import pytest

from raddist.data import catalog
from raddist.data.catalog import brain_tumor_figshare as bt
from tests.data.catalog import check_manifest

h5py = pytest.importorskip("h5py")

HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Apr  4 12:00:00 2016 HDF5 schema 1.00 ."


def write_mat(path, image, label, pid, mask):
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 behind a 512-byte header, column-major arrays."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        cj = f.create_group("cjdata")
        cj.attrs["MATLAB_class"] = np.bytes_("struct")
        fields = {
            "image": (image.T.astype(np.int16), "int16"),
            "label": (np.array([[float(label)]]), "double"),
            "PID": (np.array([[ord(c)] for c in pid], np.uint16), "char"),
            "tumorBorder": (np.zeros((1, 8)), "double"),
            "tumorMask": (mask.T.astype(np.uint8), "logical"),
        }
        for name, (data, cls) in fields.items():
            cj.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_(cls)
    with open(path, "r+b") as f:
        f.write(HEADER.ljust(116) + b"\0" * 8 + b"\x00\x02IM")


@pytest.fixture
def bt_source(tmp_path):
    root = tmp_path / "figshare"
    n = 0
    for patient in range(6):
        for _ in range(2):
            n += 1
            image = (np.arange(24).reshape(6, 4) * 100 + n).astype(np.int16)  # not square: orientation shows
            mask = np.zeros((6, 4), bool)
            mask[1:3, 0:2] = True
            folder = "brainTumorDataPublic_1-766" if n <= 6 else "brainTumorDataPublic_767-1532"
            write_mat(str(root / folder / f"{n}.mat"), image, label=1 + patient % 3, pid=f"MR0{patient}42", mask=mask)
    (root / "cvind.mat").write_bytes(b"MATLAB 5.0 MAT-file, not used")
    return str(root)


def test_read_cjdata_undoes_matlab_order(bt_source):
    with open(os.path.join(bt_source, "brainTumorDataPublic_1-766", "1.mat"), "rb") as f:
        cj = bt.read_cjdata(f.read())
    assert cj["image"].shape == (6, 4) and cj["image"][0, 1] == 101
    assert (cj["label"], cj["pid"]) == (1, "MR0042")


def test_prepare(bt_source, tmp_path):
    out = tmp_path / "out"
    uri = catalog.prepare("brain_tumor_figshare", bt_source, str(out), val_size=1, test_size=2)
    frame, meta = check_manifest(uri, "brain_tumor_figshare")
    assert len(frame) == 12 and frame["sample_id"].tolist() == [str(i) for i in range(1, 13)]
    assert sorted(frame["label"].unique()) == [0, 1, 2]  # 1, 2, 3 in the file
    assert frame.set_index("sample_id").loc["3", "label"] == 1  # patient 1 -> label 2 -> class 1
    assert meta["patient_counts"] == {"train": 3, "val": 1, "test": 2}
    assert meta["class_names"] == ["meningioma", "glioma", "pituitary"]
    assert meta["preprocessing"]["clip_percentiles"] == [5.0, 95.0]
    image = np.load(frame["uri"].iloc[0])
    assert image.dtype == np.int16 and image.shape == (6, 4) and image[0, 1] == 101
    from PIL import Image

    mask = np.asarray(Image.open(frame["mask_uri"].iloc[0]))
    assert mask.shape == (6, 4) and mask[1, 1] == 1 and mask.sum() == 4
    # decoded files live under dest and are stored relative to the manifest
    import pyarrow.parquet as pq

    assert pq.read_table(uri)["uri"][0].as_py() == "images/1.npy"


def test_too_many_held_out_patients(bt_source, tmp_path):
    with pytest.raises(catalog.CatalogError, match="test_size"):
        catalog.prepare("brain_tumor_figshare", bt_source, str(tmp_path / "out"))  # 70 + 50 of 6
