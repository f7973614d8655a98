"""The trainable classifier without Ray: what each method trains, what a checkpoint holds, the pooled feature."""

import numpy as np
import pytest
import torch

from raddist import protocols
from raddist.protocols.trainable.model import ModelSpec, build_classifier, classifier_of, predict, trainable_parameters

METHODS = ["lora", "dora", "bitfit", "finetune"]


def spec(method, backbone="tiny_vit", num_classes=3, lora_r=48):
    params = protocols.get(method).params(**({"r": lora_r} if method in ("lora", "dora") else {}))
    return ModelSpec(backbone, "random", num_classes, "multiclass", params.method())


def n_trainable(model):
    return sum(p.numel() for p in trainable_parameters(model))


def targets():
    base = build_classifier(spec("finetune")).embedder.model
    found = [m for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in ("qkv", "fc1", "fc2")]
    assert len(found) == 3 * 4  # three per block, four blocks
    return found


def test_lora_trains_exactly_the_adapters_and_the_head():
    r = 8
    model = build_classifier(spec("lora", lora_r=r))
    expected = sum(r * (m.in_features + m.out_features) for m in targets()) + 64 * 3 + 3
    assert n_trainable(model) == expected
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".head." in n for n in names)


def test_dora_adds_one_magnitude_per_output_feature_to_lora():
    """A method in one file (protocols/dora.py): peft's use_dora on LoRA's targets."""
    r = 8
    lora, dora = build_classifier(spec("lora", lora_r=r)), build_classifier(spec("dora", lora_r=r))
    assert n_trainable(dora) - n_trainable(lora) == sum(m.out_features for m in targets())
    assert protocols.get("dora").trainable


def test_bitfit_trains_biases_and_head_finetune_everything():
    bitfit = build_classifier(spec("bitfit"))
    full = build_classifier(spec("finetune"))
    biases = sum(p.numel() for n, p in full.embedder.named_parameters() if n.endswith(".bias"))
    assert n_trainable(bitfit) == biases + 64 * 3 + 3
    assert n_trainable(full) == sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_on_a_cnn_name_the_missing_targets(method):
    with pytest.raises(ValueError, match=r"\['qkv', 'fc1', 'fc2'\] do not exist in backbone 'tiny_cnn'"):
        build_classifier(spec(method, backbone="tiny_cnn"))


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_cnn"])
def test_the_classifier_reads_the_frozen_protocols_cls_feature(backbone):
    """Embedder.pooled (with gradients) is Embedder.forward's 'cls' (inference mode, cached features)."""
    torch.manual_seed(0)
    model = build_classifier(spec("finetune", backbone=backbone)).eval()
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    embedder = classifier_of(model).embedder
    pooled = embedder.pooled(embedder.normalize(images))
    assert pooled.requires_grad
    torch.testing.assert_close(pooled.detach(), embedder(images)["cls"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_state_rebuilds_the_trained_model(method):
    torch.manual_seed(0)
    trained_spec = spec(method, lora_r=4)
    trained = build_classifier(trained_spec)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for p in trainable_parameters(trained):
            p.add_(torch.randn_like(p) * 0.1)
    state = trained_spec.method.state(trained)
    if method != "finetune":  # only what trained (+ the head) is kept
        assert sum(v.numel() for v in state.values()) == n_trainable(trained)
    torch.manual_seed(123)  # a different head/adapter init must not matter after loading
    fresh = build_classifier(trained_spec)
    trained_spec.method.load(fresh, state)
    images = torch.randint(0, 256, (4, 64, 64), dtype=torch.uint8)
    batches = [{"index": torch.arange(4), "image": images}]
    _, a = predict(trained, batches, "multiclass", "cpu")
    _, b = predict(fresh, batches, "multiclass", "cpu")
    np.testing.assert_array_equal(a, b)
    assert np.allclose(a.sum(1), 1)
