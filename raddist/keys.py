"""Every content key of raddist, in one module: nothing else hashes on its own.

A key hashes what a result is computed from, never where it lives nor the cluster it ran on:

- a manifest's content (ManifestDigest): `images`, the columns the features depend on (ids, image and
  mask uris, modality, volume and slice ids), and `results`, every column a cell's result depends on
  (those, and patient ids, splits, labels). Relabelling reruns cells and reuses the embeddings;
- the weights' identity: "random"; a hub repository at its resolved revision; a file by its URI, size
  and modification time (which change whenever its bytes do; checkpoints are gigabytes, not hashed);
- the code versions (EMBEDDER_VERSION here, the decoder's DECODE_VERSION), the preprocessing
  contract, the feature spec and the device kind (a GPU computes in bf16 and decodes JPEGs with nvjpeg).

An embedding job's cache key (JobKeys.features) and a cell's key (cell_key) are built from these. The
raw manifest is hashed (loaded without a salt), so keys survive a new deployment salt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import pyarrow as pa

from raddist import storage
from raddist.data.device_decode import DECODER as DEVICE_DECODER
from raddist.data.transforms import DECODE_VERSION

EMBEDDER_VERSION = 3  # bump when the embedding code changes what it computes for the same inputs
IMAGE_COLUMNS = ("sample_id", "uri", "modality", "volume_id", "slice_index")  # what features depend on
ROW_COLUMNS = ("patient_id", "split")  # with the labels, what a result depends on beyond the features


def digest(obj) -> str:
    """The key of a JSON-able value: 16 hex digits of its canonical JSON's sha256."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def table_digest(table: pa.Table, columns: Iterable[str]) -> str:
    """A one-way hash of the named columns of a table (those it has), in row order."""
    h = hashlib.sha256()
    for col in columns:
        if col not in table.column_names:
            continue
        h.update(f"\x01{col}\x01".encode())
        for v in table[col].to_pylist():
            h.update(b"\x02" if v is None else str(v).encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ManifestDigest:
    images: str  # what the embeddings of its rows depend on: ids, image (and mask) uris, modality, slices
    labels: str  # the label columns
    rows: str  # patients and splits
    results: str  # what a cell's result depends on: all three

    @classmethod
    def of(cls, table: pa.Table, masks: bool, labels: Iterable[str] = ()) -> "ManifestDigest":
        images = table_digest(table, IMAGE_COLUMNS + (("mask_uri",) if masks else ()))
        label_digest, rows = table_digest(table, tuple(labels)), table_digest(table, ROW_COLUMNS)
        return cls(images, label_digest, rows, digest([images, label_digest, rows]))


def is_volume_manifest(table: pa.Table) -> bool:
    """Rows are whole volumes (volume_id without slice_index): they are embedded slice by slice."""
    return "volume_id" in table.column_names and "slice_index" not in table.column_names


# --- weights -------------------------------------------------------------------------------------

_REVISIONS: Dict[str, Optional[str]] = {}  # hub repo -> resolved revision, once per process


def weights_identity(weights: str, hub_repo: Optional[str] = None) -> str:
    """A string that changes whenever the weights do: "random"; "hub:<repo>@<revision>" (the revision
    the local hub cache or the hub resolves, else "unresolved"); for a file, its normalised URI with
    size and modification time. A missing file raises FileNotFoundError."""
    weights = str(weights)
    if weights == "random":
        return "random"
    if weights == "hub":
        if not hub_repo:
            raise ValueError("weights_identity('hub') needs the backbone's hub repository")
        return f"hub:{hub_repo}@{hub_revision(hub_repo) or 'unresolved'}"
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(weights)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"weights file not found: {weights}")
    return f"file:{storage.normalize(weights)}|size={info.size}|mtime_ns={info.mtime_ns}"


def hub_revision(repo: str) -> Optional[str]:
    """The commit the hub's main branch points at: from the local hub cache if it has the repository,
    else asked of the hub (unless HF_HUB_OFFLINE), else None. Asked once per process."""
    if repo not in _REVISIONS:
        _REVISIONS[repo] = _cached_revision(repo) or _remote_revision(repo)
    return _REVISIONS[repo]


def _cached_revision(repo: str) -> Optional[str]:
    from huggingface_hub import constants

    ref = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"), "refs", "main")
    try:
        with open(ref) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _remote_revision(repo: str) -> Optional[str]:
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().model_info(repo, timeout=10).sha
    except Exception:  # noqa: BLE001 - unreachable or unknown: the load will say why
        return None


# --- embedding jobs and cells ---------------------------------------------------------------------

@dataclass(frozen=True)
class JobKeys:
    """What an embedding job computes from, and the cache keys that follow."""

    features: str  # the feature cache's key
    pixels: str  # the pixel cache's key (decoded uint8 squares of this manifest under this contract)
    inputs: str  # what a cell that trains the backbone reads: weights, contract, images, device
    masks: bool
    volumes: bool
    device_jpeg: bool  # JPEGs decoded on the GPU (nvjpeg)


@dataclass(frozen=True)
class JobSource:
    """What an embedding job reads: a backbone with its weights, a manifest, under a contract."""

    backbone: str
    weights_id: str
    contract: dict
    features: dict
    manifest: ManifestDigest
    masks: bool
    volumes: bool


def job_keys(source: JobSource, device: str, device_jpeg: bool) -> JobKeys:
    """The keys of a job read on `device` ("gpu" | "cpu"), its JPEGs decoded there or not."""
    images = digest([source.manifest.images, "masks"]) if source.masks else source.manifest.images
    corrupted = source.contract.get("corruption")  # raddist.robustness: decoded on the CPU, test rows only
    device_jpeg = device_jpeg and not corrupted
    common = {"backbone": source.backbone, "weights": source.weights_id, "contract": source.contract,
              "manifest": images, "decode_version": DECODE_VERSION, "device": device}
    if source.volumes:
        common["slices"] = "axis2"
    if device_jpeg:
        common["decoder"] = DEVICE_DECODER
    if corrupted:  # which rows are the test split
        common["rows"] = source.manifest.rows
    return JobKeys(
        features=digest({**common, "features": source.features, "version": EMBEDDER_VERSION}),
        pixels=digest({"pixels": images, "contract": source.contract, "decode_version": DECODE_VERSION,
                       "masks": source.masks, "slices": source.volumes}),
        inputs=digest({**common, "inputs": "images"}),
        masks=source.masks, volumes=source.volumes, device_jpeg=device_jpeg)


def cell_key(definition: dict, reads: str, results_digest: str) -> str:
    """A cell's id: its definition (task fields, protocol, params, seed, bootstrap), the key of what it
    reads (its job's features, or the images a trainable cell trains on) and the manifest's results
    digest (labels, splits, patients)."""
    return digest({**definition, "reads": reads, "manifest": results_digest})
