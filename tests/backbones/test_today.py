"""The models a radiology team weighs today: their contracts, licences and gating, register tokens kept out
of the patch features, a tiny real forward of each architecture, and the shipped radiology-2026 config."""

import dataclasses

import pytest
import timm
import torch

from raddist.backbones.embedder import Embedder
from raddist.backbones.hf_adapter import HFViTAdapter
from raddist.backbones.registry import RADIOLOGY_2026_BACKBONES, get_config
from raddist.backbones.weights import build_model
from raddist.cli import main


def test_contracts_licences_and_gating_are_recorded():
    assert get_config("rad_dino").mean == (0.5307,) * 3 and get_config("rad_dino").std == (0.2583,) * 3
    assert get_config("rad_dino").input_size == 518 and get_config("medsiglip_448").input_size == 448
    gated = {n for n in RADIOLOGY_2026_BACKBONES if get_config(n).gated}
    assert gated == {"dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vithp16", "medsiglip_448"}
    assert all(get_config(n).license for n in RADIOLOGY_2026_BACKBONES)
    assert get_config("dinov3_vitb16").license == "dinov3-license"
    assert "research" in get_config("rad_dino").license


def tiny(name: str, **kwargs):
    """The registered architecture, shrunk (fewer, narrower blocks) so a real CPU forward is cheap."""
    config = get_config(name)
    return dataclasses.replace(config, kwargs={**config.kwargs, **kwargs},
                               num_blocks=kwargs.get("depth", kwargs.get("num_hidden_layers", config.num_blocks)),
                               embed_dim=kwargs.get("embed_dim", kwargs.get("hidden_size", config.embed_dim)))


def test_dinov3_register_tokens_are_not_patch_features():
    """One class token and 4 registers: the grid holds the 16 patch tokens of a 64 px image, exactly the
    model's last tokens after its 5 prefix tokens, and 'cls' is token 0."""
    config = tiny("dinov3_vits16", img_size=64, depth=2, embed_dim=64, num_heads=2)
    model = build_model(config, "random")
    assert model.num_prefix_tokens == 5
    images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8)
    out = Embedder(config, model, n_last_blocks=1, patch_tokens=1)(images)
    with torch.no_grad():
        tokens = model.forward_features(Embedder(config, model).normalize(images))  # (2, 5 + 16, 64), normed
    assert tokens.shape == (2, 21, 64)
    assert out["patch_tokens"].shape == (2, 64, 4, 4)
    assert torch.allclose(out["patch_tokens"].flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-5)
    assert torch.allclose(out["cls"], tokens[:, 0], atol=1e-5)
    assert torch.allclose(out["patch_mean"], tokens[:, 5:].mean(1), atol=1e-5)


@pytest.mark.parametrize("name,size", [("rad_dino", 56), ("rad_dino", 70), ("medsiglip_448", 56)])
def test_transformers_entries_run_for_real(name, size):
    """RAD-DINO (Dinov2Model, class token) and MedSigLIP (SiglipVisionModel, none) through the adapter,
    at their built size and off it (position embeddings interpolated)."""
    config = tiny(name, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                  **({"intermediate_size": 64} if name == "medsiglip_448" else {}))
    model = build_model(config, "random")
    images = torch.randint(0, 256, (2, size, size), dtype=torch.uint8)
    embedder = Embedder(config, model, n_last_blocks=2, patch_tokens=1)
    out = embedder(images)
    grid = size // 14
    assert out["patch_tokens"].shape == (2, 32, grid, grid) and out["cls"].shape == (2, 64)
    with torch.no_grad():
        last = model.forward_features(embedder.normalize(images))
    prefix = 1 if config.has_cls_token else 0
    assert last.shape == (2, prefix + grid * grid, 32)
    if config.has_cls_token:  # 'cls' of the last block is the normed class token transformers returns
        assert torch.allclose(out["cls"][:, 32:], last[:, 0], atol=1e-5)
    assert torch.isfinite(out["cls"]).all()


def test_hf_register_tokens_are_split_off():
    """Dinov2WithRegisters: class + 4 registers are prefix tokens, the grid is patches only."""
    import transformers

    cfg = transformers.AutoConfig.for_model("dinov2_with_registers", hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=28, patch_size=14, num_register_tokens=4)
    adapter = HFViTAdapter(transformers.AutoModel.from_config(cfg)).eval()
    assert adapter.num_prefix_tokens == 5
    with torch.no_grad():
        ((grid, prefix),) = adapter.forward_intermediates(torch.randn(1, 3, 28, 28), indices=1, norm=True,
                                                          return_prefix_tokens=True, intermediates_only=True)
        last = adapter.forward_features(torch.randn(1, 3, 28, 28))
    assert grid.shape == (1, 32, 2, 2) and prefix.shape == (1, 5, 32) and last.shape == (1, 9, 32)


def test_siglip2_and_pe_are_timm_models():
    assert get_config("siglip2_so400m14").model_id in timm.list_pretrained("vit_so400m_patch14_siglip_224.*")
    assert get_config("pe_core_vitl14").model_id in timm.list_pretrained("vit_pe_core_large_patch14_336.*")


def test_radiology_2026_checks_with_random_weights(capsys):
    """Every (backbone, size) of the shipped config on the meta device, LoRA's step included: exit 0."""
    rc = main(["check", "radiology-2026", "--weights", "random"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.strip().splitlines()[-1] == "25/25 (backbone, image size) ok; 2/2 trainable cells placed"


def test_biomedclip_open_clip_checkpoint_loads_into_its_timm_trunk(tmp_path):
    """BiomedCLIP's vision tower as open_clip builds it (its open_clip_config.json vision_cfg: timm
    vit_base_patch16_224, no pool, linear projection): a checkpoint of the whole tower loads, every tensor,
    into the trunk raddist builds, and gives the same features."""
    from open_clip.model import _build_vision_tower
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tower = _build_vision_tower(512, {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                      "timm_pool": "", "timm_proj": "linear", "image_size": 224}).eval()
    state = {f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(tmp_path / "biomedclip.safetensors"))
    config = get_config("biomedclip_vitb16")
    trunk = build_model(config, str(tmp_path / "biomedclip.safetensors"))
    assert all(torch.equal(v, state[f"visual.trunk.{k}"]) for k, v in trunk.state_dict().items())
    images = torch.randint(0, 256, (1, 224, 224), dtype=torch.uint8)
    x = Embedder(config, trunk).normalize(images)
    with torch.no_grad():
        assert torch.allclose(trunk.forward_features(x), tower.trunk.forward_features(x), atol=1e-5)
