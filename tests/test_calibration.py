"""ECE (15 equal-mass bins) and Brier against independent implementations, and their patient bootstrap."""

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from raddist import calibration, metrics
from raddist.protocols.base import Prediction


def reference_ece(y, p, n_bins=15):
    """Plain loop: sort by probability, cut into n_bins runs of equal count (the first N % n_bins
    one longer), sum of |mean label - mean probability| weighted by the run's share."""
    pairs = sorted(zip(p, range(len(p)), y))  # ties by position, as a stable sort
    n = len(pairs)
    size, extra = divmod(n, n_bins)
    total, start = 0.0, 0
    for b in range(n_bins):
        length = size + (1 if b < extra else 0)
        run = pairs[start:start + length]
        start += length
        if not run:
            continue
        mean_p = sum(r[0] for r in run) / len(run)
        mean_y = sum(r[2] for r in run) / len(run)
        total += len(run) / n * abs(mean_y - mean_p)
    return total


def _data(seed=0, n=203, c=3):
    rng = np.random.default_rng(seed)
    p = rng.random((n, c)) ** 1.5
    y = (rng.random((n, c)) < p ** 0.7).astype(int)
    return y, p


@pytest.mark.parametrize("n", [7, 15, 203, 1000])
def test_ece_matches_plain_loop(n):
    y, p = _data(n=n, c=1)
    assert calibration.ece(y[:, 0], p[:, 0]) == pytest.approx(reference_ece(y[:, 0], p[:, 0]), abs=1e-12)


def test_ece_perfect_and_worst():
    p = np.repeat([0.1, 0.5, 0.9], 100)
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.permutation(np.arange(100) < k) for k in (10, 50, 90)]).astype(int)
    assert calibration.ece(y, p) == pytest.approx(reference_ece(y, p), abs=1e-12)
    assert calibration.ece(np.ones(30), np.zeros(30)) == pytest.approx(1.0)


def test_multilabel_rows_match_sklearn_and_loop():
    y, p = _data()
    patients = np.arange(len(y)) // 2
    rows = {r["metric"]: r for r in calibration.score_calibration(
        "multilabel", Prediction(np.arange(len(y)), patients, y, p), ["a", "b", "c"], n_boot=0)}
    briers = [brier_score_loss(y[:, k], p[:, k]) for k in range(3)]
    eces = [reference_ece(y[:, k], p[:, k]) for k in range(3)]
    for k, name in enumerate("abc"):
        assert rows[f"brier/{name}"]["value"] == pytest.approx(briers[k], abs=1e-12)
        assert rows[f"ece_mass15/{name}"]["value"] == pytest.approx(eces[k], abs=1e-12)
    assert rows["brier"]["value"] == pytest.approx(np.mean(briers), abs=1e-12)
    assert rows["ece_mass15"]["value"] == pytest.approx(np.mean(eces), abs=1e-12)


def test_multiclass_top_label_and_brier():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(150, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    rows = {r["metric"]: r["value"] for r in calibration.score_calibration(
        "multiclass", Prediction(np.arange(150), np.arange(150), y, p), list("wxyz"), n_boot=0)}
    assert set(rows) == {"ece_mass15", "brier"}
    assert rows["brier"] == pytest.approx(brier_score_loss(y, p, labels=[0, 1, 2, 3]), abs=1e-12)
    assert rows["ece_mass15"] == pytest.approx(reference_ece((p.argmax(1) == y).astype(int), p.max(1)), abs=1e-12)


def test_binary_two_columns_and_non_probabilities():
    y, p = _data(c=1)
    two = np.concatenate([1 - p, p], axis=1)
    rows = {r["metric"]: r["value"] for r in calibration.score_calibration(
        "binary", Prediction(np.arange(len(y)), np.arange(len(y)), y, two), ["pos"], n_boot=0)}
    assert rows == pytest.approx({"ece_mass15": reference_ece(y[:, 0], p[:, 0]), "brier": brier_score_loss(y[:, 0], p[:, 0])})
    logits = Prediction(np.arange(len(y)), np.arange(len(y)), y, p * 6 - 3)
    assert calibration.score_calibration("binary", logits, ["pos"], n_boot=10) == []


def test_resample_weights_equal_materialised_rows():
    """A resample's ECE and Brier equal those of its rows written out (each patient's rows repeated)."""
    y, p = _data(seed=3, n=90, c=2)
    p = np.round(p, 3)
    patients = np.arange(90) // 3
    codes, n = metrics.group_codes(patients)
    evaluate = calibration.CalibrationEvaluator("multilabel", y, p, ["a", "b"], codes, n)
    counts = next(metrics.resample_counts(n, 5, seed=4))
    got = evaluate(counts)
    for b in range(5):
        rows = metrics.resampled_rows(codes, counts[b])
        for k, name in enumerate("ab"):
            yy, pp = y[rows, k], p[rows, k]
            assert got[f"brier/{name}"][b] == pytest.approx(brier_score_loss(yy, pp), abs=1e-12)
            # the materialised rows sorted stably by (p, original row): the weighted order
            o = np.lexsort((rows, pp))
            assert got[f"ece_mass15/{name}"][b] == pytest.approx(reference_ece(yy[o], pp[o]), abs=1e-12)


def test_bootstrap_resamples_patients():
    """CIs cover the point estimate, and are wider when the same rows belong to fewer patients: 40
    patients with 10 identical images each, against the same 400 rows as 400 patients."""
    y, p = _data(seed=5, n=40, c=1)
    y, p = np.repeat(y[:, 0], 10), np.repeat(p[:, 0], 10)
    wide = {r["metric"]: r for r in calibration.score_calibration(
        "binary", Prediction(np.arange(400), np.arange(400) // 10, y, p), ["pos"], n_boot=300, seed=1)}
    narrow = {r["metric"]: r for r in calibration.score_calibration(
        "binary", Prediction(np.arange(400), np.arange(400), y, p), ["pos"], n_boot=300, seed=1)}
    for m in ("ece_mass15", "brier"):
        assert narrow[m]["ci_low"] <= narrow[m]["value"] <= narrow[m]["ci_high"]
        assert wide[m]["ci_high"] - wide[m]["ci_low"] > narrow[m]["ci_high"] - narrow[m]["ci_low"]
        assert narrow[m]["n_undefined"] == 0


def test_reliability_curve_and_plot():
    from raddist import figures

    y, p = _data(seed=6, c=2)
    x, freq = calibration.reliability_curve("multilabel", y, p)
    assert len(x) == 15 and np.all(np.diff(x) >= 0) and np.all((freq >= 0) & (freq <= 1))
    png = figures.reliability_plot({("dinov2_s", "linear"): (x, freq)}, "chest")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
