"""Preflight of the backbones: every library they need imports, every planned size fits their patch."""

import sys
from pathlib import Path

import pytest
import yaml

import raddist
from raddist import preflight
from raddist.errors import ConfigError
from raddist.config import load


def spec_with(tmp_path, **changes):
    config = yaml.safe_load((Path(raddist.__file__).parent / "configs" / "demo.yaml").read_text())
    config.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return load(str(path))


def test_a_size_the_patch_does_not_divide_is_one_line(tmp_path):
    spec = spec_with(tmp_path, image_size=60)
    with pytest.raises(ConfigError) as err:
        preflight.backbones(spec)
    assert str(err.value) == f"tasks.{spec.tasks[0].name}: image size 60 is not a multiple of tiny_vit's patch size 8 (use 56 or 64)"


def test_the_demo_passes(tmp_path):
    preflight.backbones(spec_with(tmp_path))


def test_a_missing_library_names_the_backbone_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip_torch were not installed
    spec = spec_with(tmp_path, backbones=[{"name": "tiny_vit", "weights": "random"},
                                          {"name": "biomedclip_vitb16", "weights": "hub"}])
    with pytest.raises(ConfigError) as err:
        preflight.backbones(spec)
    line = str(err.value)
    assert line.startswith("backbones.1: biomedclip_vitb16 needs the package open_clip_torch (open_clip does not import")
    assert line.endswith("pip install open_clip_torch") and "\n" not in line
    # random init builds the timm trunk alone: no open_clip needed
    preflight.backbones(spec_with(tmp_path, backbones=[{"name": "tiny_vit", "weights": "random"},
                                                       {"name": "biomedclip_vitb16", "weights": "random"}]))
