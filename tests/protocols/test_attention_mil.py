"""Attention MIL on bags built directly (no backbone, no cache, no Ray): a volume is positive when
ONE of its slices carries the finding, which the mean over slices dilutes and attention finds."""

import numpy as np
import pytest

from raddist.protocols import attention_mil
from raddist.protocols.base import FrozenInputs, SplitData
from raddist.protocols.selection import macro_auroc
from raddist.protocols.stopping import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest.py)

BLOCK, PATCH, SLICES = 8, 8, 12


def bag_inputs(sizes=(80, 30, 40), seed=0) -> FrozenInputs:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=BLOCK + PATCH) * 3
    splits = {}
    for name, n in zip(("train", "val", "test"), sizes):
        labels = (np.arange(n) % 2).astype(np.int64)
        bags = np.empty(n, dtype=object)
        for i, y in enumerate(labels):
            slices = rng.normal(size=(SLICES, BLOCK + PATCH))
            if y:
                slices[rng.integers(SLICES)] += signal  # one slice in twelve
            bags[i] = slices.astype(np.float16)
        mean = np.stack([b.astype(np.float32).mean(0) for b in bags])
        splits[name] = SplitData({"cls": mean[:, :BLOCK], "patch_mean": mean[:, BLOCK:], "slices": bags},
                                 labels[:, None], np.array([f"{name}{i}" for i in range(n)]),
                                 np.array([f"{name}p{i}" for i in range(n)]))
    return FrozenInputs("binary", ["finding"], [BLOCK], splits)


def test_attention_finds_the_one_slice_that_carries_the_label():
    inputs = bag_inputs()
    params = attention_mil.Params(lrs=[1e-3, 1e-2], epochs=30, features="cls_patch")
    prediction = attention_mil.run(inputs, params, seed=0)
    test = inputs.splits["test"]
    assert prediction.scores.shape == (len(test), 1) and list(prediction.sample_ids) == list(test.sample_ids)
    assert macro_auroc(test.labels, prediction.scores) > 0.95
    assert prediction.selected["lr"] in params.lrs and len(prediction.selected["val_auroc"]) == 2
    again = attention_mil.run(inputs, params, seed=0)
    np.testing.assert_array_equal(again.scores, prediction.scores)  # seeded


def test_bags_take_the_named_feature_columns_and_single_images_are_bags_of_one():
    inputs = bag_inputs(sizes=(4, 2, 2))
    train = inputs.splits["train"]
    assert [b.shape for b in attention_mil.bags(inputs, train, "cls_last")] == [(SLICES, BLOCK)] * 4
    assert attention_mil.bags(inputs, train, "cls_patch")[0].shape == (SLICES, BLOCK + PATCH)
    images = SplitData({k: v for k, v in train.features.items() if k != "slices"}, train.labels,
                       train.sample_ids, train.patient_ids)
    assert [b.shape for b in attention_mil.bags(inputs, images, "cls_last")] == [(1, BLOCK)] * 4
    no_patch = SplitData({"cls": train.features["cls"]}, train.labels, train.sample_ids, train.patient_ids)
    with pytest.raises(ValueError, match="patch_mean"):
        attention_mil.bags(inputs, no_patch, "cls_patch")


def test_models_train_until_validation_plateaus_and_the_refit_takes_the_best_epoch_count(monkeypatch):
    inputs = bag_inputs()
    params = attention_mil.Params(lrs=[1e-3, 1e-2], epochs=200, patience=5, features="cls_patch")
    fits = []
    fit = attention_mil.fit

    def spy(*args, **kwargs):
        out = fit(*args, **kwargs)
        fits.append((kwargs, out[2]))
        return out

    monkeypatch.setattr(attention_mil, "fit", spy)
    prediction = attention_mil.run(inputs, params, seed=0)
    sel = prediction.selected
    assert sel["stopped"] == "plateau" and sel["best_epoch"] <= sel["epochs_trained"] <= sel["best_epoch"] + 5
    assert sel["lr_drops"] == []
    assert sel["epochs_trained"] < 100  # well before the cap
    assert sel["best_epochs"][params.lrs.index(sel["lr"])] == sel["best_epoch"] == sel["refit_epochs"]
    (selection, record), (refit, refit_record) = fits
    assert "val" in selection and refit == {"schedule": Schedule(sel["refit_epochs"], ())}
    assert list(refit_record.epochs_run) == [sel["refit_epochs"]]
    assert macro_auroc(inputs.splits["test"].labels, prediction.scores) > 0.9
    # a larger cap: the same epochs, the same scores
    again = attention_mil.run(inputs, params.model_copy(update={"epochs": 400}), seed=0)
    assert again.selected["best_epochs"] == sel["best_epochs"] and again.selected["lr"] == sel["lr"]
    np.testing.assert_array_equal(again.scores, prediction.scores)


def test_the_cap_is_never_exceeded():
    inputs = bag_inputs(sizes=(40, 20, 10))
    params = attention_mil.Params(lrs=[1e-4, 1e-3], epochs=3, patience=50)
    prediction = attention_mil.run(inputs, params, seed=0)
    assert prediction.selected["epochs_trained"] == 3 and prediction.selected["stopped"] == "cap"
    assert max(prediction.selected["best_epochs"]) <= 3
