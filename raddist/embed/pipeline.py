"""The embedding pipeline: manifest → read + decode (CPU tasks) → embed (actor pool) → cache.

Decode tasks ship uint8 squares at the model's resolution; the actors normalise on their device
(bf16 autocast on GPUs) so the CPUs only decode. A row that fails to read or decode is carried
through as an error and recorded, never fatal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raddist import storage
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import ERRORS_SCHEMA, EmbeddingCache, errors_table, features_table
from raddist.plan import EmbeddingJob

log = logging.getLogger(__name__)

DECODE_ROWS_PER_BLOCK = 32


@dataclass
class JobOutcome:
    job_id: str
    key: str
    computed: bool
    images: int  # images embedded now (0 when cached)
    errors: int
    seconds: float


class DecodeBatch:
    """Read and decode a batch of uris; a failing row becomes an error string, not an exception."""

    def __init__(self, contract: dict):
        from raddist.data.contract import PreprocessContract

        self.contract = PreprocessContract.from_dict(contract)

    def __call__(self, batch: dict) -> dict:
        from raddist.data.transforms import decode
        from raddist.errors import InputError

        size = self.contract.size
        n = len(batch["uri"])
        images = np.zeros((n, size, size), dtype=np.uint8)
        errors = np.array([""] * n, dtype=object)
        for i, uri in enumerate(batch["uri"]):
            try:
                images[i] = decode(uri, storage.read_bytes(uri), self.contract)
            except InputError as e:
                errors[i] = e.reason
            except FileNotFoundError:
                errors[i] = "object not found"
            except Exception as e:  # noqa: BLE001 - one bad image must not end the run
                errors[i] = f"{type(e).__name__}: {e}"[:300]
        return {"sample_id": batch["sample_id"], "uri": batch["uri"], "image": images, "error": errors}


class EmbedBatch:
    """Holds the backbone on its device for the lifetime of the actor."""

    def __init__(self, backbone: str, weights: str, features: dict, threads: int):
        import torch

        from raddist.backbones import get_config
        from raddist.backbones.embedder import Embedder
        from raddist.backbones.weights import build_model

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            # Ray pins OMP threads to the actor's (fractional) CPU share; use the node's cores.
            torch.set_num_threads(max(1, threads))
        config = get_config(backbone)
        model = build_model(config, weights)
        self.embedder = Embedder(
            config, model, n_last_blocks=features["n_last_blocks"], patch_mean=features["patch_mean"]
        ).to(self.device).eval()
        self.widths = {"cls": sum(self.embedder.block_dims)}
        if "patch_mean" in self.embedder.output_keys:
            self.widths["patch_mean"] = self.embedder.block_dims[-1]

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.array([e == "" for e in batch["error"]], dtype=bool)
        out = {"sample_id": batch["sample_id"], "uri": batch["uri"], "error": batch["error"]}
        feats = {}
        if ok.any():
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
            if self.device == "cuda":
                images = images.pin_memory().to(self.device, non_blocking=True)
            with torch.inference_mode():
                feats = {k: v.float().cpu().numpy() for k, v in self.embedder(images).items()}
        for name, arr in feats.items():
            full = np.zeros((len(ok), arr.shape[1]), dtype=np.float16)
            full[ok] = arr
            out[name] = full
        for name, width in self.widths.items():  # a batch whose every row failed
            out.setdefault(name, np.zeros((len(ok), width), dtype=np.float16))
        return out


def actor_resources(resources) -> dict:
    """One actor per GPU when there are GPUs; else a fractional CPU share, so that the actors
    never starve the decode tasks (two 1-CPU actors on two cores hang the pipeline)."""
    import ray

    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if gpus:
        return {"actors": resources.embed_actors or gpus, "num_gpus": 1, "num_cpus": 1, "threads": 1}
    actors = resources.embed_actors or 1
    share = max(0.1, min(1.0, cpus / (4 * actors)))
    return {"actors": actors, "num_gpus": 0, "num_cpus": share, "threads": max(1, int(cpus // actors))}


def run_embedding_job(job: EmbeddingJob, cache: EmbeddingCache, resources) -> JobOutcome:
    import ray

    from raddist.backbones.weights import weights_identity

    start = time.time()
    table = manifest_lib.load(job.task.manifest)
    key = cache.key(job, weights_identity(job.backbone.weights), manifest_lib.content_hash(table))
    if cache.is_complete(key):
        meta = cache.meta(key)
        return JobOutcome(job.id, key, False, 0, int(meta.get("errors", 0)), time.time() - start)
    cache.clear_partial(key)

    res = actor_resources(resources)
    rows = table.select(["sample_id", "uri"])
    blocks = max(1, math.ceil(rows.num_rows / DECODE_ROWS_PER_BLOCK))
    ds = ray.data.from_arrow(rows).repartition(blocks)
    ds = ds.map_batches(_decode, fn_kwargs={"contract": job.contract}, batch_format="numpy", batch_size=None)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "backbone": job.backbone.name,
            "weights": job.backbone.weights,
            "features": job.features,
            "threads": res["threads"],
        },
        compute=ray.data.ActorPoolStrategy(size=res["actors"]),
        num_gpus=res["num_gpus"],
        num_cpus=res["num_cpus"],
        batch_size=resources.embed_batch_size,
        batch_format="numpy",
    )
    images, error_rows = _write_features(ds, cache, key)
    storage.write_parquet(cache.uri(key, "errors.parquet"), errors_table(error_rows))
    from raddist.backbones import get_config
    from raddist.backbones.embedder import feature_dims

    seconds = time.time() - start
    cache.write_meta(
        key,
        {
            "job_id": job.id,
            "backbone": job.backbone.name,
            "weights": weights_identity(job.backbone.weights),
            "contract": job.contract,
            "features": job.features,
            "manifest": job.task.manifest,
            "feature_names": feature_names(get_config(job.backbone.name), job.features),
            "block_dims": feature_dims(get_config(job.backbone.name), job.features["n_last_blocks"]),
            "images": images,
            "errors": len(error_rows),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return JobOutcome(job.id, key, True, images, len(error_rows), seconds)


def feature_names(config, features: dict) -> list:
    return ["cls", "patch_mean"] if features["patch_mean"] and config.has_patch_mean else ["cls"]


def _decode(batch: dict, contract: dict) -> dict:
    return DecodeBatch(contract)(batch)


def _write_features(ds, cache: EmbeddingCache, key: str):
    """Stream the actor outputs into one Parquet file; errored rows go to the errors list."""
    fs, path = storage.filesystem(cache.uri(key, "features.parquet"))
    if not storage.is_remote(cache.root):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = None
    images, error_rows = 0, []
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.array([e == "" for e in batch["error"]], dtype=bool)
            for sid, uri, err in zip(batch["sample_id"][~ok], batch["uri"][~ok], batch["error"][~ok]):
                error_rows.append({"sample_id": str(sid), "uri": str(uri), "error": str(err)})
            if not ok.any():
                continue
            names = [n for n in ("cls", "patch_mean") if n in batch]
            part = features_table(batch["sample_id"][ok], {n: batch[n][ok] for n in names})
            if writer is None:
                writer = pq.ParquetWriter(path, part.schema, filesystem=fs)
            writer.write_table(part)
            images += int(ok.sum())
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # every row failed: still a valid, empty features file
        storage.write_parquet(cache.uri(key, "features.parquet"), pa.table({"sample_id": pa.array([], pa.string())}))
    return images, error_rows
