"""Brain tumor dataset (Cheng et al., figshare): T1-weighted contrast-enhanced MRI slices,
meningioma / glioma / pituitary tumour, multiclass, one row per image.

Official layout: 1.mat ... 3064.mat (in one folder, or in the four folders of the four zips),
each a MATLAB v7.3 file, i.e. HDF5, holding the struct cjdata with fields image (512x512 int16),
label (1, 2, 3), PID (the patient id, as MATLAB chars), tumorBorder and tumorMask.
cvind.mat (the authors' 5-fold indices, by image) is not used.

prepare decodes each file once (h5py; the file is read through raddist.storage, so the source may
be on s3): the image goes to dest/images/<n>.npy (int16, lossless), the tumour mask to
dest/masks/<n>.png (0/1). Labels 1, 2, 3 become class indices 0, 1, 2.
Split: by patient (PID), seeded, stratified by tumour type; the reference held out 70 test and
50 val patients of 233, which are the defaults (counts, or fractions below 1).
Preprocessing hint: clip at the 5th-95th percentiles and rescale. The reference capped values above
the 95th percentile and set those at or below the 5th to 0 (not to the 5th); its 70 test and 50 val
patients were evenly spaced picks, raddist's are seeded and stratified.
"""

from __future__ import annotations

import io

import numpy as np

from raddist import storage
from raddist.data.catalog import common
from raddist.data.catalog.common import CatalogError

CLASSES = ("meningioma", "glioma", "pituitary")


def read_cjdata(data: bytes, name: str = "file") -> dict:
    """image, label (1-3), pid and tumorMask from the bytes of one v7.3 .mat file."""
    import h5py  # imported here: only this adapter needs it

    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError:
        raise CatalogError(f"{name} is not a MATLAB v7.3 (HDF5) file") from None
    with f:
        if "cjdata" not in f:
            raise CatalogError(f"{name} has no cjdata struct")
        cj = f["cjdata"]
        # MATLAB writes column-major arrays, so HDF5 sees each matrix transposed.
        return dict(
            image=np.asarray(cj["image"]).T,
            label=int(np.asarray(cj["label"]).ravel()[0]),
            pid="".join(chr(int(c)) for c in np.asarray(cj["PID"]).ravel()).strip(),
            mask=np.asarray(cj["tumorMask"]).T if "tumorMask" in cj else None,
        )


def _decode(uri: str, dest: str) -> dict:
    cj = read_cjdata(storage.read_bytes(uri), uri)
    if cj["label"] not in (1, 2, 3):
        raise CatalogError(f"{uri}: label {cj['label']} is not 1, 2 or 3")
    n = common.stem(uri)
    image_uri = storage.join(dest, "images", f"{n}.npy")
    common.write_npy(image_uri, cj["image"])
    row = dict(sample_id=n, uri=image_uri, patient_id=cj["pid"], modality="MR", label=cj["label"] - 1)
    if cj["mask"] is not None:
        row["mask_uri"] = storage.join(dest, "masks", f"{n}.png")
        common.write_png(row["mask_uri"], common.binarize(cj["mask"]).astype(np.uint8))
    return row


def prepare(source: str, dest: str, seed: int = 0, *, val_size: common.Size = 50,
            test_size: common.Size = 70, workers: int = 8) -> str:
    dest = storage.normalize(dest)
    mats = [u for u in common.walk(source, (".mat",)) if common.stem(u).isdigit()]
    if not mats:
        raise CatalogError(f"no numbered .mat files (1.mat, 2.mat, ...) under {source}")
    rows = sorted(common.parallel_map(lambda u: _decode(u, dest), mats, workers), key=lambda r: int(r["sample_id"]))
    # A patient's images share one tumour: stratify by it so every split sees every class.
    return common.write_split_by_patient(INFO, dest, rows, seed=seed, source=source, val_size=val_size,
                                         test_size=test_size, stratify="label")


INFO = common.DatasetInfo(
    name="brain_tumor_figshare",
    title="Brain Tumor (figshare, Cheng et al.)",
    modality="MR",
    task_type="multiclass",
    unit="image",
    labels=("label",),
    classes=CLASSES,
    source_url="https://figshare.com/articles/dataset/brain_tumor_dataset/1512427",
    license="CC BY 4.0",
    reference_split="by patient (cjdata.PID): 70 test and 50 val patients of 233, the rest train "
    "(reference: evenly spaced picks; raddist: seeded, stratified by tumour type)",
    preprocessing=dict(common.MRI_P5_P95),
    prepare=prepare,
)
