"""Volumes slice by slice, and back.

Forward (the embedding pipeline): a NIfTI volume and its label map -> uint8 slices at the model's
size, one per index of the slice axis (the third NIfTI axis, axial for the usual acquisitions).
Backward (the segmentation protocols): the heads' logits are resized to each slice's source (H, W)
and argmaxed there (protocols.seg_common), stacked by slice index into the source's (D, H, W), and
scored against the label map read back from the manifest's mask_uri (read_source_labels); NIfTI
predictions are written with the source's affine.

Intensity is set per volume, not per slice, so an organ keeps one grey level through the stack:
  - a contract window (center, width): the DICOM linear window (readers.apply_window); the CT
    catalog's window [-212, 1624] is the HU clip [-1024, 600] below;
  - window "auto": CT is clipped to HU [-1024, 600], MR to its volume's 5th-95th percentiles,
    anything else to its min..max. The reference study clipped AMOS and its sliced BTCV to
    [-1024, 600] but its 3D BTCV at 600 only, and took the 5th-95th percentiles of EACH SLICE for
    the MSD sets, the CT of MSD Spleen included; per volume is raddist's choice;
  - contract.clip_percentiles, when set, afterwards, over the volume.
Label maps (NIfTI or PNG) hold class indices 0..K-1 and are resized with nearest neighbours.

Layout: a volume is (D, H, W) as readers.read_nifti returns it; volume[z] is slice z, (H, W) =
NIfTI axes (j, i). Spacing tuples follow the same (D, H, W) order.
"""

from __future__ import annotations

import gzip
import io
from typing import Optional, Sequence, Tuple

import numpy as np

from raddist import storage
from raddist.data.contract import PreprocessContract
from raddist.data.readers import apply_window, open_pil, read_nifti
from raddist.data.transforms import minmax, quantise, resize_square
from raddist.errors import InputError

CT_HU_CLIP = (-1024.0, 600.0)
MR_PERCENTILES = (5.0, 95.0)


# ----------------------------------------------------------------------------- intensity

def volume_to_unit(volume: np.ndarray, modality: Optional[str], contract: PreprocessContract) -> np.ndarray:
    """float32 [0, 1] volume by the rules of the module docstring."""
    v = np.asarray(volume, dtype=np.float32)
    modality = (modality or "").upper()
    if contract.window != "auto":
        unit = apply_window(v, *contract.window)
    elif modality == "CT":
        unit = np.clip(minmax(v, *CT_HU_CLIP), 0.0, 1.0)
    elif modality in ("MR", "MRI") and contract.clip_percentiles is None:
        unit = _percentile_clip(v, MR_PERCENTILES)
    else:
        unit = _percentile_clip(v, (0.0, 100.0))
    if contract.clip_percentiles is not None:
        unit = _percentile_clip(unit, contract.clip_percentiles)
    return unit


def _percentile_clip(v: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    lo, hi = np.percentile(v, percentiles)
    if hi <= lo:  # (nearly) constant: what stands above the bulk, if anything, is white
        return (v > lo).astype(np.float32)
    return np.clip(minmax(v, lo, hi), 0.0, 1.0)


def model_slices(unit: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] (D, H, W) -> uint8 (D, size, size), each slice as transforms.resize_square does it."""
    return np.stack([resize_square(quantise(s), size) for s in unit])


# ----------------------------------------------------------------------------- label maps

def as_labels(uri: str, arr: np.ndarray) -> np.ndarray:
    """Class indices as uint8; fractional or out-of-range values are an InputError."""
    labels = np.rint(arr)
    if arr.size and (np.abs(labels - arr).max() > 1e-3 or labels.min() < 0 or labels.max() > 255):
        raise InputError(uri, "mask values must be class indices 0..255")
    return labels.astype(np.uint8)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of (..., H, W) to shape (H', W') (pixel centres)."""
    h, w = labels.shape[-2:]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def read_mask(uri: str, data: bytes) -> np.ndarray:
    """A 2D label map (PNG or any Pillow format) as uint8 (H, W) class indices."""
    img = open_pil(uri, data)
    arr = np.asarray(img if img.mode in ("L", "P", "I", "I;16", "F", "1") else img.convert("L"))
    return as_labels(uri, arr.astype(np.float32))


def read_label_volume(uri: str, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
    volume, affine = read_nifti(uri, data)
    return as_labels(uri, volume), affine


def read_source_labels(ref, volume: bool = False) -> np.ndarray:
    """A case's ground truth on its source grid, as SegInputs.source_masks points to it: an array as
    it is; a uri: a NIfTI label volume (D, H, W) when `volume`, else a 2D label map (H, W), read as
    the embedding pipeline reads them (data.decode); a list of 2D label-map uris: one per slice,
    stacked in the list's order into (D, H, W)."""
    if isinstance(ref, np.ndarray):
        return ref
    if isinstance(ref, str):
        data = storage.read_bytes(ref)
        return read_label_volume(ref, data)[0] if volume else read_mask(ref, data)
    return np.stack([read_mask(u, storage.read_bytes(u)) for u in ref])


# ----------------------------------------------------------------------------- geometry

def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (i, j, k) in mm: the lengths of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def grid_spacing(source_shape: Sequence[int], size: int, affine: Optional[np.ndarray] = None) -> Tuple[float, ...]:
    """Spacing of a (D, size, size) output grid (2D: (size, size)), in the (D, H, W) order.

    Volumes: mm from the affine, in-plane scaled by source/size. 2D images (no affine): pixels of
    the source image, so distances read the same whatever the model's input size.
    """
    h, w = source_shape[-2:]
    if affine is None:
        return (h / size, w / size)
    si, sj, sk = voxel_sizes(affine)
    return (float(sk), float(sj) * h / size, float(si) * w / size)


# ----------------------------------------------------------------------------- forward: volume -> slices

def decode_volume(uri: str, data: bytes, contract: PreprocessContract, modality: Optional[str] = None,
                  mask_uri: Optional[str] = None, mask_data: Optional[bytes] = None) -> dict:
    """One volume row -> {'image': uint8 (D, S, S), 'mask': uint8 (D, S, S) or None,
    'affine': (4, 4), 'shape': (D, H, W)} with S = contract.size."""
    volume, affine = read_nifti(uri, data)
    mask = None
    if mask_data is not None:
        labels, _ = read_label_volume(mask_uri, mask_data)
        if labels.shape != volume.shape:
            raise InputError(mask_uri, f"mask shape {labels.shape} differs from its volume's {volume.shape}")
        mask = resize_labels(labels, (contract.size, contract.size))
    image = model_slices(volume_to_unit(volume, modality, contract), contract.size)
    return {"image": image, "mask": mask, "affine": affine, "shape": volume.shape}


# ----------------------------------------------------------------------------- backward: slices -> volume

def assemble(slice_index: Sequence[int], slices: np.ndarray, depth: Optional[int] = None) -> np.ndarray:
    """Stack slices (N, H, W) by their slice index into (D, H, W); every index 0..D-1 exactly once."""
    order = np.argsort(np.asarray(slice_index), kind="stable")
    index = np.asarray(slice_index)[order]
    depth = len(index) if depth is None else depth
    if len(index) != depth or not np.array_equal(index, np.arange(depth)):
        missing = sorted(set(range(depth)) - set(index.tolist()))
        raise ValueError(f"slices do not tile the volume: {len(index)} of {depth}, missing {missing[:5]}")
    return np.asarray(slices)[order]


def nifti_bytes(volume: np.ndarray, affine: np.ndarray, dtype=np.uint8) -> bytes:
    """A (D, H, W) volume (by default a uint8 label map) as .nii.gz bytes on the grid of `affine`:
    the inverse of readers.read_nifti."""
    import nibabel

    img = nibabel.Nifti1Image(np.ascontiguousarray(np.asarray(volume, dtype).transpose(2, 1, 0)),
                              np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def png_bytes(labels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()
