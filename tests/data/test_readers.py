import gzip
import io

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from raddist.data import readers
from raddist.data.readers import apply_window, dicom_modality_pixels, read_array, read_nifti
from raddist.errors import InputError


def dicom_path(name: str) -> str:
    """A file from pydicom's own test files or the pydicom-data package (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing: install the test extra (pydicom-data)"
    return path


def file_bytes(name: str) -> bytes:
    with open(dicom_path(name), "rb") as f:
        return f.read()


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def pydicom_output_range(ds):
    """The [y_min, y_max] pydicom's apply_windowing scales its [0, 1] window output to."""
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        lo, hi = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (lo, hi))
    return lo, hi


# ----------------------------------------------------------------------------- DICOM vs pydicom

@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm"])
def test_ct_is_in_hounsfield_units_like_pydicom(name):
    ds = pydicom.dcmread(dicom_path(name))
    decoded = read_array(name, file_bytes(name))
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_array_equal(decoded.pixels, expected)
    # the intercept (-1024) was applied: stored values are not HU
    assert decoded.pixels.min() == ds.pixel_array.min() - 1024
    assert decoded.modality == "CT" and decoded.invert is False


@pytest.mark.parametrize("compressed,plain", [
    ("693_J2KR.dcm", "693_UNCR.dcm"),          # JPEG 2000 lossless, via pylibjpeg-openjpeg
    ("MR_small_RLE.dcm", "MR_small.dcm"),      # RLE lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS, via pylibjpeg-libjpeg
])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(compressed, plain):
    a = read_array(compressed, file_bytes(compressed)).pixels
    b = read_array(plain, file_bytes(plain)).pixels
    np.testing.assert_array_equal(a, b)


def test_cr_chest_radiograph_keeps_window_and_monochrome1():
    decoded = read_array("RG1_UNCR.dcm", file_bytes("RG1_UNCR.dcm"))
    assert decoded.modality == "CR"
    assert decoded.invert is True  # MONOCHROME1
    assert decoded.voi == (15000.0, 30000.0)
    assert decoded.pixels.shape == (1955, 1841)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "MR_small.dcm", "693_UNCR.dcm"])
def test_apply_window_matches_pydicom_voi_lut(name):
    ds = pydicom.dcmread(dicom_path(name))
    modality = dicom_modality_pixels(ds)
    center, width = readers.dicom_voi(ds)
    ours = apply_window(modality, center, width)
    y_min, y_max = pydicom_output_range(ds)
    theirs = (apply_voi_lut(modality.astype(np.float64), ds) - y_min) / (y_max - y_min)
    assert ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.std() > 0.05  # the window does not flatten the image


def test_apply_window_formula():
    # center 40, width 80: x <= 0 -> 0, x > 79 -> 1, center - 0.5 -> exactly 0.5
    x = np.array([-1000, 0, 20, 39.5, 79, 80, 1000], dtype=np.float32)
    y = apply_window(x, 40, 80)
    np.testing.assert_allclose(y, [0, 0, (20 - 39.5) / 79 + 0.5, 0.5, 1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(apply_window(np.array([39, 40]), 40, 1), [0, 1])  # width 1: threshold
    with pytest.raises(ValueError):
        apply_window(x, 40, 0)


def test_multiframe_dicom_is_a_volume():
    decoded = read_array("emri_small.dcm", file_bytes("emri_small.dcm"))
    assert decoded.pixels.shape == (10, 64, 64)


def test_colour_dicom_becomes_luma():
    ds = pydicom.dcmread(dicom_path("US1_UNCI.dcm"))
    rgb = ds.pixel_array.astype(np.float32)
    pixels = read_array("us.dcm", file_bytes("US1_UNCI.dcm")).pixels
    assert pixels.shape == rgb.shape[:2]
    np.testing.assert_allclose(pixels, rgb @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-3)


def test_dicom_found_by_magic_bytes_without_extension():
    decoded = read_array("s3://bucket/objects/1234", file_bytes("CT_small.dcm"))
    assert decoded.modality == "CT" and decoded.pixels.shape == (128, 128)


# ----------------------------------------------------------------------------- DICOM failures

def test_dicom_without_pixel_data():
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    del ds.PixelData
    with pytest.raises(InputError) as e:
        read_array("scan.dcm", dicom_bytes(ds))
    assert e.value.reason == "DICOM has no pixel data" and e.value.uri == "scan.dcm"


@pytest.mark.parametrize("how", ["pydicom_truncated", "cut_in_pixels", "cut_in_header"])
def test_truncated_dicom_raises_without_identifiers(how):
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    data = file_bytes("CT_small.dcm")
    data = {"pydicom_truncated": file_bytes("MR_truncated.dcm"),
            "cut_in_pixels": data[: len(data) - 4000], "cut_in_header": data[:400]}[how]
    with pytest.raises(InputError) as e:
        read_array("scan.dcm", data)
    message = str(e.value)
    assert message.startswith("scan.dcm: ")
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID)):
        assert secret not in message


def test_scrub_removes_identifying_values_from_library_messages():
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "DOE^JANE-42", "PID-12345678"
    ds.InstitutionName = "SYNTHETIC GENERAL HOSPITAL"
    leaked = "bad value for DOE^JANE-42 (PID-12345678) at SYNTHETIC GENERAL HOSPITAL; 8130 vs 8192 bytes"
    clean = readers._scrub(leaked, ds)
    for secret in ("DOE^JANE-42", "PID-12345678", "SYNTHETIC GENERAL HOSPITAL"):
        assert secret not in clean
    assert "8130 vs 8192 bytes" in clean  # useful technical detail is kept


# ----------------------------------------------------------------------------- other formats, failures

@pytest.mark.parametrize("uri", ["a.dcm", "a.png", "a.jpg", "a.nii", "a.nii.gz", "a.npy", "a.bin", "noextension"])
def test_random_bytes_raise_input_error(uri):
    data = np.random.default_rng(0).bytes(4096)
    with pytest.raises(InputError) as e:
        read_array(uri, data)
    assert e.value.uri == uri and e.value.reason


def test_empty_file():
    with pytest.raises(InputError, match="empty file"):
        read_array("a.png", b"")


@pytest.mark.parametrize("fmt,keep", [("PNG", 0.5), ("PNG", 0.98), ("JPEG", 0.5)])
def test_truncated_png_or_jpeg_names_the_uri(fmt, keep):
    arr = np.random.default_rng(1).integers(0, 256, (200, 300), dtype=np.uint8)
    data = png_bytes(arr, fmt)
    uri = f"s3://bucket/case 7.{fmt.lower()}"
    with pytest.raises(InputError) as e:
        read_array(uri, data[: int(len(data) * keep)])
    assert e.value.uri == uri and uri in str(e.value)
    assert e.value.reason == f"truncated {fmt}"


def test_png_grayscale_rgb_and_16bit():
    gray = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80) % 256
    np.testing.assert_array_equal(read_array("g.png", png_bytes(gray.astype(np.uint8))).pixels, gray)
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 7)], -1).astype(np.uint8)
    pixels = read_array("c.png", png_bytes(rgb)).pixels
    expected = gray * 0.299 + (255 - gray) * 0.587 + 7 * 0.114
    assert pixels.shape == (64, 80) and np.abs(pixels - expected).max() <= 1
    deep = (gray * 16 + 1000).astype(np.uint16)  # 16-bit PNG keeps its values
    np.testing.assert_array_equal(read_array("d.png", png_bytes(deep)).pixels, deep)


@pytest.mark.parametrize("uri", ["vol.nii", "vol.nii.gz", "s3://b/vol-without-extension"])
def test_nifti_round_trip(uri):
    vol = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32)  # (i, j, k)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-100, -120, 40]
    data = nibabel.Nifti1Image(vol, affine).to_bytes()
    if uri.endswith(".gz"):
        data = gzip.compress(data)
    array, got_affine = read_nifti(uri, data)
    assert array.shape == (7, 6, 5)  # (D, H, W): D is the last nibabel axis
    np.testing.assert_array_equal(array, vol.transpose(2, 1, 0))
    assert array[3, 2, 1] == vol[1, 2, 3]
    np.testing.assert_allclose(got_affine, affine, atol=1e-5)  # the header stores float32
    np.testing.assert_array_equal(read_array(uri, data).pixels, array)


def test_truncated_nifti_gz():
    data = gzip.compress(nibabel.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes())
    with pytest.raises(InputError, match="gzip"):
        read_array("v.nii.gz", data[: len(data) // 2])


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_npy_round_trip_2d_and_3d():
    img = np.random.default_rng(3).normal(size=(20, 30))
    np.testing.assert_allclose(read_array("a.npy", npy_bytes(img)).pixels, img.astype(np.float32))
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    out = read_array("v.npy", npy_bytes(vol)).pixels
    assert out.dtype == np.float32 and out.shape == (4, 5, 6)
    np.testing.assert_array_equal(out, vol)


@pytest.mark.parametrize("arr,reason", [
    (np.array([{"a": 1}], dtype=object), "Python objects"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "image contains NaN"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), "infinite"),
    (np.zeros((0, 5)), "empty image"),
    (np.zeros((2, 3, 4, 5)), "expected a 2D image or 3D volume"),
])
def test_npy_failures(arr, reason):
    with pytest.raises(InputError, match=reason):
        read_array("x.npy", npy_bytes(arr))


def test_detect_format():
    ct = file_bytes("CT_small.dcm")
    assert readers.detect_format("a.DCM", b"") == "dicom"
    assert readers.detect_format("a/b.nii.gz", b"") == "nifti"
    assert readers.detect_format("s3://b/k.JPEG", b"") == "jpeg"
    assert readers.detect_format("blob", ct) == "dicom"
    assert readers.detect_format("blob", png_bytes(np.zeros((2, 2), np.uint8))) == "png"
    assert readers.detect_format("blob", npy_bytes(np.zeros(2))) == "npy"
    assert readers.detect_format("blob", b"hello world" * 10) is None
