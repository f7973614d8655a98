"""Subgroup metrics: patient-resampled CIs, pooling of small groups, a planted gap found and a null
gap flagged at most at alpha over repeated seeded simulations."""

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from raddist import subgroups
from raddist.protocols.base import Prediction
from raddist.spec import TaskSpec


def simulate(seed, n_patients=120, gap=0.0, images=2):
    """Binary task, `images` rows per patient whose scores share the patient's noise; group B's scores
    carry less signal when gap > 0."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), images)
    group = np.where(np.arange(n_patients) % 2 == 0, "A", "B")[patients]
    y = rng.random(n_patients)[patients] < 0.4  # a trait of the patient
    signal = np.where(group == "A", 1.5, 1.5 - gap)
    s = 1 / (1 + np.exp(-(signal * (2 * y - 1) + 0.9 * rng.normal(size=n_patients)[patients] + 0.45 * rng.normal(size=len(y)))))
    return Prediction(np.arange(len(y)), patients, y.astype(int)[:, None], s[:, None]), group


def _rows(pred, group, n_boot=200, seed=0, min_patients=20):
    return {r["metric"]: r for r in subgroups.score_subgroups(
        "binary", pred, ["pos"], {"sex": group}, min_patients, n_boot=n_boot, seed=seed)}


def test_point_estimates_match_sklearn_and_cis_resample_patients():
    pred, group = simulate(0, gap=0.8)
    rows = _rows(pred, group)
    for g in "AB":
        m = group == g
        assert rows[f"subgroup/sex={g}/auroc"]["value"] == pytest.approx(
            roc_auc_score(pred.labels[m, 0], pred.scores[m, 0]), abs=1e-12)
        assert rows[f"subgroup/sex={g}/auroc"]["n_patients"] == 60
    # the same rows, each image its own patient: narrower intervals (rows of a patient move together)
    rowwise = Prediction(pred.sample_ids, np.arange(len(pred.sample_ids)), pred.labels, pred.scores)
    narrow = _rows(rowwise, group)
    width = lambda r: r["ci_high"] - r["ci_low"]
    assert width(rows["subgroup/sex=B/auroc"]) > 1.15 * width(narrow["subgroup/sex=B/auroc"])
    gap = rows["subgroup/sex/gap/auroc"]
    assert gap["groups"] == "A - B"
    assert gap["value"] == pytest.approx(rows["subgroup/sex=A/auroc"]["value"] - rows["subgroup/sex=B/auroc"]["value"])


def test_planted_gap_is_found():
    found = [_rows(*simulate(s, gap=1.2))["subgroup/sex/gap/auroc"] for s in range(5)]
    assert all(g["p_value"] < 0.05 and g["ci_low"] > 0 for g in found)


def test_null_gap_flagged_at_most_at_alpha():
    """40 seeded null simulations with three groups (the pair is chosen from the data): the range test
    rejects at 5% at most as often as a Binomial(40, 0.05) would exceed its 97.5th percentile (5)."""
    rejections = 0
    for s in range(40):
        pred, _ = simulate(100 + s, n_patients=90, gap=0.0)
        group = np.array(["x", "y", "z"])[pred.patient_ids % 3]
        gap = _rows(pred, group, n_boot=150, seed=s)["subgroup/sex/gap/auroc"]
        rejections += gap["p_value"] < 0.05
    assert rejections <= 5


def test_small_groups_pool_into_other_and_are_never_listed():
    pred, _ = simulate(1, n_patients=100)
    p = pred.patient_ids
    # 70 patients 'F', 25 'M', 3 'X', 2 'Y': X and Y (5 together) pool into 'other', itself too small
    group = np.select([p < 70, p < 95, p < 98], ["F", "M", "X"], "Y").astype(object)
    rows = _rows(pred, group, n_boot=50)
    listed = {k for k in rows if not k.startswith("subgroup/sex/gap")}
    assert listed == {"subgroup/sex=F/auroc", "subgroup/sex=M/auroc"}
    pooled = subgroups.pool_small(group, p, 20)
    assert set(pooled) == {"F", "M", "other"}
    # 'other' reaching the minimum is listed as 'other'
    group2 = np.select([p < 60, p < 80], ["F", "M"], np.array(["X", "Y"], dtype=object)[p % 2]).astype(object)
    rows2 = _rows(pred, group2, n_boot=50)
    assert "subgroup/sex=other/auroc" in rows2 and rows2["subgroup/sex=other/auroc"]["n_patients"] == 20
    assert not any("=X" in k or "=Y" in k for k in rows2)


def test_manifest_values_by_sample_then_patient(tmp_path):
    task = TaskSpec(name="t", manifest=str(tmp_path / "m.parquet"), type="binary", labels=["y"],
                    subgroups=["sex", "site"])
    table = pa.table({"sample_id": ["a1", "a2", "b1"], "patient_id": ["a", "a", "b"],
                      "sex": ["F", "F", None], "site": ["s1", "s2", "s1"]})
    values = subgroups.manifest_values(task, table, ["a2", "b1", "vol_a"], ["a", "b", "a"])
    assert values["sex"].tolist() == ["F", "unknown", "F"]
    assert values["site"].tolist() == ["s2", "s1", "s1"]  # a volume id not in the manifest: its patient's first
    bad = TaskSpec(name="t", manifest=str(tmp_path / "m.parquet"), type="binary", labels=["y"], subgroups=["age_band"])
    with pytest.raises(subgroups.SubgroupError, match=r"task t: subgroup column\(s\) \['age_band'\] not in manifest"):
        subgroups.manifest_values(bad, table, ["a1"], ["a"])
    ages = pa.table({"sample_id": [f"s{i}" for i in range(40)], "patient_id": [f"p{i}" for i in range(40)],
                     "age_band": [str(20 + i) for i in range(40)]})
    with pytest.raises(subgroups.SubgroupError, match="subgroup column 'age_band' .* has 40 distinct values; subgroups take coarse"):
        subgroups.manifest_values(bad, ages, ["s1"], ["p1"])


def test_a_cell_writes_subgroup_columns_and_rows(tmp_path):
    """A frozen kNN cell end to end (cache entry written directly, no Ray): predictions.parquet has the
    pooled 'sex' column; metrics.parquet has the subgroup, gap and calibration rows."""
    import pyarrow.parquet as pq

    from raddist.cells.run import CellContext, evaluate_cell
    from raddist.embed.cache import EmbeddingCache, block_table, write_part
    from raddist.plan import Cell
    from raddist.spec import BackboneSpec, ResourcesSpec
    from tests.protocols.synthetic import blob_inputs

    inputs = blob_inputs("binary", 1, sizes=(60, 20, 60), separation=1.0)
    test_patients = sorted(set(inputs.splits["test"].patient_ids))  # 30: 22 F, 6 M, 2 X
    sex = {p: "F" if i < 22 else "M" if i < 28 else "X" for i, p in enumerate(test_patients)}
    rows, feats = [], []
    for split, data in inputs.splits.items():
        rows += [{"sample_id": s, "uri": f"{s}.png", "patient_id": p, "split": split, "finding": int(y[0]),
                  "sex": sex.get(p, "F")} for s, p, y in zip(data.sample_ids, data.patient_ids, data.labels)]
        feats.append(data.features)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    n = len(rows)
    cache = EmbeddingCache(str(tmp_path / "cache"))
    part = write_part(cache.entry("k1"), block_table({
        "row": np.arange(n), "slice": np.full(n, -1), "error": np.array([""] * n, dtype=object),
        **{k: np.concatenate([f[k] for f in feats]) for k in ("cls", "patch_mean")}}))
    cache.finish("k1", [part], {"feature_names": ["cls", "patch_mean"], "block_dims": [8, 8, 8, 8]})
    task = TaskSpec(name="t", manifest=str(tmp_path / "manifest.parquet"), type="binary", labels=["finding"],
                    subgroups=["sex"], min_group_patients=5)
    cell = Cell(id="c1", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="knn",
                params={"ks": [10]}, seed=0, embedding_job="j1")
    ctx = CellContext(cache.root, str(tmp_path / "out"), n_boot=100, salt="s", resources=ResourcesSpec())
    assert evaluate_cell(cell, "k1", ctx)["ok"]
    d = tmp_path / "out" / "cells" / "c1"
    preds = pq.read_table(d / "predictions.parquet").to_pandas()
    assert preds["sex"].value_counts().to_dict() == {"F": 44, "M": 12, "other": 4}
    metrics = pq.read_table(d / "metrics.parquet").to_pandas().set_index("metric")
    assert {"subgroup/sex=F/auroc", "subgroup/sex=M/auroc", "subgroup/sex/gap/auroc", "ece_mass15", "brier"} <= set(metrics.index)
    assert not any("other" in m or "=X" in m for m in metrics.index)
    assert metrics.loc["subgroup/sex=M/auroc", "n_patients"] == 6
    assert 0 <= metrics.loc["subgroup/sex/gap/auroc", "p_value"] <= 1
    assert metrics.loc["brier", "ci_low"] <= metrics.loc["brier", "value"] <= metrics.loc["brier", "ci_high"]
    # the report's sections, from the cell's rows and its predictions.parquet
    from raddist import report_trust as report

    results = metrics.reset_index()
    calib = "\n".join(report.calibration_lines(results, str(tmp_path / "out")))
    assert "## Calibration" in calib and "ece_mass15: 15 equal-mass bins" in calib
    assert f"{metrics.loc['brier', 'value']:.3f} [{metrics.loc['brier', 'ci_low']:.3f}" in calib
    assert (tmp_path / "out" / "reliability_t.png").read_bytes()[:4] == b"\x89PNG"
    sub = "\n".join(report.subgroup_lines(results))
    gap = metrics.loc["subgroup/sex/gap/auroc"]
    assert f"| {gap['value']:.3f} [{gap['ci_low']:.3f}, {gap['ci_high']:.3f}] (F - M) | {gap['p_value']:.3f} |" in sub
    assert "M 0." in sub and "(n=6)" in sub and "other" not in sub.split("not listed alone")[1]
