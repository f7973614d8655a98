"""A cell's inputs: the cached features (or the images) of its task, joined to the manifest's splits.

By what the protocol reads (its ProtocolRecord) and the task's manifest:
  - features, images: one row of features per manifest row (FrozenInputs);
  - features, volumes (cached rows carry a volume_id): the slices' features pooled into one row per
    volume, by the task's `pool` (mean, the reference's; or max), with each volume's slice features
    kept beside them as features['slices'] (attention_mil reads those);
  - patch_tokens: patch-token grids and masks per slice or image (SegInputs);
  - images: the manifest itself, for a protocol that trains the backbone (TrainInputs).
Rows that failed to decode are in neither the features nor the inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import pyarrow as pa

from raddist import storage
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import CachedEmbeddings
from raddist.plan import Cell
from raddist.protocols.base import CaseGeometry, FrozenInputs, SegInputs, SegSplit, SplitData, TrainInputs
from raddist.protocols.selection import labels_of
from raddist.spec import TaskSpec


def train_inputs(cell: Cell, table: pa.Table, checkpoint_dir: str, resources, use_gpu: bool) -> TrainInputs:
    """The images of a cell whose protocol trains the backbone: its manifest, splits and contract."""
    return TrainInputs(
        task_type=cell.task.type,
        class_names=cell.task.class_names,
        label_columns=list(cell.task.labels),
        manifest=table,
        backbone=cell.backbone.name,
        weights=cell.backbone.weights,
        contract=cell.contract,
        checkpoint_dir=storage.join(checkpoint_dir),
        num_workers=resources.train_workers,
        use_gpu=use_gpu,
        cell_cpus=resources.cpus_per_cell,
    )


def frozen_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings):
    """Join cached features to the manifest's splits and labels; rows that failed to decode drop out."""
    if task.type == "segmentation":
        return seg_inputs(task, table, cached)
    if "volume_id" in table.column_names:  # slices (or whole volumes) of volumes: one row per volume
        table, cached = pooled_volumes(task, table, cached, task.pool)
    position = {sid: i for i, sid in enumerate(cached.sample_ids)}
    ids = table["sample_id"].to_pylist()
    keep = np.array([sid in position for sid in ids], dtype=bool)
    rows = np.array([position[sid] for sid, k in zip(ids, keep) if k], dtype=np.int64)
    table = table.filter(pa.array(keep))
    labels = labels_of(table, task.type, task.labels)
    splits_col = np.asarray(table["split"].to_pylist(), dtype=object)
    patients = np.asarray(table["patient_id"].to_pylist(), dtype=object)
    sample_ids = np.asarray(table["sample_id"].to_pylist(), dtype=object)
    splits: Dict[str, SplitData] = {}
    for split in manifest_lib.SPLITS:
        idx = np.flatnonzero(splits_col == split)
        if len(idx) == 0:
            continue
        splits[split] = SplitData(
            features={k: v[rows[idx]] for k, v in cached.features.items()},
            labels=labels[idx],
            sample_ids=sample_ids[idx],
            patient_ids=patients[idx],
        )
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"task '{task.name}': no decodable '{need}' images in {task.manifest}")
    return FrozenInputs(task_type=task.type, class_names=task.class_names, block_dims=cached.block_dims, splits=splits)


def pooled_volumes(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings, how: str = "mean"):
    """(one manifest row per volume, its pooled CachedEmbeddings): the slices' features averaged (or
    maxed) per volume; features['slices'] holds each volume's per-slice [cls | patch_mean] in slice
    order (an object array of (n_slices, F) float16). A volume's label is its rows' common label."""
    if how not in ("mean", "max"):
        raise ValueError(f"task '{task.name}': pool must be 'mean' or 'max', got {how!r}")
    labels = labels_of(table, task.type, task.labels)
    first: Dict[str, int] = {}
    for i, v in enumerate(table["volume_id"].to_pylist()):
        j = first.setdefault(v, i)
        if not np.array_equal(labels[i], labels[j]):
            raise ValueError(f"task '{task.name}': volume '{v}' has slices with different labels")
    vids, slice_index = _slices_of(table, cached)
    present = set(vids.tolist())
    volumes = [v for v in first if v in present]  # manifest order
    code = {v: k for k, v in enumerate(volumes)}
    row_code = np.array([code.get(v, -1) for v in vids])
    order = np.lexsort((slice_index, row_code))
    order = order[row_code[order] >= 0]
    starts = np.searchsorted(row_code[order], np.arange(len(volumes)))
    reduce = np.maximum.reduceat if how == "max" else np.add.reduceat
    counts = np.diff(np.append(starts, len(order)))[:, None]
    pooled = {}
    for name, x in cached.features.items():
        out = reduce(x[order], starts, axis=0) if len(order) else x[:0]
        pooled[name] = (out / counts).astype(x.dtype) if how == "mean" else out
    per_slice = np.concatenate([cached.features[n] for n in ("cls", "patch_mean") if n in cached.features], axis=1)
    slices = np.empty(len(volumes), dtype=object)
    for k, rows in enumerate(np.split(order, starts[1:])):
        slices[k] = per_slice[rows].astype(np.float16)
    pooled["slices"] = slices
    vol_table = table.take(pa.array([first[v] for v in volumes], pa.int64()))
    vol_table = vol_table.set_column(vol_table.column_names.index("sample_id"), "sample_id", pa.array(volumes, pa.string()))
    return vol_table, dataclasses.replace(cached, sample_ids=np.asarray(volumes, dtype=object), features=pooled, rows=None)


def _slices_of(table: pa.Table, cached: CachedEmbeddings):
    """(volume id, slice index) of every cached row: as cached for expanded volumes, else from the
    manifest by sample id (a row the manifest no longer lists gets volume None and drops out)."""
    if cached.rows is not None and "volume_id" in cached.rows.column_names:
        return (np.asarray(cached.rows["volume_id"].to_pylist(), dtype=object),
                np.asarray(cached.rows["slice_index"].to_pylist(), dtype=np.int64))
    index = table["slice_index"].to_pylist() if "slice_index" in table.column_names else [0] * table.num_rows
    where = {sid: (v, z) for sid, v, z in zip(table["sample_id"].to_pylist(), table["volume_id"].to_pylist(), index)}
    pairs = [where.get(sid, (None, -1)) for sid in cached.sample_ids]
    return (np.asarray([v for v, _ in pairs], dtype=object),
            np.asarray([-1 if z is None else z for _, z in pairs], dtype=np.int64))


def seg_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings):
    """Patch-token grids and masks per cached row, split by the manifest; a volume's slice rows
    (sample_id f"{volume_id}:{z}") belong to the manifest row of their volume."""
    from raddist.data.volumes import grid_spacing
    from raddist.embed.cache import tensor_column

    classes = list(task.classes or [])
    if len(classes) < 2:
        raise ValueError(f"task '{task.name}': a segmentation task needs 'classes', the background first")
    rows, meta = cached.rows, cached.meta
    if rows is None or "mask" not in rows.column_names:
        raise ValueError(f"task '{task.name}': the cached embeddings hold no masks; was the job planned for segmentation?")
    volumes, sliced = bool(meta.get("volumes")), "volume_id" in rows.column_names
    vids = np.asarray(rows["volume_id"].to_pylist(), dtype=object) if sliced else None
    keys = vids if volumes else cached.sample_ids
    position = {k: i for i, k in enumerate(table["volume_id" if volumes else "sample_id"].to_pylist())}
    m_idx = np.array([position.get(k, -1) for k in keys], dtype=np.int64)
    split_of = np.asarray(table["split"].to_pylist(), dtype=object)[m_idx]
    split_of[m_idx < 0] = None
    patients = np.asarray(table["patient_id"].to_pylist(), dtype=object)[m_idx]
    case_ids = vids if sliced else cached.sample_ids
    slice_index = np.asarray(rows["slice_index"].to_pylist(), np.int64) if sliced else np.full(len(keys), -1)
    shapes = np.asarray(rows["shape"].to_pylist(), np.int64)
    affines = np.asarray(rows["affine"].to_pylist(), np.float64) if volumes else None
    size = int(meta["contract"]["size"])
    geometry: Dict[str, CaseGeometry] = {}
    for i, case in enumerate(case_ids):
        if case in geometry:
            continue
        if volumes:
            affine = affines[i].reshape(4, 4)
            geometry[case] = CaseGeometry(grid_spacing(shapes[i], size, affine), tuple(shapes[i]), affine)
        elif sliced:  # slices listed in a manifest: pixels in-plane, one slice apart
            depth = int((case_ids == case).sum())
            geometry[case] = CaseGeometry((1.0, *grid_spacing(shapes[i][1:], size)), (depth, *shapes[i][1:]))
        else:
            geometry[case] = CaseGeometry(grid_spacing(shapes[i][1:], size), tuple(shapes[i][1:]))
    tokens = [cached.dense[n] for n in meta["dense_names"]]
    masks = tensor_column(rows, "mask")
    splits = {}
    for split in manifest_lib.SPLITS:
        idx = np.flatnonzero(split_of == split)
        if len(idx):
            splits[split] = SegSplit([t[idx] for t in tokens], masks[idx], cached.sample_ids[idx], patients[idx],
                                     np.asarray(case_ids, dtype=object)[idx], slice_index[idx])
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"task '{task.name}': no decodable '{need}' images in {task.manifest}")
    return SegInputs(task_type="segmentation", class_names=classes, splits=splits, geometry=geometry,
                     volumetric=sliced)
