"""The actor's batched forward: device batches, padding for a compiled graph, compiler fallback,
and deferred JPEGs decoded in the actor."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from raddist.backbones.embedder import Embedder
from raddist.backbones.registry import get_config
from raddist.backbones.weights import build_model
from raddist.embed.forward import BatchedForward, power_of_two_at_most, sized_batch


@pytest.fixture(scope="module")
def embedder():
    config = get_config("tiny_vit")
    torch.manual_seed(0)
    return Embedder(config, build_model(config, "random"), n_last_blocks=2, patch_mean=True).eval()


def _images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _reference(embedder, images):
    with torch.inference_mode():
        return {k: v.to(torch.float16).numpy() for k, v in embedder(torch.from_numpy(images)).items()}


def test_batches_of_four_give_what_one_batch_gives(embedder):
    images = _images(10)
    out = BatchedForward(embedder, "cpu", 64, batch=4)(images)
    ref = _reference(embedder, images)
    assert set(out) == {"cls", "patch_mean"} and out["cls"].shape == (10, 128)
    for k in ref:
        np.testing.assert_allclose(out[k].astype(np.float32), ref[k].astype(np.float32), atol=2e-3, rtol=2e-3)


def test_compiled_forward_pads_the_last_batch_to_one_shape(embedder):
    images = _images(10, seed=1)
    forward = BatchedForward(embedder, "cpu", 64, batch=4, compile=True, backend="eager")
    out = forward(images)
    assert forward.compiled is not None and out["cls"].shape == (10, 128)
    np.testing.assert_allclose(out["cls"].astype(np.float32), _reference(embedder, images)["cls"].astype(np.float32),
                               atol=2e-3, rtol=2e-3)


def test_a_failing_compiler_falls_back_to_eager(embedder, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    images = _images(6, seed=2)
    forward = BatchedForward(embedder, "cpu", 64, batch=4, compile=True, backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="raddist.embed.forward"):
        out = forward(images)
    assert forward.compiled is None and "torch.compile failed" in caplog.text
    np.testing.assert_allclose(out["cls"].astype(np.float32), _reference(embedder, images)["cls"].astype(np.float32),
                               atol=2e-3, rtol=2e-3)


def test_power_of_two_at_most():
    assert [power_of_two_at_most(n) for n in (1, 2, 3, 500, 512, 513, 0)] == [1, 2, 2, 256, 512, 512, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_sized_batch_fits_the_card(embedder):
    gpu = embedder.to("cuda")
    batch = sized_batch(gpu, 64, "cuda")
    assert batch & (batch - 1) == 0 and 1 <= batch <= 512
    BatchedForward(gpu, "cuda", 64, batch=batch)(_images(batch + 3))
    embedder.to("cpu")


def _mixed_files(tmp_path):
    """Two JPEGs, a PNG and a truncated JPEG, with smooth radiograph-like content."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    blobs = []
    for fmt in ("JPEG", "PNG", "JPEG"):
        img = (120 + 80 * np.sin(xx / rng.uniform(9, 30)) * np.cos(yy / rng.uniform(9, 30))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, fmt)
        blobs.append(buf.getvalue())
    blobs.append(blobs[0][:200])  # a truncated JPEG
    uris = []
    for i, (blob, ext) in enumerate(zip(blobs, ("jpg", "png", "jpg", "jpg"))):
        uris.append(str(tmp_path / f"im{i}.{ext}"))
        open(uris[-1], "wb").write(blob)
    return uris


def test_actor_decodes_deferred_jpegs_and_reports_the_bad_one(tmp_path):
    """DecodeBatch leaves JPEGs to the device; EmbedBatch (here on the CPU device) decodes them,
    embeds them as it embeds Pillow's pixels, and gives a corrupt one its own error."""
    from raddist.data.contract import PreprocessContract
    from raddist.data.transforms import decode
    from raddist.data.decode import DecodeBatch
    from raddist.embed.actor import EmbedBatch

    uris = _mixed_files(tmp_path)
    batch = {"row": np.arange(4), "uri": np.array(uris, dtype=object)}
    contract = {"size": 64, "window": "auto", "clip_percentiles": None}

    decoded = DecodeBatch(contract, device_jpeg=True)(batch)
    assert [len(b) > 0 for b in decoded["encoded"]] == [True, False, True, True]
    assert list(decoded["error"]) == ["", "", "", ""]  # nothing decoded yet, nothing failed yet

    actor = EmbedBatch("tiny_vit", "random", {"n_last_blocks": 1, "patch_mean": True}, threads=1, size=64)
    out = actor(decoded)
    assert list(out["error"][:3]) == ["", "", ""] and out["error"][3].startswith("corrupt JPEG")
    assert "encoded" not in out and not out["cls"][3].any()
    pillow = np.stack([decode(u, open(u, "rb").read(), PreprocessContract(size=64)) for u in uris[:3]])
    ref = actor.forward(pillow)["cls"].astype(np.float32)
    np.testing.assert_allclose(out["cls"][:3].astype(np.float32), ref, atol=0.05, rtol=0.05)


def test_jpegs_the_device_cannot_decode_fall_back_to_pillow(tmp_path, monkeypatch):
    """If the device decoder refuses every file (a codec it lacks, a driver fault), the rows are
    decoded by Pillow in the actor: the same pixels as a CPU run, and only the truncated file fails."""
    from raddist.data.contract import PreprocessContract
    from raddist.data.transforms import decode
    from raddist.data.decode import DecodeBatch
    from raddist.embed import actor as actor_lib

    def refusing_decoder(blobs, size, device):
        return torch.zeros((len(blobs), size, size), dtype=torch.uint8), ["nvjpeg: unsupported"] * len(blobs)

    monkeypatch.setattr(actor_lib, "decode_jpegs", refusing_decoder)
    uris = _mixed_files(tmp_path)
    batch = {"row": np.arange(4), "uri": np.array(uris, dtype=object)}
    decoded = DecodeBatch({"size": 64}, device_jpeg=True)(batch)
    actor = actor_lib.EmbedBatch("tiny_vit", "random", {"n_last_blocks": 1, "patch_mean": False}, threads=1, size=64)
    out = actor(decoded)
    assert list(out["error"][:3]) == ["", "", ""] and out["error"][3].startswith("corrupt JPEG")
    pillow = np.stack([decode(u, open(u, "rb").read(), PreprocessContract(size=64)) for u in uris[:3]])
    np.testing.assert_allclose(out["cls"][:3].astype(np.float32), actor.forward(pillow)["cls"].astype(np.float32),
                               atol=1e-3, rtol=1e-3)
