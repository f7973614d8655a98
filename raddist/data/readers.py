"""Decode one file's bytes into a float32 array in modality units (HU for CT), by format.

One small reader per format, chosen by extension and, failing that, by magic bytes. Heavy
dependencies (pydicom, nibabel, Pillow) are imported inside the reader that needs them.
Every failure is an `InputError(uri, reason)` with a short reason; a DICOM reason never carries
the file's identifying attributes (names, IDs, dates), because reasons end up in logs and results.

Array layout: a 2D image is (H, W); a volume is (D, H, W) with D the slice axis.
"""

from __future__ import annotations

import gzip
import io
import logging
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from raddist.errors import InputError

VOI = Tuple[float, float]  # (center, width) in modality units


@dataclass
class Decoded:
    pixels: np.ndarray  # float32, (H, W) or (D, H, W), modality units
    voi: Optional[VOI] = None  # the file's own window (DICOM WindowCenter/WindowWidth), if any
    modality: Optional[str] = None  # DICOM Modality, if known
    invert: bool = False  # MONOCHROME1: high values display dark
    uri: str = ""  # where it came from, so later steps can name it in errors


# ----------------------------------------------------------------------------- format detection

_EXTENSIONS = {
    ".dcm": "dicom", ".dicom": "dicom",
    ".nii": "nifti", ".nii.gz": "nifti",
    ".npy": "npy",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
}


def detect_format(uri: str, data: bytes) -> Optional[str]:
    """'dicom' | 'nifti' | 'npy' | 'png' | 'jpeg' from the extension, else from magic bytes."""
    name = str(uri).lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    head = data[:352]
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b") or _nifti_header_size(head):
        return "nifti"  # gzip is assumed to be .nii.gz; anything else fails in the NIfTI reader
    return None


def _nifti_header_size(data: bytes) -> int:
    """348 (NIfTI-1) or 540 (NIfTI-2) from the first field, sizeof_hdr, in either byte order; else 0."""
    for order in ("little", "big"):
        size = int.from_bytes(data[:4], order) if len(data) >= 4 else 0
        if size in (348, 540):
            return size
    return 0


def read_array(uri: str, data: bytes) -> Decoded:
    """Decode `data` (the bytes of `uri`) into a Decoded image or volume."""
    if not data:
        raise InputError(uri, "empty file")
    fmt = detect_format(uri, data)
    if fmt is None:
        raise InputError(uri, "unrecognised image format (expected DICOM, NIfTI, NumPy, PNG or JPEG)")
    try:
        decoded = READERS[fmt](uri, data)
    except InputError:
        raise
    except Exception as e:  # a library failure no reader anticipated; its text may echo file content
        raise InputError(uri, f"could not decode as {fmt} ({type(e).__name__})") from None
    decoded.uri = uri
    decoded.pixels = check_pixels(uri, decoded.pixels)
    return decoded


def check_pixels(uri: str, arr: np.ndarray) -> np.ndarray:
    """Float32 (H, W) or (D, H, W) with finite values, or an InputError saying why not."""
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:  # a one-slice volume is an image
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise InputError(uri, f"expected a 2D image or 3D volume, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(uri, "empty volume" if arr.ndim == 3 else "empty image")
    if arr.dtype.kind not in "biuf":
        raise InputError(uri, f"pixels have unsupported dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(uri, "image contains NaN" if np.isnan(arr).any() else "image contains infinite values")
    return arr


# ----------------------------------------------------------------------------- DICOM

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(uri: str, data: bytes) -> Decoded:
    ds = _parse_dicom(uri, data)
    try:  # elements are parsed lazily, so a damaged header can fail here
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        voi, modality = dicom_voi(ds), str(ds.get("Modality") or "") or None
    except Exception:
        raise InputError(uri, "corrupt DICOM header") from None
    if not has_pixels:
        raise InputError(uri, "DICOM has no pixel data")
    try:
        pixels = dicom_modality_pixels(ds)
    except Exception as e:  # truncated pixel data, unsupported compression, bad group 0028 values
        raise InputError(uri, f"DICOM pixel data could not be decoded: {_scrub(str(e), ds)}") from None
    return Decoded(pixels=pixels, voi=voi, modality=modality, invert=photometric == "MONOCHROME1")


def _parse_dicom(uri: str, data: bytes):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        pass  # no preamble/"DICM": some exporters write bare datasets; try once more below
    except Exception:
        raise InputError(uri, "corrupt or truncated DICOM header") from None
    try:
        with warnings.catch_warnings():  # force=True warns about whatever it guesses
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "SOPClassUID" in ds or "Rows" in ds:  # force=True "reads" any bytes; demand real tags
            return ds
    except Exception:
        pass
    raise InputError(uri, "not a DICOM file")


def dicom_modality_pixels(ds) -> np.ndarray:
    """The pixels of a pydicom Dataset in modality units, float32.

    Grayscale: pydicom's `apply_modality_lut` (Rescale Slope/Intercept or a Modality LUT, e.g.
    stored values -> HU for CT). Colour (RGB, YBR, PALETTE COLOR): converted to luma
    (ITU-R 601, as Pillow's "L"), since radiology backbones see one channel.
    Multi-frame: (frames, H, W).
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return _luma(apply_color_lut(arr, ds))
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return _luma(arr)  # pydicom already converted YBR to RGB
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)


def dicom_voi(ds) -> Optional[VOI]:
    """(WindowCenter, WindowWidth), first value of each if multi-valued; None if absent/invalid."""
    try:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            return None
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 and np.isfinite([center, width]).all() else None


def apply_window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR VOI function (PS3.3 C.11.2.1.2.1), with output range [0, 1], float32:

        y = clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)

    so x <= center - 0.5 - (width - 1)/2 -> 0 and x > center - 0.5 + (width - 1)/2 -> 1.
    pydicom's apply_voi_lut gives the same y scaled to its output range [y_min, y_max].
    width <= 1 is a threshold at center - 0.5.
    """
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    x = np.asarray(arr, dtype=np.float32)
    c = np.float32(center - 0.5)
    if width <= 1:
        return (x > c).astype(np.float32)
    y = (x - c) / np.float32(width - 1) + np.float32(0.5)
    return np.clip(y, 0.0, 1.0, out=y)


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# Attributes whose values must never reach a message, even if a library echoes them.
_TEXT_VRS = {"PN", "LO", "SH", "DA", "DT", "TM", "UI", "AS", "LT", "ST", "UT", "AE"}


def _scrub(message: str, ds) -> str:
    """Remove every text value of the dataset from a library's error message, and shorten it."""
    try:
        for elem in ds.iterall():
            if elem.VR in _TEXT_VRS and elem.value not in (None, ""):
                for v in (elem.value if _is_multi(elem.value) else [elem.value]):
                    if len(str(v)) >= 3:
                        message = message.replace(str(v), "<redacted>")
    except Exception:
        return "details withheld"  # could not check the message, so do not show it
    return message[:200]


# ----------------------------------------------------------------------------- PNG / JPEG

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def open_pil(uri: str, data: bytes, draft_size: Optional[int] = None):
    """Open and fully decode an image with Pillow; `draft_size` lets JPEG decode at reduced scale.

    `load()` forces the decode now, so a truncated file fails here (Pillow refuses truncated
    images unless ImageFile.LOAD_TRUNCATED_IMAGES is set, and raddist never sets it).
    """
    from PIL import Image, UnidentifiedImageError

    kind = detect_format(uri, data) or "image"
    label = kind.upper() if kind in ("png", "jpeg") else "image"
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(uri, f"not a {label} file") from None
    except Exception as e:
        raise InputError(uri, f"corrupt {label}: {e}") from None
    try:
        if draft_size and img.format == "JPEG":
            img.draft("L", (draft_size, draft_size))  # DCT-domain downscale; keeps >= draft_size
        img.load()
    except Image.DecompressionBombError:
        raise InputError(uri, f"{label} is too large to decode safely") from None
    except (OSError, SyntaxError, EOFError, ValueError, zlib.error) as e:
        text = str(e).lower()
        if "truncat" in text or "broken" in text or isinstance(e, EOFError):
            raise InputError(uri, f"truncated {label}") from None
        raise InputError(uri, f"corrupt {label}: {e}") from None
    return img


def pil_to_gray8(img):
    """An 8-bit grayscale ("L") Pillow image, or None when the image has more than 8 bits."""
    if img.mode in _HIGH_DEPTH_MODES:
        return None
    return img if img.mode == "L" else img.convert("L")


def read_image(uri: str, data: bytes) -> Decoded:
    img = open_pil(uri, data)
    gray = pil_to_gray8(img)
    pixels = np.asarray(gray if gray is not None else img)  # 16-bit PNGs keep their values
    return Decoded(pixels=pixels.astype(np.float32))


# ----------------------------------------------------------------------------- NIfTI

def read_nifti(uri: str, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """(volume, affine) of a .nii or .nii.gz held in `data`.

    volume is float32 (D, H, W) = nibabel's (i, j, k) array transposed to (k, j, i): D is the
    last voxel axis (axial slices for the usual RAS/LPS acquisitions), volume[k, j, i] is voxel
    (i, j, k). Scaling (scl_slope/scl_inter) is applied. affine maps (i, j, k, 1) to world mm.
    """
    import nibabel

    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise InputError(uri, "truncated or corrupt gzip in .nii.gz") from None
    header_size = _nifti_header_size(data)
    if not header_size:
        raise InputError(uri, "not a NIfTI file")
    cls = nibabel.Nifti1Image if header_size == 348 else nibabel.Nifti2Image
    log = logging.getLogger("nibabel.global")  # it logs header fixes to stderr; we report instead
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        try:
            img = cls.from_bytes(data)
        except Exception:
            raise InputError(uri, "corrupt or truncated NIfTI header") from None
        try:
            arr = img.get_fdata(dtype=np.float32)
        except Exception:
            raise InputError(uri, "truncated NIfTI (voxel data shorter than its header says)") from None
    finally:
        log.setLevel(level)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(uri, f"expected a 3D NIfTI volume, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(uri, "empty volume")
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), np.asarray(img.affine, dtype=np.float64)


def _read_nifti_decoded(uri: str, data: bytes) -> Decoded:
    volume, _ = read_nifti(uri, data)
    return Decoded(pixels=volume)


# ----------------------------------------------------------------------------- NumPy

def read_npy(uri: str, data: bytes) -> Decoded:
    """A .npy array, taken as (H, W) or (D, H, W) as stored; pickles are refused."""
    if not data.startswith(b"\x93NUMPY"):  # else np.load takes any bytes for a pickle
        raise InputError(uri, "not a .npy file")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(uri, "npy holds Python objects, not pixels") from None
        raise InputError(uri, "truncated or corrupt npy") from None
    except Exception:
        raise InputError(uri, "truncated or corrupt npy") from None
    return Decoded(pixels=arr)


READERS: Dict[str, Callable[[str, bytes], Decoded]] = {
    "dicom": read_dicom,
    "nifti": _read_nifti_decoded,
    "npy": read_npy,
    "png": read_image,
    "jpeg": read_image,
}
