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
    """Join cached features to the manifest's splits and labels by manifest row; rows that failed to
    decode drop out. table: the manifest the features were computed from, in its order."""
    check_coverage(task, table, cached)
    if task.type == "segmentation":
        return seg_inputs(task, table, cached)
    if "volume_id" in table.column_names:  # slices (or whole volumes) of volumes: one row per volume
        table, cached = pooled_volumes(task, table, cached, task.pool)
    position = np.full(table.num_rows, -1, np.int64)
    position[cached.rows] = np.arange(len(cached.rows))
    keep = np.flatnonzero(position >= 0)
    table = table.take(pa.array(keep))
    rows = position[keep]
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
    _require_train_and_test(task, splits)
    return FrozenInputs(task_type=task.type, class_names=task.class_names, block_dims=cached.block_dims, splits=splits)


def with_external(inputs: FrozenInputs, task: TaskSpec, tables: Dict[str, pa.Table],
                  cached: Dict[str, CachedEmbeddings]) -> FrozenInputs:
    """The inputs with a further test split `test:external/<name>` per external test set (raddist.external):
    its chosen rows' features, joined by manifest row as the task's own, and PLACEHOLDER labels (zeros):
    the true ones are read only after the protocol returned (external.attach_labels).
    tables, cached: test-set name -> its manifest (salted, in its order) and its job's features."""
    from raddist.external import rows_scored, test_name
    from raddist.protocols.selection import EXTRA_TEST

    splits = dict(inputs.splits)
    for ext in task.external:
        name = test_name(ext)
        table, entry = tables[name], cached[name]
        check_coverage(task, table, entry)
        if "volume_id" in table.column_names:
            table, entry = pooled_volumes(task, _placeholder_labels(task, table), entry, task.pool)
        position = np.full(table.num_rows, -1, np.int64)
        position[entry.rows] = np.arange(len(entry.rows))
        keep = np.flatnonzero((position >= 0) & rows_scored(ext, table["split"].to_pylist()))
        if len(keep) == 0:
            raise ValueError(f"task '{task.name}': external '{ext.name}': no decodable '{ext.split}' images in {ext.manifest}")
        labels = np.zeros(len(keep), np.int64) if task.type == "multiclass" else np.zeros((len(keep), len(task.labels)), np.int64)
        splits[EXTRA_TEST + name] = SplitData(
            features={k: v[position[keep]] for k, v in entry.features.items()},
            labels=labels,
            sample_ids=np.asarray(table["sample_id"].to_pylist(), dtype=object)[keep],
            patient_ids=np.asarray(table["patient_id"].to_pylist(), dtype=object)[keep],
        )
    return dataclasses.replace(inputs, splits=splits)


def load_external(inputs: FrozenInputs, task: TaskSpec, external_keys: Dict[str, str], cache_root: str,
                  salt: str) -> FrozenInputs:
    """with_external over each external manifest (salted like the task's, its label columns dropped
    unread) and its job's cached features (external_keys: test-set name -> cache key)."""
    from raddist.embed.cache import EmbeddingCache
    from raddist.external import source_columns, test_name

    tables, cached = {}, {}
    for ext in task.external:
        table = manifest_lib.load(ext.manifest, salt)
        tables[test_name(ext)] = table.drop_columns([c for c in source_columns(task, ext) if c in table.column_names])
        cached[test_name(ext)] = EmbeddingCache(cache_root).load(external_keys[test_name(ext)])
    return with_external(inputs, task, tables, cached)


def _placeholder_labels(task: TaskSpec, table: pa.Table) -> pa.Table:
    """The table with every label column of the task set to 0, so pooling volumes reads no external label."""
    for column in task.labels:
        zeros = pa.array(np.zeros(table.num_rows, np.int64))
        table = (table.set_column(table.column_names.index(column), column, zeros) if column in table.column_names
                 else table.append_column(column, zeros))
    return table


def check_coverage(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings) -> None:
    """Every manifest row is in the features or in the errors, and nothing else is: a cache entry that
    does not cover its manifest would score a different test set without a word."""
    seen = np.zeros(table.num_rows + 1, bool)
    rows = np.concatenate([cached.rows, np.asarray(cached.errors["row"].to_pylist(), np.int64)])
    if len(rows) and (rows.min() < 0 or rows.max() >= table.num_rows):
        raise ValueError(f"task '{task.name}': embeddings {cached.key} name manifest rows beyond its "
                         f"{table.num_rows}: they were not computed from this manifest")
    seen[rows] = True
    missing = np.flatnonzero(~seen[:-1])
    if len(missing):
        raise ValueError(f"task '{task.name}': embeddings {cached.key} cover {table.num_rows - len(missing)} of "
                         f"{table.num_rows} manifest rows (first missing: row {int(missing[0])}); the cache entry is "
                         "incomplete: delete it and rerun")


def _require_train_and_test(task: TaskSpec, splits: dict) -> None:
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"task '{task.name}': no decodable '{need}' images in {task.manifest}")


def slice_positions(table: pa.Table, cached: CachedEmbeddings):
    """(volume id, slice index) of every cached row: a volume's slices expanded by the pipeline carry
    their index; slices listed in the manifest take theirs from it."""
    vids = np.asarray(table["volume_id"].to_pylist(), dtype=object)[cached.rows]
    listed = (np.asarray(table["slice_index"].to_pylist(), np.int64)[cached.rows]
              if "slice_index" in table.column_names else np.zeros(len(cached.rows), np.int64))
    return vids, np.where(cached.slices >= 0, cached.slices, listed)


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
    vids, slice_index = slice_positions(table, cached)
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
    n = len(volumes)
    return vol_table, dataclasses.replace(cached, rows=np.arange(n), slices=np.full(n, -1), features=pooled, extras=None)


def seg_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings):
    """Patch-token grids and masks per cached row, split by the manifest. A case is a 2D image, or a
    volume: the slices the pipeline expanded from one manifest row, or the manifest's rows that share
    a volume_id (slices listed one per row). Each case also gets its source grid: where its original
    label map is (the manifest's mask_uri, read only when the case is scored) and that grid's
    spacing (a NIfTI volume's voxel sizes from its affine; 1.0 per pixel otherwise)."""
    from raddist.data.volumes import grid_spacing, voxel_sizes
    from raddist.embed.cache import tensor_column

    classes = list(task.classes or [])
    if len(classes) < 2:
        raise ValueError(f"task '{task.name}': a segmentation task needs 'classes', the background first")
    extras, meta = cached.extras, cached.meta
    if extras is None or "mask" not in extras.column_names:
        raise ValueError(f"task '{task.name}': the cached embeddings hold no masks; was the job planned for segmentation?")
    if "mask_uri" not in table.column_names:
        raise ValueError(f"task '{task.name}': the manifest has no mask_uri column to score segmentation against")
    volumes, sliced = bool(meta.get("volumes")), "volume_id" in table.column_names
    column = lambda name: np.asarray(table[name].to_pylist(), dtype=object)[cached.rows]  # noqa: E731
    split_of, patients, mask_uris = column("split"), column("patient_id"), column("mask_uri")
    if sliced:
        case_ids, slice_index = slice_positions(table, cached)
        sample_ids = np.array([f"{v}:{z}" for v, z in zip(case_ids, slice_index)], dtype=object)
    else:
        case_ids = sample_ids = column("sample_id")
        slice_index = np.full(len(cached.rows), -1)
    shapes = np.asarray(extras["shape"].to_pylist(), np.int64)
    affines = np.asarray(extras["affine"].to_pylist(), np.float64) if volumes else None
    size = int(meta["contract"]["size"])
    listed: Dict[str, list] = {}  # slices listed in a manifest: case -> [(slice index, mask uri)]
    if sliced and not volumes:
        for case, z, uri in zip(case_ids, slice_index, mask_uris):
            listed.setdefault(case, []).append((int(z), str(uri)))
    geometry: Dict[str, CaseGeometry] = {}
    source_masks: Dict[str, object] = {}
    for i, case in enumerate(case_ids):
        if case in geometry:
            continue
        if volumes:
            affine = affines[i].reshape(4, 4)
            geometry[case] = CaseGeometry(grid_spacing(shapes[i], size, affine), tuple(shapes[i]), affine,
                                          tuple(float(v) for v in voxel_sizes(affine)[::-1]))
            source_masks[case] = str(mask_uris[i])
        elif sliced:  # slices listed in a manifest: pixels in-plane, one slice apart
            pairs = sorted(listed[case], key=lambda p: p[0])
            geometry[case] = CaseGeometry((1.0, *grid_spacing(shapes[i][1:], size)), (len(pairs), *shapes[i][1:]),
                                          source_spacing=(1.0, 1.0, 1.0))
            source_masks[case] = [uri for _, uri in pairs]
        else:
            geometry[case] = CaseGeometry(grid_spacing(shapes[i][1:], size), tuple(shapes[i][1:]),
                                          source_spacing=(1.0, 1.0))
            source_masks[case] = str(mask_uris[i])
    tokens = [cached.dense[n] for n in meta["dense_names"]]
    masks = tensor_column(extras, "mask")
    splits = {}
    for split in manifest_lib.SPLITS:
        idx = np.flatnonzero(split_of == split)
        if len(idx):
            splits[split] = SegSplit([t[idx] for t in tokens], masks[idx], sample_ids[idx], patients[idx],
                                     np.asarray(case_ids, dtype=object)[idx], slice_index[idx])
    _require_train_and_test(task, splits)
    return SegInputs(task_type="segmentation", class_names=classes, splits=splits, geometry=geometry,
                     volumetric=sliced, source_masks=source_masks)
