from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from raddist import protocols
from raddist.protocols import fewshot, knn, linear
from raddist.protocols.features import named_features
from raddist.protocols.selection import train_val_split

from .synthetic import blob_inputs


def draw(inputs, shots, seed=0, index=0):
    return fewshot.draw_fewshot(inputs.task_type, inputs.splits["train"], shots, seed, index)


def test_draws_are_reproducible_and_differ_across_draws_and_seeds():
    inputs = blob_inputs("multiclass", 3, sizes=(300, 30, 30))
    first = draw(inputs, 4, seed=7, index=2).indices
    np.testing.assert_array_equal(first, draw(inputs, 4, seed=7, index=2).indices)
    assert not np.array_equal(first, draw(inputs, 4, seed=7, index=3).indices)
    assert not np.array_equal(first, draw(inputs, 4, seed=8, index=2).indices)


@pytest.mark.parametrize("shots", [1, 2, 16])
def test_multiclass_draw_has_exactly_k_per_class(shots):
    inputs = blob_inputs("multiclass", 4, sizes=(200, 20, 20))
    d = draw(inputs, shots)
    assert Counter(inputs.splits["train"].labels[d.indices].tolist()) == {c: shots for c in range(4)}


def test_binary_draw_has_k_positives_and_k_negatives():
    inputs = blob_inputs("binary", 1, sizes=(100, 20, 20))
    labels = inputs.splits["train"].labels[draw(inputs, 3).indices, 0]
    assert (labels == 1).sum() == 3 and (labels == 0).sum() == 3


def test_multilabel_draw_takes_k_patients_per_label_and_all_their_images():
    inputs = blob_inputs("multilabel", 4, sizes=(300, 30, 30), images_per_patient=3)
    train = inputs.splits["train"]
    d = draw(inputs, 2)
    drawn_patients = set(train.patient_ids[d.indices])
    for label, patients in d.per_class.items():
        assert len(set(patients)) == 2
        for p in patients:  # each drawn patient has the label on one of its images
            assert train.labels[train.patient_ids == p, label].max() == 1
    assert drawn_patients == set(np.concatenate(list(d.per_class.values())))
    np.testing.assert_array_equal(d.indices, np.flatnonzero(np.isin(train.patient_ids, list(drawn_patients))))


def test_class_with_too_few_samples_gives_all_it_has():
    inputs = blob_inputs("multiclass", 3, sizes=(9, 6, 6))  # 3 per class
    assert len(draw(inputs, 16).indices) == 9


def test_variants_cover_shots_draws_probes():
    params = fewshot.Params(shots=[1, 4, 8], draws=6)
    cells = protocols.get("fewshot").variants(params)
    assert len(cells) == 3 * 6 * 2
    assert len({(c["shots"], c["draw"], c["probe"]) for c in cells}) == len(cells)
    for cell in cells:
        parsed = fewshot.Params(**cell)
        assert parsed.draw is not None and isinstance(parsed.shots, int) and isinstance(parsed.probe, str)
        assert ("knn" in cell) == (cell["probe"] == "knn")  # a cell carries only its probe's settings
    assert fewshot.variants(fewshot.Params(**cells[5])) == [cells[5]]  # a cell expands to itself
    assert len(fewshot.variants({"probe": "knn"})) == 5 * 5


def test_partial_linear_settings_keep_the_fewshot_defaults():
    default = fewshot.Params().linear
    assert default.normalize == "l2" and (default.epochs, default.patience, default.eval_every) == (2000, 100, 10)
    partial = fewshot.Params(linear={"lrs": [0.1]}).linear
    assert partial.lrs == [0.1] and partial.normalize == "l2" and partial.epochs == 2000 and partial.patience == 100
    assert fewshot.Params(linear={"normalize": "standard"}).linear.normalize == "standard"


def test_unexpanded_entry_is_refused():
    with pytest.raises(ValueError, match="variants"):
        fewshot.run(blob_inputs(), fewshot.Params(), seed=0)


def test_unknown_key_is_refused():
    with pytest.raises(ValidationError):
        fewshot.Params(shot=4)
    with pytest.raises(ValidationError):
        fewshot.Params(linear={"lr": 0.1})


def _spy(fn, arg, into):
    """fn, recording its positional argument `arg` of each call into `into`."""
    def wrapped(*args):
        into.append(args[arg])
        return fn(*args)
    return wrapped


@pytest.mark.parametrize("with_val", [True, False])
@pytest.mark.parametrize("probe", ["linear", "knn"])
def test_run_fits_the_probe_on_the_draw_alone(monkeypatch, probe, with_val):
    """Whatever a probe is fitted on (linear heads, kNN bank) is exactly the draw from train minus any carved
    val: never val samples, never test samples, and no refit on train+val."""
    inputs = blob_inputs("multiclass", 3, sizes=(150, 30 if with_val else 0, 30), separation=1.0)
    pool, val = train_val_split(inputs, seed=0)
    drawn = pool.subset(fewshot.draw_fewshot("multiclass", pool, 4, 0, 1).indices)
    assert len(drawn) == 12 and not set(drawn.sample_ids) & set(val.sample_ids)
    assert not set(drawn.sample_ids) & set(inputs.splits["test"].sample_ids)

    fitted_on = []
    monkeypatch.setattr(linear, "fit_select", _spy(linear.fit_select, 1, fitted_on))  # (inputs, train, val, ...)
    monkeypatch.setattr(knn, "select_k", _spy(knn.select_k, 0, fitted_on))  # (bank_x, ...)
    monkeypatch.setattr(knn, "predict", _spy(knn.predict, 0, fitted_on))
    cell = fewshot.Params(shots=4, draw=1, probe=probe, linear={"epochs": 20})
    pred = fewshot.run(inputs, cell, seed=0)

    assert len(fitted_on) == (1 if probe == "linear" else 2)
    for seen in fitted_on:
        if probe == "linear":
            np.testing.assert_array_equal(seen.sample_ids, drawn.sample_ids)
        else:
            np.testing.assert_array_equal(seen, named_features(inputs, drawn, "cls_last"))
    assert {k: pred.selected[k] for k in ("shots", "draw", "probe", "n_train")} == {
        "shots": 4, "draw": 1, "probe": probe, "n_train": 12
    }
    assert pred.selected.get("k", 0) <= 12
    assert pred.scores.shape == (30, 3)
    if probe == "linear":  # trained on the draw until validation plateaued, within the cap of 20
        assert pred.selected["best_epoch"] <= pred.selected["epochs_trained"] <= 20


def test_linear_probe_stops_on_a_validation_plateau_and_records_its_epochs():
    inputs = blob_inputs("multiclass", 3, sizes=(150, 60, 30), separation=1.0)
    cell = fewshot.Params(shots=4, draw=0, probe="linear", linear={"lrs": [0.01, 0.1]})
    pred = fewshot.run(inputs, cell, seed=0)
    sel = pred.selected
    assert sel["stopped"] == "plateau" and sel["max_epochs"] == 2000
    assert sel["best_epoch"] % 10 == 0 and sel["best_epoch"] <= sel["epochs_trained"] < 2000  # checked every 10
    again = fewshot.run(inputs, cell.model_copy(update={"linear": cell.linear.model_copy(update={"epochs": 8000})}), seed=0)
    assert again.selected["best_epoch"] == sel["best_epoch"] and again.selected["lr"] == sel["lr"]
    np.testing.assert_array_equal(again.scores, pred.scores)


@pytest.mark.parametrize("probe", ["linear", "knn"])
def test_selection_sees_a_kshot_draw_of_validation_unless_full(monkeypatch, probe):
    """A k-shot user has k examples per class to validate with, not the whole val split: by default the
    probe selects on a k-shot draw from val (seeded, its own stream); validation: full uses all of val."""
    inputs = blob_inputs("multiclass", 3, sizes=(150, 60, 30), separation=1.0)
    _, val = train_val_split(inputs, seed=0)
    seen = []
    monkeypatch.setattr(linear, "fit_select", _spy(linear.fit_select, 2, seen))  # (inputs, train, val, ...)
    monkeypatch.setattr(knn, "select_k", _spy(knn.select_k, 3, seen))  # (bank_x, bank_y, val_x, ...)
    for validation, expected in (("kshot", 12), ("full", 60)):
        seen.clear()
        cell = fewshot.Params(shots=4, draw=1, probe=probe, validation=validation, linear={"epochs": 20})
        pred = fewshot.run(inputs, cell, seed=0)
        assert len(seen[0]) == expected and pred.selected["n_val"] == expected
        assert pred.selected["validation"] == validation
    kshot_val = val.subset(fewshot.draw_fewshot("multiclass", val, 4, 0, 1, fewshot.VALIDATION_STREAM).indices)
    assert sorted(np.unique(kshot_val.labels, return_counts=True)[1]) == [4, 4, 4]
    train_draw = fewshot.draw_fewshot("multiclass", val, 4, 0, 1)
    assert not np.array_equal(train_draw.indices, fewshot.draw_fewshot("multiclass", val, 4, 0, 1, 1).indices)
