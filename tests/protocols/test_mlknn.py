import numpy as np
import pytest

from raddist.protocols import mlknn
from raddist.protocols.neighbours import topk_cosine

from .synthetic import auroc, blob_inputs


def reference_mlknn(bank, targets, queries, k, s=1.0):
    """Zhang & Zhou's Algorithm 1 written out with loops."""

    def unit(v):
        return v / np.linalg.norm(v)

    def neighbours(q, exclude=None):
        sims = [(-unit(q) @ unit(b), j) for j, b in enumerate(bank) if j != exclude]
        return [j for _, j in sorted(sims)[:k]]

    m, n_labels = targets.shape
    counts = np.array([[targets[neighbours(bank[i], exclude=i), l].sum() for l in range(n_labels)] for i in range(m)])
    out = np.zeros((len(queries), n_labels))
    for l in range(n_labels):
        prior = (s + targets[:, l].sum()) / (s * 2 + m)
        c1 = [sum(1 for i in range(m) if targets[i, l] == 1 and counts[i, l] == j) for j in range(k + 1)]
        c0 = [sum(1 for i in range(m) if targets[i, l] == 0 and counts[i, l] == j) for j in range(k + 1)]
        for q, query in enumerate(queries):
            j = int(targets[neighbours(query), l].sum())
            p1 = prior * (s + c1[j]) / (s * (k + 1) + sum(c1))
            p0 = (1 - prior) * (s + c0[j]) / (s * (k + 1) + sum(c0))
            out[q, l] = p1 / (p1 + p0)
    return out


@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_reference(k):
    inputs = blob_inputs("multilabel", 3, sizes=(30, 0, 12), separation=0.5, seed=k)
    bank, query = inputs.splits["train"], inputs.splits["test"]
    x, y, q = bank.features["cls"], bank.labels.astype(float), query.features["cls"]
    [(_, got)] = mlknn.fit_predict(x, y, q, [k], mlknn.Params(chunk_size=5))
    np.testing.assert_allclose(got, reference_mlknn(x, y, q, k), rtol=0, atol=1e-12)


def test_hand_computed_example():
    """Two tight pairs of points: a labelled pair at 0 and 10 degrees, an unlabelled pair at 90 and 100.

    k = 1, s = 1: prior = (1 + 2) / (2 + 4) = 1/2; each sample's other-nearest is its pair partner, so
    c1[1] = 2, c0[0] = 2, the rest 0: P(E1|H1) = (1 + 2) / (2 + 2) = 3/4, P(E1|H0) = 1/4.
    A query near the labelled pair sees one positive neighbour: posterior = (1/2 3/4) / (1/2 3/4 + 1/2 1/4).
    """
    angles = np.radians([0, 10, 90, 100])
    bank = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    targets = np.array([[1.0], [1.0], [0.0], [0.0]])
    loo = topk_cosine(bank, bank, 1, exclude_self=True)[1]
    model = mlknn.fit(loo, targets, k=1)
    np.testing.assert_allclose(model.prior, [0.5])
    np.testing.assert_allclose(model.like1[:, 0], [0.25, 0.75])
    np.testing.assert_allclose(model.like0[:, 0], [0.75, 0.25])
    queries = np.array([[np.cos(np.radians(5)), np.sin(np.radians(5))], [np.cos(np.radians(95)), np.sin(np.radians(95))]])
    idx = topk_cosine(queries, bank, 1)[1]
    np.testing.assert_allclose(mlknn.posterior(model, idx, targets)[:, 0], [0.75, 0.25])


def test_run_on_multilabel_blobs():
    inputs = blob_inputs("multilabel", 4, sizes=(200, 60, 80), separation=0.8)
    pred = mlknn.run(inputs, mlknn.Params(features="cls_all"), seed=0)
    assert pred.scores.shape == (80, 4)
    assert np.all((pred.scores > 0) & (pred.scores < 1))
    assert pred.selected["k"] in (5, 10, 20, 50) and pred.selected["bank"] == 260
    assert auroc(inputs, pred) > 0.93


def test_rejects_multiclass():
    with pytest.raises(ValueError, match="multilabel"):
        mlknn.run(blob_inputs("multiclass", 3), mlknn.Params(), seed=0)


def test_count_self_counts_each_bank_sample_as_its_own_neighbour():
    """The reference's ML-kNN (scikit-multilearn, ignore_first_neighbours=0): with k = 1 every bank
    sample's nearest is itself, so its counts say a positive always has a positive neighbour."""
    angles = np.radians([0, 10, 90, 100])
    bank = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    targets = np.array([[1.0], [0.0], [1.0], [0.0]])  # partners disagree: leave-one-out sees that
    with_self = topk_cosine(bank, bank, 1, exclude_self=False)[1]
    assert with_self[:, 0].tolist() == [0, 1, 2, 3]
    model = mlknn.fit(with_self, targets, k=1)
    np.testing.assert_allclose(model.like1[:, 0], [0.25, 0.75])  # (1 + 0) / 4, (1 + 2) / 4
    loo = mlknn.fit(topk_cosine(bank, bank, 1, exclude_self=True)[1], targets, k=1)
    np.testing.assert_allclose(loo.like1[:, 0], [0.75, 0.25])
    inputs = blob_inputs("multilabel", 3, sizes=(60, 20, 20), separation=0.8)
    pred = mlknn.run(inputs, mlknn.Params(ks=[5], count_self=True), seed=0)
    assert pred.selected["k"] == 5 and pred.scores.shape == (20, 3)


def test_leave_one_out_leaves_the_whole_patient_out():
    """Two images per patient, near-identical, labels noise: left out one image at a time, each image's
    twin votes for its label and ML-kNN learns that votes predict labels (confident posteriors); left
    out by patient, votes carry nothing and the posteriors stay near the prior."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 2)
    base = rng.normal(size=(60, 16))
    x = base[patients] + 0.01 * rng.normal(size=(120, 16))
    y = rng.integers(0, 2, size=(60, 2))[patients].astype(float)
    queries = base + 0.01 * rng.normal(size=(60, 16))  # a new image of each patient
    params = mlknn.Params(chunk_size=16)
    [(_, by_image)] = mlknn.fit_predict(x, y, queries, [1], params)
    [(_, by_patient)] = mlknn.fit_predict(x, y, queries, [1], params, bank_patients=patients)
    assert np.abs(by_image - 0.5).mean() > 0.35  # the twins' votes taken for evidence
    assert np.abs(by_patient - 0.5).mean() < 0.15
    idx = topk_cosine(x, x, 5, exclude_self=True, groups=patients)[1]
    assert not (patients[idx] == patients[:, None]).any()
    with pytest.raises(ValueError, match="leaving out 2"):
        topk_cosine(x, x, 119, exclude_self=True, groups=patients)
