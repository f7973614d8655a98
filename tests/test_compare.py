import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from raddist.compare import compare_backbones, compare_predictions
from raddist.delong import delong_test
from raddist.metrics import group_codes, percentile_ci, resample_counts, resampled_rows
from raddist.paired import family_bootstrap, holm


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

    # DeLong is clustered by patient: the frame's patient ids are its clusters
    nih = preds[preds.task == "nih"]
    t = delong_test(np.stack(nih[nih.backbone == "good"].labels)[:, 1],
                    np.stack(nih[nih.backbone == "good"].scores)[:, 1],
                    np.stack(nih[nih.backbone == "weak"].scores)[:, 1], groups=nih[nih.backbone == "good"].patient_id)
    row = delong[(delong.task == "nih") & (delong.metric == "auroc/b")].iloc[0]
    assert row["p_value"] == pytest.approx(t["p_value"], rel=1e-12) and row["ci_low"] == pytest.approx(t["ci_low"])
    assert set(out.family) == {f"boot:{m}" for m in ("auroc", "accuracy", "balanced_accuracy", "f1_macro")} | {
        "delong:brain/knn#0", "delong:covid/knn#1", "delong:nih/knn#2"}

    good = preds[preds.backbone == "good"]
    with pytest.warns(UserWarning, match="nothing can be significant"):  # 3 tests, 50 resamples
        same = compare_predictions(good, good, n_boot=50)
    assert (same["diff"] == 0).all() and (same["p_value"] == 1).all() and "family" in same
    with pytest.raises(ValueError, match="--a and --b are both 'good'"):  # a user's X against X: refused
        compare_backbones(preds, "good", "good", n_boot=50)


def test_compare_backbones_refuses_nothing_in_common():
    preds = two_backbones()
    apart = preds[~((preds.backbone == "weak") & (preds.task != "nih")) & ~((preds.backbone == "good") & (preds.task == "nih"))]
    with pytest.raises(ValueError, match="'good' and 'weak' have nothing in common to compare: 'good' has brain/knn"):
        compare_backbones(apart, "good", "weak", n_boot=50)
    one_shared = preds[~((preds.backbone == "weak") & (preds.task == "nih"))]
    with pytest.warns(UserWarning, match="only backbone A"):  # partial overlap: compared where both are
        out = compare_backbones(one_shared, "good", "weak", n_boot=50)
    assert set(out.task) == {"brain", "covid"}


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

# ----------------------------------------------------------------------------------------------------------------
# Clustered DeLong (Obuchowski 1997)


def fewshot_frames(n=90, draws=3, shots=(1, 4), seed=20):
    """Binary task, 2 images per patient; per (shots, draw) a few-shot cell for each backbone, plus a knn cell."""
    rng = np.random.default_rng(seed)
    patients = np.arange(n) // 2
    y = (rng.random((n, 1)) < 0.4).astype(int)
    frames = []
    for backbone, signal in (("good", 1.5), ("weak", 0.5)):
        for s in shots:
            for d in range(draws):
                params = {"shots": s, "draw": d, "probe": "linear", "linear": {"lr": 0.1}}
                logit = (signal + 0.2 * d + 0.1 * s) * (2 * y - 1) + rng.normal(size=(n, 1))
                f = predictions_frame(backbone, "covid", "binary", y, 1 / (1 + np.exp(-logit)), patients)
                frames.append(f.assign(protocol="fewshot", params=json.dumps(params, sort_keys=True), seed=0))
        logit = signal * (2 * y - 1) + rng.normal(size=(n, 1))
        knn = predictions_frame(backbone, "covid", "binary", y, 1 / (1 + np.exp(-logit)), patients)
        frames.append(knn.assign(params="{}", seed=0))
    return pd.concat(frames, ignore_index=True)


def test_fewshot_is_compared_as_the_mean_over_draws_with_the_same_patients_for_every_draw():
    preds = fewshot_frames()
    n_boot, seed = 120, 3
    cli_keys = ("task", "protocol", "params", "seed")  # raddist compare's
    out = compare_backbones(preds, "good", "weak", n_boot=n_boot, seed=seed, keys=cli_keys)
    few = out[out.protocol == "fewshot"]
    assert set(few.test) == {"bootstrap"}  # no DeLong for a mean over draws
    assert sorted(set(few.variant)) == ["shots=1,probe=linear", "shots=4,probe=linear"]
    assert all("draw" not in json.loads(p) and json.loads(p)["linear"] == {"lr": 0.1} for p in few.params)
    assert len(few) == 2 * 4 and (few.n_samples == 90).all() and (few.n_patients == 45).all()
    # one family per metric over the knn and few-shot comparisons together
    auroc = out[(out.test == "bootstrap") & (out.metric == "auroc")]
    assert len(auroc) == 3 and set(auroc.family) == {"boot:auroc"}
    np.testing.assert_allclose(auroc.p_holm, holm(auroc.p_value))

    # by hand: per replicate one patient resample, every draw scored on it, the draws averaged
    row = few[(few.variant == "shots=4,probe=linear") & (few.metric == "auroc")].iloc[0]
    cells = {b: [preds[(preds.backbone == b) & (preds.params.str.contains(f'"draw": {d}, '))
                       & (preds.params.str.contains('"shots": 4'))] for d in range(3)] for b in ("good", "weak")}
    auc = lambda f, idx=slice(None): roc_auc_score(np.stack(f.labels)[idx, 0], np.stack(f.scores)[idx, 0])
    assert row["a"] == pytest.approx(np.mean([auc(f) for f in cells["good"]]), abs=1e-12)
    assert row["b"] == pytest.approx(np.mean([auc(f) for f in cells["weak"]]), abs=1e-12)
    codes, n_groups = group_codes(cells["good"][0].patient_id)
    d = [np.mean([auc(f, resampled_rows(codes, c)) for f in cells["good"]])
         - np.mean([auc(f, resampled_rows(codes, c)) for f in cells["weak"]])
         for block in resample_counts(n_groups, n_boot, seed) for c in block]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(percentile_ci(np.array(d)), abs=1e-12)
    assert row["diff"] > 0.03 and row["ci_low"] > 0 and row["p_value"] == pytest.approx(2 / (n_boot + 1))

    # whatever keys: few-shot rows are split by params without "draw" and seed, never pooled across shots
    default = compare_backbones(preds, "good", "weak", n_boot=n_boot, seed=seed)
    assert {"params", "seed", "variant"} <= set(default.columns)
    pd.testing.assert_frame_equal(default[default.protocol == "fewshot"].reset_index(drop=True)[list(few.columns)],
                                  few.reset_index(drop=True), check_dtype=False)
    good = preds[preds.backbone == "good"]
    same = compare_predictions(good, good, n_boot=n_boot)
    assert (same["diff"] == 0).all() and (same["p_value"] == 1).all()


def test_fewshot_with_identical_draws_is_the_single_draw_comparison():
    preds = fewshot_frames(draws=1, shots=(2,))
    one = preds[preds.protocol == "fewshot"]
    repeated = pd.concat([one.assign(params=one.params.str.replace('"draw": 0', f'"draw": {d}')) for d in range(3)])
    few = compare_predictions(repeated[repeated.backbone == "good"], repeated[repeated.backbone == "weak"], n_boot=150)
    single = compare_predictions(one[one.backbone == "good"].assign(protocol="linear"),
                                 one[one.backbone == "weak"].assign(protocol="linear"), n_boot=150)
    single = single[single.test == "bootstrap"].reset_index(drop=True)
    for col in ("a", "b", "diff", "ci_low", "ci_high", "p_value"):
        np.testing.assert_allclose(few[col], single[col], rtol=1e-12, atol=1e-15)
    with pytest.warns(UserWarning, match="draws \\[2\\] are missing"):
        part = compare_predictions(repeated[repeated.backbone == "good"],
                                   repeated[(repeated.backbone == "weak") & ~repeated.params.str.contains('"draw": 2')],
                                   n_boot=150)
    np.testing.assert_allclose(part["diff"], few["diff"], rtol=1e-12)


def test_warns_when_a_bootstrap_family_cannot_reach_alpha_after_holm():
    preds = two_backbones()
    a, b = preds[preds.backbone == "good"], preds[preds.backbone == "weak"]
    # 3 tasks per metric family: Holm's smallest p is 3 * 2 / (B + 1); 6 / 120 = 0.05 is not above alpha
    with pytest.warns(UserWarning, match=r"nothing can be significant.*boot:auroc \(3 tests, 118 resamples: needs n_boot >= 119\)"):
        compare_predictions(a, b, n_boot=118)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compare_predictions(a, b, n_boot=119)
    assert (out[out.test == "bootstrap"].p_holm >= 3 * 2 / 120 - 1e-12).all()
    with pytest.warns(UserWarning, match="boot:auroc"):
        compare_predictions(a, b, n_boot=200, alpha=0.01)


def test_bootstrap_is_sized_to_the_family_so_holm_can_reach_alpha():
    """The paper grid's boot:auroc family has 59 tests: Holm can reject only with B >= 2,359, so the old default of
    1,000 could never reach significance. "auto" (the default) sizes B to the family and says so (n_boot)."""
    assert family_bootstrap(59, 0.05) == 5000 and 59 * 2 / (5000 + 1) <= 0.05 / 2
    assert family_bootstrap(3, 0.05) == 1000 and family_bootstrap(100, 0.01) == 40000
    preds = two_backbones()
    a, b = preds[preds.backbone == "good"], preds[preds.backbone == "weak"]
    alpha = 0.005  # 3 tests: 3 * 2 / 1001 > alpha, so 1,000 resamples cannot reach it
    with pytest.warns(UserWarning, match="nothing can be significant"):
        fixed = compare_predictions(a, b, n_boot=1000, alpha=alpha)
    auto = compare_predictions(a, b, alpha=alpha)
    boot = auto[auto.test == "bootstrap"]
    assert family_bootstrap(3, alpha) == 3000 and (boot.n_boot == 3000).all() and auto[auto.test == "delong"].n_boot.isna().all()
    strong = (boot.metric == "auroc").to_numpy()  # diff > 0.2 in every task: never past zero
    assert (boot.p_holm[strong] <= alpha).all() and (fixed[fixed.test == "bootstrap"].p_holm > alpha).all()
    # the family's B is spent where it can change a decision: the rows a full run gives, or BOOTSTRAP = 1,000
    full = compare_predictions(a, b, n_boot=3000, alpha=alpha)
    pd.testing.assert_frame_equal(auto[auto.test == "bootstrap"], full[full.test == "bootstrap"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" does not warn: nothing was near alpha
        null = compare_predictions(a, a, alpha=alpha)
    assert (null[null.test == "bootstrap"].n_boot == 1000).all() and (null.p_value == 1).all()
    with pytest.raises(ValueError, match="a number >= 0 or 'auto', not 'lots'"):
        compare_predictions(a, b, n_boot="lots")

    from raddist.cli import build_parser

    parse = lambda *extra: build_parser().parse_args(["compare", "out", "--a", "x", "--b", "y", *extra]).bootstrap
    assert parse() == "auto" and parse("--bootstrap", "2500") == 2500
    with pytest.raises(SystemExit):
        parse("--bootstrap", "lots")


def test_delong_without_enough_patients_gives_no_p_value_and_says_why():
    """A finding whose positives all belong to one patient: its DeLong row has no p-value and a note; the macro
    AUROC's bootstrap row counts the resamples where that finding had no positive (undefined, not a mean over
    fewer classes)."""
    preds = two_backbones()
    nih = preds[preds.task == "nih"].copy()
    patients = nih.patient_id.str[1:].astype(int).to_numpy()
    nih["labels"] = [[l[0], int(p == 5), l[2]] for l, p in zip(nih.labels, patients)]  # class 1: patient p5 only
    out = compare_predictions(nih[nih.backbone == "good"], nih[nih.backbone == "weak"], n_boot=300,
                              class_names={"nih": ["a", "b", "c"]}).set_index("metric")
    row = out.loc["auroc/b"]
    assert row["test"] == "delong" and np.isnan(row["p_value"]) and np.isnan(row["p_holm"])
    assert "1 patient(s) with positives" in row["note"] and "at least 3 on each side" in row["note"]
    assert out.loc["auroc/a", "note"] == "" and out.loc["auroc/a", "p_value"] < 0.01
    macro = out[out.test == "bootstrap"].loc["auroc"]
    ids = nih[nih.backbone == "good"].patient_id.to_numpy()
    codes, n_groups = group_codes(ids)
    p5 = codes[ids == "p5"][0]
    lacking = sum(int((c[:, p5] == 0).sum()) for c in resample_counts(n_groups, 300, 0))
    assert macro["note"] == f"undefined in {lacking} of 300 resamples; p and CI over the rest" and 60 < lacking < 160
