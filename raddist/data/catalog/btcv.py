"""BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen): 13 organs in CT, one row per volume.

Official layout (RawData.zip from Synapse):
  Abdomen/RawData/Training/img/img0001.nii.gz     Abdomen/RawData/Training/label/label0001.nii.gz
Only the 30 labelled Training volumes are used: Testing/ has no public labels.
Rows are volumes (uri = image, mask_uri = label, both referenced in place); the pipeline slices
them along the third NIfTI axis (axial), so prepare reads no voxel.
Preprocessing hint: HU clipped to [-1024, 600] (the reference's 2D BTCV slices; its 3D BTCV class
clamps only above 600).
Split: by patient (one volume each), seeded; 6 val and 6 test of 30 by default. The reference
split Training in half (15 train / 15 val) and named the unlabelled Testing set test; since those have
no labels, its BTCV scores most likely come from the 15 val volumes.
"""

from __future__ import annotations

import re

from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
    "aorta", "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
    "left adrenal gland",
)


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 6, test_size: common.Size = 6) -> str:
    files = common.walk(source, (".nii.gz",))

    def numbered(pattern):
        return {m.group(1): u for u in files if (m := re.search(pattern, u))}

    images = numbered(r"/Training/img/img(\d+)\.nii\.gz$")
    labels = numbered(r"/Training/label/label(\d+)\.nii\.gz$")
    if not images:
        raise CatalogError(f"no Training/img/img*.nii.gz under {source}")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise CatalogError(f"{len(unlabelled)} volume(s) lack Training/label/label<n>.nii.gz, e.g. img{unlabelled[0]}")
    pairs = {f"img{n}": (images[n], labels[n]) for n in images}
    return common.write_split_by_patient(INFO, dest, common.paired_rows(INFO, pairs), seed=seed, source=source,
                                         val_size=val_size, test_size=test_size)


INFO = common.DatasetInfo(
    name="btcv",
    title="BTCV abdomen (Multi-Atlas Labeling Beyond the Cranial Vault)",
    modality="CT",
    task_type="segmentation",
    unit="volume",
    labels=(),
    classes=CLASSES,
    source_url="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
    license="Synapse registration; MICCAI 2015 challenge data use terms",
    reference_split="the 30 labelled Training volumes by patient: 18 train / 6 val / 6 test, seeded "
    "(reference: 15 train / 15 val, unlabelled Testing as test)",
    preprocessing=dict(common.CT_ABDOMEN),
    prepare=prepare,
)
