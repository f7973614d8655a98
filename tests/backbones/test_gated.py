"""Gated weights: asking for a gated model's hub weights with no token is one clear error before any work."""

import pytest

from raddist import preflight
from raddist.errors import ConfigError
from raddist.spec import parse


def spec_of(name, weights="hub"):
    return parse({"backbones": [{"name": name, "weights": weights}],
                  "tasks": [{"name": "t", "manifest": "/nonexistent/m.parquet", "type": "binary", "labels": ["y"]}],
                  "protocols": [{"name": "knn"}], "storage": {"output": "/tmp/raddist-unused"}})


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """No HF_TOKEN, no stored token, an empty hub cache, and a hub that must not be asked."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", _no_network)


def _no_network(*args, **kwargs):
    raise AssertionError("the hub was asked")


@pytest.mark.parametrize("name,repo", [("dinov3_vitb16", "timm/vit_base_patch16_dinov3.lvd1689m"),
                                       ("medsiglip_448", "google/medsiglip-448")])
def test_a_gated_model_without_a_token_is_one_clear_error(no_token, name, repo):
    with pytest.raises(ConfigError) as err:
        preflight._hub_weights(spec_of(name))
    assert str(err.value).startswith(f"backbones.0.weights: {name} ({repo}) is gated (")
    assert str(err.value).endswith(f"and no token is set: accept its licence at https://huggingface.co/{repo} "
                                   "and set HF_TOKEN")
    assert len(str(err.value).splitlines()) == 1


def test_random_weights_of_a_gated_model_need_no_token(no_token):
    preflight._hub_weights(spec_of("dinov3_vitb16", weights="random"))  # nothing to download: no error


def test_with_a_token_the_hub_is_asked(no_token, monkeypatch):
    """The token is there: preflight goes on to ask the hub (here refused), never refusing for the token."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(ConfigError, match=r"the hub cannot be reached \(AssertionError: the hub was asked\)") as err:
        preflight._hub_weights(spec_of("medsiglip_448"))
    assert "gated" not in str(err.value)
