"""Small synthetic segmentation and volume-classification sets: the demo's data and the tests'.

  seg2d/    chest-X-ray-like 8-bit PNGs (96 px) with PNG label maps: 0 background, 1 right lung,
            2 left lung, 3 heart (the heart wins where it overlaps a lung). Two images per patient.
  seg3d/    abdominal-CT-like NIfTI volumes (int16 HU, 64 x 64 x 16 voxels of 0.8 x 0.8 x 2.5 mm,
            an LPS affine with an offset, so it is not the identity), one per patient, with NIfTI
            label maps: 1 liver, 2 spleen, 3 kidneys. One row per volume; the pipeline slices them.
  volcls/   chest-CT-like volumes as folders of PNG slices (the SARS-CoV-2 CT layout,
            <class>/<patient>/<slice>.png), binary: a positive volume has ground-glass patches in
            about half of its slices. The manifest comes from the sarscov2_ct catalog adapter.
  small/    (write_small_structures, not in the demo) MRI-like 8-bit PNGs with eight small
            structures of a few patches each, for checking that heads converge where real anatomy
            is small and many.
Organs are ellipsoids bent by smooth noise, so every patient's shapes differ; intensities follow
their modality (HU for CT). Splits are by patient (catalog.common), deterministic by seed.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from raddist import storage
from raddist.data.catalog import common
from raddist.data.volumes import nifti_bytes, png_bytes

SEG2D_CLASSES = ("background", "right lung", "left lung", "heart")
SEG3D_CLASSES = ("background", "liver", "spleen", "kidney")
VOLUME_SHAPE = (16, 64, 64)  # (D, H, W)
VOXEL_MM = (2.5, 0.8, 0.8)  # (D, H, W)


def write_synthetic_seg(out_dir: str, seed: int = 0) -> Dict[str, str]:
    """All three sets under out_dir; returns {name: manifest uri}."""
    return {
        "seg2d": write_seg2d(storage.join(out_dir, "seg2d"), seed),
        "seg3d": write_seg3d(storage.join(out_dir, "seg3d"), seed),
        "volcls": write_volume_classification(storage.join(out_dir, "volcls"), seed),
    }


def _grid(shape) -> Tuple[np.ndarray, ...]:
    """Coordinates in [0, 1) per axis of shape."""
    return tuple(np.meshgrid(*[(np.arange(n, dtype=np.float32) + 0.5) / n for n in shape], indexing="ij"))


def _smooth(rng, shape, sigma: float) -> np.ndarray:
    """Smooth noise with unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _blob(coords, centre, radii, bend: np.ndarray, amount: float = 0.15) -> np.ndarray:
    """An ellipsoid (any dimension) whose surface is pushed in and out by the noise `bend`."""
    d = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))
    return d + amount * bend < 1.0


# ----------------------------------------------------------------------------- 2D: chest X-ray

def _info_2d(name: str, title: str, modality: str, classes) -> common.DatasetInfo:
    """A 2D synthetic set: PNG images and label maps, split by patient 60/20/20."""
    return common.DatasetInfo(
        name=name, title=title, modality=modality, task_type="segmentation", unit="image", labels=(),
        classes=classes, source_url="raddist", license="synthetic", reference_split="by patient, seeded, 60/20/20",
        preprocessing=dict(common.AUTO_WINDOW),
    )


def _write_png_pair(out_dir: str, name: str, img: np.ndarray, labels: np.ndarray, pairs: dict) -> None:
    """An image (floats in [0, 1]) and its label map as PNGs under out_dir, recorded in pairs."""
    image, mask = storage.join(out_dir, "images", f"{name}.png"), storage.join(out_dir, "masks", f"{name}.png")
    storage.write_bytes(image, png_bytes(np.clip(img * 255, 0, 255).astype(np.uint8)))
    storage.write_bytes(mask, png_bytes(labels))
    pairs[name] = (image, mask)


def _write_2d_manifest(info: common.DatasetInfo, out_dir: str, pairs: dict, seed: int) -> str:
    """The manifest of pairs named p<patient>_s<slice>, split by patient."""
    rows = common.paired_rows(info, pairs)
    for r in rows:
        r["patient_id"] = r["sample_id"].split("_")[0]  # two images per patient
    return common.write_split_by_patient(info, out_dir, rows, seed=seed, source=out_dir,
                                         val_size=0.2, test_size=0.2)


SEG2D_INFO = _info_2d("synthetic_seg2d", "synthetic chest X-ray lung and heart segmentation", "DX", SEG2D_CLASSES)


def write_seg2d(out_dir: str, seed: int = 0, n_patients: int = 30, size: int = 96) -> str:
    rng = np.random.default_rng([seed, 21])
    y, x = _grid((size, size))
    pairs = {}
    for p in range(n_patients):
        body_rx = rng.uniform(0.38, 0.45)
        for s in range(2):
            j = rng.uniform(-0.03, 0.03, 2)
            labels = np.zeros((size, size), np.uint8)
            for value, cx in ((1, 0.31), (2, 0.69)):  # image left is the patient's right
                lung = _blob((y, x), (0.47 + j[0], cx + j[1]), (rng.uniform(0.27, 0.33), rng.uniform(0.12, 0.16)),
                             _smooth(rng, (size, size), 6))
                labels[lung] = value
            heart = _blob((y, x), (0.62 + j[0], 0.55 + j[1]), (rng.uniform(0.13, 0.17), rng.uniform(0.14, 0.2)),
                          _smooth(rng, (size, size), 6))
            labels[heart] = 3
            body = _blob((y, x), (0.55, 0.5 + j[1]), (0.6, body_rx), np.zeros((size, size)))
            img = 0.15 + 0.5 * body + np.choose(labels, [0.0, -0.35, -0.35, 0.2]) * body
            img = img + 0.05 * _smooth(rng, (size, size), 3) + rng.normal(0, 0.02, img.shape)
            _write_png_pair(out_dir, f"p{p + 1:03d}_s{s + 1}", img, labels, pairs)
    return _write_2d_manifest(SEG2D_INFO, out_dir, pairs, seed)


# ----------------------------------------------------------------------------- 2D: many small structures

SMALL_CLASSES = ("background",) + tuple(f"structure {i + 1}" for i in range(8))
SMALL_INFO = _info_2d("synthetic_small", "synthetic MRI-like slices with eight small structures", "MR", SMALL_CLASSES)


def write_small_structures(out_dir: str, seed: int = 0, n_patients: int = 30, size: int = 96) -> str:
    """As many and as small structures as real anatomy (brain MRI nuclei, abdominal vessels): eight
    classes, each a bent ellipse of radius 5-9 % of the image (at a ViT/14's 224 px, or tiny_vit's 8
    px patches at 64 px, one to three patches across), around the cells of a 3 x 3 layout (its centre
    left empty), in a tissue of similar intensity; two slices per patient."""
    rng = np.random.default_rng([seed, 51])
    y, x = _grid((size, size))
    cells = [(r, c) for r in (0.22, 0.5, 0.78) for c in (0.22, 0.5, 0.78) if (r, c) != (0.5, 0.5)]
    pairs = {}
    for p in range(n_patients):
        shift = rng.uniform(-0.04, 0.04, 2)
        for s in range(2):
            labels = np.zeros((size, size), np.uint8)
            for value, (cy, cx) in enumerate(cells, start=1):
                centre = (cy + shift[0] + rng.uniform(-0.05, 0.05), cx + shift[1] + rng.uniform(-0.05, 0.05))
                structure = _blob((y, x), centre, rng.uniform(0.05, 0.09, 2), _smooth(rng, (size, size), 4), 0.3)
                labels[structure] = value
            tissue = 0.45 + 0.06 * np.sin(7 * np.arange(9))[labels]  # each class a little off the tissue
            img = tissue + 0.06 * _smooth(rng, (size, size), 2) + rng.normal(0, 0.04, (size, size))
            _write_png_pair(out_dir, f"p{p + 1:03d}_s{s + 1}", img, labels, pairs)
    return _write_2d_manifest(SMALL_INFO, out_dir, pairs, seed)


# ----------------------------------------------------------------------------- 3D: abdominal CT

SEG3D_INFO = common.DatasetInfo(
    name="synthetic_seg3d", title="synthetic abdominal CT organ segmentation", modality="CT",
    task_type="segmentation", unit="volume", labels=(), classes=SEG3D_CLASSES, source_url="raddist",
    license="synthetic", reference_split="by patient, seeded", preprocessing=dict(common.CT_ABDOMEN),
)

# (label, HU, centre (z, y, x), radii (z, y, x)); image left is the patient's right
_ORGANS = ((1, 150.0, (0.55, 0.42, 0.32), (0.6, 0.25, 0.21)),  # liver
           (2, 260.0, (0.5, 0.4, 0.72), (0.4, 0.15, 0.11)),  # spleen
           (3, 420.0, (0.45, 0.66, 0.3), (0.35, 0.11, 0.09)),  # right kidney
           (3, 420.0, (0.45, 0.66, 0.7), (0.35, 0.11, 0.09)))  # left kidney


def seg3d_affine(shape=VOLUME_SHAPE, voxel=VOXEL_MM) -> np.ndarray:
    """(i, j, k) -> RAS mm of an LPS-stored volume: i and j flipped, centred, k along the body."""
    d, h, w = shape
    affine = np.diag([-voxel[2], -voxel[1], voxel[0], 1.0])
    affine[:3, 3] = [voxel[2] * w / 2, voxel[1] * h / 2 - 20.0, -voxel[0] * d / 2 + 35.0]
    return affine


def ct_volume(rng, shape=VOLUME_SHAPE) -> Tuple[np.ndarray, np.ndarray]:
    """(HU int16 (D, H, W), labels uint8 (D, H, W)) of one synthetic abdomen."""
    z, y, x = _grid(shape)
    sigma = (1.0, 4.0, 4.0)
    shift = rng.uniform(-0.03, 0.03, 3)
    body = _blob((y, x), (0.5, 0.5), (0.42 + rng.uniform(-0.03, 0.03), 0.46), 0.2 * _smooth(rng, shape, sigma))
    hu = np.where(body, -100.0, -1000.0)  # fat inside, air outside
    hu[_blob((y, x), (0.5, 0.5), (0.36, 0.41), 0.5 * _smooth(rng, shape, sigma))] = 30.0  # muscle and bowel
    labels = np.zeros(shape, np.uint8)
    for label, value, centre, radii in _ORGANS:
        scale = rng.uniform(0.85, 1.15)
        organ = _blob((z, y, x), np.add(centre, shift), np.multiply(radii, scale), _smooth(rng, shape, sigma)) & body
        labels[organ] = label
        hu[organ] = value
    hu[_blob((y, x), (0.74 + shift[1], 0.5), (0.06, 0.05), np.zeros(shape))] = 700.0  # vertebra
    hu += rng.normal(0, 15, shape)
    return np.rint(hu).astype(np.int16), labels


def write_seg3d(out_dir: str, seed: int = 0, n_patients: int = 12) -> str:
    rng = np.random.default_rng([seed, 31])
    affine = seg3d_affine()
    pairs = {}
    for p in range(n_patients):
        hu, labels = ct_volume(rng)
        name = f"case{p + 1:03d}"
        image = storage.join(out_dir, "images", f"{name}.nii.gz")
        storage.write_bytes(image, nifti_bytes(hu, affine, np.int16))
        mask = storage.join(out_dir, "labels", f"{name}.nii.gz")
        storage.write_bytes(mask, nifti_bytes(labels, affine))
        pairs[name] = (image, mask)
    return common.write_split_by_patient(SEG3D_INFO, out_dir, common.paired_rows(SEG3D_INFO, pairs), seed=seed,
                                         source=out_dir, val_size=2, test_size=3)


# ----------------------------------------------------------------------------- 3D classification

def write_volume_classification(out_dir: str, seed: int = 0, n_patients: int = 40, slices: int = 8,
                                size: int = 64) -> str:
    """Folders of PNG slices per volume, half of them positive; the manifest by the sarscov2_ct adapter."""
    from raddist.data.catalog import sarscov2_ct

    rng = np.random.default_rng([seed, 41])
    z, y, x = _grid((slices, size, size))
    for p in range(n_patients):
        positive = p % 2 == 1
        shape = (slices, size, size)
        body = _blob((y, x), (0.5, 0.5), (0.4, 0.46), 0.3 * _smooth(rng, shape, (1, 4, 4)))
        lungs = (_blob((y, x), (0.48, 0.3), (0.28, 0.15), _smooth(rng, shape, (1, 4, 4)))
                 | _blob((y, x), (0.48, 0.7), (0.28, 0.15), _smooth(rng, shape, (1, 4, 4))))
        img = 0.1 + 0.55 * body - 0.45 * (lungs & body)
        if positive:  # ground-glass: hazy patches in the lungs of some slices
            haze = (_smooth(rng, shape, (0.8, 3, 3)) > 1.0) & lungs & (rng.random((slices, 1, 1)) < 0.6)
            img = img + 0.3 * haze
        img = img + rng.normal(0, 0.03, shape)
        folder = storage.join(out_dir, "COVID" if positive else "non-COVID", f"patient{p + 1:03d}")
        for s in range(slices):
            storage.write_bytes(storage.join(folder, f"{s + 1}.png"),
                                png_bytes(np.clip(img[s] * 255, 0, 255).astype(np.uint8)))
    return sarscov2_ct.prepare(out_dir, out_dir, seed, val_size=8, test_size=10)
