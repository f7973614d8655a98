import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from raddist.data import transforms
from raddist.data.contract import PreprocessContract
from raddist.data.readers import Decoded, read_array
from raddist.data.transforms import decode, to_model_input
from raddist.errors import InputError


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def dicom_file(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing: install the test extra (pydicom-data)"
    with open(path, "rb") as f:
        return f.read()


def smooth_image(h=300, w=257, lo=20, hi=200, seed=0, noise=0.05) -> np.ndarray:
    """An 8-bit image that does not span 0..255, so min-max stretching matters."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    u = np.clip(0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y) + np.random.default_rng(seed).normal(0, noise, (h, w)), 0, 1)
    return np.rint(lo + (hi - lo) * u).astype(np.uint8)


@pytest.mark.parametrize("size", [16, 224, 300])
def test_output_is_size_by_size_uint8_for_non_square_input(size):
    img = np.tile(np.linspace(-5, 7, 200, dtype=np.float32), (120, 1))  # a left-right ramp
    out = decode("a.npy", npy(img), PreprocessContract(size=size))
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert out[:, 0].max() <= 12 and out[:, -1].min() >= 243  # min-max spreads it over 0..255 (squashed, not cropped)
    assert (np.diff(out.astype(int), axis=1) >= 0).all()  # still a ramp


def quadrants(values, n=64) -> np.ndarray:
    """An n x n image whose four n/2 blocks hold the four values."""
    img = np.empty((n, n), np.float32)
    h = n // 2
    img[:h, :h], img[:h, h:], img[h:, :h], img[h:, h:] = values
    return img


def test_explicit_window_maps_hu_as_expected():
    hu = quadrants([-1000, 0, 40, 1000])  # air, water, soft tissue, bone
    contract = PreprocessContract(size=64, window=(40, 400))
    out = to_model_input(Decoded(hu), contract)
    expected = [0, round(255 * ((0 - 39.5) / 399 + 0.5)), round(255 * ((40 - 39.5) / 399 + 0.5)), 255]
    assert expected == [0, 102, 128, 255]
    np.testing.assert_array_equal(out, quadrants(expected).astype(np.uint8))
    small = to_model_input(Decoded(hu), PreprocessContract(size=16, window=(40, 400)))
    assert [small[2, 2], small[2, 13], small[13, 2], small[13, 13]] == expected  # block centres survive resize


def test_auto_window_uses_dicom_voi_else_min_max():
    hu = quadrants([-1000, 0, 40, 1000])
    with_voi = to_model_input(Decoded(hu, voi=(40, 400)), PreprocessContract(size=64))
    explicit = to_model_input(Decoded(hu), PreprocessContract(size=64, window=(40, 400)))
    np.testing.assert_array_equal(with_voi, explicit)
    minmax = to_model_input(Decoded(hu), PreprocessContract(size=64))
    assert [minmax[0, 0], minmax[0, 63], minmax[63, 0], minmax[63, 63]] == [0, 128, 133, 255]


def test_contract_window_overrides_the_file_window():
    hu = quadrants([-1000, 0, 40, 1000])
    out = to_model_input(Decoded(hu, voi=(3000, 10)), PreprocessContract(size=64, window=(40, 400)))
    assert out[0, 63] == 102


def test_percentile_clip_rescues_an_image_with_outliers():
    img = np.tile(np.arange(100, dtype=np.float32), (100, 1))
    img[0, 0] = 1e5  # one hot pixel
    plain = to_model_input(Decoded(img), PreprocessContract(size=100))
    clipped = to_model_input(Decoded(img), PreprocessContract(size=100, clip_percentiles=(1, 99)))
    assert plain[50, 99] <= 1  # the hot pixel crushed everything else to black
    assert clipped[50, 0] == 0 and clipped[50, 99] == 255 and 120 <= clipped[50, 50] <= 135


def test_invert_flag_mirrors_the_intensities():
    img = smooth_image().astype(np.float32)
    contract = PreprocessContract(size=96)
    normal = to_model_input(Decoded(img), contract).astype(int)
    inverted = to_model_input(Decoded(img, invert=True), contract).astype(int)
    assert np.abs(normal + inverted - 255).max() <= 1


def test_monochrome1_dicom_displays_like_its_monochrome2_twin():
    data = dicom_file("RG1_UNCR.dcm")  # a real CR chest, MONOCHROME1, window 15000/30000
    ds = pydicom.dcmread(io.BytesIO(data))
    top = 2**ds.BitsStored - 1
    twin = pydicom.dcmread(io.BytesIO(data))
    twin.PixelData = (top - ds.pixel_array).astype(np.uint16).tobytes()
    twin.PhotometricInterpretation = "MONOCHROME2"
    twin.WindowCenter = top - float(ds.WindowCenter) + 1  # mirror about the LINEAR window's centre c - 0.5
    buf = io.BytesIO()
    twin.save_as(buf)
    contract = PreprocessContract(size=224)
    a = decode("m1.dcm", data, contract).astype(int)
    b = decode("m2.dcm", buf.getvalue(), contract).astype(int)
    assert np.abs(a - b).max() <= 1
    # and MONOCHROME1 really was inverted: displayed brightness falls as stored values rise
    raw = np.asarray(Image.fromarray(ds.pixel_array.astype(np.float32), "F").resize((224, 224)))
    assert np.corrcoef(a.ravel(), raw.ravel())[0, 1] < -0.9


def test_ct_with_a_bone_window():
    data = dicom_file("CT_small.dcm")  # 128 x 128, so size 128 means no resize
    hu = read_array("ct.dcm", data).pixels
    out = decode("ct.dcm", data, PreprocessContract(size=128, window=(40, 400)))
    assert (hu <= -160).any() and (hu > 239).any()
    assert (out[hu <= -160] == 0).all() and (out[hu > 239] == 255).all()
    inside = (hu > -160) & (hu <= 239)
    assert ((out[inside] > 0) & (out[inside] < 255)).mean() > 0.95


@pytest.mark.parametrize("uri,data", [
    ("flat.png", encode(np.full((40, 40), 77, np.uint8))),  # fast path
    ("flat.npy", npy(np.full((40, 40), 3.5, np.float32))),  # general path
])
def test_constant_image_is_rejected(uri, data):
    with pytest.raises(InputError, match="constant") as e:
        decode(uri, data, PreprocessContract(size=32))
    assert e.value.uri == uri


def test_nan_is_rejected_even_when_built_by_hand():
    img = np.ones((8, 8), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        to_model_input(Decoded(img, uri="x"), PreprocessContract(size=8))


def test_volume_uses_its_middle_slice():
    vol = np.zeros((5, 32, 32), np.float32)
    vol[:] = np.arange(32, dtype=np.float32)  # every slice: a left-right ramp
    vol[2] = np.arange(32, dtype=np.float32)[:, None]  # the middle one: a top-bottom ramp
    out = to_model_input(Decoded(vol), PreprocessContract(size=32))
    np.testing.assert_array_equal(out, to_model_input(Decoded(vol[2]), PreprocessContract(size=32)))
    assert out[0, 31] == 0 and out[31, 0] == 255


@pytest.mark.parametrize("channels", [1, 3])
def test_png_fast_path_equals_general_path(monkeypatch, channels):
    img = smooth_image()
    if channels == 3:
        img = np.stack([img, img, img], -1)
    data = encode(img)
    contract = PreprocessContract(size=224)
    general = to_model_input(read_array("x.png", data), contract)
    monkeypatch.setattr(transforms, "read_array", lambda *a: pytest.fail("fast path not taken"))
    fast = decode("x.png", data, contract)
    np.testing.assert_array_equal(fast, general)
    assert int(fast.max()) - int(fast.min()) > 220  # the 20..200 image was stretched


def test_jpeg_decodes_close_to_png():
    img = smooth_image(1000, 800, noise=0.0)
    contract = PreprocessContract(size=224)
    from_png = decode("x.png", encode(img), contract).astype(int)
    from_jpeg = decode("x.jpg", encode(img, "JPEG"), contract).astype(int)
    assert from_jpeg.shape == (224, 224)
    assert np.abs(from_png - from_jpeg).mean() < 3


def test_16bit_png_takes_the_general_path():
    img = smooth_image(noise=0.0).astype(np.uint16) * 16 + 1000
    out = decode("deep.png", encode(img), PreprocessContract(size=64))
    assert int(out.max()) - int(out.min()) > 220


def test_window_with_percentile_clip_on_png_matches_general_path():
    data = encode(smooth_image())
    contract = PreprocessContract(size=64, clip_percentiles=(5, 95))
    np.testing.assert_array_equal(decode("x.png", data, contract), to_model_input(read_array("x.png", data), contract))
