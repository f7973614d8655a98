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


GRID = {"lrs": [1e-3, 5e-2], "blocks": [1, 4], "avgpool": [True, False]}  # the reference's shape, 2 lrs


def grid_spec(method="finetune", backbone="tiny_vit", num_classes=3, head=None):
    import dataclasses

    from raddist.backbones.registry import get_config
    from raddist.protocols.trainable.model import head_grid

    heads = head_grid(get_config(backbone), GRID["lrs"], GRID["blocks"], GRID["avgpool"])
    return dataclasses.replace(spec(method, backbone, num_classes), heads=heads, head=head)


def test_a_grid_of_heads_reads_the_reference_linear_inputs_and_the_chosen_head_alone_scores():
    """Each head reads the class tokens of its last n blocks (+ the last block's mean patch token), as the
    reference's create_linear_input; the model outputs every head, or the chosen one's logits alone."""
    from raddist.protocols.trainable.model import loss_fn

    model = build_classifier(grid_spec())
    heads = classifier_of(model).head
    dim = classifier_of(model).embedder.config.embed_dim
    assert [(n, pool) for n, pool in heads.heads] == [(1, True)] * 2 + [(1, False)] * 2 + [(4, True)] * 2 + [(4, False)] * 2
    assert [lin.in_features for lin in heads.linears] == [2 * dim] * 2 + [dim] * 2 + [5 * dim] * 2 + [4 * dim] * 2
    images = torch.randint(0, 255, (5, 64, 64), dtype=torch.uint8)
    torch.manual_seed(0)
    logits = model(images)
    assert logits.shape == (5, 8, 3)
    chosen = build_classifier(grid_spec(head=5))
    chosen.load_state_dict(model.state_dict())
    torch.testing.assert_close(chosen(images), logits[:, 5])
    # the last head on its own inputs, by hand: the last 4 blocks' class tokens
    pooled, grids = classifier_of(model).embedder.block_features(classifier_of(model).inputs(images))
    torch.testing.assert_close(heads.linears[7](torch.cat(pooled[-4:], 1)), logits[:, 7])
    torch.testing.assert_close(heads.linears[0](torch.cat([pooled[-1], grids[-1].mean((2, 3))], 1)), logits[:, 0])
    # the heads' losses add up
    labels = torch.tensor([0, 1, 2, 0, 1])
    total = sum(torch.nn.functional.cross_entropy(logits[:, h], labels) for h in range(8))
    torch.testing.assert_close(loss_fn(logits, labels, "multiclass"), total)
    # a CNN takes its final pooled feature only (as the reference): one head per lr
    cnn = classifier_of(build_classifier(grid_spec(backbone="tiny_cnn"))).head
    assert cnn.heads == ((1, False), (1, False))


@pytest.mark.parametrize("method", ["finetune", "lora", "bitfit"])
def test_sgd_trains_each_head_at_its_rate_and_the_backbone_at_lr(method):
    from raddist.protocols.trainable.model import optimizer

    s = grid_spec(method)
    model = build_classifier(s)
    opt = optimizer(model, "sgd", 1e-5, 0.0, s.heads)
    assert isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0.9 and g["weight_decay"] == 0 for g in opt.param_groups)
    backbone, *heads = opt.param_groups
    assert backbone["lr"] == 1e-5 and [g["lr"] for g in heads] == [lr for _, _, lr in s.heads]
    assert all(len(g["params"]) == 2 for g in heads)  # weight and bias
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in trainable_parameters(model)}
    # without a grid: AdamW, one group at lr, as before
    plain = optimizer(build_classifier(spec(method)), "adamw", 1e-4, 0.05)
    assert isinstance(plain, torch.optim.AdamW) and [g["lr"] for g in plain.param_groups] == [1e-4]


def test_the_new_settings_at_their_defaults_leave_the_params_and_so_the_cell_ids_as_they_were():
    params = protocols.get("finetune").parse({"lrs": [1e-4]}).model_dump()
    assert "optimizer" not in params and "head_grid" not in params
    reference = protocols.get("finetune").parse({"optimizer": "sgd", "head_grid": GRID}).model_dump()
    assert reference["optimizer"] == "sgd" and reference["head_grid"] == GRID
