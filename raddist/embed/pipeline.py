"""The embedding pipeline: manifest → read + decode (data.decode) → embed (actor pool) → cache.

Decode tasks ship uint8 squares at the model's resolution; the actors normalise on their device
(bf16 autocast on GPUs) so the CPUs only decode. A row that fails to read or decode is carried
through as an error and recorded, never fatal. The jobs of one backbone share one Dataset and one
actor pool (run_embedding_jobs).

Dense features (job.features["patch_tokens"] = n > 0, for segmentation): the last n blocks' patch
tokens, cast to float16 on the device. Segmentation jobs also cache each row's mask at the model's
size. A manifest whose rows are volumes (volume_id, no slice_index) is expanded in the decode step:
one row per slice, read once per volume, so a volume's intensity window is the volume's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raddist import storage
from raddist.data import manifest as manifest_lib
from raddist.data.device_decode import DECODER as DEVICE_DECODER, decode_jpegs
from raddist.data.contract import PreprocessContract
from raddist.data.transforms import decode
from raddist.embed.cache import ROW_COLUMNS, EmbeddingCache, errors_table, rows_table
from raddist.data.decode import DecodeBatch, failure_reason
from raddist.embed.forward import MAX_GPU_BATCH
from raddist.plan import EmbeddingJob, content_hash

log = logging.getLogger(__name__)

MIN_ROWS_PER_BLOCK, MAX_ROWS_PER_BLOCK = 16, 128
MAX_CPU_ACTORS = 16  # each holds a copy of the model
SLICES_PER_VOLUME = 50  # a guess, for sizing the pool before the volumes are read
ROWS_PER_CPU_ACTOR = 1000  # ~2.5 CPU-s of decoding at 512^2 PNG: about what an actor's start costs


@dataclass
class JobOutcome:
    job_id: str
    key: str
    computed: bool
    images: int  # images embedded now (0 when cached)
    errors: int
    seconds: float


class EmbedBatch:
    """Holds the backbone on its device for the lifetime of the actor.

    batch / compile: see embed.forward.BatchedForward. Rows whose bytes came in `encoded` (JPEGs
    left to the device) are decoded here first; one that fails gets its error, like a decode task's.
    """

    def __init__(self, backbone: str, weights: str, features: dict, threads: int, size: int,
                 batch: Optional[int] = None, compile: bool = False):
        import torch

        from raddist.backbones.registry import get_config
        from raddist.backbones.embedder import Embedder
        from raddist.backbones.weights import build_model
        from raddist.embed.forward import BatchedForward

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            # Ray pins OMP threads to the actor's (fractional) CPU share; set them as laid out
            torch.set_num_threads(max(1, threads))
        config = get_config(backbone)
        model = build_model(config, weights)
        embedder = Embedder(
            config, model, n_last_blocks=features["n_last_blocks"], patch_mean=features["patch_mean"],
            patch_tokens=features.get("patch_tokens", 0),
        ).to(self.device).eval()
        self.forward = BatchedForward(embedder, self.device, size, batch, compile)
        self.size = size
        self.shapes = None  # every output's shape: a batch whose every row failed still has all columns

    def __call__(self, batch: dict) -> dict:
        import torch

        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        images = batch["image"]
        if "encoded" in batch:
            images, errors = self._decode_deferred(images, batch["encoded"], batch["uri"], errors)
        ok = errors == ""
        out = {k: v for k, v in batch.items() if k not in ("image", "encoded")}
        out["error"] = errors
        if ok.any():
            feats = self.forward(images[ok] if isinstance(images, np.ndarray) else images[torch.from_numpy(ok).to(images.device)])
        elif self.shapes is None:  # every row of a first batch failed: a blank image tells the shapes
            feats = {k: v[:0] for k, v in self.forward(np.zeros((1, self.size, self.size), np.uint8)).items()}
        else:
            feats = {}
        self.shapes = self.shapes or {k: v.shape[1:] for k, v in feats.items()}
        for name, shape in self.shapes.items():
            full = np.zeros((len(ok), *shape), dtype=np.float16)
            if ok.any():
                full[ok] = feats[name]
            out[name] = full
        return out

    def _decode_deferred(self, images: np.ndarray, encoded: np.ndarray, uris: np.ndarray, errors: np.ndarray):
        """The batch's images as one tensor on the device, the deferred JPEGs decoded into it. A JPEG
        the device cannot decode is decoded by Pillow instead, so that a decoder's gap costs speed,
        never rows; only a file Pillow cannot read either becomes an error."""
        import torch

        todo = np.flatnonzero([len(b) > 0 for b in encoded] & (errors == ""))
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if len(todo):
            decoded, failed = decode_jpegs([encoded[i] for i in todo], self.size, self.device)
            x[torch.from_numpy(todo).to(self.device)] = decoded
            errors = errors.copy()
            for i, device_error in zip(todo, failed):
                if device_error:
                    x[int(i)], errors[i] = self._pillow(str(uris[i]), encoded[i])
        return x, errors

    def _pillow(self, uri: str, data: bytes):
        import torch

        try:
            return torch.from_numpy(decode(uri, data, PreprocessContract(size=self.size))).to(self.device), ""
        except Exception as e:  # noqa: BLE001 - as the decode step: one bad image must not end the run
            return torch.zeros((self.size, self.size), dtype=torch.uint8, device=self.device), failure_reason(e)


def actor_resources(resources, rows: Optional[int] = None) -> dict:
    """How the embedding stage of a job of `rows` rows (None: a large one) is laid out on this cluster.

    GPUs: one actor per GPU, fed by decode tasks of one CPU each on every core of the cluster.
    CPU-only: one actor per ROWS_PER_CPU_ACTOR rows, at most one per core (and MAX_CPU_ACTORS),
    because an actor's start (a process importing torch and timm, ~4.5 CPU-s) outweighs decoding a
    small job serially. Each has one torch thread and asks for the
    same fractional CPU as the decode step so that Ray Data fuses the two: each actor reads,
    decodes and embeds its own blocks, as a DataLoader worker would, with no object transfer in
    between (benchmarks/RESULTS.md). The fractional share (half the cluster in all) keeps CPUs free
    for Ray Data's own tasks: two 1-CPU actors on two cores hang the pipeline.
    """
    import ray

    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if gpus:
        return {"actors": resources.embed_actors or gpus, "num_gpus": 1, "num_cpus": 1, "threads": 1,
                "decode_cpus": 1}
    most = max(1, min(int(cpus), MAX_CPU_ACTORS))
    actors = resources.embed_actors or (most if rows is None else min(most, math.ceil(rows / ROWS_PER_CPU_ACTOR)))
    share = round(max(0.05, min(1.0, cpus / (2 * actors))), 3)
    return {"actors": actors, "num_gpus": 0, "num_cpus": share, "threads": 1, "decode_cpus": share}


def rows_per_block(rows: int, cpus: float) -> int:
    """Rows per decode block: about four blocks per CPU, so that every decoder stays busy to the
    end, but never so few rows that Ray's per-block cost (task launch, scheduling, ~20 ms of driver
    CPU) rivals the decoding itself."""
    return int(min(MAX_ROWS_PER_BLOCK, max(MIN_ROWS_PER_BLOCK, math.ceil(rows / (4 * max(cpus, 1))))))


@dataclass
class _Pending:
    """A job whose embeddings are not in the cache yet, ready to run."""
    job: EmbeddingJob
    key: str
    rows: pa.Table  # the manifest columns the decode step reads
    masks: bool
    volumes: bool
    device_jpeg: bool

    @property
    def group(self) -> tuple:
        """Jobs that can share one Dataset and its actors: same model, features and decode kind
        (so the same output columns)."""
        b = self.job.backbone
        return (b.name, b.weights, json.dumps(self.job.features, sort_keys=True), self.job.contract["size"],
                self.masks, self.volumes, self.device_jpeg, tuple(self.rows.column_names))


def run_embedding_job(job: EmbeddingJob, cache: EmbeddingCache, resources, salt: Optional[str] = None) -> JobOutcome:
    return run_embedding_jobs([job], cache, resources, salt)[0]


def run_embedding_jobs(jobs, cache: EmbeddingCache, resources, salt: Optional[str] = None,
                       on_outcome: Optional[Callable[[EmbeddingJob, JobOutcome], None]] = None) -> List[JobOutcome]:
    """Embed every job whose features are not in the cache yet, in the order given.

    Jobs of one backbone (same weights, features and decode kind) run through one Ray Dataset, so
    its actors start, import torch and load the weights once for all of that backbone's tasks,
    not once per task. salt: ids are pseudonymised before anything is embedded (manifest.load).
    """
    outcomes: Dict[str, JobOutcome] = {}
    groups: Dict[tuple, List[_Pending]] = {}
    for job in jobs:
        pending = _prepare(job, cache, resources, salt)
        if isinstance(pending, JobOutcome):
            outcomes[job.id] = pending
            if on_outcome:
                on_outcome(job, pending)
        else:
            groups.setdefault(pending.group, []).append(pending)
    for group in groups.values():
        for p, outcome in zip(group, _embed_group(group, cache, resources)):
            outcomes[p.job.id] = outcome
            if on_outcome:
                on_outcome(p.job, outcome)
    return [outcomes[job.id] for job in jobs]


def _prepare(job: EmbeddingJob, cache: EmbeddingCache, resources, salt):
    """The job's cached outcome, or what it takes to run it."""
    import ray

    from raddist.backbones.weights import weights_identity

    start = time.time()
    table = manifest_lib.load(job.task.manifest, salt)
    masks = job.task.type == "segmentation"
    volumes = is_volume_manifest(table)
    manifest_hash = manifest_lib.content_hash(table)
    if masks:  # the masks are cached too: their uris are part of what was computed
        manifest_hash = content_hash([manifest_hash, table["mask_uri"].to_pylist()])
    device_jpeg = bool(ray.cluster_resources().get("GPU", 0)) and resources.gpu_jpeg_decode and not (masks or volumes)
    key = cache.key(job, weights_identity(job.backbone.weights), manifest_hash, slices=volumes,
                    decoder=DEVICE_DECODER if device_jpeg else None)
    if cache.is_complete(key):
        meta = cache.meta(key)
        return JobOutcome(job.id, key, False, 0, int(meta.get("errors", 0)), time.time() - start)
    cache.clear_partial(key)
    wanted = ["sample_id", "uri", "mask_uri", "volume_id", "slice_index", "modality"]
    rows = table.select([c for c in wanted if c in table.column_names and (c != "mask_uri" or masks)])
    return _Pending(job, key, rows, masks, volumes, device_jpeg)


def _embed_group(group: List[_Pending], cache: EmbeddingCache, resources) -> List[JobOutcome]:
    import ray

    start = time.time()
    first = group[0]
    total = sum(p.rows.num_rows for p in group)
    res = actor_resources(resources, total * (SLICES_PER_VOLUME if first.volumes else 1))
    # a volume is a block of its own: decoded in parallel. The blocks are cut here (from_items builds
    # them and their metadata in the driver): from_arrow would run a remote task per block for the
    # metadata, and a repartition is an all-to-all step that waits for the whole manifest
    per_block = 1 if first.volumes else rows_per_block(total, ray.cluster_resources().get("CPU", 1))
    items = [{**row, "job": i} for i, p in enumerate(group) for row in p.rows.to_pylist()]
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(total / per_block)) if items else None
    ds = ds and ds.map_batches(_decode, fn_kwargs={"contracts": [p.job.contract for p in group], "masks": first.masks,
                                            "volumes": first.volumes, "device_jpeg": first.device_jpeg},
                        batch_format="numpy", batch_size=None, num_cpus=res["decode_cpus"])
    ds = ds and ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "backbone": first.job.backbone.name,
            "weights": first.job.backbone.weights,
            "features": first.job.features,
            "threads": res["threads"],
            "size": first.job.contract["size"],
            "batch": resources.embed_batch_size,
            "compile": resources.compile,
        },
        compute=ray.data.ActorPoolStrategy(size=res["actors"]),
        num_gpus=res["num_gpus"],
        num_cpus=res["num_cpus"],
        # rows handed to an actor per call; it cuts them into device batches (embed.forward). A GPU
        # actor's calls gather blocks from many decode tasks; a CPU actor takes each block it decoded
        # whole (no re-batching copies)
        batch_size=(resources.embed_batch_size or MAX_GPU_BATCH) if res["num_gpus"] else None,
        batch_format="numpy",
    )
    written = _write_features(ds, cache, [p.key for p in group])
    seconds = time.time() - start
    outcomes = []
    for p, (images, error_rows) in zip(group, written):
        share = seconds * p.rows.num_rows / max(total, 1)  # the group's time, split by rows
        storage.write_parquet(cache.uri(p.key, "errors.parquet"), errors_table(error_rows))
        cache.write_meta(p.key, _meta(p, images, len(error_rows), share, seconds))
        outcomes.append(JobOutcome(p.job.id, p.key, True, images, len(error_rows), share))
    return outcomes


def _meta(p: _Pending, images: int, errors: int, seconds: float, group_seconds: float) -> dict:
    from raddist.backbones.registry import get_config
    from raddist.backbones.embedder import dense_blocks, dense_names, feature_dims
    from raddist.backbones.weights import weights_identity

    job, config = p.job, get_config(p.job.backbone.name)
    return {
        "job_id": job.id,
        "backbone": job.backbone.name,
        "weights": weights_identity(job.backbone.weights),
        "contract": job.contract,
        "features": job.features,
        "manifest": job.task.manifest,
        "feature_names": feature_names(config, job.features),
        "block_dims": feature_dims(config, job.features["n_last_blocks"]),
        "dense_names": dense_names(dense_blocks(config, job.features.get("patch_tokens", 0))),
        "masks": p.masks,
        "volumes": p.volumes,
        "images": images,
        "errors": errors,
        "seconds": round(seconds, 3),  # this job's share of its group's wall time, by rows
        "group_seconds": round(group_seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def is_volume_manifest(table: pa.Table) -> bool:
    """Rows are whole volumes (volume_id without slice_index): the pipeline embeds them slice by slice."""
    return "volume_id" in table.column_names and "slice_index" not in table.column_names


def feature_names(config, features: dict) -> list:
    return ["cls", "patch_mean"] if features["patch_mean"] and config.has_patch_mean else ["cls"]


def _decode(batch: dict, contracts: list, masks: bool, volumes: bool, device_jpeg: bool) -> dict:
    """Decode a block, each row by its job's contract; the job tag follows every output row
    (a volume becomes many)."""
    parts = []
    for j in np.unique(batch["job"]) if len(batch["job"]) else [0]:  # an empty block still yields the columns
        rows = batch["job"] == j
        out = DecodeBatch(contracts[j], masks, volumes, device_jpeg)({k: v[rows] for k, v in batch.items() if k != "job"})
        out["job"] = np.full(len(out["sample_id"]), j, np.int32)
        parts.append(out)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_features(ds, cache: EmbeddingCache, keys: List[str]) -> List[Tuple[int, list]]:
    """Stream the actor outputs (ds; None: no rows) into one Parquet file per job (rows tagged by
    their index in keys); errored rows go to that job's error list. Returns (images, error rows) per job."""
    writers: Dict[int, pq.ParquetWriter] = {}
    images, errors = [0] * len(keys), [[] for _ in keys]
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy") if ds is not None else []:
            for j in np.unique(batch["job"]):
                _write_job_rows({k: v[batch["job"] == j] for k, v in batch.items() if k != "job"},
                                cache, keys[j], writers, int(j), images, errors[j])
    finally:
        for writer in writers.values():
            writer.close()
    for j, key in enumerate(keys):
        if j not in writers:  # every row failed: still a valid, empty features file
            storage.write_parquet(cache.uri(key, "features.parquet"), pa.table({"sample_id": pa.array([], pa.string())}))
    return list(zip(images, errors))


def _write_job_rows(batch: dict, cache: EmbeddingCache, key: str, writers: dict, j: int, images: list, errors: list):
    ok = np.array([e == "" for e in batch["error"]], dtype=bool)
    for sid, uri, err in zip(batch["sample_id"][~ok], batch["uri"][~ok], batch["error"][~ok]):
        errors.append({"sample_id": str(sid), "uri": str(uri), "error": str(err)})
    if not ok.any():
        return
    names = [n for n in batch if n not in ("sample_id", "uri", "error", *ROW_COLUMNS)]
    extras = {c: batch[c][ok] for c in ROW_COLUMNS if c in batch}
    part = rows_table(batch["sample_id"][ok], {n: batch[n][ok] for n in names}, extras)
    if j not in writers:
        fs, path = storage.filesystem(cache.uri(key, "features.parquet"))
        if not storage.is_remote(cache.root):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        writers[j] = pq.ParquetWriter(path, part.schema, filesystem=fs)
    writers[j].write_table(part)
    images[j] += int(ok.sum())
