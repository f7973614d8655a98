"""Corrupted bytes fed to every reader: the only outcome besides a valid image is an InputError
that names the file. Nothing else escapes, so one bad image can never end a run."""

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from raddist.data.contract import PreprocessContract
from raddist.data.transforms import decode
from raddist.errors import InputError


def _png():
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg():
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64) % 241).astype(np.uint8).reshape(64, 64)).save(buf, "JPEG")
    return buf.getvalue()


def _nifti():
    vol = np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32)
    return nib.Nifti1Image(vol, np.eye(4)).to_bytes()


def _npy():
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32))
    return buf.getvalue()


SAMPLES = {
    "x.png": _png,
    "x.jpg": _jpeg,
    "x.nii": _nifti,
    "x.npy": _npy,
    "ct.dcm": lambda: open(get_testdata_file("CT_small.dcm", download=False), "rb").read(),
    "cr.dcm": lambda: open(get_testdata_file("RG1_UNCR.dcm", download=False), "rb").read(),
}


def _mutations(data: bytes, rng: np.random.Generator, n: int):
    for i in range(n):
        kind = i % 4
        b = bytearray(data)
        if kind == 0:  # truncate
            yield bytes(b[: int(rng.integers(0, len(b)))])
        elif kind == 1:  # flip random bytes
            for pos in rng.integers(0, len(b), size=int(rng.integers(1, 32))):
                b[pos] = int(rng.integers(0, 256))
            yield bytes(b)
        elif kind == 2:  # overwrite the header
            end = min(len(b), int(rng.integers(1, 400)))
            b[:end] = rng.integers(0, 256, size=end, dtype=np.uint8).tobytes()
            yield bytes(b)
        else:  # splice garbage into the middle
            pos = int(rng.integers(0, len(b)))
            yield bytes(b[:pos]) + rng.integers(0, 256, size=int(rng.integers(1, 200)), dtype=np.uint8).tobytes() + bytes(b[pos:])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_corrupted_bytes_give_an_image_or_an_input_error(name):
    contract = PreprocessContract(size=32)
    data = SAMPLES[name]()
    assert decode(name, data, contract).shape == (32, 32)  # the clean file decodes
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    errors = 0
    for corrupted in _mutations(data, rng, 60):
        try:
            out = decode(name, corrupted, contract)
        except InputError as e:
            errors += 1
            assert e.uri == name and e.reason
            continue
        assert out.shape == (32, 32) and out.dtype == np.uint8
    assert errors >= 15  # truncations and header overwrites must be caught, not silently decoded
