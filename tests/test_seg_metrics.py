"""Segmentation metrics: agreement with MONAI's functions and with hand counts, pooling, bootstrap."""

import numpy as np
import pytest
import torch

from raddist.protocols.base import SegCase
from raddist.seg_metrics import case_metrics, mean_dice, score_cases

CLASSES = ["background", "a", "b"]


def _square(shape, lo, hi, value=1):
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return m


def _onehot(labels, n):
    return torch.from_numpy(np.stack([labels == c for c in range(n)])[None].astype(np.float32))


def _cases(n=6, shape=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = _square(shape, (4, 4), (14, 16)) + _square(shape, (16, 10), (22, 20), 2)
        pred = np.roll(truth, int(rng.integers(-3, 4)), axis=1)
        out.append(SegCase(f"c{i}", f"p{i // 2}", pred, truth, (1.0, 1.0)))
    return out


def test_dice_matches_a_hand_count_and_monai():
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    truth = _square((20, 20), (5, 5), (15, 15))  # 100 pixels
    pred = _square((20, 20), (6, 5), (15, 15))  # 90 pixels, all inside
    m = case_metrics(pred, truth, 2, (1.0, 1.0))
    assert m["dice"][0] == pytest.approx(2 * 90 / (90 + 100), abs=1e-6)
    assert m["jaccard"][0] == pytest.approx(90 / 100, abs=1e-6)
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (90, 0, 10)

    rng = np.random.default_rng(1)
    truth = (rng.random((12, 30, 28)) < 0.3).astype(np.uint8) * rng.integers(1, 3, (12, 30, 28)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 3, truth.shape)).astype(np.uint8)
    spacing = (2.5, 0.7, 0.9)
    m = case_metrics(pred, truth, 3, spacing)
    yp, y = _onehot(pred, 3), _onehot(truth, 3)
    np.testing.assert_allclose(m["dice"], compute_dice(yp, y, include_background=False)[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(m["jaccard"], compute_iou(yp, y, include_background=False)[0].numpy(), rtol=1e-5)
    hd = compute_hausdorff_distance(yp, y, include_background=False, percentile=95, spacing=list(spacing))
    np.testing.assert_allclose(m["hd95"], hd[0].numpy(), rtol=1e-5)


def test_hd95_of_a_shift_and_of_a_missed_class():
    truth = _square((40, 40), (10, 10), (20, 20))
    shifted = np.roll(truth, 3, axis=1)
    assert case_metrics(shifted, truth, 2, (1.0, 1.0))["hd95"][0] == pytest.approx(3.0)
    assert case_metrics(shifted, truth, 2, (2.0, 0.5))["hd95"][0] == pytest.approx(1.5)  # x spacing 0.5
    missed = case_metrics(np.zeros_like(truth), truth, 2, (1.0, 2.0))
    assert missed["dice"][0] == 0 and missed["hd95"][0] == pytest.approx(np.hypot(40, 80))  # the diagonal


def test_absent_classes_are_not_scored_per_case_but_count_when_pooled():
    truth = _square((10, 10), (2, 2), (6, 6))  # class 2 absent
    pred = truth + _square((10, 10), (7, 7), (9, 9), 2)  # a false class-2 blob
    m = case_metrics(pred, truth, 3, (1.0, 1.0))
    assert m["dice"][0] == 1 and np.isnan(m["dice"][1]) and np.isnan(m["hd95"][1])
    rows, _ = score_cases([SegCase("c", "p", pred, truth, (1.0, 1.0))], CLASSES, n_boot=0)
    values = {r["metric"]: r["value"] for r in rows}
    assert values["dice"] == 1.0 and np.isnan(values["dice/b"])
    assert values["dice_pooled"] == 0.5  # class a: 1, class b: 2 * 0 / (0 + 4 + 0) = 0


def test_a_constant_prediction_scores_dice_near_zero():
    cases = _cases()
    for c in cases:
        c.pred = np.zeros_like(c.truth)
    rows, _ = score_cases(cases, CLASSES, n_boot=50)
    values = {r["metric"]: r["value"] for r in rows}
    assert values["dice"] == 0 and values["dice_pooled"] == 0 and values["jaccard"] == 0
    everywhere = [SegCase(c.case_id, c.patient_id, np.ones_like(c.truth), c.truth, c.spacing) for c in cases]
    assert mean_dice(everywhere, 3) < 0.3


def test_rows_pooled_values_and_patient_bootstrap():
    cases = _cases()
    rows, per_case = score_cases(cases, CLASSES, n_boot=200, seed=3)
    names = [r["metric"] for r in rows]
    assert names[:5] == ["dice", "dice_pooled", "jaccard", "jaccard_pooled", "hd95"]
    assert {"dice/a", "dice/b", "jaccard/a", "hd95/b"} <= set(names)
    values = {r["metric"]: r for r in rows}
    # per case: mean over classes of the mean over cases; pooled: the counts summed first
    assert values["dice"]["value"] == pytest.approx(np.nanmean(np.nanmean(per_case["dice"], 0)))
    tp, fp, fn = (per_case[k].sum(0) for k in ("tp", "fp", "fn"))
    assert values["dice_pooled"]["value"] == pytest.approx(np.mean(2 * tp / (2 * tp + fp + fn)))
    from monai.metrics import compute_dice

    whole = compute_dice(_onehot(np.concatenate([c.pred for c in cases]), 3),
                         _onehot(np.concatenate([c.truth for c in cases]), 3), include_background=False)
    assert values["dice_pooled"]["value"] == pytest.approx(float(whole.mean()), rel=1e-5)
    for r in rows:
        assert r["ci_low"] <= r["value"] + 1e-9 and r["value"] <= r["ci_high"] + 1e-9
    assert values["dice"]["ci_low"] < values["dice"]["ci_high"]
    again, _ = score_cases(cases, CLASSES, n_boot=200, seed=3)
    assert again == rows


def test_mean_dice_from_counts_is_the_headline_dice():
    cases = _cases()
    cases[0].truth = np.where(cases[0].truth == 2, 0, cases[0].truth)  # class b absent from one case
    rows, _ = score_cases(cases, CLASSES, n_boot=0)
    assert mean_dice(cases, 3) == pytest.approx({r["metric"]: r["value"] for r in rows}["dice"], abs=1e-6)  # MONAI: float32
