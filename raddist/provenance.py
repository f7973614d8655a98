"""What a run's cells and embedding jobs are computed from, read once at its start, and what changed
since the last run into the same output.

`bind` reads each task's manifest (raw: no salt; Parquet only, never an image) and each backbone's
weights identity once, and gives the plan's jobs their cache keys and its cells their content ids
(raddist.keys). So a manifest relabelled in place reruns its cells and reuses its embeddings, an
overwritten weights file recomputes its backbone's features and cells, and an unchanged rerun runs
nothing. `changes` compares what this run reads with what the last run into the output read
(OUTPUT/provenance.json) and says why cells rerun.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from raddist import keys, storage
from raddist.keys import JobKeys, ManifestDigest
from raddist.plan import Cell, EmbeddingJob, Plan, embedding_job_for

RECORD = "provenance.json"


@dataclasses.dataclass
class Sources:
    """What a bound plan reads: each task's manifest digest, each backbone's weights identity."""

    device: str
    manifests: Dict[str, ManifestDigest] = dataclasses.field(default_factory=dict)  # task name ->
    weights: Dict[str, str] = dataclasses.field(default_factory=dict)  # backbone label -> identity
    # backbone label -> its name, licence and gating (the report lists them beside the weights identity)
    about: Dict[str, dict] = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        return {"device": self.device, "versions": {"embedder": keys.EMBEDDER_VERSION, "decode": keys.DECODE_VERSION},
                "tasks": {t: dataclasses.asdict(d) for t, d in self.manifests.items()},
                "backbones": {b: {"weights": w, **self.about.get(b, {})} for b, w in self.weights.items()}}


class Binder:
    """Reads each manifest and weights identity once, and keys jobs and cells from them."""

    def __init__(self, device: str, gpu_jpeg_decode: bool = True):
        self.device, self.gpu_jpeg_decode = device, gpu_jpeg_decode
        self.sources = Sources(device)
        self._tables: Dict[str, object] = {}
        self._keys: Dict[Tuple[str, str], JobKeys] = {}

    def job(self, job: EmbeddingJob) -> EmbeddingJob:
        """The job with its keys."""
        return dataclasses.replace(job, keys=self.job_keys(job))

    def job_keys(self, job: EmbeddingJob) -> JobKeys:
        memo = (job.id, job.task.name)
        if memo not in self._keys:
            table = self._table(job.task.manifest)
            masks, volumes = job.task.type == "segmentation", keys.is_volume_manifest(table)
            digest = self.sources.manifests.setdefault(job.task.name, ManifestDigest.of(table, masks, job.task.labels))
            weights = self.weights(job.backbone)
            device_jpeg = self.device == "gpu" and self.gpu_jpeg_decode and not (masks or volumes)
            source = keys.JobSource(backbone_identity(job.backbone.name), weights, job.contract, job.features, digest,
                                    masks, volumes)
            self._keys[memo] = keys.job_keys(source, self.device, device_jpeg)
        return self._keys[memo]

    def cell(self, cell: Cell, job: EmbeddingJob, externals: Optional[Dict[str, EmbeddingJob]] = None) -> Cell:
        """The cell with its content id; externals: its external test sets' jobs (raddist.external), whose
        features and manifests (labels included) its id then covers too, and whose keys it carries."""
        job_keys = self.job_keys(job)
        reads = job_keys.features if cell.embedding_job else job_keys.inputs
        results = self.digest(cell.task).results  # its own labels, whichever task's job it shares
        external_keys = {}
        if externals:
            external_keys = {name: self.job_keys(j).features for name, j in sorted(externals.items())}
            reads = keys.digest([reads, external_keys])
            results = keys.digest([results, self._external_digests(cell.task)])
        return dataclasses.replace(cell, id=keys.cell_key(cell.definition, reads, results), external_keys=external_keys)

    def _external_digests(self, task) -> Dict[str, str]:
        """Each external test set's results digest over its own label columns (after the label map),
        recorded as the task <task>:external/<name>; a manifest without them is refused here, up front."""
        from raddist.external import check_manifest, external_task

        out = {}
        for ext in task.external:
            check_manifest(task, ext, self._table(ext.manifest))
            derived = external_task(task, ext)
            out[derived.name] = self.digest(derived).results
        return out

    def digest(self, task) -> ManifestDigest:
        """A task's manifest digest over its own label columns, read once."""
        if task.name not in self.sources.manifests:
            self.sources.manifests[task.name] = ManifestDigest.of(self._table(task.manifest),
                                                                  task.type == "segmentation", task.labels)
        return self.sources.manifests[task.name]

    def weights(self, backbone) -> str:
        if backbone.label not in self.sources.weights:
            from raddist.backbones.registry import get_config

            config, repo = get_config(backbone.name), hub_repo(backbone.name)
            if backbone.weights == "hub" and config.revision:  # pinned: that revision, never the hub's main
                identity = f"hub:{repo}@{config.revision}"
            elif backbone.weights == "hub" and repo is None:  # a local model directory, a python: factory
                identity = f"hub:{config.source}:{config.model_id}"
            else:
                identity = keys.weights_identity(backbone.weights, repo)
            self.sources.weights[backbone.label] = identity
            self.sources.about[backbone.label] = {"name": backbone.name, "license": config.license,
                                                  "gated": config.gated}
        return self.sources.weights[backbone.label]

    def _table(self, uri: str):
        from raddist.data import manifest as manifest_lib

        if uri not in self._tables:
            self._tables[uri] = manifest_lib.load(uri)  # raw: hashed, never stored
        return self._tables[uri]


def bind(plan: Plan, device: str, gpu_jpeg_decode: bool = True) -> Tuple[Plan, Sources]:
    """The plan with content keys: its jobs carry their cache keys, its cells content ids."""
    binder = Binder(device, gpu_jpeg_decode)
    jobs = {job_id: binder.job(job) for job_id, job in plan.jobs.items()}
    cells = []
    for cell in plan.cells:
        job = jobs.get(cell.embedding_job) or embedding_job_for(plan.spec, cell.backbone, cell.task)
        cells.append(binder.cell(cell, job, {name: jobs[j] for name, j in cell.external_jobs.items()}))
    return Plan(spec=plan.spec, cells=cells, jobs=jobs), binder.sources


def bind_jobs(jobs: List[EmbeddingJob], device: str, gpu_jpeg_decode: bool = True) -> List[EmbeddingJob]:
    """Jobs with their keys (those that have them unchanged)."""
    binder = Binder(device, gpu_jpeg_decode)
    return [job if job.keys is not None else binder.job(job) for job in jobs]


def hub_repo(backbone_name: str) -> Optional[str]:
    """The hub repository a backbone's `weights: hub` load from (timm's published weights are under
    timm/<model id>)."""
    from raddist.backbones.registry import get_config

    config = get_config(backbone_name)
    if config.source == "timm":
        return f"timm/{config.model_id}"
    if config.source == "python" or os.path.isdir(config.model_id):  # a team's own code, a local directory
        return None
    if config.source == "open_clip" and not config.model_id.startswith("hf-hub:"):
        return None  # open_clip:<name>:<pretrained>: open_clip's own download, no hub revision
    return config.model_id.removeprefix("hf-hub:")


def backbone_identity(backbone_name: str) -> str:
    """What a job key names the backbone by: a registered name stands for its literals; a name by source
    (timm:, hf:, open_clip:, python:) adds the digest of the config it resolved to (contract, widths,
    architecture), so an edited preprocessor_config.json or a python: contract recomputes its features."""
    from raddist.backbones.registry import get_config, is_named_by_source

    if not is_named_by_source(backbone_name):
        return backbone_name
    return f"{backbone_name}|{keys.digest(get_config(backbone_name).to_dict())}"


# --- what changed since the last run ---------------------------------------------------------------

def changes(output: str, sources: Sources, pending: List[Cell]) -> List[dict]:
    """Why pending cells rerun: what they read that differs from what the last run into this output
    read. One entry per task or backbone that changed, with the number of its pending cells."""
    uri = storage.join(output, RECORD)
    if not storage.exists(uri):
        return []
    before, now = storage.read_json(uri), sources.record()
    found: List[dict] = []
    if before.get("device") != now["device"]:
        found.append(_change("run", "all", f"device changed ({before.get('device')} -> {now['device']})", pending))
    if before.get("versions") != now["versions"]:
        found.append(_change("run", "all", "raddist's embedding or decode code changed", pending))
    for task, digest in now["tasks"].items():
        old = before.get("tasks", {}).get(task)
        what = _manifest_change(old, digest)
        if what:
            owner = task.split(":external/")[0]  # an external test set's manifest: its task's cells rerun
            found.append(_change("task", task, what, [c for c in pending if c.task.name == owner]))
    for label, entry in now["backbones"].items():
        old = before.get("backbones", {}).get(label)
        if old is not None and old.get("weights") != entry["weights"]:
            found.append(_change("backbone", label, "weights changed",
                                 [c for c in pending if c.backbone.label == label]))
    return [f for f in found if f["cells"]]


def _manifest_change(old: Optional[dict], new: dict) -> Optional[str]:
    if old is None or old == new:
        return None
    if old.get("images") != new["images"]:
        return "manifest images changed"
    if old.get("labels") != new["labels"]:
        return "manifest labels changed"
    return "manifest patients or splits changed"


def _change(kind: str, name: str, what: str, cells: List[Cell]) -> dict:
    return {"kind": kind, "name": name, "what": what, "cells": len(cells)}


def describe(change: dict) -> str:
    """One console line, e.g. `brain_mri: manifest labels changed since the last run; 12 cells rerun`."""
    return f"{change['name']}: {change['what']} since the last run; {change['cells']} cells rerun"


def write_record(output: str, sources: Sources, name: str) -> None:
    storage.write_json(storage.join(output, RECORD), {"name": name, **sources.record()})


def require_same_sweep(output: str, name: str) -> None:
    """An output holds one sweep: the same name extends it (more seeds, protocols, tasks); another
    name is refused, so one config's results never silently replace another's."""
    from raddist.errors import ConfigError

    uri = storage.join(output, RECORD)
    if not storage.exists(uri):
        return
    owner = storage.read_json(uri).get("name")
    if owner is not None and owner != name:
        raise ConfigError(f"storage.output: {output} holds the sweep '{owner}', not '{name}'; give this sweep "
                          f"its own output (--output), or name it '{owner}' to extend that one")
