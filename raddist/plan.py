"""Expand a sweep spec into evaluation cells and the embedding jobs they need.

A cell is backbone × task × protocol variant × seed. Planning reads no data: the ids made here name a
cell's place in the grid (its definition, the weights as written, the manifest's path). A run binds the
plan to what its cells are computed from (raddist.provenance): the manifests' content, the weights'
identity, the device; the bound cells' ids are content keys (raddist.keys), so a rerun knows what is
done and what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from raddist import protocols
from raddist.keys import JobKeys, digest
from raddist.protocols.trainable.space import check_budgets
from raddist.spec import BackboneSpec, ProtocolSpec, SweepSpec, TaskSpec


@dataclass(frozen=True)
class EmbeddingJob:
    id: str
    backbone: BackboneSpec
    task: TaskSpec
    contract: dict  # PreprocessContract as a dict
    features: dict  # FeatureSpec as a dict
    keys: Optional[JobKeys] = None  # set when a run binds the plan (raddist.provenance)


@dataclass(frozen=True)
class Cell:
    id: str
    backbone: BackboneSpec
    task: TaskSpec
    protocol: str
    params: dict
    seed: int
    embedding_job: Optional[str]  # the job whose features it reads; None for trainable protocols
    contract: dict = field(default_factory=dict)  # the preprocessing contract of its images
    # what defines it beyond its inputs: task fields, protocol, params, seed, bootstrap (raddist.keys)
    definition: dict = field(default_factory=dict, hash=False, compare=False)
    # its task's external test sets (raddist.external): test-set name -> the job embedding it, and once
    # bound, -> that job's feature cache key
    external_jobs: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    external_keys: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> dict:
        return {
            "cell_id": self.id,
            "backbone": self.backbone.label,
            "task": self.task.name,
            "task_type": self.task.type,
            "protocol": self.protocol,
            "params": json.dumps(self.params, sort_keys=True),
            "seed": self.seed,
        }


@dataclass
class Plan:
    spec: SweepSpec
    cells: List[Cell] = field(default_factory=list)
    jobs: Dict[str, EmbeddingJob] = field(default_factory=dict)

    def summary(self) -> dict:
        external = sum(":external/" in j.task.name for j in self.jobs.values())
        corrupted = sum("corruption" in j.contract for j in self.jobs.values())  # raddist.robustness
        return {
            "cells": len(self.cells),
            "embedding_jobs": len(self.jobs),
            **({"external_jobs": external} if external else {}),  # of them, those of external test sets
            **({"corrupted_jobs": corrupted} if corrupted else {}),  # ...and of corrupted test splits
            "backbones": [b.label for b in self.spec.backbones],
            "tasks": [t.name for t in self.spec.tasks],
            "protocols": sorted({c.protocol for c in self.cells}),
        }

    def table(self) -> str:
        """Cells per task × protocol, and the totals, as plain text."""
        protos = sorted({c.protocol for c in self.cells})
        counts: Dict[tuple, int] = {}
        for c in self.cells:
            counts[(c.task.name, c.protocol)] = counts.get((c.task.name, c.protocol), 0) + 1
        width = max([len("task")] + [len(t.name) for t in self.spec.tasks])
        lines = [f"{'task':<{width}}  " + "  ".join(f"{p:>8}" for p in protos) + "     total"]
        for t in self.spec.tasks:
            row = [counts.get((t.name, p), 0) for p in protos]
            lines.append(f"{t.name:<{width}}  " + "  ".join(f"{n:>8}" for n in row) + f"  {sum(row):>8}")
        s = self.summary()
        lines.append("")
        lines.append(
            f"{s['cells']} cells, {s['embedding_jobs']} embedding jobs"
            + (f" ({s['external_jobs']} of external test sets)" if "external_jobs" in s else "")
            + (f" ({s['corrupted_jobs']} of corrupted test splits)" if "corrupted_jobs" in s else "") + ", "
            f"{len(s['backbones'])} backbones × {len(s['tasks'])} tasks × {len(protos)} protocols"
        )
        lines += [f"note: {n}" for n in self.size_notes()]
        return "\n".join(lines)

    def size_notes(self) -> List[str]:
        """A line for each backbone planned at a size its weights were not trained at (SAM off 1024)."""
        from raddist.backbones.registry import get_config, size_note

        return sorted({size_note(get_config(c.backbone.name), c.contract["size"]) for c in self.cells} - {""})


def contract_for(spec: SweepSpec, backbone: BackboneSpec, task: TaskSpec) -> dict:
    from raddist.backbones.registry import get_config

    size = task.image_size or spec.image_size or get_config(backbone.name).input_size
    return {
        "size": int(size),
        "window": task.preprocess.window if task.preprocess.window == "auto" else list(task.preprocess.window),
        "clip_percentiles": None if task.preprocess.clip_percentiles is None else list(task.preprocess.clip_percentiles),
    }


def make_plan(spec: SweepSpec) -> Plan:
    plan = Plan(spec=spec)
    for backbone in spec.backbones:
        for task in spec.tasks:
            job = embedding_job_for(spec, backbone, task)
            for proto in spec.protocols:
                if applies(proto, backbone, task):
                    plan.cells.extend(_cells(spec, job, proto, plan))
    check_budgets(plan.cells)  # backbones compared under one search run the same number of trials
    return plan


def _cells(spec: SweepSpec, job: EmbeddingJob, proto: ProtocolSpec, plan: Plan) -> List[Cell]:
    """The cells of one protocol entry on one backbone x task: a variant x seed each."""
    record = protocols.get(proto.name)
    needs = record.needs_embeddings
    # further test sets: other datasets (raddist.external), corrupted test splits (raddist.robustness)
    externals = {**external_jobs(spec, job), **corrupted_jobs(spec, job, proto)} if needs else {}
    if needs:
        plan.jobs.setdefault(job.id, job)
        for ext_job in externals.values():  # a manifest embedded once per backbone, however many use it
            plan.jobs.setdefault(ext_job.id, ext_job)
    cells = []
    for params in record.variants(proto.parsed_params()):
        for seed in spec.seeds:
            definition = {
                "backbone": job.backbone.name,
                # dataset, image_size and manifest act through the fields, the contract and the content
                "task": job.task.model_dump(exclude={"dataset", "image_size", "manifest", "external"}),
                "protocol": proto.name, "params": params, "seed": seed, "bootstrap": spec.bootstrap,
            }
            where = {"weights": job.backbone.weights, "manifest": job.task.manifest, "job": job.id}
            if externals:  # only then, so the ids of cells without external test sets stay as they were
                definition["external"] = [e.model_dump(exclude={"manifest"}) for e in job.task.external]
                where["external"] = {name: j.id for name, j in externals.items()}
            cells.append(Cell(id=digest({**definition, **where}), backbone=job.backbone, task=job.task,
                              protocol=proto.name, params=params, seed=seed,
                              embedding_job=job.id if needs else None, contract=job.contract,
                              definition=definition, external_jobs={n: j.id for n, j in externals.items()}))
    return cells


def applies(proto: ProtocolSpec, backbone: BackboneSpec, task: TaskSpec) -> bool:
    """Whether a protocol entry makes cells for this backbone x task: its task types, and the
    entry's own backbones and tasks lists."""
    return (task.type in protocols.get(proto.name).task_types
            and (proto.backbones is None or backbone.label in proto.backbones)
            and (proto.tasks is None or task.name in proto.tasks))


def patch_token_blocks(spec: SweepSpec, backbone: BackboneSpec, task: TaskSpec) -> int:
    """Blocks of patch tokens this backbone x task's protocols read (seg_linear 1, seg_unet 5); 0 for most."""
    wanted = [protocols.get(p.name).patch_token_blocks for p in spec.protocols if applies(p, backbone, task)]
    return max(wanted, default=0)


def embedding_job_for(spec: SweepSpec, backbone: BackboneSpec, task: TaskSpec) -> EmbeddingJob:
    """The embedding job of a backbone x task: what its cells read, or (trainable ones) train on."""
    contract = contract_for(spec, backbone, task)
    features = spec.features.model_dump()
    dense = patch_token_blocks(spec, backbone, task)
    if dense:  # only then, so that the keys of jobs without patch tokens stay as they were
        features["patch_tokens"] = dense
    where = {"backbone": backbone.name, "weights": backbone.weights, "contract": contract, "features": features,
             "manifest": task.manifest}
    return EmbeddingJob(id=digest(where), backbone=backbone, task=task, contract=contract, features=features)


def external_jobs(spec: SweepSpec, job: EmbeddingJob) -> Dict[str, EmbeddingJob]:
    """The embedding jobs of a backbone x task's external test sets (raddist.external), by test-set name:
    each external manifest under the task's own contract and features."""
    from raddist.external import external_task, test_name

    out = {}
    for ext in job.task.external:
        where = {"backbone": job.backbone.name, "weights": job.backbone.weights, "contract": job.contract,
                 "features": job.features, "manifest": ext.manifest}
        out[test_name(ext)] = EmbeddingJob(id=digest(where), backbone=job.backbone, task=external_task(job.task, ext),
                                           contract=job.contract, features=job.features)
    return out


def corrupted_jobs(spec: SweepSpec, job: EmbeddingJob, proto: ProtocolSpec) -> Dict[str, EmbeddingJob]:
    """The corrupted test splits a cell of this protocol entry scores (spec.robustness; raddist.robustness),
    by test-set name (corruption/<kind>/<severity>): the clean job's contract with `corruption` added, which
    sends it the test rows only and corrupts them at decode time. Segmentation is left out; so are whole
    NIfTI volumes (their corrupted jobs fail in one line, and the cells score without them); volumes of
    slice images are corrupted slice by slice and pooled as the clean ones."""
    from raddist.robustness import SCORES_EXTRA, test_set_name

    rob = spec.robustness
    if (rob is None or job.task.type == "segmentation" or proto.name not in (rob.protocols or SCORES_EXTRA)
            or (rob.tasks is not None and job.task.name not in rob.tasks)):
        return {}
    out = {}
    for name in rob.corruptions:
        for severity in rob.severities:
            corruption = {"name": name, "severity": int(severity), "seed": int(rob.seed)}
            contract = {**job.contract, "corruption": corruption}
            where = {"backbone": job.backbone.name, "weights": job.backbone.weights, "contract": contract,
                     "features": job.features, "manifest": job.task.manifest}
            out[test_set_name(corruption)] = EmbeddingJob(id=digest(where), backbone=job.backbone, task=job.task,
                                                          contract=contract, features=job.features)
    return out
