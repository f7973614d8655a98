"""Shenzhen chest X-rays (NLM) with lung masks: lung segmentation, one row per image.

Layout: the NLM set, ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png, and the lung masks made for it
later (Stirenko et al. 2018; e.g. the Kaggle "Chest Xray Masks and Labels" set) named
CHNCXR_0001_0_mask.png, in any folder under the source. Only the images that have a mask are kept
(566 of 662), as the reference did. prepare rewrites each mask once as a label map,
dest/masks/CHNCXR_0001_0.png: 0 background, 1 lung (the originals are 0/255).
The X-rays are referenced in place. Each image is its own patient.
Split: by patient, seeded; the reference held out 114 test and 91 val images, the defaults.
"""

from __future__ import annotations

import numpy as np

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = ("background", "lung")


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 91,
            test_size: common.Size = 114, workers: int = 8) -> str:
    dest = storage.normalize(dest)
    files = [u for u in common.walk(source, (".png",)) if common.basename(u).startswith("CHNCXR_")]
    masks = {common.stem(u)[: -len("_mask")]: u for u in files if common.stem(u).endswith("_mask")}
    images = {common.stem(u): u for u in files if not common.stem(u).endswith("_mask") and common.stem(u) in masks}
    if not images:
        raise CatalogError(f"no CHNCXR_*.png image with a CHNCXR_*_mask.png under {source}")

    def rewrite(name):
        lung = common.binarize(common.read_gray(masks[name])).astype(np.uint8)
        common.write_png(storage.join(dest, "masks", f"{name}.png"), lung)

    names = sorted(images)
    common.parallel_map(rewrite, names, workers)
    pairs = {n: (images[n], storage.join(dest, "masks", f"{n}.png")) for n in names}
    return common.write_split_by_patient(INFO, dest, common.paired_rows(INFO, pairs), seed=seed, source=source,
                                         val_size=val_size, test_size=test_size)


INFO = common.DatasetInfo(
    name="shenzhen",
    title="Shenzhen chest X-ray set, with lung masks",
    modality="DX",
    task_type="segmentation",
    unit="image",
    labels=(),
    classes=CLASSES,
    source_url="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
    license="NLM: public, free to use; cite Jaeger et al. 2014 and, for the masks, Stirenko et al. 2018",
    reference_split="images with masks only (566): 114 test and 91 val images, the rest train "
    "(reference: evenly spaced picks; raddist: by patient, seeded)",
    preprocessing=dict(common.AUTO_WINDOW),
    prepare=prepare,
)
