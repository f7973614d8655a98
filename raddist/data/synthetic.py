"""A small synthetic radiology dataset: the demo's default data and the tests' fixture.

Two tasks, each a directory with images and a manifest (see raddist.data.manifest):
  chest/      CR chest radiographs as DICOM, multi-label findings drawn into the pixels:
              opacity (soft bright blob in a lung), effusion (basal haze that blunts the
              costophrenic angle), cardiomegaly (wide cardiac silhouette), nodule (small bright
              round spot). Each ~30%, independent. Headers carry made-up identifiers, as real
              exports do, so de-identification paths get exercised; the manifest uses pseudonyms.
  brain_mri/  T1-contrast-like axial MRI slices as 8-bit PNG, 3 classes told apart by the
              lesion: meningioma (extra-axial, at the skull, homogeneous), glioma (intra-axial,
              ring-enhancing with edema), pituitary (small, midline, anterior).
2-3 images per patient; splits by patient, 60/20/20. Both manifests carry made-up coarse patient
groups (sex, age_band, site; SUBGROUPS) for the subgroup analyses. Deterministic by seed (same seed, same
bytes). Shapes are simple, but the labels carry real, localised signal.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Dict, List

import numpy as np
import pyarrow as pa

from raddist import storage

CHEST_FINDINGS = ("opacity", "effusion", "cardiomegaly", "nodule")
BRAIN_CLASSES = ("meningioma", "glioma", "pituitary")
PREVALENCE = 0.3
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_synthetic(out_dir: str, seed: int = 0, n_patients: int = 60, size: int = 256) -> Dict[str, str]:
    """Write both tasks under out_dir; returns {task name: manifest path}."""
    return {
        "chest": write_chest(storage.join(out_dir, "chest"), seed, n_patients, size),
        "brain_mri": write_brain_mri(storage.join(out_dir, "brain_mri"), seed, n_patients, size),
    }


def truncate_file(path: str, keep_fraction: float = 0.5) -> None:
    """Cut a file to its first keep_fraction of bytes: a corrupt input for error-path tests."""
    data = storage.read_bytes(path)
    storage.write_bytes(path, data[: int(len(data) * keep_fraction)])


# ----------------------------------------------------------------------------- shared helpers

@lru_cache(maxsize=4)
def _grid(size: int):
    """(y, x) coordinates in [0, 1), float32, row 0 at the top."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    return y, x


def _ellipse(size, cy, cx, ry, rx, edge=0.04):
    """Soft-edged ellipse mask in [0, 1]; `edge` is the ramp width in normalised radius."""
    y, x = _grid(size)
    d = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)


def _gauss(size, cy, cx, sigma):
    y, x = _grid(size)
    return np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)))


def _smooth_noise(rng, size, cells):
    """Zero-mean, unit-ish, spatially smooth noise: a cells x cells normal field, upsampled."""
    from PIL import Image

    low = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low, "F").resize((size, size), Image.BICUBIC))


def _blur(img, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma, mode="nearest")


def _splits(rng, n_patients) -> List[str]:
    n_train = round(n_patients * SPLIT_FRACTIONS[0])
    n_val = round(n_patients * SPLIT_FRACTIONS[1])
    order = ["train"] * n_train + ["val"] * n_val + ["test"] * (n_patients - n_train - n_val)
    return [order[i] for i in rng.permutation(n_patients)]


def _write_manifest(out_dir: str, columns: dict) -> str:
    path = storage.join(out_dir, "manifest.parquet")
    storage.write_parquet(path, pa.table(columns))
    return path


SUBGROUPS = {"sex": ("F", "M"), "age_band": ("18-39", "40-64", "65+"), "site": ("site_a", "site_b", "site_c")}


def _with_subgroups(columns: dict, seed: int, task: int) -> dict:
    """Coarse patient groups (raddist.subgroups) beside a manifest's columns: drawn per patient from
    their own generator, so the images and labels stay what they were."""
    rng = np.random.default_rng([seed, task, 7])
    patients = sorted(set(columns["patient_id"].to_pylist()))
    draws = {col: dict(zip(patients, rng.choice(values, size=len(patients)).tolist()))
             for col, values in SUBGROUPS.items()}
    ids = columns["patient_id"].to_pylist()
    return {**columns, **{col: pa.array([d[p] for p in ids], pa.string()) for col, d in draws.items()}}


# ----------------------------------------------------------------------------- chest CR (DICOM)

def write_chest(out_dir: str, seed: int = 0, n_patients: int = 60, size: int = 256) -> str:
    rng = np.random.default_rng([seed, 1])
    splits = _splits(rng, n_patients)
    rows = {k: [] for k in ("sample_id", "uri", "patient_id", "split", "modality", *CHEST_FINDINGS)}
    for p in range(n_patients):
        patient = _chest_patient(rng, seed, p)
        for s in range(int(rng.integers(2, 4))):
            findings = {f: int(rng.random() < PREVALENCE) for f in ("opacity", "effusion", "nodule")}
            findings["cardiomegaly"] = patient["cardiomegaly"]  # chronic: a trait of the patient
            stored = _chest_pixels(rng, size, patient, findings)
            monochrome1 = bool(rng.random() < 0.25)  # some sites export inverted CR
            name = f"p{p + 1:04d}_s{s + 1}"
            uri = f"images/{name}.dcm"
            storage.write_bytes(storage.join(out_dir, uri), _cr_dicom(rng, seed, patient, s, stored, monochrome1))
            for k, v in (("sample_id", name), ("uri", uri), ("patient_id", f"p{p + 1:04d}"),
                         ("split", splits[p]), ("modality", "CR")):
                rows[k].append(v)
            for f in CHEST_FINDINGS:
                rows[f].append(findings[f])
    columns = {k: pa.array(v, pa.int64() if k in CHEST_FINDINGS else pa.string()) for k, v in rows.items()}
    return _write_manifest(out_dir, _with_subgroups(columns, seed, 1))


def _chest_patient(rng, seed, p) -> dict:
    female = bool(rng.random() < 0.5)
    return {
        "body_rx": rng.uniform(0.40, 0.47), "lung_dx": rng.uniform(0.16, 0.19),
        "lung_rx": rng.uniform(0.11, 0.135), "lung_ry": rng.uniform(0.26, 0.31),
        "lung_cy": rng.uniform(0.42, 0.46), "heart_rx": rng.uniform(0.095, 0.115),
        "gain": rng.uniform(0.85, 1.15), "cardiomegaly": int(rng.random() < PREVALENCE),
        # made-up identifiers, as a real export would carry; never in the manifest
        "name": f"DOE^{'JANE' if female else 'JOHN'}-{rng.integers(100, 10000)}",
        "sex": "F" if female else "M",
        "id": f"PID-{rng.integers(0, 10**8):08d}",
        "birth": f"{rng.integers(1930, 2005)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        "uid_key": f"{seed}-{p}",
    }


def _chest_pixels(rng, size, pt, findings) -> np.ndarray:
    """12-bit stored values of one CR; brighter = more attenuation (MONOCHROME2)."""
    y, x = _grid(size)
    sy, sx = rng.uniform(-0.02, 0.02, 2)  # positioning differs between studies
    a = 0.05 + 0.36 * _ellipse(size, 0.58 + sy, 0.5 + sx, 0.62, pt["body_rx"], edge=0.1)
    lungs = []
    for side in (-1, 1):  # image left = patient right
        cx = 0.5 + sx + side * pt["lung_dx"]
        rx = pt["lung_rx"] * (0.95 if side > 0 else 1.0)  # the left lung is a little narrower
        lungs.append((cx, _ellipse(size, pt["lung_cy"] + sy, cx, pt["lung_ry"], rx)))
    lung = np.maximum(lungs[0][1], lungs[1][1])
    # posterior ribs: bright arcs, curving down laterally, seen through the aerated lung
    phase = (y - sy - 0.9 * (x - 0.5 - sx) ** 2) * 11.0 + rng.uniform(0, 1)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 4
    a += -0.27 * lung + 0.09 * ribs * lung
    medi = _ellipse(size, 0.42 + sy, 0.5 + sx, 0.36, 0.055, edge=0.2)
    a = a * (1 - medi) + 0.55 * medi
    a += 0.08 * np.exp(-(((x - 0.5 - sx) / 0.02) ** 2))  # spine
    big = findings["cardiomegaly"]
    hrx = pt["heart_rx"] * (1.5 if big else 1.0)
    hcy = pt["lung_cy"] + sy + pt["lung_ry"] * 0.6
    hcx = 0.5 + sx + 0.03 + (0.045 if big else 0.0)  # the heart sits, and grows, to the patient's left
    heart = _ellipse(size, hcy, hcx, 0.12 * (1.12 if big else 1.0), hrx, edge=0.12)
    a = a * (1 - heart) + 0.58 * heart
    texture = 0.5 + 0.5 * _smooth_noise(rng, size, 12)
    if findings["opacity"]:  # consolidation: a soft, mottled blob in one lung
        cx, m = lungs[int(rng.integers(2))]
        cy = pt["lung_cy"] + sy + pt["lung_ry"] * rng.uniform(-0.5, 0.3)
        blob = _gauss(size, cy, cx + pt["lung_rx"] * rng.uniform(-0.4, 0.4), rng.uniform(0.05, 0.08))
        a += 0.28 * blob * m * (0.6 + 0.4 * texture)
    if findings["effusion"]:  # fluid layers at the base, higher laterally (meniscus)
        for i in ([0, 1] if rng.random() < 0.3 else [int(rng.integers(2))]):
            cx, m = lungs[i]
            lateral = (x - cx) * (-1 if i == 0 else 1) / pt["lung_rx"]
            level = pt["lung_cy"] + sy + pt["lung_ry"] * rng.uniform(0.3, 0.55) - 0.07 * lateral
            fluid = 1 / (1 + np.exp(-(y - level) / 0.02))
            a += 0.3 * fluid * np.clip(m * 1.6, 0, 1)
    if findings["nodule"]:  # a small, well-defined round density anywhere in a lung
        cx, m = lungs[int(rng.integers(2))]
        r, t = np.sqrt(rng.uniform(0, 0.5)), rng.uniform(np.pi, 2 * np.pi)  # upper zones, as most are
        ny = pt["lung_cy"] + sy + r * pt["lung_ry"] * np.sin(t)
        nx = cx + r * pt["lung_rx"] * np.cos(t)
        rad = rng.uniform(0.024, 0.036)
        a += 0.35 * _ellipse(size, ny, nx, rad, rad, edge=0.4)
    a = _blur(a, 1.0 * size / 256) + 0.025 * _smooth_noise(rng, size, 6)
    a += rng.normal(0, 0.012, a.shape).astype(np.float32)  # quantum noise
    return np.clip(np.rint(120 + pt["gain"] * 3300 * a), 0, 4095).astype(np.uint16)


def _uid(seed_key: str, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["raddist-synthetic", seed_key, *map(str, parts)])


def _cr_dicom(rng, seed, pt, study, stored, monochrome1) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    p1, p99 = np.percentile(stored, [1, 99])
    center, width = round((p1 + p99) / 2), max(round(p99 - p1), 2)
    if monochrome1:
        stored, center = (4095 - stored).astype(np.uint16), 4095 - center
    sop_uid = _uid(pt["uid_key"], study, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    date = f"{rng.integers(2015, 2024)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    ds.update({
        "SOPClassUID": CR_IMAGE_STORAGE, "SOPInstanceUID": sop_uid,
        "StudyInstanceUID": _uid(pt["uid_key"], study, "study"),
        "SeriesInstanceUID": _uid(pt["uid_key"], study, "series"),
        "PatientName": pt["name"], "PatientID": pt["id"], "PatientBirthDate": pt["birth"],
        "PatientSex": pt["sex"], "AccessionNumber": f"ACC{rng.integers(0, 10**7):07d}",
        "InstitutionName": "SYNTHETIC GENERAL HOSPITAL", "ReferringPhysicianName": "SMITH^ALEX",
        "StudyDate": date, "SeriesDate": date, "StudyTime": "101500", "StudyID": str(study + 1),
        "SeriesNumber": 1, "InstanceNumber": 1, "Modality": "CR", "BodyPartExamined": "CHEST",
        "ViewPosition": "PA", "Manufacturer": "RADDIST SYNTHETIC",
        "Rows": stored.shape[0], "Columns": stored.shape[1], "PixelSpacing": [0.14, 0.14],
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME1" if monochrome1 else "MONOCHROME2",
        "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0,
        "RescaleSlope": 1, "RescaleIntercept": 0, "RescaleType": "US",
        "WindowCenter": center, "WindowWidth": width,
    })
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- brain MRI (PNG)

def write_brain_mri(out_dir: str, seed: int = 0, n_patients: int = 60, size: int = 256, site_b: bool = False) -> str:
    """site_b: a second hospital for external validation (brain_mri_site_b/): other patients (a random
    stream of their own), another scanner (brighter, lower contrast, a gamma, noisier) and the label
    column named tumor_type; no subgroup columns."""
    from PIL import Image

    rng = np.random.default_rng([seed, 2, 7] if site_b else [seed, 2])
    splits = _splits(rng, n_patients)
    label_column = "tumor_type" if site_b else "label"
    rows = {k: [] for k in ("sample_id", "uri", "patient_id", "split", "modality", label_column)}
    for p in range(n_patients):
        label = int(rng.integers(len(BRAIN_CLASSES)))
        patient = _brain_patient(rng, label)
        for s in range(int(rng.integers(2, 4))):  # neighbouring slices through the same lesion
            img = _brain_pixels(rng, size, patient, label)
            if site_b:
                img = np.clip(255 * (0.12 + 0.75 * (img / 255.0) ** 1.3 + rng.normal(0, 0.04, img.shape)), 0, 255)
                img = img.astype(np.uint8)
            name = f"{'b' if site_b else 'p'}{p + 1:04d}_s{s + 1}"
            buf = io.BytesIO()
            Image.fromarray(img, "L").save(buf, "PNG")
            storage.write_bytes(storage.join(out_dir, f"images/{name}.png"), buf.getvalue())
            for k, v in (("sample_id", name), ("uri", f"images/{name}.png"), ("patient_id", name.split("_")[0]),
                         ("split", splits[p]), ("modality", "MR"), (label_column, label)):
                rows[k].append(v)
    columns = {k: pa.array(v, pa.int64() if k == label_column else pa.string()) for k, v in rows.items()}
    return _write_manifest(out_dir, columns if site_b else _with_subgroups(columns, seed, 2))


def _brain_patient(rng, label) -> dict:
    pt = {"cy": rng.uniform(0.48, 0.52), "cx": rng.uniform(0.48, 0.52),
          "ry": rng.uniform(0.40, 0.45), "rx": rng.uniform(0.32, 0.37), "gain": rng.uniform(0.8, 1.2)}
    if label == 0:  # meningioma: dural-based, at the convexity or along the falx
        pt["angle"] = rng.uniform(0, 2 * np.pi)
        pt["rad"] = rng.uniform(0.06, 0.095)
    elif label == 1:  # glioma: deep in one hemisphere
        pt["dx"] = rng.choice([-1, 1]) * rng.uniform(0.1, 0.18)
        pt["dy"] = rng.uniform(-0.15, 0.15)
        pt["rad"] = rng.uniform(0.07, 0.11)
    else:  # pituitary: small, midline, anterior (sella)
        pt["dy"] = -rng.uniform(0.12, 0.18)
        pt["rad"] = rng.uniform(0.03, 0.05)
    return pt


def _brain_pixels(rng, size, pt, label) -> np.ndarray:
    y, x = _grid(size)
    cy, cx = pt["cy"] + rng.uniform(-0.01, 0.01), pt["cx"] + rng.uniform(-0.01, 0.01)
    scalp = _ellipse(size, cy, cx, pt["ry"], pt["rx"], edge=0.05)
    skull = _ellipse(size, cy, cx, pt["ry"] * 0.93, pt["rx"] * 0.92, edge=0.05)
    brain = _ellipse(size, cy, cx, pt["ry"] * 0.88, pt["rx"] * 0.86, edge=0.05)
    white = _ellipse(size, cy, cx, pt["ry"] * 0.65, pt["rx"] * 0.6, edge=0.5)
    img = 0.75 * scalp - 0.65 * skull + 0.42 * brain + 0.1 * white * brain  # fat bright, bone dark, WM > GM
    img += 0.06 * _smooth_noise(rng, size, 24) * brain  # gyri
    vent_ry = 0.09 * rng.uniform(0.7, 1.1)  # ventricles change from slice to slice
    for side in (-1, 1):
        img -= 0.3 * _ellipse(size, cy - 0.02, cx + side * 0.045, vent_ry, 0.025, edge=0.3)
    img += 0.05 * np.exp(-(((x - cx) / 0.005) ** 2)) * brain  # falx
    rad = pt["rad"] * rng.uniform(0.85, 1.1)  # the lesion's cross-section differs by slice
    if label == 0:
        t = pt["angle"] + rng.uniform(-0.05, 0.05)
        ly = cy + (pt["ry"] * 0.88 - rad * 0.6) * np.sin(t)
        lx = cx + (pt["rx"] * 0.86 - rad * 0.6) * np.cos(t)
        les = _ellipse(size, ly, lx, rad, rad * 1.2, edge=0.15) * np.clip(skull * 1.5, 0, 1)
        img = img * (1 - les) + 0.95 * les  # avid, homogeneous enhancement
    elif label == 1:
        ly, lx = cy + pt["dy"], cx + pt["dx"]
        d = np.sqrt((y - ly) ** 2 + (x - lx) ** 2) / (rad * (1 + 0.2 * _smooth_noise(rng, size, 10)))
        img -= 0.14 * np.clip(1.8 - d, 0, 1) * brain  # vasogenic edema, dark on T1
        img = np.where(d < 0.75, 0.15, img)  # necrotic core
        img += 0.55 * np.exp(-(((d - 0.9) / 0.15) ** 2))  # enhancing rim
    else:
        les = _ellipse(size, cy + pt["dy"], cx, rad, rad * 1.2, edge=0.25)
        img = img * (1 - les) + 0.85 * les
    img = _blur(img, 0.8 * size / 256)
    img *= pt["gain"] * (1 + 0.12 * _smooth_noise(rng, size, 3))  # coil bias field
    img = np.abs(img + rng.normal(0, 0.02, img.shape))  # magnitude images: Rician-like floor
    return np.clip(np.rint(img / np.percentile(img, 99.5) * 235), 0, 255).astype(np.uint8)
