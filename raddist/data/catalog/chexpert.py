"""CheXpert: five findings (the competition's five) + "Uncertain", multi-label, frontal views only.

Official layout (the small or the full release; source may be the folder or its parent):
  CheXpert-v1.0-small/train.csv, valid.csv    Path, Sex, Age, Frontal/Lateral, AP/PA, <14 findings>
                                              (Sex, Age -> the sex and age_band columns, for subgroups)
  CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
`Path` is relative to the folder that holds CheXpert-v1.0-small/. The patient id comes from it.

Labels as the reference cleaned them: blank (NaN) -> 0; -1 (uncertain) -> 0, and the extra label
"Uncertain" is 1 when any of the five was -1. Lateral views are dropped.
Split: the official valid.csv (202 frontal images, its own patients) is test, because the real test
set is not public; val is carved from train by patient, seeded (`val_size`, a fraction or a patient
count). The reference (MohammedSB/DINOv2ForRadiology, chexpert.py) instead used all frontal train
images as train (191,027), valid.csv as val (202) and the official test set (518 frontal, released
with CheXpert's later test labels) as test; its 10,000-image val helper is unused. ap_only=True keeps
AP views only (an option of raddist's, not the reference's split).
"""

from __future__ import annotations

import re

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

FINDINGS = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
LABELS = FINDINGS + ("Uncertain",)


def clean_labels(frame):
    """The five findings as 0/1 plus Uncertain, from the raw 1 / 0 / -1 / blank values."""
    values = frame[list(FINDINGS)].astype(float)
    out = values.fillna(0).replace(-1, 0).astype(int)
    out["Uncertain"] = (values == -1).any(axis=1).astype(int)
    return out


def _frontal_rows(csv_uri: str, files: set, ap_only: bool) -> list:
    frame = common.read_csv(csv_uri)
    keep = frame["Frontal/Lateral"] == "Frontal"
    if ap_only:
        keep &= frame["AP/PA"] == "AP"
    frame = frame[keep].reset_index(drop=True)
    labels = clean_labels(frame).to_dict("records")
    root = storage.parent(storage.parent(csv_uri))  # the folder that holds CheXpert-v1.0*/
    rows = []
    for i, path in enumerate(frame["Path"].astype(str)):
        patient = re.search(r"(patient\d+)", path)
        if not patient:
            raise CatalogError(f"{csv_uri} row {i}: no patient id in path {path!r}")
        uri = storage.join(root, path)
        if uri not in files:
            raise CatalogError(f"{csv_uri} row {i}: image not found: {uri}")
        sample_id = path.split("/", 1)[-1].rsplit(".", 1)[0]  # train/patient00001/study1/view1_frontal
        row = dict(sample_id=sample_id, uri=uri, patient_id=patient.group(1), modality="DX",
                   sex=common.sex(frame["Sex"][i]), age_band=common.age_band(frame["Age"][i]))  # for subgroups
        row.update({label: int(labels[i][label]) for label in LABELS})
        rows.append(row)
    return rows


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 0.05, ap_only: bool = False) -> str:
    files = common.walk(source)
    file_set = set(files)
    train = _frontal_rows(common.find_file(files, "train.csv"), file_set, ap_only)
    test = _frontal_rows(common.find_file(files, "valid.csv"), file_set, ap_only)
    for row in test:
        row["split"] = "test"  # the official valid set; val is carved from train
    return common.write_split_by_patient(INFO, dest, train + test, seed=seed, source=source, val_size=val_size,
                                         options={"ap_only": ap_only})


INFO = common.DatasetInfo(
    name="chexpert",
    title="CheXpert",
    modality="DX",
    task_type="multilabel",
    unit="image",
    labels=LABELS,
    classes=LABELS,
    source_url="https://stanfordmlgroup.github.io/competitions/chexpert/",
    license="Stanford University School of Medicine CheXpert Dataset Research Use Agreement "
    "(registration; non-commercial research)",
    reference_split="official valid.csv as test; val carved from train by patient, seeded (reference: all "
    "frontal train / valid.csv as val / the official 518-image test set as test); frontal views only",
    preprocessing=dict(common.AUTO_WINDOW),
    prepare=prepare,
)
