"""SARS-CoV-2 CT: binary (COVID or not) per CT volume; one volume per patient; rows are slices.

Layout: a class folder, then one folder per patient (= volume) of PNG slices:
  COVID/<patient>/<slice>.png   non-COVID/<patient>/<slice>.png
The reference's copy (Soares et al.'s multiclass release) has Covid/, Healthy/ and Others/; the last
two count as negative, as the reference did. Class folder names are matched ignoring case and
punctuation. Slices are ordered naturally (2 before 10); slice_index is that order.
The PNGs are referenced in place: nothing is re-encoded.

Split: by patient, seeded, stratified by class; the reference held out 70 test and 50 val
volumes of 210, which are the defaults (counts, or fractions below 1).
"""

from __future__ import annotations

import re
from collections import defaultdict

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = ("non-COVID", "COVID")
POSITIVE = {"covid"}
NEGATIVE = {"noncovid", "healthy", "others", "normal"}


def natural_key(text: str) -> list:
    """Sort key that puts slice 2 before slice 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def class_of(folder: str) -> int:
    key = re.sub(r"[^a-z]", "", folder.lower())
    if key in POSITIVE:
        return 1
    if key in NEGATIVE:
        return 0
    raise CatalogError(f"class folder {folder!r} is not one of COVID, non-COVID, Healthy, Others")


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 50,
            test_size: common.Size = 70) -> str:
    source = storage.normalize(source)
    volumes = defaultdict(list)
    for uri in common.walk(source, (".png",)):
        parts = uri[len(source):].strip("/").split("/")
        if len(parts) < 3:
            raise CatalogError(f"{uri}: expected <class>/<patient>/<slice>.png under {source}")
        volumes[f"{parts[-3]}/{parts[-2]}"].append(uri)

    rows = []
    for vol in sorted(volumes, key=natural_key):
        slices = sorted(volumes[vol], key=lambda u: natural_key(common.stem(u)))
        label = class_of(vol.split("/")[0])
        for index, uri in enumerate(slices):
            rows.append(dict(sample_id=f"{vol}/{common.stem(uri)}", uri=uri, patient_id=vol, modality="CT",
                             volume_id=vol, slice_index=index, label=label))
    return common.write_split_by_patient(INFO, dest, rows, seed=seed, source=source, val_size=val_size,
                                         test_size=test_size, stratify="label")


INFO = common.DatasetInfo(
    name="sarscov2_ct",
    title="SARS-CoV-2 CT (Soares et al.)",
    modality="CT",
    task_type="binary",
    unit="slice",
    labels=("label",),
    classes=CLASSES,
    source_url="https://www.kaggle.com/datasets/plameneduardo/a-covid-multiclass-dataset-of-ct-scans",
    license="see the dataset's Kaggle page (Soares et al., 2020); cite the authors",
    reference_split="by patient (one volume each): 70 test and 50 val volumes of 210, the rest train "
    "(reference: evenly spaced picks; raddist: seeded, stratified by class); a volume's label is "
    "scored from its slices' features averaged",
    preprocessing=dict(common.AUTO_WINDOW),
    prepare=prepare,
)
