"""`raddist check CONFIG`: the dry run before paying for a cluster. No Ray, no data.

For every backbone of the plan it builds the model (its configured weights, or with
``weights="random"`` the real architecture at random init), one backbone at a time, and pushes one
synthetic image at every image size the plan uses through the sweep's own embedding code
(Embedder + embed.forward.BatchedForward, with the features the jobs cache). For the trainable
protocols it builds the classifier as the protocol does (its own model_spec and build_classifier)
and takes one training step (the training loop's accumulate_gradients, then the protocol's optimiser).

One row per (backbone, image size): ok or the error in one line, the patch size and grid, every
feature's shape, the seconds it took, the device it ran on, and a note where the backbone runs off
the size its weights were trained at. Then one row per distinct trainable cell: the memory estimate
(protocols.trainable.memory, from the architecture on the meta device) and the placement it chooses
(micro-batch, accumulation steps, activation checkpointing, DDP or FSDP, node type); a cell that no
node type holds fails the check, before a cluster is paid for. Device "meta" (the default for random weights: ViT-g at
random init takes minutes and gigabytes on a CPU) runs the same code on shapes only, without
memory or arithmetic; "cpu" or "cuda" runs it for real.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from raddist.plan import Plan
from raddist.spec import BackboneSpec

BATCH = 2  # images per forward and per training step


@dataclass
class Probe:
    """What the plan asks of one backbone at one image size: the union of its jobs' features, and
    the trainable cells' protocols (name -> (cell params, task type, number of classes))."""

    backbone: BackboneSpec
    size: int
    n_last_blocks: int = 1
    patch_mean: bool = False
    patch_tokens: int = 0
    trainable: Dict[str, tuple] = field(default_factory=dict)


@dataclass
class TrainingRow:
    """One trainable cell's memory estimate and where it runs (error: why no node type holds it)."""

    backbone: str
    protocol: str
    params: dict
    image_size: int
    micro_batch: int
    accumulation_steps: int
    checkpointing: bool
    strategy: str
    workers: int
    node: Optional[str]
    node_gib: Optional[float]
    estimate_gib: float  # peak per card: states, reserved, one micro-batch of activations
    ok: bool
    estimate: str  # memory.Estimate.describe(), or the error in one line


@dataclass
class Row:
    backbone: str
    image_size: int
    ok: bool
    error: str
    patch_size: Optional[int]
    patch_grid: Optional[List[int]]
    features: Dict[str, List[int]]
    seconds: float
    device: str
    weights: str
    trained: List[str] = field(default_factory=list)  # trainable protocols that took their step
    note: str = ""


def probes(plan: Plan) -> List[Probe]:
    """Every (backbone, image size) the plan uses, in the plan's backbone order, sizes ascending."""
    from raddist.protocols import get as protocol

    found: Dict[tuple, Probe] = {}
    for job in plan.jobs.values():
        p = found.setdefault((job.backbone.label, job.contract["size"]), Probe(job.backbone, job.contract["size"]))
        p.n_last_blocks = max(p.n_last_blocks, job.features["n_last_blocks"])
        p.patch_mean = p.patch_mean or job.features["patch_mean"]
        p.patch_tokens = max(p.patch_tokens, job.features.get("patch_tokens", 0))
    for cell in plan.cells:
        if protocol(cell.protocol).needs_embeddings:  # trainable: it reads images
            continue
        p = found.setdefault((cell.backbone.label, cell.contract["size"]), Probe(cell.backbone, cell.contract["size"]))
        p.trainable.setdefault(cell.protocol, (cell.params, cell.task.type, len(cell.task.classes or cell.task.labels)))
    order = {b.label: i for i, b in enumerate(plan.spec.backbones)}
    return sorted(found.values(), key=lambda p: (order[p.backbone.label], p.size))


def check(plan: Plan, weights: Optional[str] = None, device: Optional[str] = None, say=None) -> List[Row]:
    """One row per probe. weights: None for each backbone's configured weights, or e.g. "random".
    device: None = "meta" for random weights, else cuda when there is one, else cpu."""
    rows: List[Row] = []
    by_backbone: Dict[str, List[Probe]] = {}
    for p in probes(plan):
        by_backbone.setdefault(p.backbone.label, []).append(p)
    for group in by_backbone.values():  # one backbone in memory at a time, built once for all its sizes
        w = weights or group[0].backbone.weights
        dev = device or default_device(w)
        built = _build(group[0].backbone.name, w, dev)
        for i, p in enumerate(group):
            rows.append(_check_one(p, built, w, dev, first=i == 0))
            if say:
                say(format_row(rows[-1]))
        del built
        gc.collect()
    return rows


def _build(name: str, weights: str, device: str) -> dict:
    """{'model', 'error', 'seconds'}: the backbone as the actors build it (build_model), on ``device``."""
    import torch

    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    start = time.perf_counter()
    try:
        with torch.device(device) if device == "meta" else contextlib.nullcontext():
            model = build_model(get_config(name), weights)
        return {"model": model.to(device), "error": "", "seconds": time.perf_counter() - start}
    except Exception as e:  # noqa: BLE001 - every row of this backbone fails with it
        return {"model": None, "error": one_line(e), "seconds": time.perf_counter() - start}


class Refused(Exception):
    """A row that cannot run, its reason already one line (the build's error, or a size the patch refuses)."""


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def default_device(weights: str) -> str:
    import torch

    if weights == "random":
        return "meta"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_one(p: Probe, built: dict, weights: str, device: str, first: bool) -> Row:
    """The row of one (backbone, image size); the first row of a backbone counts its build's seconds."""
    from raddist.backbones.registry import get_config, size_error, size_note

    config = get_config(p.backbone.name)
    row = Row(p.backbone.label, p.size, False, "", config.patch_size,
              [p.size // config.patch_size] * 2 if config.patch_size else None, {}, 0.0, device, weights,
              note=size_note(config, p.size))
    start = time.perf_counter()
    try:
        error = built["error"] or size_error(config, p.size)
        if error:
            raise Refused(error)
        row.features = _embed(config, p, built["model"], device)
        for name, (params, task_type, classes) in sorted(p.trainable.items()):
            _train_step(name, params, p.backbone, weights, task_type, classes, p.size, device)
            row.trained.append(name)
        row.ok = True
    except Exception as e:  # noqa: BLE001 - any failure is this row's, in one line
        row.error = str(e) if isinstance(e, Refused) else one_line(e)
    row.seconds = round(time.perf_counter() - start + (built["seconds"] if first else 0.0), 2)
    if row.ok and config.patch_size and "patch_tokens" in row.features:
        row.patch_grid = list(row.features["patch_tokens"][-2:])  # what the model made, not the arithmetic
    return row


def _embed(config, p: Probe, model, device: str) -> Dict[str, List[int]]:
    """The features of one synthetic image batch through the actors' own code (Embedder, BatchedForward)."""
    import numpy as np
    import torch

    from raddist.backbones.embedder import Embedder
    from raddist.embed.forward import BatchedForward

    embedder = Embedder(config, model, n_last_blocks=p.n_last_blocks, patch_mean=p.patch_mean,
                        patch_tokens=p.patch_tokens).to(device).eval()
    images = np.random.default_rng(0).integers(0, 256, (BATCH, p.size, p.size), dtype=np.uint8)
    if device == "meta":  # BatchedForward casts to numpy, which meta tensors cannot: the Embedder alone
        out = embedder(torch.from_numpy(images).to("meta"))
        shapes = {k: list(v.shape) for k, v in out.items()}
    else:
        out = BatchedForward(embedder, device, p.size, batch=BATCH)(images)
        bad = [k for k, v in out.items() if not np.isfinite(v).all()]
        if bad:
            raise FloatingPointError(f"non-finite features: {bad}")
        shapes = {k: list(v.shape) for k, v in out.items()}
    del embedder
    return shapes


def _train_step(protocol_name: str, params: dict, backbone: BackboneSpec, weights: str, task_type: str,
                classes: int, size: int, device: str) -> None:
    """The classifier the trainable protocol builds, and one optimiser step on BATCH synthetic images."""
    import torch

    from raddist.protocols import get as protocol
    from raddist.protocols.base import TrainInputs
    from raddist.protocols.trainable.model import build_classifier, classifier_of, optimizer as make_optimizer
    from raddist.protocols.trainable.protocol import model_spec
    from raddist.protocols.trainable.step import accumulate_gradients

    parsed = protocol(protocol_name).parse(params)
    names = [f"c{i}" for i in range(classes)]
    inputs = TrainInputs(task_type, names, names, None, backbone.name, weights, {"size": size}, "")
    with torch.random.fork_rng(devices=[]), (torch.device(device) if device == "meta" else contextlib.nullcontext()):
        torch.manual_seed(0)
        spec = model_spec(parsed, inputs)
        model = build_classifier(spec)
    model = model.to(device)
    # the protocol's own optimiser (AdamW, or SGD with a grid's heads each at its rate)
    optimizer = make_optimizer(model, parsed.optimizer, 1e-5, parsed.weight_decay, spec.heads)
    images = torch.randint(0, 256, (BATCH, size, size), dtype=torch.uint8, device=device)
    labels = (torch.zeros(BATCH, dtype=torch.long, device=device) if task_type == "multiclass"
              else torch.ones(BATCH, 1 if task_type == "binary" else classes, device=device))
    model.train()
    loss = accumulate_gradients(model, classifier_of(model), images, labels, BATCH, task_type,
                                augment=device != "meta",  # random crops read sizes from tensors
                                batch_sum=parsed.multilabel_loss == "batch_sum")
    if device != "meta" and not torch.isfinite(loss):
        raise FloatingPointError(f"{protocol_name}: the training step's loss is {float(loss)}")
    optimizer.step()
    del model, optimizer


def format_row(r: Row) -> str:
    grid = "x".join(map(str, r.patch_grid)) if r.patch_grid else "-"
    feats = " ".join(f"{k}{tuple(v[1:])}" for k, v in r.features.items())
    trained = f"  trained: {','.join(r.trained)}" if r.trained else ""
    status = "ok" if r.ok else f"FAILED  {r.error}"
    note = f"  note: {r.note}" if r.note else ""
    return (f"{r.backbone:<20} {r.image_size:>5} {r.device:<5} grid {grid:<6} {r.seconds:>7.2f}s  "
            f"{status}  {feats if r.ok else ''}{trained}{note}")



def training(plan: Plan, say=None) -> List[TrainingRow]:
    """One row per distinct (backbone, trainable protocol, params, image size) of the plan, in plan order:
    memory.estimate over the node types its workers may land on (the large-GPU types only, for a large
    backbone when resources.large_gpu_resource is set, as its workers then ask for that resource)."""
    import json

    from raddist.protocols import get as protocol

    rows: Dict[tuple, TrainingRow] = {}
    for cell in plan.cells:
        key = (cell.backbone.label, cell.protocol, json.dumps(cell.params, sort_keys=True), cell.contract["size"])
        if protocol(cell.protocol).trainable and key not in rows:
            rows[key] = _estimate(cell, plan.spec.resources)
            if say:
                say(format_training(rows[key]))
    return list(rows.values())


def _estimate(cell, resources) -> TrainingRow:
    from raddist.backbones.registry import get_config
    from raddist.protocols import get as protocol
    from raddist.protocols.trainable import memory

    size, workers = cell.contract["size"], resources.train_workers
    row = TrainingRow(cell.backbone.label, cell.protocol, cell.params, size, 0, 0, False, "", workers,
                      None, None, 0.0, False, "")
    nodes = memory.NODE_TYPES
    if resources.large_gpu_resource and cell.backbone.name in resources.large_backbones:
        nodes = [n for n in memory.NODE_TYPES if n.large]
    try:
        est = memory.estimate(get_config(cell.backbone.name), protocol(cell.protocol).parse(cell.params), size,
                              workers=workers, node_types=nodes)
    except Exception as e:  # noqa: BLE001 - this cell's row fails in one line
        row.estimate = one_line(e)
        return row
    row.micro_batch, row.accumulation_steps = est.micro_batch, est.accumulation
    row.checkpointing, row.strategy = est.grad_checkpointing, est.strategy
    row.estimate_gib, row.estimate = round(est.peak_bytes / memory.GIB, 2), est.describe()
    if est.node is not None:
        row.node, row.node_gib = est.node.name, est.node.gpu_memory_gib
        row.ok = est.peak_bytes <= est.node.gpu_memory_gib * memory.GIB
    return row


def format_training(t: TrainingRow) -> str:
    return f"train  {'ok' if t.ok else 'FAILED'}  {t.estimate}"


def as_json(rows: List[Row], trainings: Optional[List[TrainingRow]] = None) -> dict:
    return {"rows": [asdict(r) for r in rows], "training": [asdict(t) for t in trainings or []]}


def report(plan: Plan, weights: Optional[str] = None, device: Optional[str] = None, json_out: bool = False,
           say=print) -> int:
    """`raddist check`: the rows, the trainable cells' estimates, a summary line (or one JSON object);
    0 when every row ran and every trainable cell fits a node type, else 1."""
    import json

    rows = check(plan, weights=weights, device=device, say=None if json_out else say)
    trainings = training(plan, say=None if json_out else say)
    if json_out:
        say(json.dumps(as_json(rows, trainings)))
    else:
        failed = [f"{r.backbone}@{r.image_size}" for r in rows if not r.ok]
        unfit = [f"{t.backbone} {t.protocol}@{t.image_size}" for t in trainings if not t.ok]
        say(f"{len(rows) - len(failed)}/{len(rows)} (backbone, image size) ok"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; {len(trainings) - len(unfit)}/{len(trainings)} trainable cells placed" if trainings else "")
            + (f"; not placed: {', '.join(unfit)}" if unfit else ""))
    return 0 if all(r.ok for r in rows) and all(t.ok for t in trainings) else 1
