import pytest

from raddist import spec as spec_lib
from raddist.errors import ConfigError


def _data(**over):
    d = {
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "chest", "manifest": "/d/m.parquet", "type": "multilabel", "labels": ["a", "b"]}],
        "protocols": [{"name": "knn"}],
    }
    d.update(over)
    return d


def test_minimal_spec_has_defaults():
    s = spec_lib.parse(_data())
    assert s.seeds == [0]
    assert s.features.n_last_blocks == 4
    assert s.backbones[0].label == "tiny_vit"


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as e:
        spec_lib.parse(_data(backbone=[]))
    assert "unknown key(s) ['backbone']" in str(e.value) and "'backbones'" in str(e.value)


def test_unknown_nested_key_names_its_location():
    data = _data()
    data["tasks"][0]["lables"] = ["x"]
    with pytest.raises(ConfigError, match=r"tasks\.0.*unknown key\(s\) \['lables'\].*'labels'"):
        spec_lib.parse(data)


def test_bad_enum_value_lists_allowed():
    data = _data()
    data["tasks"][0]["type"] = "multi-label"
    with pytest.raises(ConfigError, match=r"tasks\.0\.type.*'multilabel'.*'multiclass'"):
        spec_lib.parse(data)


def test_unknown_backbone_suggests_the_closest_and_protocol_lists_the_registry():
    with pytest.raises(ConfigError, match=r"unknown backbone 'dinov2_vitb'; did you mean 'dinov2_vitb14'"):
        spec_lib.parse(_data(backbones=[{"name": "dinov2_vitb"}]))
    with pytest.raises(ConfigError, match=r"unknown protocol 'svm'; allowed: \[.*'knn'"):
        spec_lib.parse(_data(protocols=[{"name": "svm"}]))


def test_protocol_params_are_checked():
    with pytest.raises(ConfigError, match=r"protocol 'knn' params.*unknown_param"):
        spec_lib.parse(_data(protocols=[{"name": "knn", "params": {"unknown_param": 1}}]))


def test_multiclass_needs_class_names():
    data = _data(tasks=[{"name": "t", "manifest": "m", "type": "multiclass", "labels": ["label"]}])
    with pytest.raises(ConfigError, match="classes"):
        spec_lib.parse(data)


def test_segmentation_task_names_mask_classes_not_label_columns():
    seg = {"name": "lungs", "manifest": "/d/s.parquet", "type": "segmentation", "classes": ["background", "lung"]}
    s = spec_lib.parse(_data(tasks=[seg]))
    assert s.tasks[0].class_names == ["background", "lung"] and s.tasks[0].labels == []
    with pytest.raises(ConfigError, match="no label columns"):
        spec_lib.parse(_data(tasks=[{**seg, "labels": ["x"]}]))
    with pytest.raises(ConfigError, match="needs 'labels'"):
        spec_lib.parse(_data(tasks=[{"name": "c", "manifest": "m", "type": "binary"}]))
    with pytest.raises(ConfigError, match=r"pool.*'mean'"):
        spec_lib.parse(_data(tasks=[{**seg, "pool": "median"}]))


def test_the_readme_spec_example_is_a_valid_spec():
    import os

    import yaml

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    example = readme.split("## The sweep spec", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    spec = spec_lib.parse(yaml.safe_load(example), source="README.md")
    assert [p.name for p in spec.protocols] == ["knn", "linear", "fewshot", "lora", "lora"]
    assert spec.protocols[-1].search is not None and spec.robustness is not None
    assert [e.name for e in spec.tasks[1].external] == ["site_b"] and spec.tasks[1].subgroups == ["sex", "site"]
