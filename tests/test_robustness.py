"""Corruptions: deterministic per image and seed, shape and dtype kept, worse with severity."""

import re

import numpy as np
import pytest

from raddist import robustness


def _image(size=224):
    """A smooth radiograph-like image: two lung fields, a cardiac silhouette, a sharp rib pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.5) / 0.3) ** 2))
    ribs = 0.15 * (np.sin(y * 60) > 0.6)
    return np.clip(0.2 + 0.5 * lungs + ribs, 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", robustness.CORRUPTIONS)
def test_deterministic_shape_dtype_and_monotone(name):
    img = _image()
    outs = [robustness.corrupt(img, name, s, seed=3, sample_id="p0001_s1") for s in robustness.SEVERITIES]
    again = robustness.corrupt(img, name, 3, seed=3, sample_id="p0001_s1")
    np.testing.assert_array_equal(outs[2], again)
    assert all(o.shape == img.shape and o.dtype == img.dtype and o.min() >= 0 and o.max() <= 1 for o in outs)
    errors = [float(np.mean((o.astype(np.float64) - img) ** 2)) for o in outs]
    assert errors[0] > 1e-6 and all(b > a for a, b in zip(errors, errors[1:])), errors


def test_noise_depends_on_seed_and_image_only():
    img = _image(64)
    a = robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="a")
    assert not np.array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=1, sample_id="a"))
    assert not np.array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="b"))
    # the same image corrupted after others (another worker, another order): the same pixels
    for other in ("x", "y", "z"):
        robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id=other)
    np.testing.assert_array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="a"))
    noise = a.astype(np.float64) - img
    inside = (img > 0.2) & (img < 0.8)  # away from clipping
    assert noise[inside].std() == pytest.approx(robustness.PARAMS["gaussian_noise"][2], rel=0.1)


def test_channels_and_bad_inputs():
    rgb = np.repeat(_image(64)[..., None], 3, axis=2)
    for name in robustness.CORRUPTIONS:
        assert robustness.corrupt(rgb, name, 5, seed=0, sample_id="a").shape == rgb.shape
    with pytest.raises(robustness.CorruptionError, match=r"unknown corruption 'fog'; allowed: \['gaussian_noise'"):
        robustness.corrupt(rgb, "fog", 1, 0, "a")
    with pytest.raises(robustness.CorruptionError, match="severity 6 is not one of"):
        robustness.corrupt(rgb, "jpeg", 6, 0, "a")
    with pytest.raises(robustness.CorruptionError, match="dtype uint8: expected floats"):
        robustness.corrupt((rgb * 255).astype(np.uint8), "jpeg", 1, 0, "a")


def _spec(robustness, tasks=None):
    from raddist import spec

    tasks = tasks or [{"name": "cxr", "manifest": "/tmp/m.parquet", "type": "binary", "labels": ["y"]}]
    return spec.parse({"backbones": [{"name": "tiny_vit", "weights": "random"}], "tasks": tasks,
                       "protocols": [{"name": "knn"}, {"name": "linear"}], "robustness": robustness})


def test_spec_names_a_bad_corruption_severity_protocol_or_task_in_one_line():
    from raddist.errors import ConfigError

    ok = _spec({"corruptions": ["jpeg", "contrast"], "severities": [1, 5]}).robustness
    assert (ok.corruptions, ok.severities, ok.seed, ok.tasks, ok.protocols) == (["jpeg", "contrast"], [1, 5], 0, None, None)
    for bad, line in [({"corruptions": ["fog"]}, "robustness.corruptions: unknown corruption 'fog'; allowed: ['gaussian_noise'"),
                      ({"corruptions": ["jpeg"], "severities": [6]}, "robustness.severities: severity 6 is not one of"),
                      ({"corruptions": ["jpeg"], "protocols": ["fewshot"]},
                       "robustness.protocols: protocol 'fewshot' does not score further test sets"),
                      ({"corruptions": ["jpeg"], "tasks": ["nih"]}, "robustness.tasks: unknown task(s) ['nih']; allowed: ['cxr']")]:
        with pytest.raises(ConfigError, match=re.escape(line)) as e:
            _spec(bad)
        assert "\n" not in str(e.value)
