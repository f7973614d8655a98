"""What every catalog adapter shares: the dataset record, finding files in a source tree,
patient-level splits, split hashes, and writing a manifest together with its metadata.

Sources and destinations are local paths or URIs (s3://, gs://, ...); everything here goes
through raddist.storage, so no adapter needs its source on a local disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raddist import storage
from raddist.data import manifest
from raddist.data.volumes import CT_HU_CLIP
from raddist.errors import RaddistError

MANIFEST_NAME = "manifest.parquet"
METADATA_KEY = b"raddist"
FORMAT_VERSION = 1

# Preprocessing hints, in PreprocessContract's field names so the pipeline can read them as is.
# Stored 8-bit images (X-ray PNG/JPEG, CT slices as PNG): their own range.
AUTO_WINDOW = {"window": "auto", "clip_percentiles": None}
# CT: the HU clip of raddist.data.volumes, also as the (center, width) window that maps it to [0, 1].
CT_ABDOMEN = {"window": [(CT_HU_CLIP[0] + CT_HU_CLIP[1]) / 2, CT_HU_CLIP[1] - CT_HU_CLIP[0]],
              "hu_clip": list(CT_HU_CLIP), "clip_percentiles": None, "slice_axis": 2}
MRI_P5_P95 = {"window": "auto", "clip_percentiles": [5.0, 95.0]}

Size = Union[int, float]


class CatalogError(RaddistError):
    """A dataset's source does not have the layout its adapter expects, or an option is invalid."""


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    name: str
    title: str
    modality: str  # DICOM code: DX (X-ray), CT, MR
    task_type: str  # multilabel | binary | multiclass | segmentation
    unit: str  # what one manifest row is: image | slice | volume
    labels: Tuple[str, ...]  # the manifest's label columns (none for segmentation)
    classes: Tuple[str, ...]  # class names; for segmentation, mask value i is classes[i]
    source_url: str
    license: str
    reference_split: str
    preprocessing: dict = field(default_factory=dict)
    prepare: Optional[Callable[..., str]] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "prepare"}
        d["labels"], d["classes"] = list(self.labels), list(self.classes)
        return d


# ---- finding files -------------------------------------------------------------------------

def walk(root: str, suffixes: Sequence[str] = ()) -> List[str]:
    """Every file under root (recursively) as a URI, sorted; hidden files such as the macOS '._'
    twins shipped inside some archives (MSD) are skipped."""
    root = storage.normalize(root)
    if not storage.exists(root):
        raise CatalogError(f"source not found: {root}")
    fs, path = storage.filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = root.split("://", 1)[0] + "://" if storage.is_remote(root) else ""
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(
        prefix + i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not posixpath.basename(i.path).startswith(".")
        and (not suffixes or i.path.lower().endswith(suffixes))
    )


def basename(uri: str) -> str:
    return posixpath.basename(uri)


def stem(uri: str) -> str:
    """File name without its extension(s): img0001.nii.gz -> img0001."""
    name = basename(uri)
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def find_file(files: Iterable[str], *names: str) -> str:
    """The file whose name is one of names; the shallowest wins, a tie at that depth is an error."""
    hits = sorted((u.count("/"), u) for u in files if basename(u) in names)
    if not hits:
        raise CatalogError(f"{' or '.join(names)} not found in the source")
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
        raise CatalogError(f"{names[0]} is ambiguous: {hits[0][1]} and {hits[1][1]}")
    return hits[0][1]


def read_csv(uri: str):
    import pandas as pd

    return pd.read_csv(io.BytesIO(storage.read_bytes(uri)))


def parallel_map(fn: Callable, items: Sequence, workers: int = 8) -> list:
    """Threads, because the work is mostly object-store I/O."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(fn, items))


# ---- images and masks written in prepare ---------------------------------------------------

def read_gray(uri: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(uri))) as im:
        return np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im)


def binarize(mask: np.ndarray) -> np.ndarray:
    """Masks come as 0/1 or 0/255; above half the maximum counts as foreground."""
    top = int(mask.max()) if mask.size else 0
    return mask > top // 2 if top > 0 else np.zeros(mask.shape, bool)


def write_png(uri: str, array: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    storage.write_bytes(uri, buf.getvalue())


def write_npy(uri: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    storage.write_bytes(uri, buf.getvalue())


# ---- splits --------------------------------------------------------------------------------

def _count(size: Size, n: int, what: str) -> int:
    """scikit-learn's convention: an int is a count, a float in [0, 1) a fraction."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        raise CatalogError(f"{what} must be a patient count (int) or a fraction in [0, 1); got {size!r}")
    if isinstance(size, float):
        if size >= 1:
            raise CatalogError(f"{what} as a fraction must be below 1; got {size}")
        return max(1, round(size * n)) if size > 0 else 0
    return size


def split_patients(patients: Iterable[str], val_size: Size, test_size: Size, seed: int = 0,
                   strata: Optional[Mapping[str, object]] = None) -> Dict[str, str]:
    """Assign each patient to train, val or test at random (seeded), stratified by `strata`
    (patient -> class) when given. Returns patient -> split."""
    unique = sorted(set(patients))
    n = len(unique)
    n_test, n_val = _count(test_size, n, "test_size"), _count(val_size, n, "val_size")
    if n_test + n_val >= n:
        raise CatalogError(
            f"cannot take {n_test} test and {n_val} val patients out of {n}: pass a smaller "
            "test_size/val_size (a count, or a fraction below 1)"
        )
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for p in unique:
        groups[str((strata or {}).get(p, ""))].append(p)
    keyed = []
    for g in sorted(groups):
        members = [groups[g][i] for i in rng.permutation(len(groups[g]))]
        # Spread each stratum evenly along the order, so every prefix holds each in proportion.
        keyed += [((i + 0.5) / len(members), rng.random(), p) for i, p in enumerate(members)]
    order = [p for _, _, p in sorted(keyed)]
    return {p: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, p in enumerate(order)}


def split_hash(sample_ids: Iterable[str]) -> str:
    """sha256 of the sorted sample ids, one per line: equal hashes mean the same split."""
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()


# ---- volumes -------------------------------------------------------------------------------

def paired_volumes(files: Sequence[str], images_dir: str, labels_dir: str) -> Dict[str, Tuple[str, str]]:
    """case id -> (image, label) for NIfTI files in .../images_dir/ and .../labels_dir/, matched by name."""
    def in_dir(d):
        return {basename(u): u for u in files if u.endswith(".nii.gz") and f"/{d}/" in u}

    images, labels = in_dir(images_dir), in_dir(labels_dir)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise CatalogError(
            f"{len(unlabelled)} image(s) in {images_dir}/ have no label in {labels_dir}/, e.g. {unlabelled[0]}"
        )
    return {stem(name): (images[name], labels[name]) for name in sorted(images)}


def decathlon_classes(json_uri: str, default: Sequence[str]) -> List[str]:
    """Class names from a Decathlon-style dataset.json "labels" map ({"0": "background", ...})."""
    labels = storage.read_json(json_uri).get("labels", {})
    return [name for _, name in sorted((int(k), v) for k, v in labels.items())] or list(default)


def paired_rows(info: "DatasetInfo", pairs: Mapping[str, Tuple[str, str]]) -> List[dict]:
    """One row per id -> (image, mask) pair, each id its own patient. A volume is one row (uri =
    image, mask_uri = label, volume_id = id): slicing happens later, in the pipeline."""
    return [
        dict(sample_id=i, uri=img, patient_id=i, modality=info.modality, mask_uri=mask,
             **({"volume_id": i} if info.unit == "volume" else {}))
        for i, (img, mask) in sorted(pairs.items())
    ]


def write_split_by_patient(info: "DatasetInfo", dest: str, rows: List[dict], *, seed: int, source: str,
                           val_size: Size, test_size: Size = 0, stratify: Optional[str] = None,
                           classes: Optional[Sequence[str]] = None, options: Optional[Mapping] = None) -> str:
    """Split rows at random by patient (stratified by the column `stratify`), then write their manifest.
    Rows that come with a split (an official test set) keep it; only the others are split."""
    todo = [r for r in rows if "split" not in r]
    strata = {r["patient_id"]: r[stratify] for r in todo} if stratify else None
    split_of = split_patients((r["patient_id"] for r in todo), val_size, test_size, seed, strata)
    for row in todo:
        row["split"] = split_of[row["patient_id"]]
    options = {"val_size": val_size, "test_size": test_size, **(options or {})}
    return write_manifest(info, dest, rows, seed=seed, source=source, classes=classes, options=options)


# ---- the manifest --------------------------------------------------------------------------

def _relativize(uri: Optional[str], dest: str) -> Optional[str]:
    """A file under dest is stored relative to it, so a prepared folder can be moved whole."""
    if uri is None:
        return None
    base = dest.rstrip("/") + "/"
    return uri[len(base):] if uri.startswith(base) else uri


# Patient groups a dataset's own metadata gives, as coarse categories (raddist.subgroups): a task
# names them in `subgroups`. Unknown values are left null (the subgroup analysis reads "unknown").
SUBGROUP_COLUMNS = ("sex", "age_band")
AGE_BANDS = ((0, "0-17"), (18, "18-39"), (40, "40-64"), (65, "65+"))  # the synthetic data's bands, and a child's


def sex(value) -> Optional[str]:
    """'F' or 'M' from the spellings datasets use (F, Female, M, Male); None otherwise."""
    text = str(value).strip().lower() if value is not None else ""
    return {"f": "F", "female": "F", "m": "M", "male": "M"}.get(text)


def age_band(value) -> Optional[str]:
    """The band of an age in years; None for a missing or impossible one (NIH lists ages such as 412)."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    if not 0 <= age <= 120:
        return None
    return [band for start, band in AGE_BANDS if age >= start][-1]


def write_manifest(info: DatasetInfo, dest: str, rows: Sequence[dict], *, seed: int, source: str,
                   options: Mapping, classes: Optional[Sequence[str]] = None) -> str:
    """Validate and write dest/manifest.parquet with its metadata under the b"raddist" key."""
    uri = storage.join(storage.normalize(dest), MANIFEST_NAME)
    if not rows:
        raise CatalogError(f"{info.name}: no samples found in {source}")
    types = {"slice_index": pa.int64(), **{c: pa.int64() for c in info.labels}}
    present = set().union(*rows)  # a column some rows lack (e.g. a mask) is null there
    columns = [c for c in (*manifest.REQUIRED, *manifest.OPTIONAL, *SUBGROUP_COLUMNS) if c in present] + list(info.labels)
    dest = storage.normalize(dest)
    table = pa.table({
        c: pa.array([_relativize(r.get(c), dest) if c in ("uri", "mask_uri") else r.get(c) for r in rows],
                    types.get(c, pa.string()))
        for c in columns
    })
    classes = list(classes or info.classes)
    manifest.validate(table, uri, info.labels, info.task_type, num_classes=len(classes))
    ids, splits, patients = (table[c].to_pylist() for c in ("sample_id", "split", "patient_id"))
    members = {s: [i for i, sp in zip(ids, splits) if sp == s] for s in manifest.SPLITS}
    empty = [s for s, m in members.items() if not m]
    if empty:
        raise CatalogError(f"{info.name}: split(s) {empty} came out empty; the source may be incomplete")
    meta = dict(
        format_version=FORMAT_VERSION, dataset=info.name, task_type=info.task_type, modality=info.modality,
        unit=info.unit, label_columns=list(info.labels), class_names=classes,
        preprocessing=dict(info.preprocessing), reference_split=info.reference_split,
        seed=seed, options=dict(options), source=storage.normalize(source),
        split_counts={s: len(m) for s, m in members.items()},
        patient_counts={s: len({p for p, sp in zip(patients, splits) if sp == s}) for s in manifest.SPLITS},
        split_hashes={s: split_hash(m) for s, m in members.items()},
    )
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    storage.write_parquet(uri, table)
    return uri


def read_metadata(manifest_uri: str) -> dict:
    """The b"raddist" metadata of a manifest, without reading its rows."""
    fs, path = storage.filesystem(manifest_uri)
    with fs.open_input_file(path) as f:
        raw = (pq.ParquetFile(f).schema_arrow.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
