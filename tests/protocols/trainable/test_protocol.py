"""The trainable protocols end to end: decode, Ray Tune learning-rate search over Ray Train fits
(2 CPU workers), selection on a validation split carved from train, one test scoring."""

import numpy as np
import pytest

from raddist import protocols
from raddist.metrics import score_prediction
from raddist.protocols.base import TrainInputs
from tests.protocols.trainable import write_halves


@pytest.fixture(scope="module")
def halves(ray_local, tmp_path_factory):
    """Train and test only: the protocols must carve val from train."""
    return write_halves(str(tmp_path_factory.mktemp("halves")), n_patients=20, splits=("train", "test"),
                        fractions=(0.7, 0.3))


def inputs(table, checkpoint_dir, backbone="tiny_vit", workers=2):
    return TrainInputs(task_type="binary", class_names=["top"], label_columns=["top"], manifest=table,
                       backbone=backbone, weights="random", contract={"size": 64},
                       checkpoint_dir=str(checkpoint_dir), num_workers=workers, use_gpu=False)


def test_lora_searches_lrs_selects_on_carved_val_and_scores_test_once(halves, tmp_path):
    lora = protocols.get("lora")
    params = lora.params(lrs=[1e-3, 3e-3], epochs=2, batch_size=8, r=4)
    prediction = lora.run(inputs(halves, tmp_path / "ckpt"), params, seed=0)

    test = np.asarray(halves["split"].to_pylist()) == "test"
    assert sorted(prediction.sample_ids) == sorted(np.asarray(halves["sample_id"].to_pylist())[test])
    assert prediction.scores.shape == (test.sum(), 1) and prediction.labels.shape == (test.sum(), 1)
    assert ((prediction.scores >= 0) & (prediction.scores <= 1)).all()
    chosen = prediction.selected
    assert chosen["lr"] in (1e-3, 3e-3) and chosen["epoch"] in (0, 1)
    assert chosen["val_carved_from_train"] and set(chosen["val_auroc_by_lr"]) == {"0.001", "0.003"}
    assert prediction.val_score == chosen["val_auroc_by_lr"][f"{chosen['lr']:g}"]
    # cell.json records how each step ran: a CPU takes the whole batch at once
    assert (chosen["micro_batch"], chosen["accumulation_steps"], chosen["strategy"]) == (8, 1, "ddp")
    rows = score_prediction("binary", prediction, ["top"], n_boot=10, seed=0)
    assert any(r["metric"] == "auroc" for r in rows)

    # Run again on the same checkpoint_dir (a retried cell): Tune restores the finished search,
    # nothing retrains, and the same checkpoint scores test to the same numbers.
    again = lora.run(inputs(halves, tmp_path / "ckpt"), params, seed=0)
    assert again.selected["checkpoint"] == chosen["checkpoint"]
    order = np.argsort(again.sample_ids), np.argsort(prediction.sample_ids)
    np.testing.assert_allclose(again.scores[order[0]], prediction.scores[order[1]], atol=1e-6)


def test_lora_refuses_a_cnn_before_any_fit(halves, tmp_path):
    lora = protocols.get("lora")
    with pytest.raises(ValueError, match="do not exist in backbone 'tiny_cnn'"):
        lora.run(inputs(halves, tmp_path / "ckpt", backbone="tiny_cnn"), lora.params(epochs=1), seed=0)


# the reference's optimiser: SGD, the backbone at lrs, a grid of heads at their own rates (paper.yaml)
REFERENCE = {"optimizer": "sgd", "weight_decay": 0.0,
             "head_grid": {"lrs": [1e-3, 5e-2], "blocks": [1, 2], "avgpool": [True, False]}}


@pytest.mark.parametrize("name,settings", [("finetune", {}), ("bitfit", REFERENCE)], ids=["finetune", "bitfit-reference"])
def test_finetune_and_bitfit_run_one_lr(name, settings, halves, tmp_path):
    """One worker: no DDP; the whole state dict (finetune) or the biases and head (bitfit) reload. BitFit
    as the reference ran it: 8 heads on one backbone, validation chooses one, and only it scores test."""
    module = protocols.get(name)
    prediction = module.run(inputs(halves, tmp_path / "ckpt", workers=1),
                            module.params(lrs=[1e-3], epochs=1, batch_size=8, **settings), seed=1)
    chosen = prediction.selected
    assert chosen["method"] == name and chosen["epoch"] == 0
    assert prediction.scores.shape[1] == 1 and np.isfinite(prediction.scores).all()
    if settings:
        grid = settings["head_grid"]
        assert chosen["optimizer"] == "sgd" and chosen["heads"] == 8 and chosen["lr"] == 1e-3
        assert (chosen["head"]["blocks"] in grid["blocks"] and chosen["head"]["avgpool"] in grid["avgpool"]
                and chosen["head"]["lr"] in grid["lrs"])
    else:
        assert "head" not in chosen and "optimizer" not in chosen


def test_a_rerun_from_scratch_trains_the_same_model(halves, tmp_path):
    """Seeded init, augmentation and batch order: two fresh runs score test alike."""
    lora = protocols.get("lora")
    params = lora.params(lrs=[3e-3], epochs=1, batch_size=8, r=4)
    a = lora.run(inputs(halves, tmp_path / "a", workers=1), params, seed=2)
    b = lora.run(inputs(halves, tmp_path / "b", workers=1), params, seed=2)
    order = np.argsort(a.sample_ids), np.argsort(b.sample_ids)
    np.testing.assert_allclose(a.scores[order[0]], b.scores[order[1]], atol=1e-6)
