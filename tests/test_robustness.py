"""Corruptions: deterministic per image and seed, shape and dtype kept, worse with severity."""

import re

import numpy as np
import pytest

from raddist import robustness


def _image(size=224):
    """A smooth radiograph-like image: two lung fields, a cardiac silhouette, a sharp rib pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.5) / 0.3) ** 2))
    ribs = 0.15 * (np.sin(y * 60) > 0.6)
    return np.clip(0.2 + 0.5 * lungs + ribs, 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", robustness.CORRUPTIONS)
def test_deterministic_shape_dtype_and_monotone(name):
    img = _image()
    outs = [robustness.corrupt(img, name, s, seed=3, sample_id="p0001_s1") for s in robustness.SEVERITIES]
    again = robustness.corrupt(img, name, 3, seed=3, sample_id="p0001_s1")
    np.testing.assert_array_equal(outs[2], again)
    assert all(o.shape == img.shape and o.dtype == img.dtype and o.min() >= 0 and o.max() <= 1 for o in outs)
    errors = [float(np.mean((o.astype(np.float64) - img) ** 2)) for o in outs]
    assert errors[0] > 1e-6 and all(b > a for a, b in zip(errors, errors[1:])), errors


def test_noise_depends_on_seed_and_image_only():
    img = _image(64)
    a = robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="a")
    assert not np.array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=1, sample_id="a"))
    assert not np.array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="b"))
    # the same image corrupted after others (another worker, another order): the same pixels
    for other in ("x", "y", "z"):
        robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id=other)
    np.testing.assert_array_equal(a, robustness.corrupt(img, "gaussian_noise", 3, seed=0, sample_id="a"))
    noise = a.astype(np.float64) - img
    inside = (img > 0.2) & (img < 0.8)  # away from clipping
    assert noise[inside].std() == pytest.approx(robustness.PARAMS["gaussian_noise"][2], rel=0.1)


def test_channels_and_bad_inputs():
    rgb = np.repeat(_image(64)[..., None], 3, axis=2)
    for name in robustness.CORRUPTIONS:
        assert robustness.corrupt(rgb, name, 5, seed=0, sample_id="a").shape == rgb.shape
    with pytest.raises(robustness.CorruptionError, match=r"unknown corruption 'fog'; allowed: \['gaussian_noise'"):
        robustness.corrupt(rgb, "fog", 1, 0, "a")
    with pytest.raises(robustness.CorruptionError, match="severity 6 is not one of"):
        robustness.corrupt(rgb, "jpeg", 6, 0, "a")
    with pytest.raises(robustness.CorruptionError, match="dtype uint8: expected floats"):
        robustness.corrupt((rgb * 255).astype(np.uint8), "jpeg", 1, 0, "a")


def _spec(robustness, tasks=None):
    from raddist import spec

    tasks = tasks or [{"name": "cxr", "manifest": "/tmp/m.parquet", "type": "binary", "labels": ["y"]}]
    return spec.parse({"backbones": [{"name": "tiny_vit", "weights": "random"}], "tasks": tasks,
                       "protocols": [{"name": "knn"}, {"name": "linear"}], "robustness": robustness})


def test_spec_names_a_bad_corruption_severity_protocol_or_task_in_one_line():
    from raddist.errors import ConfigError

    ok = _spec({"corruptions": ["jpeg", "contrast"], "severities": [1, 5]}).robustness
    assert (ok.corruptions, ok.severities, ok.seed, ok.tasks, ok.protocols) == (["jpeg", "contrast"], [1, 5], 0, None, None)
    for bad, line in [({"corruptions": ["fog"]}, "robustness.corruptions: unknown corruption 'fog'; allowed: ['gaussian_noise'"),
                      ({"corruptions": ["jpeg"], "severities": [6]}, "robustness.severities: severity 6 is not one of"),
                      ({"corruptions": ["jpeg"], "protocols": ["fewshot"]},
                       "robustness.protocols: protocol 'fewshot' does not score further test sets"),
                      ({"corruptions": ["jpeg"], "tasks": ["nih"]}, "robustness.tasks: unknown task(s) ['nih']; allowed: ['cxr']")]:
        with pytest.raises(ConfigError, match=re.escape(line)) as e:
            _spec(bad)
        assert "\n" not in str(e.value)


def _chest_subset(synthetic_data, tmp_path, n=20):
    """n rows of the synthetic chest set (every split), as a manifest of their own."""
    import os

    import pyarrow.parquet as pq

    from raddist.data import manifest as manifest_lib

    table = manifest_lib.load(os.path.join(synthetic_data, "chest", "manifest.parquet")).slice(0, n)
    pq.write_table(table, tmp_path / "manifest.parquet")
    return str(tmp_path / "manifest.parquet"), table


def _robust_plan(manifest_uri, cache_dir, robustness, protocols=({"name": "knn"}, {"name": "fewshot"})):
    from raddist import spec as spec_lib
    from raddist.plan import make_plan

    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": manifest_uri, "type": "multilabel", "labels": ["opacity"]}],
        "protocols": list(protocols), "storage": {"cache": str(cache_dir)},
        "resources": {"embed_batch_size": 8}, "robustness": robustness})
    return spec, make_plan(spec)


def test_corrupted_job_embeds_the_test_rows_only_deterministically(ray_local, synthetic_data, tmp_path):
    from raddist.embed.cache import EmbeddingCache
    from raddist.embed.jobs import run_embedding_jobs

    manifest_uri, table = _chest_subset(synthetic_data, tmp_path)
    spec, plan = _robust_plan(manifest_uri, tmp_path / "cache", {"corruptions": ["gaussian_noise"], "severities": [5]})
    from raddist.plan import corrupted_jobs

    clean = next(j for j in plan.jobs.values() if "corruption" not in j.contract)
    noisy = corrupted_jobs(spec, clean, spec.protocols[0])["corruption/gaussian_noise/5"]
    cache = EmbeddingCache(str(tmp_path / "cache"))
    outcomes = run_embedding_jobs([clean, noisy], cache, spec.resources)
    a, b = (cache.load(o.key) for o in outcomes)
    test_rows = [i for i, s in enumerate(table["split"].to_pylist()) if s == "test"]
    assert 0 < len(test_rows) < table.num_rows
    assert list(a.rows) == list(range(table.num_rows)) and list(b.rows) == test_rows  # the test rows, exactly
    assert outcomes[1].images == len(test_rows) and cache.meta(outcomes[1].key)["manifest_rows"] == len(test_rows)
    clean_test = a.features["cls"][test_rows]
    assert not np.allclose(clean_test, b.features["cls"], atol=1e-3)  # the corruption reached the features


def test_decode_corrupts_after_windowing_deterministically_per_sample_id(synthetic_data):
    """The decode step: the same row decodes to the same corrupted pixels (another batch, order, worker),
    another sample id or seed to others, and without a corruption to the clean pixels."""
    import os

    from raddist.data import manifest as manifest_lib
    from raddist.data.decode import DecodeBatch

    table = manifest_lib.load(os.path.join(synthetic_data, "chest", "manifest.parquet")).slice(0, 3)
    batch = {"row": np.arange(3), "uri": np.asarray(table["uri"].to_pylist(), object),
             "mask_uri": np.asarray([""] * 3, object), "modality": np.asarray([""] * 3, object),
             "sample_id": np.asarray(table["sample_id"].to_pylist(), object)}
    contract = {"size": 64, "window": "auto", "clip_percentiles": None}
    noisy = {**contract, "corruption": {"name": "gaussian_noise", "severity": 3, "seed": 0}}
    clean, a = DecodeBatch(contract)(batch)["image"], DecodeBatch(noisy)(batch)["image"]
    reversed_batch = {k: v[::-1] for k, v in batch.items()}
    np.testing.assert_array_equal(DecodeBatch(noisy)(reversed_batch)["image"][::-1], a)
    other_seed = DecodeBatch({**noisy, "corruption": {**noisy["corruption"], "seed": 1}})(batch)["image"]
    assert not np.array_equal(other_seed, a) and not np.array_equal(a, clean)
    renamed = DecodeBatch(noisy)({**batch, "sample_id": np.asarray(["x", "y", "z"], object)})["image"]
    assert not np.array_equal(renamed, a)
    diff = np.abs(a.astype(int) - clean.astype(int))
    assert 3 < diff.mean() < 40  # noise of std 0.08 on [0, 1]: ~20 grey levels at 255, softened by the resize


def test_plan_counts_the_corrupted_jobs_and_their_keys_differ(tmp_path):
    import dataclasses

    from raddist import keys

    robustness = {"corruptions": ["jpeg", "contrast"], "severities": [1, 5], "protocols": ["knn"]}
    spec, plan = _robust_plan(str(tmp_path / "m.parquet"), tmp_path, robustness,
                              protocols=({"name": "knn"}, {"name": "linear"}, {"name": "fewshot"}))
    assert plan.summary()["embedding_jobs"] == 1 + 4 and plan.summary()["corrupted_jobs"] == 4
    assert "5 embedding jobs (4 of corrupted test splits)" in plan.table()
    knn = [c for c in plan.cells if c.protocol == "knn"]
    assert sorted(knn[0].external_jobs) == ["corruption/contrast/1", "corruption/contrast/5",
                                            "corruption/jpeg/1", "corruption/jpeg/5"]
    assert all(not c.external_jobs for c in plan.cells if c.protocol != "knn")  # robustness.protocols: knn
    from raddist.sweep import job_label

    assert sorted(job_label(j) for j in plan.jobs.values())[:2] == ["t", "t (corruption/contrast/1, test rows)"]
    _, without = _robust_plan(str(tmp_path / "m.parquet"), tmp_path, None,
                              protocols=({"name": "knn"}, {"name": "linear"}, {"name": "fewshot"}))
    assert {c.id for c in without.cells if c.protocol != "knn"} == {c.id for c in plan.cells if c.protocol != "knn"}
    assert not {c.id for c in without.cells} & {c.id for c in knn}  # cells that score them are new cells
    # the cache key: by corruption, severity and seed, and by which rows are the test split
    manifest = keys.ManifestDigest("images", "labels", "rows", "results")
    job = plan.jobs[knn[0].embedding_job]
    source = keys.JobSource("tiny_vit", "random", job.contract, job.features, manifest, False, False)
    variants = [None, {"name": "jpeg", "severity": 1, "seed": 0}, {"name": "jpeg", "severity": 5, "seed": 0},
                {"name": "contrast", "severity": 1, "seed": 0}, {"name": "jpeg", "severity": 1, "seed": 1}]
    found = [keys.job_keys(dataclasses.replace(source, contract={**job.contract, **({"corruption": c} if c else {})}),
                           "gpu", True) for c in variants]
    assert len({k.features for k in found}) == len({k.pixels for k in found}) == 5
    assert found[0].device_jpeg and not any(k.device_jpeg for k in found[1:])  # corrupted on the CPU decode
    resplit = dataclasses.replace(source, contract=found[1] and {**job.contract, "corruption": variants[1]},
                                  manifest=dataclasses.replace(manifest, rows="other rows"))
    assert keys.job_keys(resplit, "gpu", True).features != found[1].features
    assert keys.job_keys(dataclasses.replace(source, manifest=resplit.manifest), "gpu", True).features == found[0].features


def test_cells_wait_for_their_corrupted_jobs_and_a_failed_one_is_left_out(tmp_path):
    from raddist.trials import JobStates, batches

    robustness = {"corruptions": ["jpeg"], "severities": [1, 5], "protocols": ["knn"]}
    _, plan = _robust_plan(str(tmp_path / "m.parquet"), tmp_path, robustness,
                           protocols=({"name": "fewshot", "params": {"shots": [1], "draws": 1}}, {"name": "knn"}))
    knn = next(c for c in plan.cells if c.protocol == "knn")
    # one batch per (job, further test sets): a fewshot cell never starts the knn cell before its jobs
    assert [[c.protocol for c in b] for b in batches(plan.cells, 8)] == [["fewshot"] * 2, ["knn"]]
    states = JobStates()
    states.done(knn.embedding_job, "clean-key")
    assert states.ready(knn) is None  # its corrupted jobs are not done yet
    states.done(knn.external_jobs["corruption/jpeg/1"], "k1")
    states.done(knn.external_jobs["corruption/jpeg/5"], "", error="corruptions of volumes are not supported")
    assert states.ready(knn) == {"cell_id": knn.id, "key": "clean-key", "job_error": None}


def test_report_section_lists_the_clean_value_and_each_drop_by_severity(tmp_path):
    import pandas as pd

    from raddist.report_trust import robustness_lines

    def row(metric, value, lo, hi, protocol="knn", seed=0):
        return {"task": "cxr", "backbone": "vit", "protocol": protocol, "params": "{}", "seed": seed,
                "metric": metric, "value": value, "ci_low": lo, "ci_high": hi}

    rows = [row("auroc", 0.91, 0.86, 0.95), row("corruption/jpeg/1/auroc", 0.90, 0.85, 0.94),
            row("corruption/jpeg/1/drop/auroc", 0.01, -0.01, 0.03), row("corruption/jpeg/5/drop/auroc", 0.20, 0.12, 0.28),
            row("corruption/contrast/5/drop/auroc", 0.05, 0.02, 0.08),
            row("auroc", 0.5, 0.4, 0.6, seed=1), row("corruption/jpeg/5/drop/auroc", 0.4, 0.3, 0.5, seed=1)]
    text = "\n".join(robustness_lines(pd.DataFrame(rows)))
    assert "## Robustness" in text and "### cxr — robustness" in text and "paired" in text
    jpeg = next(line for line in text.splitlines() if "/ jpeg |" in line)
    assert "0.910 [0.860, 0.950]" in jpeg and "0.010 [-0.010, 0.030]" in jpeg and "0.200 [0.120, 0.280]" in jpeg
    contrast = next(line for line in text.splitlines() if "/ contrast |" in line)
    assert "—" in contrast and "0.050 [0.020, 0.080]" in contrast  # no severity 1 for contrast
    assert "0.400" not in text  # the lowest seed only
    header = next(line for line in text.splitlines() if "severity 1" in line)
    assert header.index("severity 1") < header.index("severity 5")
    assert robustness_lines(pd.DataFrame([row("auroc", 0.9, 0.8, 0.95)])) == []


def test_a_corrupted_job_of_nifti_volumes_fails_in_one_line_and_one_of_slices_takes_the_test_rows(
        synthetic_seg_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raddist import spec as spec_lib
    from raddist.data import manifest as manifest_lib
    from raddist.embed.cache import EmbeddingCache
    from raddist.embed.jobs import EmbeddingRun, Source
    from raddist.plan import make_plan
    from raddist.provenance import bind_jobs

    volumes = manifest_lib.load(synthetic_seg_data["seg3d"])  # whole NIfTI volumes, one row each
    volumes = volumes.append_column("label", pa.array([i % 2 for i in range(volumes.num_rows)]))
    pq.write_table(volumes, tmp_path / "volumes.parquet")
    run = EmbeddingRun(EmbeddingCache(str(tmp_path / "cache")), spec_lib.ResourcesSpec(), "cpu", say=lambda line: None)
    prepared = {}
    for name, manifest in (("nifti", str(tmp_path / "volumes.parquet")), ("slices", synthetic_seg_data["volcls"])):
        spec = spec_lib.parse({
            "backbones": [{"name": "tiny_vit", "weights": "random"}],
            "tasks": [{"name": name, "manifest": manifest, "type": "binary", "labels": ["label"]}],
            "protocols": [{"name": "knn"}], "robustness": {"corruptions": ["jpeg"], "severities": [3]}})
        job = next(j for j in make_plan(spec).jobs.values() if "corruption" in j.contract)
        prepared[name] = run._prepare(bind_jobs([job], "cpu")[0])
    assert prepared["nifti"].source == Source.FAILED
    assert prepared["nifti"].error == "corruptions of volumes are not supported (2D images only)"
    slices = manifest_lib.load(synthetic_seg_data["volcls"])  # PNG slices of volumes: corrupted one by one
    test_rows = [i for i, s in enumerate(slices["split"].to_pylist()) if s == "test"]
    assert prepared["slices"].rows["row"].to_pylist() == test_rows and prepared["slices"].pixel_key is None
    run.leases.close()
