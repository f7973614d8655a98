"""Medical Segmentation Decathlon: Heart (left atrium, MRI), Hippocampus (anterior and posterior,
MRI) and Spleen (CT), registered as msd_heart, msd_hippocampus and msd_spleen.

Official layout (one tar per task; the source may be the task folder or a folder of tasks):
  Task02_Heart/dataset.json  imagesTr/la_003.nii.gz  labelsTr/la_003.nii.gz  imagesTs/
The tars also hold macOS '._la_003.nii.gz' twins, which are skipped. imagesTs has no public labels.
Class names are read from dataset.json's "labels" when present.
Rows are volumes referenced in place (uri = image, mask_uri = label); the pipeline slices them.
Preprocessing hints: MRI clipped at its 5th-95th percentiles, over the volume (Heart, Hippocampus);
Spleen is CT, given the same HU clip [-1024, 600] as the other abdominal CT sets. The reference
clipped every MSD slice, Spleen's included, to that slice's own 5th-95th percentiles.
Split: imagesTr by patient (one volume each), seeded; the defaults are the reference's held-out
counts where its code shows them (Spleen 10 / 15 of 41), else counts of the same order (Heart 4 val
/ 4 test of 20, Hippocampus 60 / 80 of 260).
"""

from __future__ import annotations

from functools import partial

from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

# name -> (task folder, modality, classes, preprocessing, default val and test counts)
TASKS = {
    "msd_heart": ("Task02_Heart", "MR", ("background", "left atrium"), common.MRI_P5_P95, 4, 4),
    "msd_hippocampus": ("Task04_Hippocampus", "MR", ("background", "anterior", "posterior"), common.MRI_P5_P95, 60, 80),
    "msd_spleen": ("Task09_Spleen", "CT", ("background", "spleen"), common.CT_ABDOMEN, 10, 15),
}


def prepare(name: str, source: str, dest: str, seed: int = 0, *, val_size: common.Size,
            test_size: common.Size) -> str:
    task, _, classes = TASKS[name][:3]
    files = common.walk(source)
    # A folder holding several tasks: keep this task's files only.
    files = [u for u in files if f"/{task}/" in u] or files
    classes = common.decathlon_classes(common.find_file(files, "dataset.json"), classes)
    pairs = common.paired_volumes(files, "imagesTr", "labelsTr")
    if not pairs:
        raise CatalogError(f"no {task}/imagesTr/*.nii.gz under {source}")
    info = INFOS[name]
    return common.write_split_by_patient(info, dest, common.paired_rows(info, pairs), seed=seed, source=source,
                                         val_size=val_size, test_size=test_size, classes=classes)


def _info(name: str) -> common.DatasetInfo:
    task, modality, classes, preprocessing, n_val, n_test = TASKS[name]
    return common.DatasetInfo(
        name=name,
        title=f"Medical Segmentation Decathlon {task}",
        modality=modality,
        task_type="segmentation",
        unit="volume",
        labels=(),
        classes=classes,
        source_url="http://medicaldecathlon.com/",
        license="CC BY-SA 4.0",
        reference_split=f"imagesTr by patient: {n_val} val and {n_test} test volumes, the rest train "
        "(reference: evenly spaced picks; raddist: seeded)",
        preprocessing=dict(preprocessing, slice_axis=2),  # volumes: slices along the third axis
        prepare=partial(prepare, name, val_size=n_val, test_size=n_test),
    )


INFOS = {name: _info(name) for name in TASKS}
