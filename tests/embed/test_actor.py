"""The embedding actor's contract (raddist.embed.actor.EmbedBatch), run here in-process on the CPU:
every other column passes through, a failed row keeps its place with zero features, and the
features are those of the backbone alone on the same pixels."""

import numpy as np
import pytest
import torch

from raddist.embed.actor import EmbedBatch

FEATURES = {"n_last_blocks": 2, "patch_mean": True}


def block(n=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"row": np.arange(10, 10 + n), "slice": np.full(n, -1), "job": np.zeros(n, np.int32),
            "image": rng.integers(0, 256, (n, size, size), dtype=np.uint8),
            "error": np.array(["", "object not found", "", "", ""][:n], dtype=object)}


@pytest.fixture(scope="module")
def actor():
    torch.manual_seed(0)
    return EmbedBatch("tiny_vit", "random", FEATURES, threads=1, size=32, batch=2)  # 4 good rows: 2 device batches


def test_columns_pass_through_and_a_failed_row_keeps_its_place(actor):
    batch = block()
    out = actor(batch)
    assert out["row"].tolist() == [10, 11, 12, 13, 14] and out["job"].tolist() == [0] * 5
    assert "image" not in out and out["error"].tolist() == batch["error"].tolist()
    assert set(out) == {"row", "slice", "job", "error", "cls", "patch_mean"}
    assert out["cls"].dtype == np.float16 and out["cls"].shape[0] == 5
    assert not out["cls"][1].any() and not out["patch_mean"][1].any()  # the failed row: zeros, not dropped
    assert all(out["cls"][i].any() for i in (0, 2, 3, 4))


def test_features_do_not_depend_on_batching_or_neighbours(actor):
    batch = block()
    whole = actor(batch)
    alone = actor({k: v[2:3] for k, v in batch.items()})  # row 12 by itself
    np.testing.assert_allclose(alone["cls"][0].astype(np.float32), whole["cls"][2].astype(np.float32), atol=2e-3)


def test_a_block_whose_rows_all_failed_still_has_every_column():
    actor = EmbedBatch("tiny_vit", "random", FEATURES, threads=1, size=32)
    batch = block(n=2)
    batch["error"] = np.array(["bad", "bad"], dtype=object)
    out = actor(batch)  # the first block this actor sees: the shapes come from a blank image
    assert out["cls"].shape[0] == 2 and out["patch_mean"].shape[0] == 2 and not out["cls"].any()
    good = actor(block(n=2, seed=1))
    assert good["cls"].shape[1:] == out["cls"].shape[1:] and good["patch_mean"].shape[1:] == out["patch_mean"].shape[1:]
