"""Exact cosine neighbours (raddist.protocols.neighbours) against a brute-force NumPy reference."""

import numpy as np
import pytest

from raddist.protocols.neighbours import neighbour_sum, topk_cosine


def brute_force(queries, bank, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sims = q @ b.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def test_topk_matches_brute_force_in_any_chunking():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(200, 16)), rng.normal(size=(37, 16))
    want_sims, want_idx = brute_force(queries, bank, 5)
    for chunk in (1, 8, 1024):  # chunks bound memory; they never change the answer
        sims, idx = topk_cosine(queries, bank, 5, chunk_size=chunk)
        assert sims.shape == idx.shape == (37, 5)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(sims, want_sims, atol=1e-12)  # float64 in, float64 out
    assert np.all(np.diff(sims, axis=1) <= 0)  # nearest first


def test_scale_does_not_matter_and_float32_is_close():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(50, 8))
    sims, idx = topk_cosine(bank[:3] * 1000.0, bank, 1)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])  # each is its own nearest: cosine ignores length
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-12)
    sims32, _ = topk_cosine(bank[:3].astype(np.float16), bank.astype(np.float16), 1)
    assert sims32.dtype == np.float32 and np.allclose(sims32[:, 0], 1.0, atol=1e-3)


def test_exclude_self_skips_only_the_query_itself():
    bank = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, -0.1]])
    _, idx = topk_cosine(bank, bank, 2, chunk_size=3, exclude_self=True)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2], [1, 0], [2, 0]])
    with pytest.raises(ValueError, match="bank itself"):
        topk_cosine(bank[:2], bank, 1, exclude_self=True)
    with pytest.raises(ValueError, match="k=4 neighbours asked of a bank of 4"):
        topk_cosine(bank, bank, 4, exclude_self=True)  # 3 others at most
    with pytest.raises(ValueError, match="k=0"):
        topk_cosine(bank, bank, 0)


def test_neighbour_sum_is_the_weighted_sum_of_neighbour_targets():
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    idx = np.array([[0, 2], [1, 1]])
    weights = np.array([[0.5, 2.0], [1.0, 3.0]])
    got = neighbour_sum(idx, weights, targets)
    np.testing.assert_allclose(got, [[0.5 + 2.0, 2.0], [0.0, 4.0]])  # a repeated index counts twice
    rng = np.random.default_rng(2)
    idx, weights, targets = rng.integers(0, 30, (10, 4)), rng.random((10, 4)), rng.random((30, 3))
    loop = np.array([sum(w * targets[j] for j, w in zip(i, ws)) for i, ws in zip(idx, weights)])
    np.testing.assert_allclose(neighbour_sum(idx, weights, targets), loop)
