"""The trainable classifier without Ray: what trains, what a checkpoint holds, augmentation, splits."""

import numpy as np
import pytest
import torch

from raddist.protocols.trainable.model import (build_classifier, load_trainable_state, predict, trainable_parameters,
                                 trainable_state)


def spec(method, backbone="tiny_vit", num_classes=3, lora_r=48):
    lora = {"r": lora_r, "alpha": 16, "dropout": 0.1, "target_modules": ["qkv", "fc1", "fc2"]} if method == "lora" else None
    return {"backbone": backbone, "weights": "random", "num_classes": num_classes, "task_type": "multiclass",
            "method": method, "lora": lora}


def n_trainable(model):
    return sum(p.numel() for p in trainable_parameters(model))


def test_lora_trains_exactly_the_adapters_and_the_head():
    r = 8
    model = build_classifier(spec("lora", lora_r=r))
    base = build_classifier(spec("finetune")).embedder.model
    targets = [m for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in ("qkv", "fc1", "fc2")]
    assert len(targets) == 3 * 4  # three per block, four blocks
    expected = sum(r * (m.in_features + m.out_features) for m in targets) + 64 * 3 + 3
    assert n_trainable(model) == expected
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".head." in n for n in names)


def test_bitfit_trains_biases_and_head_finetune_everything():
    bitfit = build_classifier(spec("bitfit"))
    full = build_classifier(spec("finetune"))
    biases = sum(p.numel() for n, p in full.embedder.named_parameters() if n.endswith(".bias"))
    assert n_trainable(bitfit) == biases + 64 * 3 + 3
    assert n_trainable(full) == sum(p.numel() for p in full.parameters())


def test_lora_on_a_cnn_names_the_missing_targets():
    with pytest.raises(ValueError, match=r"\['qkv', 'fc1', 'fc2'\] do not exist in backbone 'tiny_cnn'"):
        build_classifier(spec("lora", backbone="tiny_cnn"))


@pytest.mark.parametrize("method", ["lora", "bitfit", "finetune"])
def test_trainable_state_rebuilds_the_trained_model(method):
    torch.manual_seed(0)
    trained = build_classifier(spec(method, lora_r=4))
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for p in trainable_parameters(trained):
            p.add_(torch.randn_like(p) * 0.1)
    state = trainable_state(trained, method)
    if method != "finetune":  # only what trained (+ the head) is kept
        assert sum(v.numel() for v in state.values()) == n_trainable(trained)
    torch.manual_seed(123)  # a different head/adapter init must not matter after loading
    fresh = build_classifier(spec(method, lora_r=4))
    load_trainable_state(fresh, method, state)
    images = torch.randint(0, 256, (4, 64, 64), dtype=torch.uint8)
    batches = [{"index": torch.arange(4), "image": images}]
    _, a = predict(trained, batches, "multiclass", "cpu")
    _, b = predict(fresh, batches, "multiclass", "cpu")
    np.testing.assert_array_equal(a, b)
    assert np.allclose(a.sum(1), 1)
