import numpy as np
import pytest

from raddist.protocols import linear
from raddist.protocols.selection import macro_auroc, train_plus_val
from raddist.protocols.stopping import Schedule

from .synthetic import auroc, blob_inputs

FAST = dict(epochs=10)


@pytest.mark.parametrize("task_type,n_classes", [("multiclass", 3), ("multilabel", 4), ("binary", 1)])
def test_separable_blobs_are_learned(task_type, n_classes):
    inputs = blob_inputs(task_type, n_classes, sizes=(200, 60, 80), separation=1.0)
    pred = linear.run(inputs, linear.Params(**FAST), seed=0)
    assert pred.scores.shape == (80, n_classes)
    assert auroc(inputs, pred) > 0.95
    assert pred.val_score > 0.95
    assert pred.selected["fit_size"] == 260  # retrained on train + val
    assert pred.selected["lr"] in linear.Params().lrs
    if task_type == "multiclass":
        np.testing.assert_allclose(pred.scores.sum(1), 1.0, atol=1e-6)


def test_grid_has_every_lr_block_and_pool_lower_lr_first():
    inputs = blob_inputs(sizes=(20, 5, 5), block_dims=(4, 4, 4, 4, 4))
    configs = linear.head_grid(inputs, inputs.splits["train"], linear.Params(lrs=[0.1, 0.01]))
    assert [(c.lr, c.blocks, c.pool) for c in configs[:4]] == [
        (0.01, 1, "cls"), (0.01, 1, "cls_patch"), (0.01, 4, "cls"), (0.01, 4, "cls_patch")
    ]
    assert len(configs) == 8 and configs[-1].lr == 0.1


def test_grid_clips_blocks_and_drops_patch_when_absent():
    inputs = blob_inputs(sizes=(20, 5, 5), block_dims=(6,), patch_dim=0)
    configs = linear.head_grid(inputs, inputs.splits["train"], linear.Params())
    assert {(c.blocks, c.pool) for c in configs} == {(1, "cls")}
    assert len(configs) == len(linear.Params().lrs)
    with pytest.raises(ValueError, match="patch_mean"):
        linear.head_grid(inputs, inputs.splits["train"], linear.Params(pools=["cls_patch"]))


@pytest.mark.parametrize("normalize", ["standard", "l2"])
def test_loss_falls_for_every_head(normalize):
    inputs = blob_inputs("multilabel", 3, sizes=(300, 0, 10), separation=1.0)
    params = linear.Params(epochs=8, batch_size=64, lrs=[1e-3, 1e-2, 1e-1], normalize=normalize)
    configs = linear.head_grid(inputs, inputs.splits["train"], params)
    heads = linear.train_heads(inputs, inputs.splits["train"], configs, params, seed=0)
    assert heads.loss.shape == (12, 8)
    assert np.all(heads.loss[:, -1] < heads.loss[:, 0])
    assert heads.loss[:, -1].min() < 0.5 * heads.loss[:, 0].min()


def test_heads_train_independently_of_each_other():
    """A head's result must not depend on which other heads share its pass: train one lr alone and in a grid
    where it is the only head of its variant, from the same seed -> the same weights."""
    inputs = blob_inputs("multiclass", 3, sizes=(100, 0, 10))
    split = inputs.splits["train"]
    params = linear.Params(epochs=3, batch_size=32)
    alone = linear.train_heads(inputs, split, [linear.HeadConfig(0.01, 1, "cls")], params, seed=5)
    grid = [linear.HeadConfig(0.01, 1, "cls"), linear.HeadConfig(0.1, 4, "cls"), linear.HeadConfig(0.001, 4, "cls")]
    together = linear.train_heads(inputs, split, grid, params, seed=5)
    np.testing.assert_allclose(together.variants[0].weight.detach().numpy(), alone.variants[0].weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(together.loss[0], alone.loss[0], rtol=1e-6)


def test_training_is_reproducible_by_seed():
    inputs = blob_inputs("binary", 1, sizes=(80, 20, 20))
    params = linear.Params(epochs=3, batch_size=16, lrs=[1e-2, 1e-1])
    a, b = (linear.run(inputs, params, seed=1) for _ in range(2))
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, linear.run(inputs, params, seed=2).scores)


def test_test_scores_come_from_the_chosen_head_refitted_on_train_plus_val():
    inputs = blob_inputs("multiclass", 3, sizes=(90, 30, 40), separation=0.3)
    params = linear.Params(epochs=5)
    pred = linear.run(inputs, params, seed=0)
    config = linear.HeadConfig(pred.selected["lr"], pred.selected["blocks"], pred.selected["pool"])
    fit_set = train_plus_val(inputs.splits["train"], inputs.splits["val"])
    assert pred.selected["refit_epochs"] == pred.selected["best_epoch"] <= pred.selected["epochs_trained"] <= 5
    refit = linear.train_heads(inputs, fit_set, [config], params, seed=0,
                               schedule=Schedule(pred.selected["refit_epochs"], tuple(pred.selected["lr_drops"])))
    np.testing.assert_array_equal(pred.scores, linear.predict(refit, inputs.splits["test"])[0])
    heads, best, val_score = linear.fit_select(inputs, inputs.splits["train"], inputs.splits["val"], params, seed=0)
    assert heads.configs[best] == config and val_score == pred.val_score
    assert not np.allclose(pred.scores, linear.predict(heads, inputs.splits["test"])[best])


def test_auroc_of_every_head_at_once_matches_macro_auroc():
    import torch

    rng = np.random.default_rng(0)
    targets = (rng.random((50, 4)) < 0.3).astype(float)
    targets[:, 3] = 0  # one class only: skipped, as macro_auroc skips it
    probs = np.round(rng.random((5, 50, 4)), 1)  # coarse: many ties
    probs[2] = targets + rng.normal(0, 0.3, targets.shape)
    fast = linear.auroc_per_head(targets, torch.from_numpy(probs).float())
    np.testing.assert_allclose(fast, [macro_auroc(targets, p) for p in probs.astype(np.float32)], atol=1e-9)
    assert np.isnan(linear.auroc_per_head(np.zeros((5, 2)), torch.zeros(3, 5, 2))).all()


def test_heads_train_until_validation_plateaus_and_record_their_epochs():
    inputs = blob_inputs("multiclass", 3, sizes=(150, 60, 30), separation=1.0)
    params = linear.Params(epochs=200, patience=5, lrs=[1e-2, 1e-1], batch_size=64)
    pred = linear.run(inputs, params, seed=0)
    sel = pred.selected
    assert sel["stopped"] == "plateau" and sel["max_epochs"] == 200
    # it stopped 5 epochs after its last rise by more than min_delta, well before the cap; the weights kept
    # are those of its best epoch since (a later one on a tie); the learning rate stayed constant (lr_drops 0)
    assert sel["best_epoch"] <= sel["epochs_trained"] <= sel["best_epoch"] + 5 and sel["epochs_trained"] < 60
    assert sel["lr_drops"] == [] and "patience 5 epochs" in sel["stopping_rule"]
    assert sel["refit_epochs"] == sel["best_epoch"]
    heads, best, _ = linear.fit_select(inputs, inputs.splits["train"], inputs.splits["val"], params, seed=0)
    assert heads.loss.shape == (len(heads.configs), heads.epochs_run.max()) and heads.epochs_run.max() < 200
    # a larger cap changes nothing for heads that plateaued under the smaller one
    again = linear.run(inputs, params.model_copy(update={"epochs": 400}), seed=0)
    assert {k: v for k, v in again.selected.items() if k != "max_epochs"} == {
        k: v for k, v in sel.items() if k != "max_epochs"}
    np.testing.assert_array_equal(again.scores, pred.scores)


def test_the_cap_is_never_exceeded():
    inputs = blob_inputs("multilabel", 3, sizes=(120, 40, 20), separation=0.3)
    params = linear.Params(epochs=3, patience=50)
    heads, best, _ = linear.fit_select(inputs, inputs.splits["train"], inputs.splits["val"], params, seed=0)
    assert heads.epochs_run.max() == 3 and heads.best_epoch.max() <= 3 and heads.loss.shape[1] == 3
    assert set(heads.stopped) == {"cap"}
    pred = linear.run(inputs, params, seed=0)
    assert pred.selected["epochs_trained"] == 3 and pred.selected["stopped"] == "cap"


def test_a_fixed_budget_trains_every_head_exactly_epochs_with_a_cosine_schedule():
    inputs = blob_inputs("multiclass", 3, sizes=(150, 60, 30), separation=1.0)
    params = linear.Params(epochs=7, lrs=[1e-2, 1e-1], batch_size=64, stopping="fixed")
    heads, best, _ = linear.fit_select(inputs, inputs.splits["train"], inputs.splits["val"], params, seed=0)
    assert list(heads.epochs_run) == list(heads.best_epoch) == [7] * len(heads.configs)
    assert set(heads.stopped) == {"fixed"}
    pred = linear.run(inputs, params, seed=0)
    assert (pred.selected["stopped"], pred.selected["epochs_trained"], pred.selected["refit_epochs"]) == ("fixed", 7, 7)
    # the same budget at a constant rate ends elsewhere
    constant = linear.train_heads(inputs, inputs.splits["train"], heads.configs, params.model_copy(
        update={"stopping": "plateau"}), seed=0)
    assert not np.allclose(constant.loss[:, -1], heads.loss[:, -1])


def _first_step(inputs, **update):
    """Each head's weight change after one full-batch SGD step."""
    params = linear.Params(lrs=[1e-2], blocks=[1], pools=["cls"], epochs=1, stopping="fixed",
                           batch_size=len(inputs.splits["train"]), **update)
    configs = linear.head_grid(inputs, inputs.splits["train"], params)
    heads = linear.train_heads(inputs, inputs.splits["train"], configs, params, seed=0)
    still = [linear.HeadConfig(0.0, c.blocks, c.pool) for c in configs]  # lr 0: the initial weights
    init = linear.train_heads(inputs, inputs.splits["train"], still, params, seed=0)
    return (heads.variants[0].weight - init.variants[0].weight).detach().cpu().numpy()


@pytest.mark.parametrize("task_type,n_classes,factor", [("multilabel", 4, 80 / 4), ("multiclass", 3, 1.0)])
def test_reference_multilabel_loss_is_summed_over_the_batch_and_averaged_over_labels(task_type, n_classes, factor):
    """The reference's multilabel step is batch / labels times raddist's (80 / 4 here); multiclass is unchanged."""
    inputs = blob_inputs(task_type, n_classes, sizes=(80, 0, 10), separation=1.0)
    ours, reference = _first_step(inputs), _first_step(inputs, multilabel_loss="batch_sum")
    np.testing.assert_allclose(reference, factor * ours, rtol=1e-4, atol=1e-9)
    assert np.abs(ours).max() > 1e-6


def test_reference_lrs_as_given_on_raw_features():
    inputs = blob_inputs("multilabel", 3, sizes=(80, 0, 10), separation=1.0)
    scaled, given = _first_step(inputs), _first_step(inputs, lr_batch_scaling=False)
    np.testing.assert_allclose(given, scaled * 256 / 80, rtol=1e-4, atol=1e-9)  # lr x batch / 256 undone
    params = linear.Params(normalize="none")
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(50, 4)).astype(np.float32)
    mean, scale = linear._fit_stats(x, params.normalize)
    assert np.all(mean == 0) and np.all(scale == 1)  # raw features, as the reference fed them
