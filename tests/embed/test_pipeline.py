"""The embedding pipeline on a real local Ray cluster, with real DICOM files and a corrupt one."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raddist import spec as spec_lib
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import EmbeddingCache
from raddist.embed.jobs import run_embedding_job, run_embedding_jobs
from raddist.embed.pipeline import layout, rows_per_block
from raddist.plan import make_plan


def _subset_manifest(synthetic_data, tmp_path, n=24):
    """A chest manifest of n real rows, plus one truncated DICOM and one missing file."""
    table = manifest_lib.load(os.path.join(synthetic_data, "chest", "manifest.parquet")).slice(0, n)
    src = table["uri"][0].as_py()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(open(src, "rb").read()[:400])
    extra = pa.table({
        "sample_id": ["broken", "missing"],
        "uri": [str(broken), str(tmp_path / "missing.dcm")],
        "patient_id": ["pb", "pm"],
        "split": ["train", "train"],
    })
    table = pa.concat_tables([table.select(extra.column_names), extra])
    table = table.append_column("opacity", pa.array([0] * table.num_rows))
    pq.write_table(table, tmp_path / "manifest.parquet")
    return str(tmp_path / "manifest.parquet"), table


def _job(manifest_uri, cache_dir, **resources):
    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": manifest_uri, "type": "multilabel", "labels": ["opacity"]}],
        "protocols": [{"name": "knn"}],
        "storage": {"cache": str(cache_dir)},
        "resources": {"embed_batch_size": 8, **resources},
    })
    return spec, next(iter(make_plan(spec).jobs.values()))


def test_embeds_every_good_row_once_and_records_bad_ones(ray_local, synthetic_data, tmp_path):
    manifest_uri, table = _subset_manifest(synthetic_data, tmp_path)
    spec, job = _job(manifest_uri, tmp_path / "cache")
    cache = EmbeddingCache(str(tmp_path / "cache"))

    outcome = run_embedding_job(job, cache, spec.resources)
    assert outcome.computed and outcome.images == 24 and outcome.errors == 2

    cached = cache.load(outcome.key)
    assert sorted(cached.rows) == list(range(24)) and set(cached.slices) == {-1}  # none lost, none twice
    errors = {r["row"]: r["error"] for r in cached.errors.to_pylist()}
    assert set(errors) == {24, 25}  # the broken and the missing file, by manifest row
    assert "not found" in errors[25] and "broken" not in errors[24]  # no file name in a reason
    assert cached.meta["contract"]["size"] == 64 and cached.meta["block_dims"] == [64] * 4

    # the same features as running the backbone by hand on the decoded image
    from raddist.backbones.embedder import Embedder
    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model
    from raddist.data.contract import PreprocessContract
    from raddist.data.transforms import decode

    config = get_config("tiny_vit")
    embedder = Embedder(config, build_model(config, "random"), n_last_blocks=4, patch_mean=True).eval()
    i = list(cached.rows).index(3)
    uri = table["uri"][3].as_py()
    image = decode(uri, open(uri, "rb").read(), PreprocessContract(size=64))
    with torch.inference_mode():
        ref = embedder(torch.from_numpy(image[None]))
    np.testing.assert_allclose(cached.features["cls"][i], ref["cls"][0].numpy(), rtol=0.01, atol=0.01)
    np.testing.assert_allclose(cached.features["patch_mean"][i], ref["patch_mean"][0].numpy(), rtol=0.01, atol=0.01)

    again = run_embedding_job(job, cache, spec.resources)
    assert not again.computed and again.key == outcome.key and again.images == 0


def test_partial_job_is_recomputed(ray_local, synthetic_data, tmp_path):
    manifest_uri, _ = _subset_manifest(synthetic_data, tmp_path, n=8)
    spec, job = _job(manifest_uri, tmp_path / "cache")
    cache = EmbeddingCache(str(tmp_path / "cache"))
    first = run_embedding_job(job, cache, spec.resources)
    os.remove(cache.uri(first.key, "meta.json"))  # as if the driver died before finishing
    assert cache.check(first.key) == "absent"
    second = run_embedding_job(job, cache, spec.resources)
    assert second.computed and second.images == 8 and second.source == "pixels"  # decoded once, by the first


def test_cpu_only_layout_fuses_decode_into_few_actors(ray_local):
    """On the 2-CPU test cluster: one actor for a small job, one per core for a large one, each
    asking for what the decode step asks (so Ray Data fuses them), half the cluster in all."""
    from raddist.spec import ResourcesSpec

    small, large = layout(ResourcesSpec(), "cpu", rows=300), layout(ResourcesSpec(), "cpu", rows=5000)
    assert (small["max"], large["max"]) == (1, 2)
    for res in (small, large):
        assert res["num_gpus"] == 0 and res["threads"] == 1 and res["min"] == res["max"]
        assert res["num_cpus"] == res["decode_cpus"] and res["max"] * res["num_cpus"] <= 1.0 + 1e-9
    assert layout(ResourcesSpec(embed_actors=3), "cpu", rows=10)["max"] == 3
    gpu = layout(ResourcesSpec(), "gpu")  # requested, not sized: 1..8 actors of one GPU, one to start
    assert (gpu["min"], gpu["initial"], gpu["max"], gpu["num_gpus"]) == (1, 1, 8, 1)
    # about four blocks per CPU, within 16..128 rows
    assert [rows_per_block(n, 2) for n in (10, 400, 3600, 100_000)] == [16, 50, 128, 128]


def test_two_actors_embed_every_row_once_as_one_does(ray_local, synthetic_data, tmp_path):
    manifest_uri, table = _subset_manifest(synthetic_data, tmp_path, n=60)
    spec1, job = _job(manifest_uri, tmp_path / "c1")
    spec2, _ = _job(manifest_uri, tmp_path / "c2", embed_actors=2)
    one = EmbeddingCache(str(tmp_path / "c1"))
    two = EmbeddingCache(str(tmp_path / "c2"))
    a = one.load(run_embedding_job(job, one, spec1.resources).key)
    b = two.load(run_embedding_job(job, two, spec2.resources).key)
    assert len(b.rows) == len(set(b.rows)) == 60 and b.errors.num_rows == 2
    order = np.argsort(a.rows), np.argsort(b.rows)
    assert list(a.rows[order[0]]) == list(b.rows[order[1]])
    np.testing.assert_allclose(a.features["cls"][order[0]], b.features["cls"][order[1]], rtol=1e-3, atol=1e-3)


def test_jobs_of_one_backbone_share_one_actor_pool(ray_local, synthetic_data, tmp_path):
    """Two tasks of one backbone run through one Dataset: one actor start, and each job's cache
    holds exactly its own rows, with the features a job run alone gets."""
    from ray._private import state

    chest = manifest_lib.load(os.path.join(synthetic_data, "chest", "manifest.parquet"))
    uris = []
    for name, part in (("a", chest.slice(0, 12)), ("b", chest.slice(12, 20))):
        pq.write_table(part, tmp_path / f"{name}.parquet")
        uris.append(str(tmp_path / f"{name}.parquet"))
    labels = [c for c in chest.column_names if c not in ("sample_id", "uri", "patient_id", "split")][:1]
    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": n, "manifest": u, "type": "multilabel", "labels": labels} for n, u in zip("ab", uris)],
        "protocols": [{"name": "knn"}],
        "resources": {"embed_batch_size": 8},
    })
    jobs = list(make_plan(spec).jobs.values())

    def embed_actors():
        return {a["ActorID"] for a in state.actors().values() if "EmbedAndWrite" in a["ActorClassName"]}

    before = embed_actors()
    cache = EmbeddingCache(str(tmp_path / "together"))
    seen = []
    outcomes = run_embedding_jobs(jobs, cache, spec.resources, on_outcome=lambda job, o: seen.append(job.id))
    assert len(embed_actors() - before) == 1
    assert [o.images for o in outcomes] == [12, 20] and all(o.computed for o in outcomes)
    assert sorted(seen) == sorted(j.id for j in jobs)

    alone = EmbeddingCache(str(tmp_path / "alone"))
    for job, outcome, part in zip(jobs, outcomes, (chest.slice(0, 12), chest.slice(12, 20))):
        got = cache.load(outcome.key)
        assert sorted(got.rows) == list(range(part.num_rows))
        ref = alone.load(run_embedding_job(job, alone, spec.resources).key)
        order = np.argsort(got.rows), np.argsort(ref.rows)
        np.testing.assert_allclose(got.features["cls"][order[0]], ref.features["cls"][order[1]], rtol=1e-3, atol=1e-3)
    assert not any(o.computed for o in run_embedding_jobs(jobs, cache, spec.resources))
