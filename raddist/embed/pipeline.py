"""One backbone's embedding Dataset: rows or decoded pixels -> decode -> embed and write (actor pool).

    manifest rows ─▶ decode (CPU tasks; writes the pixel cache) ─┐
    pixel parts  ─▶ read (CPU tasks) ──────────────────────────┴─▶ embed, write parts (actor pool)

The workers write everything: decoded pixels into the pixel cache, features into the embedding
cache, each actor the features it computed (a separate write stage measured slower on small
clusters: its tasks waited for CPUs that cells held, and every block crossed the object store once
more). What reaches the driver is a few numbers per block (its part's name, rows and bytes), so
the driver's memory stays flat however many images a job has. The jobs of one backbone share the Dataset
and the actor pool (embed.jobs groups them): its weights load once.

Layout (resources requested; bounds from the config and from what the cluster can hold, autoscaler
included: raddist.cluster.capacity; never from what happens to be up when the run starts):
  gpu  an actor pool of 1..embed_actors actors of one GPU each (default 8), no more than the cluster
       can hold where its autoscaler reports that; it starts with as many actors as there are GPUs
       up (at least one) and grows, so an autoscaler brings GPU nodes up for the pending actors.
       Actors that get no GPU within resources.gpu_wait_s fail the group in one line. Decode tasks of
       one CPU each run on every CPU of the cluster;
  cpu  one fused decode+embed actor per core for large jobs (one for small ones), each at the same
       fractional CPU as the decode step so that Ray Data fuses the two, and one torch thread; the
       fractional share (half the cluster in all) leaves CPUs to Ray Data's own tasks. The pool is
       fixed in size: by the CPUs the cluster can hold, or, where that is unknown, the CPUs it has.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import pyarrow as pa

from raddist.data.decode import DecodeBatch
from raddist.embed.actor import EmbedBatch
from raddist.embed.cache import block_table, read_part_file, write_part
from raddist.embed.forward import MAX_GPU_BATCH

MIN_ROWS_PER_BLOCK, MAX_ROWS_PER_BLOCK = 16, 128
MAX_CPU_ACTORS = 16  # each holds a copy of the model
DEFAULT_GPU_ACTORS = 8  # the pool's ceiling when the spec sets none; the autoscaler brings the GPUs
SLICES_PER_VOLUME = 50  # a guess, for sizing the pool before the volumes are read
ROWS_PER_CPU_ACTOR = 1000  # ~2.5 CPU-s of decoding at 512^2 PNG: about what an actor's start costs
PIXEL_META = ("pixel_part", "pixel_rows", "pixel_errors", "pixel_bytes")


@dataclass
class GroupJob:
    """One job of a group, as the pipeline sees it."""

    entry: str  # its embedding cache entry's URI (parts are written under it)
    contract: dict
    rows: Optional[pa.Table] = None  # row, uri, mask_uri, modality: the rows to decode
    pixel_parts: Optional[List[str]] = None  # or the pixel parts to read
    pixel_entry: Optional[str] = None  # decoded rows are also written here (the pixel cache)


def layout(resources, device: str, rows: Optional[int] = None) -> dict:
    """How the embedding stage of `rows` rows (None: a large job) is laid out (see the module docstring)."""
    import ray

    from raddist.cluster import capacity

    most_held = capacity()  # what the cluster can hold, autoscaler included; None: unknown
    if device == "gpu":
        most = resources.embed_actors or DEFAULT_GPU_ACTORS
        if (most_held or {}).get("GPU"):  # no more actors than GPUs the cluster can ever hold
            most = max(1, min(most, int(most_held["GPU"])))
        initial = min(most, max(1, int(ray.cluster_resources().get("GPU", 0))))  # a start: the pool grows to most
        return {"min": 1, "max": most, "initial": initial, "num_gpus": 1, "num_cpus": 1, "threads": 1,
                "decode_cpus": 1}
    # a CPU pool is fixed in size: by what the cluster can hold, or (unknown) by what it has
    cpus = float((most_held or ray.cluster_resources()).get("CPU", 1))
    most = max(1, min(int(cpus), MAX_CPU_ACTORS))
    actors = resources.embed_actors or (most if rows is None else min(most, math.ceil(rows / ROWS_PER_CPU_ACTOR)))
    share = round(max(0.05, min(1.0, cpus / (2 * actors))), 3)
    return {"min": actors, "max": actors, "initial": actors, "num_gpus": 0, "num_cpus": share, "threads": 1,
            "decode_cpus": share}


def rows_per_block(rows: int, cpus: float) -> int:
    """Rows per decode block: about four blocks per CPU, so that every decoder stays busy to the
    end, but never so few rows that Ray's per-block cost (task launch, scheduling, ~20 ms of driver
    CPU) rivals the decoding itself."""
    return int(min(MAX_ROWS_PER_BLOCK, max(MIN_ROWS_PER_BLOCK, math.ceil(rows / (4 * max(cpus, 1))))))


def embed_group(jobs: List[GroupJob], model: dict, kind: dict, resources, device: str,
                on_block: Callable[[int, dict, List[dict], dict], None]) -> None:
    """Run one group through the pipeline. model: backbone, weights, features, size; kind: masks,
    volumes, device_jpeg. on_block(job index, its feature part, the pixel parts the block wrote, the
    actor that wrote it: node and GPU ids) is called in the driver as each block is written."""

    total = sum(j.rows.num_rows if j.rows is not None else 0 for j in jobs)
    res = layout(resources, device, total * (SLICES_PER_VOLUME if kind["volumes"] else 1) or None)
    # Ray Data copies the driver's DataContext when a Dataset is made: the wait is set before
    with _actors_wait(resources.gpu_wait_s if res["num_gpus"] else 0):
        ds = _dataset(jobs, model, kind, resources, res)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy") if ds is not None else []:
            for j, part, pixels, worker in zip(batch["job"], batch["part"], batch["pixels"], batch["worker"]):
                on_block(int(j), json.loads(part), json.loads(pixels), json.loads(worker))


def _dataset(jobs: List[GroupJob], model: dict, kind: dict, resources, res: dict):
    """The group's Dataset: sources, decode (CPU tasks), embed and write (the actor pool of res)."""
    import ray

    ds = _sources(jobs, kind, ray.cluster_resources().get("CPU", 1))
    if ds is None:
        return None
    specs = [{"contract": j.contract, "pixel_entry": j.pixel_entry} for j in jobs]
    ds = ds.map_batches(_decode_block, fn_kwargs={"specs": specs, "kind": kind}, batch_format="numpy",
                        batch_size=None, num_cpus=res["decode_cpus"])
    return ds.map_batches(
        EmbedAndWrite,
        fn_constructor_kwargs={**model, "threads": res["threads"], "batch": resources.embed_batch_size,
                               "compile": resources.compile, "gpu": res["num_gpus"] > 0,
                               "entries": [j.entry for j in jobs]},
        compute=ray.data.ActorPoolStrategy(min_size=res["min"], max_size=res["max"], initial_size=res["initial"]),
        num_gpus=res["num_gpus"], num_cpus=res["num_cpus"],
        # ViT-g / ViT-H ask for the large-GPU nodes' custom resource (resources.large_gpu_resource), so
        # a small backbone never brings up an 8-GPU node and a large one never lands on a small card
        resources=resources.custom_resources(model["backbone"]) if res["num_gpus"] else {},
        # rows handed to an actor per call; it cuts them into device batches (embed.forward). A GPU
        # actor's calls gather blocks from many decode tasks; a CPU actor takes each block it decoded
        # whole (no re-batching copies)
        batch_size=(resources.embed_batch_size or MAX_GPU_BATCH) if res["num_gpus"] else None,
        batch_format="numpy",
    )


@contextlib.contextmanager
def _actors_wait(wait_s: float):
    """GPU actors that get no GPU within wait_s (resources.gpu_wait_s) fail the group in one line,
    through Ray Data's own wait for a pool's first actors; they never wait forever."""
    import ray

    if not wait_s:
        yield
        return
    ctx = ray.data.DataContext.get_current()
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, math.ceil(wait_s)
    try:
        yield
    except ray.exceptions.GetTimeoutError as e:
        from raddist.cluster import GpuUnavailable

        raise GpuUnavailable(f"no embedding actor got a GPU within resources.gpu_wait_s={wait_s:g}s: the GPU nodes "
                             f"are busy, or the autoscaler cannot add one") from e
    finally:
        ctx.wait_for_min_actors_s = before


def _sources(jobs: List[GroupJob], kind: dict, cpus: float):
    """The group's input: manifest rows in blocks cut here (from_items builds them and their metadata
    in the driver: from_arrow would run a remote task per block for the metadata, and a repartition
    is an all-to-all step), and pixel parts one per block. A volume is a block of its own."""
    import ray

    rows = [{"job": j, "row": r["row"], "uri": r["uri"], "mask_uri": r.get("mask_uri") or "",
             "modality": r.get("modality") or "", "sample_id": r.get("sample_id") or "", "pixel_part": ""}
            for j, job in enumerate(jobs) if job.rows is not None for r in job.rows.to_pylist()]
    parts = [{"job": j, "row": -1, "uri": "", "mask_uri": "", "modality": "", "sample_id": "", "pixel_part": uri}
             for j, job in enumerate(jobs) for uri in job.pixel_parts or []]
    sources = []
    if rows:
        per_block = 1 if kind["volumes"] else rows_per_block(len(rows), cpus)
        sources.append(ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block)))
    if parts:
        sources.append(ray.data.from_items(parts, override_num_blocks=len(parts)))
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else sources[0].union(*sources[1:])


def _decode_block(batch: dict, specs: List[dict], kind: dict) -> dict:
    """Decode a block (or read a pixel part), each row by its job's contract; every output row
    carries its job and, when its job caches pixels, the pixel part it was written to."""
    outs = []
    for j in np.unique(batch["job"]) if len(batch["job"]) else [0]:  # an empty block still yields the columns
        mine = batch["job"] == j
        rows = {k: v[mine] for k, v in batch.items()}
        if len(rows["pixel_part"]) and rows["pixel_part"][0]:
            out = _read_pixels(rows["pixel_part"])
            meta = {}
        else:
            decoder = DecodeBatch(specs[j]["contract"], kind["masks"], kind["volumes"], kind["device_jpeg"])
            out = decoder({k: rows[k] for k in ("row", "uri", "mask_uri", "modality", "sample_id")})
            writes = specs[j]["pixel_entry"] and len(out["row"])
            meta = write_part(specs[j]["pixel_entry"], block_table(out)) if writes else {}
        n = len(out["row"])
        out["job"] = np.full(n, j, np.int32)
        out["pixel_part"] = np.array([meta.get("name", "")] * n, dtype=object)
        for key in ("rows", "errors", "bytes"):
            out[f"pixel_{key}"] = np.full(n, meta.get(key, 0), np.int64)
        outs.append(out)
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _read_pixels(part_uris) -> dict:
    """A pixel part's rows as the decode step would have given them."""
    table = pa.concat_tables([read_part_file(str(u)) for u in sorted(set(part_uris))])
    out = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if isinstance(col.type, pa.FixedShapeTensorType):
            out[name] = col.to_numpy_ndarray()
        elif pa.types.is_fixed_size_list(col.type):
            out[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        elif pa.types.is_string(col.type):
            out[name] = np.asarray(col.to_pylist(), dtype=object)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


class EmbedAndWrite(EmbedBatch):
    """The embedding actor, writing each job's rows of a block as a part of its cache entry and
    returning only what it wrote: per job, its part and the pixel parts its rows came from."""

    def __init__(self, entries: List[str], **kwargs):
        import ray

        super().__init__(**kwargs)
        self.entries = entries
        # where this actor ran, for the job's meta.json: its node, and the GPUs Ray gave it
        self.where = json.dumps({"node": ray.get_runtime_context().get_node_id(), "gpus": ray.get_gpu_ids()})

    def __call__(self, batch: dict) -> dict:
        out = super().__call__(batch)
        jobs, parts, pixels = [], [], []
        for j in np.unique(out["job"]):
            mine = out["job"] == j
            columns = {k: v[mine] for k, v in out.items() if k not in ("job", *PIXEL_META)}
            parts.append(json.dumps(write_part(self.entries[j], block_table(columns))))
            written = {(n, int(r), int(e), int(b)) for n, r, e, b in zip(*(out[k][mine] for k in PIXEL_META)) if n}
            pixels.append(json.dumps([dict(zip(("name", "rows", "errors", "bytes"), w)) for w in sorted(written)]))
            jobs.append(int(j))
        return {"job": np.asarray(jobs, np.int32), "part": np.asarray(parts, dtype=object),
                "pixels": np.asarray(pixels, dtype=object), "worker": np.asarray([self.where] * len(jobs), dtype=object)}


def feature_names(config, features: dict) -> list:
    return ["cls", "patch_mean"] if features["patch_mean"] and config.has_patch_mean else ["cls"]

