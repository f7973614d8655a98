"""What a sweep cost, and what the reference study's grid would cost on GPUs.

Each cell records wall, CPU and GPU seconds; each embedding job its images and GPU seconds. The
report sums them per backbone and per protocol. The paper-grid estimate multiplies the study's
image counts by forward rates on one H100 node, capped by what 16 cores can decode.
"""

from __future__ import annotations

from typing import List, Optional

import pandas as pd

# images per dataset in the reference study (official distributions)
# images per classification dataset (the segmentation sets' slice counts are not pinned down yet,
# so their jobs are left out of the estimate rather than counted as free)
REFERENCE_IMAGES = {"nih_chestxray14": 112_120, "chexpert": 191_229, "brain_tumor": 3_064, "sarscov2_ct": 2_482}
# bf16 forward img/s at 224 on one H100: measured (DESIGN.md) or assumed from the nearest measured model
H100_FORWARD = {
    "dinov2_vits14": (13_235, "measured"), "dinov2_vitb14": (5_963, "measured"),
    "dinov2_vitl14": (2_055, "measured"), "dinov2_vitg14": (611, "measured"),
    "vit_large_in21k": (2_055, "assumed ≈ ViT-L/14"), "mae_vitl16": (2_055, "assumed ≈ ViT-L/14"),
    "msn_vitl16": (2_055, "assumed ≈ ViT-L/14"), "clip_vitl14": (2_055, "assumed ≈ ViT-L/14"),
    "openclip_vith14": (1_000, "assumed ≈ ViT-L/14 × 0.5"), "sam_vitl16": (100, "assumed: 1024² input, ≈ ViT-L/14 ÷ 20"),
    "biomedclip_vitb16": (5_963, "assumed ≈ ViT-B/14"), "resnet152": (3_000, "assumed"),
    "vgg19": (2_000, "assumed"), "densenet201": (3_000, "assumed"),
}
DECODE_CEILING = 1_023  # 1024² PNG decode + resize, 16 cores (DESIGN.md, measured)


def sweep_costs(cell_infos: List[dict], jobs: List[dict]) -> dict:
    """Sums per backbone and per protocol, as DataFrames."""
    cells = pd.DataFrame(cell_infos)
    if cells.empty:
        return {}
    for col in ("wall_seconds", "cpu_seconds", "gpu_seconds"):
        if col not in cells:
            cells[col] = 0.0
    per_protocol = cells.groupby("protocol")[["wall_seconds", "cpu_seconds", "gpu_seconds"]].sum()
    per_protocol.insert(0, "cells", cells.groupby("protocol").size())
    per_backbone = cells.groupby("backbone")[["wall_seconds", "cpu_seconds", "gpu_seconds"]].sum()
    per_backbone.columns = [f"cells_{c}" for c in per_backbone.columns]
    emb = pd.DataFrame(jobs)
    if not emb.empty:
        e = emb.groupby("backbone")[["images", "wall_seconds", "gpu_seconds"]].sum()
        e.columns = ["images_embedded", "embed_wall_seconds", "embed_gpu_seconds"]
        per_backbone = per_backbone.join(e, how="outer").fillna(0)
    return {"per_protocol": per_protocol, "per_backbone": per_backbone}


# A training step (forward, backward, optimiser) costs about three forwards; the train split is about
# 70% of a dataset's images, and the validation pass each epoch another forward over ~10%.
TRAIN_STEP_FORWARDS, TRAIN_SHARE, VAL_SHARE = 3.0, 0.7, 0.1


def paper_gpu_hours(config: Optional[str] = None) -> pd.DataFrame:
    """GPU-hours of the reference grid on H100 nodes: embedding once per (backbone, dataset), and
    each trainable cell (fine-tuning, LoRA, BitFit): every learning rate for its epochs."""
    from raddist import protocols
    from raddist.plan import make_plan
    from raddist.config import load

    plan = make_plan(load(config or "paper"))
    rows = []
    for job in plan.jobs.values():
        if job.task.name not in REFERENCE_IMAGES:
            continue
        rate, basis = H100_FORWARD.get(job.backbone.name, (1_000, "assumed"))
        effective = min(rate, DECODE_CEILING)
        images = REFERENCE_IMAGES.get(job.task.name, 0)
        rows.append({"backbone": job.backbone.label, "task": job.task.name, "kind": "embedding", "images": images,
                     "img_s": effective, "rate_basis": basis, "gpu_hours": images / effective / 3600})
    for cell in plan.cells:
        record = protocols.get(cell.protocol)
        if not record.trainable or cell.task.name not in REFERENCE_IMAGES:
            continue
        rate, basis = H100_FORWARD.get(cell.backbone.name, (1_000, "assumed"))
        params = record.parse(cell.params)
        images = REFERENCE_IMAGES[cell.task.name]
        forwards = len(params.lrs) * params.epochs * images * (TRAIN_SHARE * TRAIN_STEP_FORWARDS + VAL_SHARE)
        rows.append({"backbone": cell.backbone.label, "task": cell.task.name, "kind": cell.protocol,
                     "images": images, "img_s": min(rate, DECODE_CEILING), "rate_basis": basis,
                     "gpu_hours": forwards / min(rate, DECODE_CEILING) / 3600})
    return pd.DataFrame(rows)
