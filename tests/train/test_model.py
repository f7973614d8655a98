"""The trainable classifier without Ray: what trains, what a checkpoint holds, augmentation, splits."""

import numpy as np
import pytest
import torch

from raddist.train.data import assign_splits, augment
from raddist.train.model import (build_classifier, load_trainable_state, predict, trainable_parameters,
                                 trainable_state)
from tests.train import write_halves


def spec(method, backbone="tiny_vit", num_classes=3, **kw):
    return {"backbone": backbone, "weights": "random", "num_classes": num_classes, "task_type": "multiclass",
            "method": method, **kw}


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


def test_augment_keeps_shape_and_varies_per_image():
    torch.manual_seed(0)
    x = torch.arange(64.0).repeat(64, 1).expand(3, 3, 64, 64).contiguous()  # a horizontal ramp
    out = augment(x)
    assert out.shape == x.shape
    assert not (torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2]))
    assert out.min() >= x.min() - 1e-4 and out.max() <= x.max() + 1e-4  # a resample: no new extremes


def test_val_is_carved_from_train_patients_never_test(tmp_path):
    table = write_halves(str(tmp_path), n_patients=20, splits=("train", "test"), fractions=(0.75, 0.25))
    a, b = assign_splits(table, seed=3), assign_splits(table, seed=3)
    assert a.equals(b)  # seeded
    before = np.asarray(table["split"].to_pylist())
    after = np.asarray(a["split"].to_pylist())
    patients = np.asarray(table["patient_id"].to_pylist())
    assert (after == "val").any()
    assert (before[after == "val"] == "train").all()
    assert (after[before == "test"] == "test").all()
    assert not set(patients[after == "val"]) & set(patients[after == "train"])
