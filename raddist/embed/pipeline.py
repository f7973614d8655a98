"""The embedding pipeline: manifest → read + decode (CPU tasks) → embed (actor pool) → cache.

Decode tasks ship uint8 squares at the model's resolution; the actors normalise on their device
(bf16 autocast on GPUs) so the CPUs only decode. A row that fails to read or decode is carried
through as an error and recorded, never fatal.

Dense features (job.features["patch_tokens"] = n > 0, for segmentation): the last n blocks' patch
tokens, cast to float16 on the device. Segmentation jobs also cache each row's mask at the model's
size. A manifest whose rows are volumes (volume_id, no slice_index) is expanded in the decode step:
one row per slice, read once per volume, so a volume's intensity window is the volume's.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Optional
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raddist import storage
from raddist.data import manifest as manifest_lib
from raddist.data.device_decode import DECODER as DEVICE_DECODER, decode_jpegs, defer_to_device
from raddist.data.transforms import decode
from raddist.data.volumes import decode_volume, read_mask, resize_labels
from raddist.embed.forward import MAX_GPU_BATCH
from raddist.embed.cache import ROW_COLUMNS, EmbeddingCache, errors_table, rows_table
from raddist.errors import InputError
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


class DecodeBatch:
    """Read and decode a batch of rows; a failing row becomes an error string, not an exception.

    masks:   also read each row's mask_uri (class indices) at the model's size, nearest (segmentation).
    volumes: each row is a NIfTI volume: it becomes one row per slice (volumes.decode_volume), with
             sample_id f"{volume_id}:{z}", slice_index z, and the source's shape and affine.
    Rows of a manifest with volume_id (slices of volumes) carry volume_id and slice_index along.
    device_jpeg: a JPEG that device_decode can take is passed on undecoded, its bytes in `encoded`
             (b"" for every other row), for the actor to decode on its GPU.
    """

    def __init__(self, contract: dict, masks: bool = False, volumes: bool = False, device_jpeg: bool = False):
        from raddist.data.contract import PreprocessContract

        self.contract = PreprocessContract.from_dict(contract)
        self.masks, self.volumes = masks, volumes
        self.device_jpeg = device_jpeg and not (masks or volumes)

    def __call__(self, batch: dict) -> dict:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["uri"]))]
        parts = [self._row(row) for row in rows] or [self._empty(batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _row(self, row: dict) -> dict:
        try:
            if self.volumes:
                return self._volume(row)
            data = storage.read_bytes(row["uri"])
            if self.device_jpeg and defer_to_device(str(row["uri"]), data, self.contract):
                return self._rows(row, [str(row["sample_id"])], {"encoded": np.array([data], dtype=object)}, "")
            decoded = {"image": decode(row["uri"], data, self.contract)[None]}
            if self.masks:
                mask = read_mask(_mask_uri(row), storage.read_bytes(_mask_uri(row)))
                decoded["mask"] = resize_labels(mask, (self.contract.size,) * 2)[None]
                decoded["shape"] = np.array([[1, *mask.shape]], np.int64)
            return self._rows(row, [str(row["sample_id"])], decoded, "")
        except Exception as e:  # noqa: BLE001 - one bad image must not end the run
            return self._failed(row, e)

    def _volume(self, row: dict) -> dict:
        mask_uri = _mask_uri(row) if self.masks else None
        vol = decode_volume(row["uri"], storage.read_bytes(row["uri"]), self.contract, _text(row.get("modality")),
                            mask_uri, storage.read_bytes(mask_uri) if mask_uri else None)
        depth = len(vol["image"])
        decoded = {"image": vol["image"], "shape": np.tile(np.asarray(vol["shape"], np.int64), (depth, 1)),
                   "affine": np.tile(np.asarray(vol["affine"], np.float64).reshape(1, 16), (depth, 1)),
                   "slice_index": np.arange(depth, dtype=np.int64)}
        if self.masks:
            decoded["mask"] = vol["mask"]
        volume_id = _text(row["volume_id"])
        return self._rows(row, [f"{volume_id}:{z}" for z in range(depth)], decoded, "")

    def _rows(self, row: dict, sample_ids, decoded: dict, error: str) -> dict:
        n, size = len(sample_ids), self.contract.size
        out = {"sample_id": np.array(sample_ids, dtype=object), "uri": np.array([str(row["uri"])] * n, dtype=object),
               "image": decoded.get("image", np.zeros((n, size, size), np.uint8)),
               "error": np.array([error] * n, dtype=object)}
        if self.masks:
            out["mask"] = decoded.get("mask", np.zeros((n, size, size), np.uint8))
        if self.device_jpeg:
            out["encoded"] = decoded.get("encoded", np.array([b""] * n, dtype=object))
        if "volume_id" in row:
            out["volume_id"] = np.array([_text(row["volume_id"])] * n, dtype=object)
            default = int(row["slice_index"]) if "slice_index" in row and not _missing(row["slice_index"]) else -1
            out["slice_index"] = decoded.get("slice_index", np.full(n, default, np.int64))
        if self.masks or self.volumes:
            out["shape"] = decoded.get("shape", np.zeros((n, 3), np.int64))
        if self.volumes:
            out["affine"] = decoded.get("affine", np.zeros((n, 16), np.float64))
        return out

    def _failed(self, row: dict, e: Exception) -> dict:
        if isinstance(e, InputError):
            reason = e.reason
        elif isinstance(e, FileNotFoundError):
            reason = "object not found"
        else:
            reason = f"{type(e).__name__}: {e}"[:300]
        return self._rows(row, [str(row["sample_id"])], {}, reason)

    def _empty(self, batch: dict) -> dict:
        row = {k: None for k in batch}
        row["uri"] = ""
        return {k: v[:0] for k, v in self._rows(row, [""], {}, "").items()}


def _mask_uri(row: dict) -> str:
    uri = row.get("mask_uri")
    if _missing(uri) or not str(uri):
        raise InputError(str(row["uri"]), "segmentation row has no mask_uri")
    return str(uri)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)


class EmbedBatch:
    """Holds the backbone on its device for the lifetime of the actor.

    batch / compile: see embed.forward.BatchedForward. Rows whose bytes came in `encoded` (JPEGs
    left to the device) are decoded here first; one that fails gets its error, like a decode task's.
    """

    def __init__(self, backbone: str, weights: str, features: dict, threads: int, size: int,
                 batch: Optional[int] = None, compile: bool = False):
        import torch

        from raddist.backbones import get_config
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
        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        images = batch["image"]
        if "encoded" in batch:
            images, errors = self._decode_deferred(images, batch["encoded"], errors)
        ok = errors == ""
        out = {k: v for k, v in batch.items() if k not in ("image", "encoded")}
        out["error"] = errors
        if ok.any():
            feats = self.forward(images[ok] if isinstance(images, np.ndarray) else images[torch_mask(ok, images)])
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

    def _decode_deferred(self, images: np.ndarray, encoded: np.ndarray, errors: np.ndarray):
        """The batch's images as one tensor on the device, the deferred JPEGs decoded into it."""
        import torch

        todo = np.flatnonzero([len(b) > 0 for b in encoded] & (errors == ""))
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if len(todo):
            decoded, failed = decode_jpegs([encoded[i] for i in todo], self.size, self.device)
            x[torch.from_numpy(todo).to(self.device)] = decoded
            errors = errors.copy()
            errors[todo] = failed
        return x, errors


def torch_mask(mask: np.ndarray, like):
    import torch

    return torch.from_numpy(mask).to(like.device)


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


def run_embedding_job(job: EmbeddingJob, cache: EmbeddingCache, resources, salt: Optional[str] = None) -> JobOutcome:
    """salt: ids are pseudonymised before anything is embedded (see manifest.load)."""
    import ray

    from raddist.backbones import get_config
    from raddist.backbones.embedder import dense_blocks, dense_names, feature_dims
    from raddist.backbones.weights import weights_identity

    start = time.time()
    table = manifest_lib.load(job.task.manifest, salt)
    masks = job.task.type == "segmentation"
    volumes = is_volume_manifest(table)
    manifest_hash = manifest_lib.content_hash(table)
    if masks:  # the masks are cached too: their uris are part of what was computed
        manifest_hash = content_hash([manifest_hash, table["mask_uri"].to_pylist()])
    res = actor_resources(resources, table.num_rows * (SLICES_PER_VOLUME if volumes else 1))
    device_jpeg = bool(res["num_gpus"]) and resources.gpu_jpeg_decode and not (masks or volumes)
    key = cache.key(job, weights_identity(job.backbone.weights), manifest_hash, slices=volumes,
                    decoder=DEVICE_DECODER if device_jpeg else None)
    if cache.is_complete(key):
        meta = cache.meta(key)
        return JobOutcome(job.id, key, False, 0, int(meta.get("errors", 0)), time.time() - start)
    cache.clear_partial(key)

    wanted = ["sample_id", "uri", "mask_uri", "volume_id", "slice_index", "modality"]
    rows = table.select([c for c in wanted if c in table.column_names and (c != "mask_uri" or masks)])
    # a volume is a block of its own: decoded in parallel. Blocks are sliced here, not repartitioned
    # by Ray Data (an all-to-all step that would wait for the whole manifest)
    per_block = 1 if volumes else rows_per_block(rows.num_rows, ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_arrow([rows.slice(i, per_block) for i in range(0, rows.num_rows, per_block)] or [rows])
    ds = ds.map_batches(_decode, fn_kwargs={"contract": job.contract, "masks": masks, "volumes": volumes,
                                                  "device_jpeg": device_jpeg},
                        batch_format="numpy", batch_size=None, num_cpus=res["decode_cpus"])
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "backbone": job.backbone.name,
            "weights": job.backbone.weights,
            "features": job.features,
            "threads": res["threads"],
            "size": job.contract["size"],
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
    images, error_rows = _write_features(ds, cache, key)
    storage.write_parquet(cache.uri(key, "errors.parquet"), errors_table(error_rows))
    config = get_config(job.backbone.name)
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
            "feature_names": feature_names(config, job.features),
            "block_dims": feature_dims(config, job.features["n_last_blocks"]),
            "dense_names": dense_names(dense_blocks(config, job.features.get("patch_tokens", 0))),
            "masks": masks,
            "volumes": volumes,
            "images": images,
            "errors": len(error_rows),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return JobOutcome(job.id, key, True, images, len(error_rows), seconds)


def is_volume_manifest(table: pa.Table) -> bool:
    """Rows are whole volumes (volume_id without slice_index): the pipeline embeds them slice by slice."""
    return "volume_id" in table.column_names and "slice_index" not in table.column_names


def feature_names(config, features: dict) -> list:
    return ["cls", "patch_mean"] if features["patch_mean"] and config.has_patch_mean else ["cls"]


def _decode(batch: dict, contract: dict, masks: bool, volumes: bool, device_jpeg: bool) -> dict:
    return DecodeBatch(contract, masks, volumes, device_jpeg)(batch)


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
            names = [n for n in batch if n not in ("sample_id", "uri", "error", *ROW_COLUMNS)]
            extras = {c: batch[c][ok] for c in ROW_COLUMNS if c in batch}
            part = rows_table(batch["sample_id"][ok], {n: batch[n][ok] for n in names}, extras)
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
