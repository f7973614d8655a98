import numpy as np
from PIL import Image

from raddist.data import catalog
from tests.data.catalog import check_manifest, write_image


def test_prepare_keeps_only_images_with_masks(tmp_path):
    root = tmp_path / "src"
    lung = np.zeros((8, 8), np.uint8)
    lung[2:6, 1:7] = 255
    for i in range(1, 9):
        name = f"CHNCXR_{i:04d}_{i % 2}"
        write_image(str(root / "ChinaSet_AllFiles" / "CXR_png" / f"{name}.png"), value=90)
        if i <= 6:  # the masks cover only part of the set
            write_image(str(root / "mask" / f"{name}_mask.png"), array=lung)
    write_image(str(root / "ChinaSet_AllFiles" / "CXR_png" / "MCUCXR_0001_0.png"))  # a stray Montgomery image

    uri = catalog.prepare("shenzhen", str(root), str(tmp_path / "out"), val_size=1, test_size=2)
    frame, meta = check_manifest(uri, "shenzhen")
    assert sorted(frame["sample_id"]) == [f"CHNCXR_{i:04d}_{i % 2}" for i in range(1, 7)]
    assert meta["split_counts"] == {"train": 3, "val": 1, "test": 2}
    mask = np.asarray(Image.open(frame["mask_uri"].iloc[0]))
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 24  # 0/255 rewritten as class indices
