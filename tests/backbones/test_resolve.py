"""Backbones by name without a registry entry (timm:, hf:, open_clip:, python:): contracts read from the
model's own config, part of the cache key, and every bad or incomplete contract one clear error."""

import json

import pytest
import torch

from raddist import provenance
from raddist.backbones.embedder import Embedder
from raddist.backbones.registry import get_config
from raddist.backbones.weights import build_model
from raddist.errors import ConfigError
from raddist.plan import contract_for, make_plan
from raddist.spec import parse


def spec_of(*names, size=None):
    return parse({"backbones": [{"name": n, "weights": "random"} for n in names],
                  "tasks": [{"name": "t", "manifest": "/nonexistent/m.parquet", "type": "binary", "labels": ["y"],
                             **({"image_size": size} if size else {})}],
                  "protocols": [{"name": "knn"}], "storage": {"output": "/tmp/raddist-unused"}})


def test_timm_names_take_timms_pretrained_cfg():
    vit = get_config("timm:vit_small_patch16_224.augreg_in21k")
    assert (vit.source, vit.model_id, vit.input_size, vit.mean, vit.std) == (
        "timm", "vit_small_patch16_224.augreg_in21k", 224, (0.5,) * 3, (0.5,) * 3)
    assert (vit.patch_size, vit.embed_dim, vit.num_blocks, vit.family, vit.has_cls_token) == (16, 384, 12, "vit", True)
    cnn = get_config("timm:resnet18")  # the default tag, written out
    assert cnn.model_id == "resnet18.a1_in1k" and cnn.family == "cnn"
    assert (cnn.block_dims, cnn.block_indices, cnn.mean) == ((64, 128, 256, 512), (1, 2, 3, 4), (0.485, 0.456, 0.406))
    plan = make_plan(spec_of("timm:vit_small_patch16_224.augreg_in21k"))
    assert contract_for(plan.spec, plan.spec.backbones[0], plan.spec.tasks[0])["size"] == 224
    with torch.device("meta"):
        out = Embedder(cnn, build_model(cnn, "random"), n_last_blocks=2)(torch.empty(1, 64, 64, dtype=torch.uint8))
    assert out["cls"].shape == (1, 256 + 512)


def hf_dir(path, mean=0.4, crop=56):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "patch_size": 14, "image_size": 56, "mlp_ratio": 2}))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_center_crop": True, "crop_size": {"height": crop, "width": crop},
        "size": {"shortest_edge": 64}, "image_mean": [mean] * 3, "image_std": [0.2, 0.2, 0.2]}))
    return path


def test_hf_names_read_the_model_directory(tmp_path):
    name = f"hf:{hf_dir(tmp_path / 'rad')}"
    config = get_config(name)
    assert (config.source, config.input_size, config.mean, config.std) == ("transformers", 56, (0.4,) * 3, (0.2,) * 3)
    assert (config.patch_size, config.embed_dim, config.num_blocks, config.has_cls_token) == (14, 32, 2, True)
    out = Embedder(config, build_model(config, "random"), patch_tokens=1)(torch.zeros(2, 56, 56, dtype=torch.uint8))
    assert out["cls"].shape == (2, 32) and out["patch_tokens"].shape == (2, 32, 4, 4)
    assert provenance.hub_repo(name) is None  # a directory: no hub revision to resolve


def test_the_resolved_contract_is_part_of_the_cache_key(tmp_path):
    a, b = f"hf:{hf_dir(tmp_path / 'a', mean=0.4)}", f"hf:{hf_dir(tmp_path / 'b', mean=0.6)}"
    assert provenance.backbone_identity("dinov2_vitb14") == "dinov2_vitb14"  # registered: its name, as before
    ida, idb = provenance.backbone_identity(a), provenance.backbone_identity(b)
    assert ida.startswith(a + "|") and ida.split("|")[1] != idb.split("|")[1]


def test_bad_names_and_contracts_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the hub is unreachable here anyway
    cases = {
        "timm:vit_smal_patch16_224": "timm has no model 'vit_smal_patch16_224'",
        f"hf:{tmp_path}": "config.json is missing",
        "hf:nobody-xyz/absent-model": "cannot read config.json of nobody-xyz/absent-model",
        "python:tests.backbones.own_model:incomplete": "contract misses ['std', 'embed_dim']",
        "python:tests.backbones.own_model:undeclared": "declares no contract",
        "python:tests.backbones.no_such_module:f": "cannot import f from tests.backbones.no_such_module",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
            get_config(name)
        assert len(str(err.value).splitlines()) == 1 and name in str(err.value)
    with pytest.raises(ConfigError, match=r"backbones\.0\.name.*contract misses"):
        spec_of("python:tests.backbones.own_model:incomplete")


def test_installed_packages_register_backbones_by_entry_point(tmp_path, monkeypatch):
    """A package's dist-info declaring `raddist.backbones` entry points: its configs are registered."""
    from raddist.backbones import registry
    from raddist.backbones.resolve import load_entry_points

    (tmp_path / "plugin_pkg.py").write_text(
        "import dataclasses\nfrom raddist.backbones.registry import get_config\n"
        "def configs():\n    return [dataclasses.replace(get_config('tiny_vit'), name='plugin_vit', license='bsd')]\n")
    info = tmp_path / "plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[raddist.backbones]\nplugin = plugin_pkg:configs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert load_entry_points() == ["plugin_vit"]
    assert get_config("plugin_vit").license == "bsd"
    (info / "entry_points.txt").write_text("[raddist.backbones]\nbroken = plugin_pkg:absent\n")
    with pytest.raises(ConfigError, match=r"entry point broken = plugin_pkg:absent \(raddist.backbones\) fails to load"):
        load_entry_points()


def test_more_feature_blocks_than_the_model_has_is_refused_before_ray():
    from raddist import preflight

    spec = parse({**spec_of("timm:resnet18").model_dump(exclude_none=True), "features": {"n_last_blocks": 5}})
    with pytest.raises(ConfigError, match=r"features.n_last_blocks: 5 blocks asked for, but timm:resnet18 has 4"):
        preflight.backbones(spec)


def test_a_native_3d_encoder_can_be_described():
    import dataclasses

    volume = dataclasses.replace(get_config("tiny_vit"), name="vol", input_depth=64, spacing=(1.5, 1.0, 1.0),
                                 channel_layout="3d")
    assert (volume.input_depth, volume.spacing, volume.channel_layout) == (64, (1.5, 1.0, 1.0), "3d")
    with pytest.raises(ValueError, match="channel_layout 'rgbd' not in"):
        dataclasses.replace(volume, channel_layout="rgbd")
