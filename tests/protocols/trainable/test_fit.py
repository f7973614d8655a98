"""One Ray Train fit on 2 CPU workers: learning, checkpoint reload, resume after a lost worker,
and no resources left behind by a failed fit. Tiny ViT, 64 px, LoRA."""

import json
import os
import time

import numpy as np
import pytest

from raddist.protocols.trainable import data, fit
from raddist.protocols.trainable.loop import HISTORY_FILE, VAL_PREDICTIONS_FILE
from tests.protocols.trainable import write_halves

WORKERS = 2
SPEC = {"backbone": "tiny_vit", "weights": "random", "num_classes": 1, "task_type": "binary",
        "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["qkv", "fc1", "fc2"]}}
CELL_CPUS = 0.5


@pytest.fixture(scope="module")
def decoded(ray_local, tmp_path_factory):
    table = write_halves(str(tmp_path_factory.mktemp("halves")), n_patients=24)
    datasets, _, dropped = data.decode_splits(table, "binary", ["top"], {"size": 64})
    assert dropped == {"train": 0, "val": 0, "test": 0}
    return datasets


def config(datasets, **kw):
    return {"model": SPEC, "lr": 3e-3, "epochs": 3, "batch_size": 4, "weight_decay": 0.0, "seed": 0,
            "train_rows": datasets["train"].count(), **kw}


def history(checkpoint):
    with checkpoint.as_directory() as d, open(os.path.join(d, HISTORY_FILE)) as f:
        return json.load(f)


def test_loss_falls_and_the_best_checkpoint_reproduces_its_val_predictions(decoded, tmp_path):
    storage = str(tmp_path / "ckpt")
    result = fit.trainer(decoded, config(decoded, epochs=4), storage, fit.run_name(3e-3), WORKERS, False, CELL_CPUS,
                         max_failures=0).fit()
    epochs = history(result.checkpoint)
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    loss = [e["train_loss"] for e in epochs]
    assert np.mean(loss[2:]) < loss[0], loss
    assert all(np.isfinite(e["val_auroc"]) for e in epochs)

    best = fit.best_of_run(storage, 3e-3)
    assert best.val_auroc == max(e["val_auroc"] for e in epochs)
    saved = np.load(os.path.join(best.checkpoint, VAL_PREDICTIONS_FILE))
    index, probs = fit.score(SPEC, best.checkpoint, decoded["val"], WORKERS, False, CELL_CPUS)  # a fresh process, rebuilt model
    assert sorted(index) == sorted(saved["index"])
    np.testing.assert_allclose(probs[np.argsort(index)], saved["probs"][np.argsort(saved["index"])],
                               rtol=0, atol=1e-6)
    # LoRA checkpoints hold the adapters and the head, not the backbone
    import torch

    state = torch.load(os.path.join(best.checkpoint, "model.pt"))
    assert all("lora_" in k or ".head." in k for k in state)


def test_a_killed_worker_resumes_from_its_last_checkpoint(decoded, tmp_path):
    marker = str(tmp_path / "crashed")
    cfg = config(decoded, crash_at_epoch=2, crash_marker=marker)  # os._exit in epoch 2, first attempt only
    result = fit.trainer(decoded, cfg, str(tmp_path / "ckpt"), "resume", WORKERS, False, CELL_CPUS, max_failures=1).fit()
    assert os.path.exists(marker)
    assert result.metrics["epoch"] == 2 and result.metrics["start_epoch"] == 2  # not 0: resumed
    assert [(e["epoch"], e["start_epoch"]) for e in history(result.checkpoint)] == [(0, 0), (1, 0), (2, 2)]


def test_a_failed_fit_gives_its_cpus_back(ray_local, decoded, tmp_path):
    total = ray_local.cluster_resources()["CPU"]
    cfg = config(decoded, crash_at_epoch=0)  # every attempt dies
    with pytest.raises(Exception):
        fit.trainer(decoded, cfg, str(tmp_path / "ckpt"), "fails", WORKERS, False, CELL_CPUS, max_failures=0).fit()
    deadline = time.time() + 20
    while ray_local.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == total
