"""Montgomery County chest X-rays (NLM): left and right lung segmentation, one row per image.

Official layout:
  MontgomerySet/CXR_png/MCUCXR_0001_0.png             (_0 / _1: normal / TB, unused here)
  MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png  and  .../rightMask/MCUCXR_0001_0.png
prepare combines the two masks once into one label map, dest/masks/<name>.png: 0 background,
1 left lung, 2 right lung (the masks never overlap; if they did, right would win). Left and right
are the patient's, as NLM named the masks. The X-rays are referenced in place.
Each image is its own patient (one X-ray per person in this set).
Split: by patient, seeded, 20% val and 20% test by default. The reference (mc.py) took every 3rd image
as test (46) and every 4th of the rest as val (23), 69 train, by file order.
"""

from __future__ import annotations

import numpy as np

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = ("background", "left lung", "right lung")


def _by_name(files, folder):
    return {common.basename(u): u for u in files if f"/{folder}/" in u}


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 0.2,
            test_size: common.Size = 0.2, workers: int = 8) -> str:
    dest = storage.normalize(dest)
    files = common.walk(source, (".png",))
    images, left, right = (_by_name(files, d) for d in ("CXR_png", "leftMask", "rightMask"))
    if not images:
        raise CatalogError(f"no MontgomerySet/CXR_png/*.png under {source}")
    unmasked = sorted(n for n in images if n not in left or n not in right)
    if unmasked:
        raise CatalogError(f"{len(unmasked)} image(s) lack a leftMask or rightMask, e.g. {unmasked[0]}")

    def combine(name):
        lmask, rmask = common.read_gray(left[name]), common.read_gray(right[name])
        if lmask.shape != rmask.shape:
            raise CatalogError(f"{name}: left and right masks differ in size")
        label = np.zeros(lmask.shape, np.uint8)
        label[common.binarize(lmask)] = 1
        label[common.binarize(rmask)] = 2
        common.write_png(storage.join(dest, "masks", name), label)

    names = sorted(images)
    common.parallel_map(combine, names, workers)
    pairs = {common.stem(n): (images[n], storage.join(dest, "masks", n)) for n in names}
    return common.write_split_by_patient(INFO, dest, common.paired_rows(INFO, pairs), seed=seed, source=source,
                                         val_size=val_size, test_size=test_size)


INFO = common.DatasetInfo(
    name="montgomery",
    title="Montgomery County chest X-ray set",
    modality="DX",
    task_type="segmentation",
    unit="image",
    labels=(),
    classes=CLASSES,
    source_url="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
    license="NLM: public, free to use; cite Jaeger et al., Quant Imaging Med Surg 2014",
    reference_split="by patient, seeded, 60/20/20 (reference: every 3rd image test, every 4th of the rest val: "
    "69 / 23 / 46)",
    preprocessing=dict(common.AUTO_WINDOW),
    prepare=prepare,
)
