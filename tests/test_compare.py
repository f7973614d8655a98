import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from raddist.compare import (compare_backbones, compare_predictions, delong_test, holm,
                             paired_bootstrap)
from raddist.metrics import classification_metrics


def slow_delong(y, a, b):
    """DeLong et al. (1988) straight from the definition: O(m n) kernel matrices."""
    y = np.asarray(y).astype(bool)
    v10, v01 = [], []
    for s in (a, b):
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    cov = np.cov(np.array(v10)) / y.sum() + np.cov(np.array(v01)) / (~y).sum()
    aucs = [v.mean() for v in v10]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return aucs, var, (aucs[0] - aucs[1]) / np.sqrt(var)


def binary_data(n=400, seed=0, signal_a=1.0, signal_b=1.0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    noise = rng.normal(size=n)
    a = signal_a * y + noise
    b = signal_b * y + 0.6 * noise + 0.8 * rng.normal(size=n)
    if ties:
        a, b = np.round(a, 0), np.round(b, 1)
    return y, a, b


def test_holm_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    assert holm([]).shape == (0,)


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_slow_reference_and_sklearn(ties):
    y, a, b = binary_data(seed=1, ties=ties)
    t = delong_test(y, a, b)
    assert t["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert t["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    aucs, var, z = slow_delong(y, a, b)
    assert t["var"] == pytest.approx(var, rel=1e-9, abs=1e-15)
    assert t["z"] == pytest.approx(z, rel=1e-9, abs=1e-9)
    assert t["p_value"] == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)


def test_delong_identical_scores_and_clearly_better_model():
    y, a, b = binary_data(seed=2)
    same = delong_test(y, a, a)
    assert same["diff"] == 0 and same["z"] == 0 and same["p_value"] == 1.0
    y, a, b = binary_data(n=500, seed=3, signal_a=2.5, signal_b=0.3)
    better = delong_test(y, a, b)
    assert better["diff"] > 0.2 and better["p_value"] < 0.01
    assert better["ci_low"] > 0


def test_paired_bootstrap_a_vs_a():
    y, a, _ = binary_data(seed=4)
    r = paired_bootstrap(y, a[:, None], a[:, None], np.arange(len(y)) // 2, "auroc", n_boot=200)
    assert r["diff"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 and r["p_value"] == 1.0


def test_paired_bootstrap_detects_better_model_and_callable_agrees():
    y, a, b = binary_data(n=300, seed=5, signal_a=2.5, signal_b=0.3)
    sa, sb = 1 / (1 + np.exp(-a[:, None])), 1 / (1 + np.exp(-b[:, None]))
    groups = np.arange(len(y)) // 3
    r = paired_bootstrap(y, sa, sb, groups, "auroc", n_boot=300, seed=1)
    assert r["diff"] > 0.2 and r["ci_low"] > 0 and r["p_value"] == pytest.approx(2 / 301)
    # the general (callable) path resamples the same patients, so it gives the same numbers
    fn = lambda labels, scores: classification_metrics("binary", labels, scores, ["x"])["auroc"]
    r2 = paired_bootstrap(y, sa, sb, groups, fn, n_boot=300, seed=1)
    for k in r:
        assert r2[k] == pytest.approx(r[k], abs=1e-12)


def predictions_frame(backbone, task, task_type, labels, scores, patients):
    return pd.DataFrame(dict(
        cell_id=f"{backbone}-{task}", task=task, backbone=backbone, protocol="knn",
        task_type=task_type, sample_id=[f"s{i}" for i in range(len(labels))],
        patient_id=[f"p{p}" for p in patients],
        labels=[np.atleast_1d(l).tolist() if task_type != "multiclass" else int(l)
                for l in labels],
        scores=[list(s) for s in scores]))


def two_backbones(seed=6):
    rng = np.random.default_rng(seed)
    frames = []
    n = 240
    patients = np.arange(n) // 2
    y = (rng.random((n, 3)) < 0.4).astype(int)  # multilabel, 3 findings
    yb = y[:, :1]
    yc = rng.integers(0, 3, n)
    onehot = np.eye(3)[yc]
    for backbone, signal in (("good", 2.0), ("weak", 0.2)):
        noise = rng.normal(size=(n, 3))
        frames.append(predictions_frame(backbone, "nih", "multilabel", y,
                                        1 / (1 + np.exp(-(signal * (2 * y - 1) + noise))),
                                        patients))
        frames.append(predictions_frame(backbone, "covid", "binary", yb,
                                        1 / (1 + np.exp(-(signal * (2 * yb - 1) + noise[:, :1]))),
                                        patients))
        logits = signal * onehot + noise
        frames.append(predictions_frame(backbone, "brain", "multiclass", yc,
                                        np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                                        patients))
    return pd.concat(frames, ignore_index=True)


def test_compare_predictions_table():
    preds = two_backbones()
    # shuffled rows in B: alignment is by sample_id, not position
    b = preds[preds.backbone == "weak"].sample(frac=1.0, random_state=0)
    out = compare_predictions(preds[preds.backbone == "good"], b, n_boot=200,
                              class_names={"nih": ["a", "b", "c"]})
    assert list(out.columns[:11]) == ["task", "protocol", "metric", "test", "a", "b", "diff",
                                      "ci_low", "ci_high", "p_value", "p_holm"]
    boot = out[(out.test == "bootstrap") & (out.metric == "auroc")].set_index("task")
    assert set(boot.index) == {"nih", "covid", "brain"}
    assert (boot["diff"] > 0.2).all() and (boot["ci_low"] > 0).all()
    np.testing.assert_allclose(boot["p_holm"], holm(boot["p_value"]))
    delong = out[out.test == "delong"]
    assert sorted(delong[delong.task == "nih"].metric) == ["auroc/a", "auroc/b", "auroc/c"]
    assert len(delong[delong.task == "covid"]) == 1 and len(delong[delong.task == "brain"]) == 3
    assert (delong.p_value < 0.01).all()
    # the bootstrap's a, b are the point macro AUROCs
    good = preds[(preds.backbone == "good") & (preds.task == "covid")]
    y, s = np.stack(good.labels), np.stack(good.scores)
    assert boot.loc["covid", "a"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))

    same = compare_backbones(preds, "good", "good", n_boot=50)
    assert (same["diff"] == 0).all() and (same["p_value"] == 1).all()


def test_compare_predictions_rejects_different_items():
    preds = two_backbones()
    a, b = preds[preds.backbone == "good"], preds[preds.backbone == "weak"]
    with pytest.raises(ValueError, match="different items"):
        compare_predictions(a, b.iloc[1:], n_boot=10)
    with pytest.raises(ValueError, match="no predictions"):
        compare_backbones(preds, "good", "missing")


def cases_frame(backbone, dice, present, patients, classes=("lung", "heart")):
    """cases.parquet rows: per case x class, Dice where the class is present (NaN elsewhere) and
    the voxel counts that make it (tp = dice, fp = fn = 1 - dice of 100 voxels)."""
    rows = []
    for i in range(len(dice)):
        for c, name in enumerate(classes):
            d = dice[i, c] if present[i, c] else np.nan
            tp = 100 * d if present[i, c] else 0.0
            rows.append(dict(task="lungs", protocol="seg_linear", backbone=backbone, case_id=f"c{i}",
                             patient_id=f"p{patients[i]}", **{"class": name}, present=bool(present[i, c]),
                             dice=d, jaccard=d, hd95=1.0 if present[i, c] else np.nan, tp=tp,
                             fp=0.0 if not present[i, c] else 100 - tp, fn=0.0 if not present[i, c] else 100 - tp))
    return pd.DataFrame(rows)


def test_segmentation_bootstraps_the_reports_headline_dice_by_patient():
    """The compared quantity is the report's: the mean over classes of each class's mean Dice over
    the cases that contain it (not the mean over (case, class) pairs)."""
    from raddist.seg_metrics import aggregate

    rng = np.random.default_rng(1)
    n = 40
    present = (rng.random((n, 2)) < 0.5).astype(int)
    present[:, 0] = 1
    good = np.clip(0.85 + 0.05 * rng.standard_normal((n, 2)), 0, 1)
    weak = np.clip(good - 0.10 + 0.03 * rng.standard_normal((n, 2)), 0, 1)
    patients = np.arange(n) // 2
    cases = pd.concat([cases_frame("good", good, present, patients), cases_frame("weak", weak, present, patients)])
    out = compare_backbones(None, "good", "weak", cases=cases, n_boot=300)
    assert list(out["metric"]) == ["dice", "dice_pooled", "hd95"] and set(out["test"]) == {"bootstrap"}
    row = out.set_index("metric").loc["dice"]
    per_class = [good[present[:, c] == 1, c].mean() for c in range(2)]
    assert row["a"] == pytest.approx(np.mean(per_class))
    assert row["a"] != pytest.approx(good[present == 1].mean(), abs=1e-4)  # not the pair mean
    values = {k: np.where(present == 1, good, np.nan) for k in ("dice", "jaccard")}
    values.update(hd95=np.where(present == 1, 1.0, np.nan), tp=np.where(present == 1, 100 * good, 0.0))
    values.update(fp=np.where(present == 1, 100 - values["tp"], 0.0), fn=np.where(present == 1, 100 - values["tp"], 0.0))
    assert row["a"] == pytest.approx(aggregate(values, np.ones((1, n)))["dice"][0])
    assert 0.07 < row["diff"] < 0.13 and row["ci_low"] > 0 and row["p_value"] < 0.01
    assert row["n_patients"] == 20 and row["n_samples"] == n
    with pytest.raises(ValueError, match="different cases"):
        compare_backbones(None, "good", "weak", cases=cases.iloc[1:], n_boot=10)