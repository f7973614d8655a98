"""Which embedding jobs run, where their inputs come from, and what each leaves in the cache.

Backbone by backbone (a backbone's jobs share one Dataset and one actor pool: its weights load once):
  1. prepare each job: its keys, and whether its features are cached, its decoded pixels are (then it
     reads them), or it decodes the manifest's rows (and writes the pixel cache on the way);
  2. take the lease of every entry it will write (embed.lease): one writer per key;
  3. run what it holds (embed.pipeline), the workers writing the parts;
  4. finish each job: refuse it when too many rows failed to decode, else write meta.json.
A job whose lease another live run holds is waited for, and taken over if that lease expires.

Keys are those the run bound its jobs to (raddist.provenance, raddist.keys): one-way hashes of what
the content depends on and nothing of the deployment, so the cache outlives a `ray down`.

Decode once: the uint8 squares of a (manifest, contract) are cached the first time a backbone decodes
them, and every later backbone with that contract reads them, in this sweep or a later one. Two
exceptions, both cheaper without: contracts above PIXEL_CACHE_MAX_SIZE (SAM's 1024: 1 MB an image,
350 GB for the study), and JPEGs left to the GPU's decoder (the file is its most compact form, and
nvjpeg decodes faster than a pixel part can be read back).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Dict, List, Optional

import pyarrow as pa

from raddist.data import manifest as manifest_lib
from raddist.embed.cache import EmbeddingCache, PixelCache
from raddist.embed.lease import Leases
from raddist.embed.pipeline import GroupJob, embed_group, feature_names
from raddist.errors import StorageError
from raddist.interrupt import Interrupted, StopRequest
from raddist.plan import EmbeddingJob
from raddist.provenance import bind_jobs

PIXEL_CACHE_MAX_SIZE = 512
WAIT_POLL_S = 5.0


class Source(str, Enum):
    """Where a job's features came from (a str: it is written as is to embedding_jobs.json)."""

    CACHED = "cached"  # already in the cache
    DECODED = "decoded"  # computed from the manifest's files
    PIXELS = "pixels"  # computed from the pixel cache (decoded once by an earlier backbone)
    FAILED = "failed"


@dataclass
class JobOutcome:
    job_id: str
    key: str
    computed: bool
    images: int  # images embedded now (0 when cached)
    errors: int
    seconds: float
    source: Source
    finished_at: float = field(default_factory=time.time)
    error: Optional[str] = None


@dataclass
class _Job:
    """A job being run: its keys, its inputs, what its blocks wrote."""

    job: EmbeddingJob
    key: str
    manifest_rows: int
    masks: bool
    volumes: bool
    device_jpeg: bool
    rows: Optional[pa.Table] = None
    pixel_key: Optional[str] = None
    pixel_parts: Optional[List[str]] = None  # set: read these instead of decoding
    write_pixels: bool = False
    parts: Dict[str, dict] = field(default_factory=dict)
    pixel_written: Dict[str, dict] = field(default_factory=dict)
    workers: Dict[str, dict] = field(default_factory=dict)  # the actors that embedded it

    @property
    def kind(self) -> dict:
        return {"masks": self.masks, "volumes": self.volumes, "device_jpeg": self.device_jpeg}

    @property
    def images(self) -> int:
        return sum(p["rows"] - p["errors"] for p in self.parts.values())

    @property
    def errors(self) -> int:
        return sum(p["errors"] for p in self.parts.values())


class EmbeddingRun:
    """Runs a sweep's embedding jobs against one cache. device: "gpu" | "cpu", decided once by the
    sweep from the spec (never from the cluster's state at start)."""

    def __init__(self, cache: EmbeddingCache, resources, device: str, say: Callable[[str], None] = print,
                 progress: Optional[Callable[[dict], None]] = None, stop: Optional[StopRequest] = None):
        self.cache, self.pixels = cache, PixelCache(cache.root)
        self.resources, self.device, self.say = resources, device, say
        self.progress = progress or (lambda state: None)
        self.leases = Leases()
        self.stop = stop or StopRequest()
        self.stop.on_exit(self.leases.close)  # a second Ctrl-C exits at once: the leases go first
        self._told: Dict[str, str] = {}  # job id -> the lease holder we said it waits for

    def run(self, jobs: List[EmbeddingJob], max_error_rate: float,
            on_outcome: Optional[Callable[[EmbeddingJob, JobOutcome], None]] = None) -> List[JobOutcome]:
        """Every job's outcome, in the order given; each reported through on_outcome as it ends. Jobs
        the run did not bind get their keys here (raddist.provenance)."""
        outcomes: Dict[str, JobOutcome] = {}
        jobs = bind_jobs(jobs, self.device, self.resources.gpu_jpeg_decode)

        def done(job: EmbeddingJob, outcome: JobOutcome) -> None:
            outcomes[job.id] = outcome
            if on_outcome:
                on_outcome(job, outcome)

        waiting: List[EmbeddingJob] = []
        try:
            for backbone_jobs in _by_backbone(jobs):
                self.stop.check()
                self._round(backbone_jobs, max_error_rate, done, waiting)
            while waiting:  # held by another run: cached once it finishes, ours if its lease expires
                self.stop.event.wait(WAIT_POLL_S)
                self.stop.check()
                still, waiting = waiting, []
                self._round(still, max_error_rate, done, waiting)
        finally:
            self.leases.close()
        return [outcomes[j.id] for j in jobs]

    def _round(self, jobs: List[EmbeddingJob], max_error_rate: float, done, waiting: List[EmbeddingJob]) -> None:
        groups: Dict[tuple, List[_Job]] = {}
        for job in jobs:
            prepared = self._prepare(job)
            if isinstance(prepared, JobOutcome):
                done(job, prepared)
            elif prepared is None:
                waiting.append(job)
                self._say_waiting(job)
            else:
                b = job.backbone
                group = (b.name, b.weights, json.dumps(job.features, sort_keys=True), job.contract["size"],
                         json.dumps(prepared.kind, sort_keys=True))
                groups.setdefault(group, []).append(prepared)
        for group in groups.values():
            for j, outcome in zip(group, self._run_group(group, max_error_rate)):
                done(j.job, outcome)

    def _say_waiting(self, job: EmbeddingJob) -> None:
        """Once per lease: which job waits for which run, and until when at the latest."""
        holder = self.leases.holder(self.cache.uri(job.keys.features, "lease.json")) or {}
        expires, who = holder.get("expires"), holder.get("holder", "?")
        if expires is None or self._told.get(job.id) == who:
            return
        self._told[job.id] = who
        until = time.strftime("%H:%M:%S", time.localtime(expires))
        self.say(f"  embeddings {job.backbone.label} × {job.task.name}: waiting for another run "
                 f"({who}) that computes them; its lease runs to {until}, renewed while "
                 "it lives, taken over if it dies")

    def _prepare(self, job: EmbeddingJob):
        """The job's cached outcome; None when another run is computing it; else a _Job holding its lease."""
        start = time.time()
        keys, key = job.keys, job.keys.features
        reason = self.cache.check(key)
        if reason is None:
            meta = self.cache.meta(key)
            return JobOutcome(job.id, key, False, 0, int(meta.get("errors", 0)), time.time() - start, Source.CACHED)
        if reason != "absent":
            self.say(f"  embeddings {job.backbone.label} × {job.task.name}: cache entry incomplete ({reason}); recomputing")
        if job.contract.get("corruption") and keys.volumes:  # raddist.robustness: 2D images only
            return JobOutcome(job.id, key, False, 0, 0, 0.0, Source.FAILED,
                              error="corruptions of volumes are not supported (2D images only)")
        if not self.leases.try_take(self.cache.uri(key, "lease.json")):
            return None
        self.cache.clear(key)
        table = manifest_lib.load(job.task.manifest)  # raw: rows sent to decode by position; never stored
        rows = pa.array(range(table.num_rows), pa.int64())
        if job.contract.get("corruption"):  # a corrupted test split (raddist.robustness): the test rows only
            rows = pa.array([i for i, s in enumerate(table["split"].to_pylist()) if s == "test"], pa.int64())
        prepared = _Job(job, key, len(rows), keys.masks, keys.volumes, keys.device_jpeg)
        cacheable = not keys.device_jpeg and not job.contract.get("corruption")
        if cacheable and job.contract["size"] <= PIXEL_CACHE_MAX_SIZE and self.resources.pixel_cache:
            prepared.pixel_key = keys.pixels
            if self.pixels.is_complete(prepared.pixel_key):
                prepared.pixel_parts = self.pixels.part_uris(prepared.pixel_key, self.pixels.meta(prepared.pixel_key))
                return prepared
            prepared.write_pixels = self.leases.try_take(self.pixels.uri(prepared.pixel_key, "lease.json"))
            if prepared.write_pixels:
                self.pixels.clear(prepared.pixel_key)
        wanted = [c for c in ("uri", "mask_uri", "modality", "sample_id")
                  if c in table.column_names and (c != "mask_uri" or keys.masks)]
        prepared.rows = table.select(wanted).take(rows).append_column("row", rows)
        return prepared

    def _run_group(self, group: List[_Job], max_error_rate: float) -> List[JobOutcome]:
        first = group[0]
        start, total = time.time(), sum(j.manifest_rows for j in group)
        label = first.job.backbone.label
        state = {"backbone": label, "images_done": 0, "images_total": total, "started": start}  # manifest rows
        last = [0.0]

        def on_block(j: int, part: dict, pixel_parts: List[dict], worker: dict) -> None:
            job = group[j]
            job.parts[part["name"]] = part
            job.workers[json.dumps(worker, sort_keys=True)] = worker
            for p in pixel_parts:
                job.pixel_written[p["name"]] = p
            self.stop.check()  # Ctrl-C: stop at this block; the group's leases are released below
            state["images_done"] += part["sources"]  # manifest rows: a volume counts once, like the total
            if time.time() - last[0] >= self.resources.progress_interval_s:
                last[0] = time.time()
                self._report(state)

        model = {"backbone": first.job.backbone.name, "weights": first.job.backbone.weights,
                 "features": first.job.features, "size": first.job.contract["size"]}
        jobs = [GroupJob(self.cache.entry(j.key), j.job.contract, j.rows, j.pixel_parts,
                         self.pixels.entry(j.pixel_key) if j.write_pixels else None) for j in group]
        try:
            embed_group(jobs, model, first.kind, self.resources, self.device, on_block)
        except Interrupted:
            for j in group:
                self._fail(j, "interrupted", start)
            raise
        except Exception as e:  # noqa: BLE001 - a failed group fails its jobs, and only them
            return [self._fail(j, _cause(e), start) for j in group]
        self._report(state)
        seconds = time.time() - start
        return [self._finish(j, max_error_rate, seconds * j.manifest_rows / max(total, 1), seconds) for j in group]

    def _report(self, state: dict) -> None:
        elapsed = max(time.time() - state["started"], 1e-9)
        rate = state["images_done"] / elapsed
        left = max(state["images_total"] - state["images_done"], 0)
        state.update(images_per_second=round(rate, 1), eta_seconds=round(left / rate, 1) if rate > 0 else None)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        self.say(f"  embedding {state['backbone']}: {state['images_done']}/{state['images_total']} images, "
                 f"{rate:.0f} img/s, ETA {eta}")
        self.progress(dict(state))

    def _finish(self, j: _Job, max_error_rate: float, seconds: float, group_seconds: float) -> JobOutcome:
        from raddist.backbones.embedder import dense_blocks, dense_names, feature_dims
        from raddist.backbones.registry import get_config

        rows = j.images + j.errors
        if j.write_pixels:
            self.pixels.finish(j.pixel_key, list(j.pixel_written.values()), {"contract": j.job.contract, **j.kind})
            self.leases.release(self.pixels.uri(j.pixel_key, "lease.json"))
        if rows and j.errors / rows > max_error_rate:
            return self._fail(j, f"{j.errors} of {rows} images could not be decoded ({j.errors / rows:.0%}), above "
                                 f"max_input_error_rate {max_error_rate:.0%}: is the data where the manifest says?",
                              time.time() - seconds)
        config = get_config(j.job.backbone.name)
        self.cache.finish(j.key, list(j.parts.values()), {
            "job_id": j.job.id, "backbone": j.job.backbone.name, "contract": j.job.contract,
            "features": j.job.features, "feature_names": feature_names(config, j.job.features),
            "block_dims": feature_dims(config, j.job.features["n_last_blocks"]),
            "dense_names": dense_names(dense_blocks(config, j.job.features.get("patch_tokens", 0))),
            "manifest_rows": j.manifest_rows, **j.kind, "device": self.device,
            "workers": sorted(j.workers.values(), key=lambda w: w["node"]),  # node and GPU ids of each actor
            "source": (Source.PIXELS if j.pixel_parts else Source.DECODED).value,
            "seconds": round(seconds, 3),  # this job's share of its group's wall time, by rows
            "group_seconds": round(group_seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.leases.release(self.cache.uri(j.key, "lease.json"))
        return JobOutcome(j.job.id, j.key, True, j.images, j.errors, seconds,
                          Source.PIXELS if j.pixel_parts else Source.DECODED)

    def _fail(self, j: _Job, error: str, start: float) -> JobOutcome:
        """No complete entry is written; the parts stay for nobody (the next run clears them)."""
        for uri in (self.cache.uri(j.key, "lease.json"),
                    self.pixels.uri(j.pixel_key, "lease.json") if j.write_pixels else None):
            if uri:
                self.leases.release(uri)
        return JobOutcome(j.job.id, j.key, False, 0, j.errors, time.time() - start, Source.FAILED, error=error)


def _by_backbone(jobs: List[EmbeddingJob]) -> List[List[EmbeddingJob]]:
    """Jobs grouped by backbone (name, weights, alias), in the order the backbones first appear."""
    groups: Dict[tuple, List[EmbeddingJob]] = {}
    for job in jobs:
        groups.setdefault((job.backbone.name, job.backbone.weights, job.backbone.label), []).append(job)
    return list(groups.values())


def _cause(e: Exception) -> str:
    """One line for a failed group: a storage failure names its URI and cause; anything else its type."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
        inner = getattr(cause, "cause", None) or cause
        e = inner if isinstance(inner, Exception) else e
    if isinstance(e, StorageError):
        return f"storage failed: {e}"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def run_embedding_jobs(jobs: List[EmbeddingJob], cache: EmbeddingCache, resources, device: str = "cpu",
                       max_error_rate: float = 1.0, on_outcome=None, say: Callable[[str], None] = lambda line: None
                       ) -> List[JobOutcome]:
    """EmbeddingRun(...).run(...) in one call (tests, benchmarks)."""
    return EmbeddingRun(cache, resources, device, say).run(jobs, max_error_rate, on_outcome)


def run_embedding_job(job: EmbeddingJob, cache: EmbeddingCache, resources, device: str = "cpu",
                      max_error_rate: float = 1.0) -> JobOutcome:
    return run_embedding_jobs([job], cache, resources, device, max_error_rate)[0]
