"""Embedder: the features equal the models' own outputs, and normalisation follows the config."""

import pytest
import torch

from raddist.backbones.embedder import Embedder
from raddist.backbones.registry import get_config
from raddist.backbones.weights import build_model
from tests.backbones.helpers import TINY_MSN, manual_normalize, random_images


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on a shared 2-core box stall on each other: one is ~20x faster here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_cnn"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_tiny_backbones_give_declared_dims(name, n):
    config = get_config(name)
    embedder = Embedder(config, build_model(config, "random"), n_last_blocks=n, patch_tokens=True)
    out = embedder(random_images(config, batch=32))
    assert out["cls"].shape == (32, sum(embedder.block_dims))
    assert set(out) == set(embedder.output_keys)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["patch_tokens"].shape[:2] == (32, embedder.block_dims[-1])


def test_vit_cls_equals_timm_forward_features():
    config = get_config("tiny_vit")
    model = build_model(config, "random")
    images = random_images(config)
    out = Embedder(config, model, n_last_blocks=4, patch_tokens=True)(images)
    with torch.inference_mode():
        tokens = model.forward_features(manual_normalize(config, images))  # after the final norm
    d = config.embed_dim
    torch.testing.assert_close(out["cls"][:, -d:], tokens[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["patch_mean"], tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    grid = config.input_size // config.patch_size
    assert out["patch_tokens"].shape == (4, d, grid, grid)
    torch.testing.assert_close(out["patch_tokens"].flatten(2).transpose(1, 2), tokens[:, 1:], rtol=1e-5, atol=1e-5)
    # earlier blocks come first and differ from the last
    assert not torch.allclose(out["cls"][:, :d], out["cls"][:, -d:])


def test_cnn_cls_equals_timm_pooled_features():
    config = get_config("tiny_cnn")
    model = build_model(config, "random")
    images = random_images(config)
    out = Embedder(config, model, n_last_blocks=2)(images)
    with torch.inference_mode():
        pooled = model(manual_normalize(config, images))  # num_classes=0: global average pool
    torch.testing.assert_close(out["cls"][:, -config.embed_dim:], pooled, rtol=1e-5, atol=1e-5)
    assert "patch_mean" not in out


@pytest.mark.parametrize("v", [0, 37, 255])
def test_uint8_value_normalises_like_manual(v):
    config = get_config("tiny_vit")
    model = build_model(config, "random")
    embedder = Embedder(config, model)
    gray = torch.full((2, 64, 64), v, dtype=torch.uint8)
    x = embedder.normalize(gray)
    expected = torch.tensor([(v / 255 - m) / s for m, s in zip(config.mean, config.std)]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected.expand(2, 3, 64, 64), rtol=1e-6, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        manual = model.forward_features(manual_normalize(config, gray))[:, 0]
    torch.testing.assert_close(embedder(gray)["cls"], manual, rtol=1e-5, atol=1e-5)


def test_grayscale_layouts_agree():
    config = get_config("tiny_cnn")
    embedder = Embedder(config, build_model(config, "random"))
    gray = random_images(config)
    a = embedder(gray)["cls"]
    b = embedder(gray.unsqueeze(1))["cls"]
    c = embedder(gray.unsqueeze(1).repeat(1, 3, 1, 1))["cls"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_rejects_float_and_bad_shapes():
    config = get_config("tiny_cnn")
    embedder = Embedder(config, build_model(config, "random"))
    with pytest.raises(TypeError, match="uint8"):
        embedder(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="expected"):
        embedder(torch.zeros(1, 2, 64, 64, dtype=torch.uint8))


def test_random_init_is_deterministic_and_leaves_rng_alone():
    config = get_config("tiny_vit")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(config, "random").state_dict()
    b = build_model(config, "random").state_dict()
    assert torch.rand(1).item() == before.item()  # the caller's RNG stream is untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dinov2_small_runs_at_224_with_a_16x16_grid():
    config = get_config("dinov2_vits14")
    embedder = Embedder(config, build_model(config, "random"), n_last_blocks=4, patch_tokens=True)
    out = embedder(random_images(config, batch=1))
    assert out["cls"].shape == (1, 4 * 384)
    assert out["patch_mean"].shape == (1, 384)
    assert out["patch_tokens"].shape == (1, 384, 16, 16)


def test_transformers_adapter_matches_last_hidden_state():
    model = build_model(TINY_MSN, "random")
    images = random_images(TINY_MSN)
    out = Embedder(TINY_MSN, model, n_last_blocks=3, patch_tokens=True)(images)
    with torch.inference_mode():
        last = model.model(pixel_values=manual_normalize(TINY_MSN, images)).last_hidden_state
    torch.testing.assert_close(out["cls"][:, -32:], last[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["patch_mean"], last[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    assert out["cls"].shape == (4, 96)
    assert out["patch_tokens"].shape == (4, 32, 4, 4)


def test_open_clip_hub_without_open_clip_is_a_clear_error():
    try:
        import open_clip  # noqa: F401

        pytest.skip("open_clip is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="open_clip_torch"):
        build_model(get_config("biomedclip_vitb16"), "hub")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu_fp32():
    config = get_config("tiny_vit")
    model = build_model(config, "random")
    images = random_images(config, batch=8)
    cpu = Embedder(config, model)(images)
    gpu = Embedder(config, build_model(config, "random")).cuda()(images)  # uint8 moved on the device
    assert gpu["cls"].dtype == torch.float32 and gpu["cls"].is_cuda
    torch.testing.assert_close(gpu["cls"].cpu(), cpu["cls"], rtol=0.05, atol=0.05)
