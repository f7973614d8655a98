"""AMOS 2022: 15 abdominal organs, CT only, one row per volume.

Official layout (amos22.zip):
  amos22/dataset.json   imagesTr/amos_0001.nii.gz  labelsTr/amos_0001.nii.gz  imagesVa/  labelsVa/  imagesTs/
Case ids below 500 are CT, 500 and up MRI: only CT is kept (`max_ct_id`). imagesTs has no
labels and is not used. Class names are read from dataset.json's "labels" when present.
Rows are volumes referenced in place (uri = image, mask_uri = label); the pipeline slices them.
Split: the official validation set (imagesVa) is test, since the test labels are not public;
val is carved from imagesTr by patient (one volume each), seeded, 20% by default.
Preprocessing hint: HU clipped to [-1024, 600], as the reference did. Its split (about 80 / 20 / 50
volumes, evenly spaced from the pooled images) differs from raddist's.
"""

from __future__ import annotations

from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = (
    "background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
    "aorta", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
    "prostate/uterus",
)


def _ct_only(pairs: dict, max_ct_id: int) -> dict:
    return {case: p for case, p in pairs.items() if int(case.rsplit("_", 1)[-1]) < max_ct_id}


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 0.2, max_ct_id: int = 500) -> str:
    files = common.walk(source)
    classes = common.decathlon_classes(common.find_file(files, "dataset.json"), CLASSES)
    train = _ct_only(common.paired_volumes(files, "imagesTr", "labelsTr"), max_ct_id)
    test = _ct_only(common.paired_volumes(files, "imagesVa", "labelsVa"), max_ct_id)
    if not train or not test:
        raise CatalogError(f"need CT volumes (id < {max_ct_id}) in both imagesTr/ and imagesVa/ under {source}")
    rows = common.paired_rows(INFO, train) + [dict(r, split="test") for r in common.paired_rows(INFO, test)]
    return common.write_split_by_patient(INFO, dest, rows, seed=seed, source=source, val_size=val_size,
                                         classes=classes, options={"max_ct_id": max_ct_id})


INFO = common.DatasetInfo(
    name="amos",
    title="AMOS 2022 (CT)",
    modality="CT",
    task_type="segmentation",
    unit="volume",
    labels=(),
    classes=CLASSES,
    source_url="https://zenodo.org/records/7262581",
    license="CC BY 4.0",
    reference_split="CT only (ids < 500); official validation (imagesVa) as test; val carved from "
    "imagesTr by patient, seeded",
    preprocessing=dict(common.CT_ABDOMEN),
    prepare=prepare,
)
