import numpy as np
import pytest

from raddist.protocols import knn
from raddist.protocols.features import label_matrix, named_features
from raddist.protocols.neighbours import topk_cosine
from raddist.protocols.selection import train_plus_val

from .synthetic import auroc, blob_inputs


def reference_knn(bank, bank_targets, queries, k, temperature):
    """DINO's weighted vote, one query and one bank sample at a time."""
    out = []
    for q in queries:
        sims = np.array([q @ b / np.linalg.norm(q) / np.linalg.norm(b) for b in bank])
        nearest = np.argsort(-sims)[:k]
        weights = np.exp(sims[nearest] / temperature)
        out.append(sum(w * bank_targets[j] for w, j in zip(weights, nearest)) / weights.sum())
    return np.array(out)


@pytest.mark.parametrize("task_type,n_classes", [("multiclass", 4), ("multilabel", 3), ("binary", 1)])
@pytest.mark.parametrize("k", [1, 5, 17])
def test_matches_brute_force(task_type, n_classes, k):
    inputs = blob_inputs(task_type, n_classes, sizes=(40, 0, 15), separation=0.4, seed=k)
    bank, query = inputs.splits["train"], inputs.splits["test"]
    targets = label_matrix(inputs, bank.labels)
    got = knn.predict(bank.features["cls"], targets, query.features["cls"], k, knn.Params(chunk_size=4))
    want = reference_knn(bank.features["cls"], targets, query.features["cls"], k, 0.07)
    assert got.shape == (15, n_classes)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    if task_type == "multiclass":
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(300, 16)), rng.normal(size=(101, 16))
    sims_1, idx_1 = topk_cosine(queries, bank, 20, chunk_size=7)
    sims_2, idx_2 = topk_cosine(queries, bank, 20, chunk_size=10_000)
    np.testing.assert_array_equal(idx_1, idx_2)
    np.testing.assert_allclose(sims_1, sims_2, rtol=0, atol=1e-12)
    assert np.all(np.diff(sims_1, axis=1) <= 0)  # nearest first


def test_float32_features_close_to_float64():
    rng = np.random.default_rng(1)
    bank, queries, targets = rng.normal(size=(200, 32)), rng.normal(size=(50, 32)), np.eye(3)[rng.integers(0, 3, 200)]
    p64 = knn.predict(bank, targets, queries, 10, knn.Params())
    p32 = knn.predict(bank.astype(np.float32), targets, queries.astype(np.float32), 10, knn.Params())
    np.testing.assert_allclose(p32, p64, atol=1e-4)


def test_exclude_self_drops_only_the_diagonal():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(30, 5))
    _, idx = topk_cosine(bank, bank, 4, chunk_size=8, exclude_self=True)
    assert not np.any(idx == np.arange(30)[:, None])
    sims = (bank / np.linalg.norm(bank, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-sims, axis=1)[:, :4])


def test_k_larger_than_bank_is_an_error():
    with pytest.raises(ValueError, match="bank of 3"):
        topk_cosine(np.ones((2, 2)), np.ones((3, 2)), 4)


def test_run_selects_on_val_and_votes_over_train_plus_val():
    inputs = blob_inputs("multiclass", 3, sizes=(150, 50, 60), separation=0.6)
    pred = knn.run(inputs, knn.Params(), seed=0)
    assert pred.selected["k"] in (10, 20, 100, 200)
    assert pred.selected["bank"] == 200  # train + val
    assert pred.scores.shape == (60, 3)
    np.testing.assert_allclose(pred.scores.sum(1), 1.0, atol=1e-12)
    assert auroc(inputs, pred) > 0.9
    assert 0.5 < pred.val_score <= 1.0


def test_k_grid_clipped_to_bank_size():
    inputs = blob_inputs("multiclass", 3, sizes=(12, 9, 9), separation=1.0)
    pred = knn.run(inputs, knn.Params(ks=[10, 20, 100]), seed=0)
    assert pred.selected["k"] in (10, 12)  # 20 and 100 both clip to the 12 train samples


def test_feature_sets_select_columns():
    inputs = blob_inputs("multiclass", 3, sizes=(20, 0, 5), block_dims=(4, 6), patch_dim=3)
    split = inputs.splits["train"]
    cls, patch = split.features["cls"], split.features["patch_mean"]
    np.testing.assert_array_equal(named_features(inputs, split, "cls_last"), cls[:, 4:])
    np.testing.assert_array_equal(named_features(inputs, split, "cls_all"), cls)
    np.testing.assert_array_equal(named_features(inputs, split, "cls_patch"), np.hstack([cls[:, 4:], patch]))


def test_test_scores_vote_over_train_plus_val():
    inputs = blob_inputs("multilabel", 3, sizes=(60, 30, 20), separation=0.5)
    pred = knn.run(inputs, knn.Params(ks=[5, 10]), seed=0)
    bank = train_plus_val(inputs.splits["train"], inputs.splits["val"])
    want = reference_knn(bank.features["cls"][:, -8:], bank.labels, inputs.splits["test"].features["cls"][:, -8:], pred.selected["k"], 0.07)
    np.testing.assert_allclose(pred.scores, want, atol=1e-6)


def test_reference_settings_bank_of_train_and_votes_over_the_largest_k():
    """mode: reference's kNN (DINOv2's KnnModule): train alone scores test, and a k's votes are its
    share of a softmax over the nearest vote_pool, so a row sums to less than 1 when k < pool."""
    inputs = blob_inputs("multiclass", 3, sizes=(150, 50, 60), separation=0.6)
    params = knn.Params(ks=[10], bank="train", vote_pool=200, select_by="top1")
    pred = knn.run(inputs, params, seed=0)
    assert pred.selected["bank"] == 150  # train only
    train, test = inputs.splits["train"], inputs.splits["test"]
    targets = label_matrix(inputs, train.labels)
    bank, queries = named_features(inputs, train, "cls_last"), named_features(inputs, test, "cls_last")
    sims = np.stack([[q @ b / np.linalg.norm(q) / np.linalg.norm(b) for b in bank] for q in queries])
    order = np.argsort(-sims, axis=1)[:, :150]  # the pool is clipped to the bank
    top = np.take_along_axis(sims, order, 1)
    soft = np.exp(top / 0.07) / np.exp(top / 0.07).sum(1, keepdims=True)
    want = np.einsum("qk,qkc->qc", soft[:, :10], targets[order[:, :10]])
    np.testing.assert_allclose(pred.scores, want, atol=1e-6)
    assert np.all(pred.scores.sum(1) < 1 - 1e-9)
    assert 0.5 < pred.val_score <= 1.0 and pred.selected["select_by"] == "top1"


def test_top1_selection_scores_argmax_accuracy():
    targets = np.eye(3)[[0, 1, 2, 0]]
    scores = np.array([[0.5, 0.2, 0.1], [0.1, 0.3, 0.2], [0.4, 0.1, 0.2], [0.2, 0.1, 0.0]])
    assert knn.top1_accuracy(targets, scores, scores.sum(1, keepdims=True)) == 0.75
    # binary: the vote for 1 (0.3) against the rest of the voters' mass (0.6 - 0.3 = 0.3) is no win
    assert knn.top1_accuracy(np.array([[1.0], [0.0]]), np.array([[0.3], [0.1]]), np.array([[0.6], [0.6]])) == 0.5
