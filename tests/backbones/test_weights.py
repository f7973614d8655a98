"""build_model with file weights (.safetensors, .pth, local and s3://) and weights_identity."""

import os

import pytest
import torch
from safetensors.torch import save_file

from raddist.backbones.registry import BackboneConfig, get_config
from raddist.backbones.weights import build_model
from raddist.keys import weights_identity
from raddist.errors import ConfigError

from tests.backbones.helpers import TINY_MSN, manual_normalize, random_images

TINY_CLIP_TRUNK = BackboneConfig(  # an open_clip-style backbone whose trunk is the tiny timm ViT
    "tiny_clip", "open_clip", "hf-hub:none/tiny", 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 8, 64, 4, "vit",
    kwargs={"img_size": 64, "patch_size": 8, "depth": 4}, timm_arch="test_vit",
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained(config):
    """A model whose weights differ from the seeded random init, so a load that did nothing fails."""
    model = build_model(config, "random")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _assert_same(a, b, config):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = manual_normalize(config, random_images(config))
    with torch.inference_mode():
        assert torch.equal(a.eval().forward_features(x), b.eval().forward_features(x))


def _save(state_dict, path):
    if path.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", ["tiny_vit", "tiny_cnn"])
def test_timm_file_round_trip(tmp_path, name, suffix):
    config = get_config(name)
    model = _trained(config)
    path = str(tmp_path / f"weights{suffix}")
    _save(model.state_dict(), path)
    _assert_same(model, build_model(config, path), config)
    _assert_same(model, build_model(config, "file://" + path), config)


def test_pth_with_state_dict_wrapper(tmp_path):
    config = get_config("tiny_vit")
    model = _trained(config)
    path = str(tmp_path / "checkpoint.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    _assert_same(model, build_model(config, path), config)


def test_open_clip_style_checkpoint_loads_the_trunk(tmp_path):
    model = _trained(TINY_CLIP_TRUNK)
    full = {f"visual.trunk.{k}": v for k, v in model.state_dict().items()}
    full["text.proj.weight"] = torch.zeros(2, 2)  # the text tower is ignored
    full["visual.head.proj.weight"] = torch.zeros(2, 2)
    path = str(tmp_path / "open_clip_model.safetensors")
    _save(full, path)
    _assert_same(model, build_model(TINY_CLIP_TRUNK, path), TINY_CLIP_TRUNK)


def test_transformers_file_round_trip(tmp_path):
    model = _trained(TINY_MSN)
    for state_dict, fname in ((model.state_dict(), "adapter.pth"), (model.model.state_dict(), "raw.safetensors")):
        path = str(tmp_path / fname)
        _save(state_dict, path)
        _assert_same(model, build_model(TINY_MSN, path), TINY_MSN)


@pytest.mark.parametrize("config", [get_config("tiny_vit"), TINY_CLIP_TRUNK], ids=["timm", "open_clip"])
def test_missing_tensors_fail_loudly(tmp_path, config):
    state_dict = _trained(config).state_dict()
    state_dict.pop("norm.weight")
    path = str(tmp_path / "partial.pth")
    _save(state_dict, path)
    with pytest.raises(RuntimeError, match="norm.weight"):
        build_model(config, path)


def test_timm_checkpoint_with_a_classifier_loads_the_backbone(tmp_path):
    config = get_config("tiny_vit")
    model = _trained(config)
    state_dict = dict(model.state_dict(), **{"head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)})
    path = str(tmp_path / "with_head.safetensors")
    _save(state_dict, path)
    _assert_same(model, build_model(config, path), config)


def test_bad_weights_strings():
    with pytest.raises(ConfigError, match="hub"):
        build_model(get_config("tiny_vit"), "imagenet")
    with pytest.raises(FileNotFoundError):
        build_model(get_config("tiny_vit"), "/nonexistent/weights.safetensors")


@pytest.fixture
def s3_bucket(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="weights")
    yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    server.stop()


def test_s3_weights(tmp_path, s3_bucket):
    config = get_config("tiny_vit")
    model = _trained(config)
    path = str(tmp_path / "w.safetensors")
    _save(model.state_dict(), path)
    s3_bucket.upload_file(path, "weights", "runs/w.safetensors")
    uri = "s3://weights/runs/w.safetensors"
    _assert_same(model, build_model(config, uri), config)
    identity = weights_identity(uri)
    assert identity.startswith(f"file:{uri}|size={os.path.getsize(path)}|mtime_ns=")
