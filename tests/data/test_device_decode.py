"""JPEG decoding on the embedding device, checked on the CPU device against Pillow's path."""

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from raddist.data.contract import PreprocessContract
from raddist.data.device_decode import decode_jpegs, defer_to_device, draft_scale
from raddist.data.transforms import decode


@pytest.fixture(scope="module")
def radiograph_jpegs():
    """A real CR chest radiograph (pydicom-data), 8-bit, as JPEGs at three sizes. Where pydicom-data
    is not installed (the GPU machine), pydicom's own CT slice stands in."""
    from raddist.data.readers import read_array

    path = get_testdata_file("RG1_UNCR.dcm", download=False) or get_testdata_file("CT_small.dcm", download=False)
    pixels = read_array(path, open(path, "rb").read()).pixels.astype(np.float32)
    gray = Image.fromarray(np.rint(255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8), "L")
    out = []
    for side in (1800, 1024, 300):
        buf = io.BytesIO()
        gray.resize((side, side)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("size", [224, 64])
def test_matches_pillow_path_within_a_few_grey_levels(radiograph_jpegs, size):
    ref = np.stack([decode(f"x{i}.jpg", b, PreprocessContract(size=size)) for i, b in enumerate(radiograph_jpegs)])
    out, errors = decode_jpegs(radiograph_jpegs, size, "cpu")
    assert errors == ["", "", ""] and out.shape == (3, size, size)
    diff = np.abs(out.numpy().astype(int) - ref.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 4, (diff.mean(), diff.max())


def test_a_corrupt_or_constant_jpeg_fails_alone(radiograph_jpegs):
    good = radiograph_jpegs[1]
    flat = io.BytesIO()
    Image.new("L", (64, 64), 77).save(flat, "JPEG")
    out, errors = decode_jpegs([good, good[:300], flat.getvalue(), good], 64, "cpu")
    assert errors[0] == errors[3] == ""
    assert errors[1].startswith("corrupt JPEG") and "constant" in errors[2]
    alone, _ = decode_jpegs([good], 64, "cpu")
    np.testing.assert_array_equal(out[0].numpy(), alone[0].numpy())
    np.testing.assert_array_equal(out[3].numpy(), alone[0].numpy())


def test_only_jpegs_under_the_auto_window_are_deferred(radiograph_jpegs):
    jpeg, png = radiograph_jpegs[2], io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    assert defer_to_device("a.jpg", jpeg, PreprocessContract())
    assert not defer_to_device("a.png", png.getvalue(), PreprocessContract())
    assert not defer_to_device("a.jpg", jpeg, PreprocessContract(window=(40.0, 400.0)))
    assert not defer_to_device("a.jpg", jpeg, PreprocessContract(clip_percentiles=(5.0, 95.0)))


def test_draft_scale_as_pillow_picks_it():
    for h, w, size in [(1024, 1024, 224), (2048, 2500, 224), (900, 1200, 224), (300, 300, 224), (100, 100, 224)]:
        img = Image.new("L", (w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        jpeg = Image.open(io.BytesIO(buf.getvalue()))
        jpeg.draft("L", (size, size))
        assert -(-w // draft_scale(h, w, size)) == jpeg.size[0], (h, w)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU (nvjpeg)")
def test_nvjpeg_matches_the_cpu_device(radiograph_jpegs):
    cpu, _ = decode_jpegs(radiograph_jpegs, 224, "cpu")
    gpu, errors = decode_jpegs(radiograph_jpegs + [radiograph_jpegs[0][:300]], 224, "cuda")
    assert errors[:3] == ["", "", ""] and errors[3].startswith("corrupt JPEG") and gpu.is_cuda
    diff = (gpu[:3].cpu().int() - cpu.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 4
