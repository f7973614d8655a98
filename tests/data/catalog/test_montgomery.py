import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raddist.data import catalog
from tests.data.catalog import check_manifest, write_montgomery


def test_prepare(tmp_path):
    source, out = write_montgomery(tmp_path / "src"), tmp_path / "out"
    uri = catalog.prepare("montgomery", source, str(out), val_size=1, test_size=1)
    frame, meta = check_manifest(uri, "montgomery")
    assert len(frame) == 6 and meta["split_counts"] == {"train": 4, "val": 1, "test": 1}
    assert meta["class_names"] == ["background", "left lung", "right lung"]
    mask = np.asarray(Image.open(frame["mask_uri"].iloc[0]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 2}
    assert (mask[:, 5:] == 1).all() and (mask[:, :3] == 2).all() and (mask[:, 3:5] == 0).all()
    stored = pq.read_table(uri).to_pydict()
    assert stored["mask_uri"][0] == "masks/MCUCXR_0001_1.png"  # written once in prepare, relative
    assert stored["uri"][0].startswith(source)  # the X-ray itself is referenced in place


def test_missing_mask_is_named(tmp_path):
    source = write_montgomery(tmp_path / "src")
    masks = tmp_path / "src" / "NLM-MontgomeryCXRSet" / "MontgomerySet" / "ManualMask"
    (masks / "rightMask" / "MCUCXR_0002_0.png").unlink()
    with pytest.raises(catalog.CatalogError, match="MCUCXR_0002_0.png"):
        catalog.prepare("montgomery", source, str(tmp_path / "out"))
