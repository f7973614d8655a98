"""The decode step (raddist.data.decode.DecodeBatch): rows in, uint8 squares out, a bad row carried
as an error string that names no file, masks resized by nearest neighbour."""

import numpy as np
import pytest
from PIL import Image

from raddist.data.decode import DecodeBatch, failure_reason
from raddist.errors import InputError


def png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def batch(**columns):
    return {k: np.asarray(v, dtype=object if k != "row" else np.int64) for k, v in columns.items()}


def test_a_constant_or_missing_image_is_an_error_row(tmp_path):
    flat = png(tmp_path / "flat.png", np.full((8, 8), 100, np.uint8))
    out = DecodeBatch({"size": 4})(batch(row=[3, 4], uri=[flat, str(tmp_path / "gone.png")]))
    assert out["error"].tolist() == ["image is constant (every pixel is 100); it carries no signal", "object not found"]


def test_rows_become_squares_and_a_bad_row_an_error(tmp_path):
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32 x 64, 0..252
    good = png(tmp_path / "good.png", gradient)
    (tmp_path / "patient-0042.png").write_bytes(b"not a png")
    out = DecodeBatch({"size": 16})(batch(row=[7, 8, 9], uri=[good, str(tmp_path / "patient-0042.png"), good]))
    assert out["row"].tolist() == [7, 8, 9] and out["slice"].tolist() == [-1, -1, -1]
    assert out["image"].shape == (3, 16, 16) and out["image"].dtype == np.uint8
    assert out["error"][0] == out["error"][2] == "" and out["error"][1]
    assert "patient-0042" not in out["error"][1]  # file names may carry patient ids
    assert not out["image"][1].any()  # a failed row is a blank image, never dropped
    img = out["image"][0].astype(int)
    assert img[:, 0].mean() < img[:, -1].mean() and img.min() <= 16 and img.max() >= 230  # left dark, right bright


def test_segmentation_rows_bring_their_masks_at_the_model_size(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 2
    out = DecodeBatch({"size": 4}, masks=True)(batch(
        row=[0, 1], uri=[png(tmp_path / "i.png", np.arange(64, dtype=np.uint8).reshape(8, 8))] * 2,
        mask_uri=[png(tmp_path / "m.png", mask), ""]))
    np.testing.assert_array_equal(out["mask"][0], [[0, 0, 2, 2]] * 4)  # nearest: no class 1 invented
    assert out["shape"][0].tolist() == [1, 8, 8]
    assert out["error"][1] == "segmentation row has no mask_uri" and not out["mask"][1].any()


def test_an_empty_batch_keeps_every_column():
    out = DecodeBatch({"size": 8}, masks=True)(batch(row=[], uri=[], mask_uri=[]))
    assert {k: v.shape for k, v in out.items()} == {"row": (0,), "slice": (0,), "image": (0, 8, 8), "error": (0,),
                                                     "mask": (0, 8, 8), "shape": (0, 3)}


@pytest.mark.parametrize("error, reason", [
    (FileNotFoundError("s3://b/scans/p-17.png"), "object not found"),
    (InputError("s3://b/scans/p-17.png", "truncated p-17.png"), "truncated <file>"),
])
def test_failure_reasons_name_no_file(error, reason):
    assert failure_reason(error, "s3://b/scans/p-17.png") == reason
    message = failure_reason(ValueError("cannot read s3://b/scans/p-17.png"), "s3://b/scans/p-17.png")
    assert message.startswith("ValueError: cannot read ") and message.endswith("<file>") and "p-17" not in message
    assert len(failure_reason(ValueError("x" * 1000))) == 300



@pytest.mark.parametrize("patient", [f"P{i:04d}" for i in range(8)])  # the old code's order depended on hashing
@pytest.mark.parametrize("uri", ["s3://bucket/{}/scan.png", "file:///data/{}/scan.png"])
def test_failure_reasons_name_no_folder(patient, uri):
    uri = uri.format(patient)
    path = uri.split("://", 1)[1]  # as pyarrow and the OS spell it
    assert failure_reason(OSError(f"cannot read {uri}"), uri) == "OSError: cannot read <file>"
    assert failure_reason(OSError(f"open '{path}' failed"), uri) == "OSError: open '<file>' failed"
    assert failure_reason(OSError(f"open '{path.lstrip('/')}' failed"), uri) == "OSError: open '<file>' failed"
    assert failure_reason(OSError(f"no folder {path.rsplit('/', 1)[0]}"), uri) == "OSError: no folder <dir>"
