"""One Ray Train fit on 2 CPU workers: learning, checkpoint reload, resume after a lost worker,
and no resources left behind by a failed fit. Tiny ViT, 64 px, LoRA."""

import json
import os
import time

import cloudpickle
import numpy as np
import pytest

import tests.protocols.trainable as helpers
from raddist.protocols.lora import LoRA
from raddist.protocols.trainable import data, fit
from raddist.protocols.trainable.loop import HISTORY_FILE, VAL_PREDICTIONS_FILE
from raddist.protocols.trainable.model import ModelSpec
from tests.protocols.trainable import CrashAt, write_halves

cloudpickle.register_pickle_by_value(helpers)  # the crash hook travels to the workers by value
WORKERS = 2
SPEC = ModelSpec("tiny_vit", "random", 1, "binary", LoRA(target_modules=("qkv", "fc1", "fc2"), r=8, alpha=16))
CELL_CPUS = 0.5


def settings(max_failures):
    return fit.FitSettings(WORKERS, False, CELL_CPUS, max_failures)


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
    result = fit.trainer(decoded, config(decoded, epochs=4), storage, fit.run_name(3e-3), settings(0)).fit()
    epochs = history(result.checkpoint)
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[0]["micro_batch"] == 4 and epochs[0]["accumulation_steps"] == 1  # a CPU: the whole batch
    loss = [e["train_loss"] for e in epochs]
    assert np.mean(loss[2:]) < loss[0], loss
    assert all(np.isfinite(e["val_auroc"]) for e in epochs)

    best = fit.best_of_run(storage, 3e-3)
    assert best.memory == {"micro_batch": 4, "accumulation_steps": 1, "grad_checkpointing": False, "strategy": "ddp"}
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
    crash = CrashAt(2, marker)  # os._exit in epoch 2, first attempt only
    result = fit.trainer(decoded, config(decoded), str(tmp_path / "ckpt"), "resume", settings(1), on_epoch=crash).fit()
    assert os.path.exists(marker)
    assert result.metrics["epoch"] == 2 and result.metrics["start_epoch"] == 2  # not 0: resumed
    assert [(e["epoch"], e["start_epoch"]) for e in history(result.checkpoint)] == [(0, 0), (1, 0), (2, 2)]


def test_a_failed_fit_gives_its_cpus_back(ray_local, decoded, tmp_path):
    total = ray_local.cluster_resources()["CPU"]
    with pytest.raises(Exception):  # every attempt dies
        fit.trainer(decoded, config(decoded), str(tmp_path / "ckpt"), "fails", settings(0), on_epoch=CrashAt(0)).fit()
    deadline = time.time() + 20
    while ray_local.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == total
