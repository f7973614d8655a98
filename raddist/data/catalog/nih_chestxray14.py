"""NIH ChestX-ray14: 14 findings + "No Finding", multi-label, one row per image.

Official layout (NIH Clinical Center box, or its Kaggle mirror):
  Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)   Image Index, Finding Labels, Patient ID,
                                                      Patient Age, Patient Gender (-> sex, age_band)
  train_val_list.txt  test_list.txt                   one image name per line
  images_001/images/00000001_000.png ...              found by file name in any images*/ folder

Split: test is exactly test_list.txt, which the NIH made patient-disjoint from train_val_list.txt.
val is the last `val_count` (default 10,002) rows of train_val_list.txt, as the reference took them
(its 76,522 / 10,002 / 25,596); train is the rest. That list is sorted by image name, i.e. by
patient, so a patient can straddle the cut: unlike the reference, which cut by row, such a patient
goes wholly to the side that holds most of its images (a tie goes to val), so that no patient is in
two splits, and val may differ from val_count by a few images.
Nothing is random here; `seed` is accepted for a uniform API and recorded.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, Mapping, Sequence

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

# Alphabetical, the order the reference's MultiLabelBinarizer gave its columns.
LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia",
    "Pneumothorax",
)


def official_split(train_val: Sequence[str], test: Sequence[str], patient_of: Mapping[str, str],
                   val_count: int) -> Dict[str, str]:
    """image name -> split, by the rule in the module docstring."""
    if not 0 < val_count < len(train_val):
        raise CatalogError(f"val_count must be in [1, {len(train_val) - 1}] (rows of train_val_list); got {val_count}")
    cut = len(train_val) - val_count
    split = {name: ("val" if i >= cut else "train") for i, name in enumerate(train_val)}
    sides = defaultdict(Counter)
    for name in train_val:
        sides[patient_of[name]][split[name]] += 1
    for name in train_val:
        count = sides[patient_of[name]]
        if len(count) > 1:  # this patient straddles the cut
            split[name] = "val" if count["val"] >= count["train"] else "train"
    split.update({name: "test" for name in test})
    return split


def _read_list(uri: str) -> list:
    return [line.strip() for line in storage.read_text(uri).splitlines() if line.strip()]


def prepare(source: str, dest: str, seed: int = 0, *, val_count: int = 10002) -> str:
    files = common.walk(source)
    entries = common.read_csv(common.find_file(files, "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"))
    train_val = _read_list(common.find_file(files, "train_val_list.txt"))
    test = _read_list(common.find_file(files, "test_list.txt"))
    names = entries["Image Index"].astype(str).tolist()
    patient_of = dict(zip(names, entries["Patient ID"].astype(str)))
    findings_of = dict(zip(names, entries["Finding Labels"].astype(str)))
    groups_of = {n: {"sex": common.sex(g), "age_band": common.age_band(a)}  # for a task's subgroups
                 for n, g, a in zip(names, entries["Patient Gender"], entries["Patient Age"])}
    unknown = [n for n in train_val + test if n not in patient_of]
    if unknown:
        raise CatalogError(f"{len(unknown)} listed image(s) are not in Data_Entry_2017.csv, e.g. {unknown[0]}")

    images = {common.basename(u): u for u in files if u.lower().endswith(".png")}
    missing = [n for n in train_val + test if n not in images]
    if missing:
        raise CatalogError(f"{len(missing)} listed image(s) not found under images*/ folders, e.g. {missing[0]}")

    split = official_split(train_val, test, patient_of, val_count)
    rows = []
    for name in train_val + test:
        findings = set(findings_of[name].split("|"))
        if findings - set(LABELS):
            raise CatalogError(f"{name}: unknown finding(s) {sorted(findings - set(LABELS))}; known: {list(LABELS)}")
        row = dict(sample_id=common.stem(name), uri=images[name], patient_id=patient_of[name],
                   split=split[name], modality="DX", **groups_of[name])
        row.update({label: int(label in findings) for label in LABELS})
        rows.append(row)
    return common.write_manifest(INFO, dest, rows, seed=seed, source=source, options={"val_count": val_count})


INFO = common.DatasetInfo(
    name="nih_chestxray14",
    title="NIH ChestX-ray14",
    modality="DX",
    task_type="multilabel",
    unit="image",
    labels=LABELS,
    classes=LABELS,
    source_url="https://nihcc.app.box.com/v/ChestXray-NIHCC",
    license="NIH Clinical Center: unrestricted use; acknowledge the NIH CC and cite Wang et al., CVPR 2017",
    reference_split="official test_list.txt as test; val = last 10,002 rows of train_val_list.txt "
    "(patient-adjusted at the cut); train = the rest (76,522 / 10,002 / 25,596 images)",
    preprocessing=dict(common.AUTO_WINDOW),
    prepare=prepare,
)
