"""Manifest rows -> uint8 squares at the model's size: the decode step of embedding and training.

A row that fails to decode is carried on as an error string, never raised: one bad image must not
end the run. Storage that fails (StorageError: no connection, access denied, a missing bucket) is
raised, so that the job fails instead of recording every row as bad. Volumes become one row per
slice here; segmentation rows bring their masks. Rows are manifest positions (`row`), never ids.
"""

from __future__ import annotations

import math

import numpy as np

from raddist import storage
from raddist.data.device_decode import defer_to_device
from raddist.data.transforms import decode
from raddist.data.volumes import decode_volume, read_mask, resize_labels
from raddist.errors import InputError, StorageError


class DecodeBatch:
    """Read and decode a batch of rows (row, uri, and as needed mask_uri, modality).

    Output, one entry per image or slice: row, slice (-1 for an image, z for a volume's slice), image
    (uint8 (S, S)), error ("" when it decoded), and as asked:
    masks:   mask, the row's mask_uri (class indices) at the model's size, nearest; shape, the source's
             (D, H, W) (segmentation);
    volumes: each row is a NIfTI volume: it becomes one row per slice (volumes.decode_volume), with
             the source's shape and affine;
    device_jpeg: a JPEG that device_decode can take is passed on undecoded, its bytes in `encoded`
             (b"" for every other row), for the actor to decode on its GPU.
    """

    def __init__(self, contract: dict, masks: bool = False, volumes: bool = False, device_jpeg: bool = False):
        from raddist.data.contract import PreprocessContract

        self.contract = PreprocessContract.from_dict(contract)
        self.masks, self.volumes = masks, volumes
        # a corrupted test split (raddist.robustness): each image corrupted after windowing, on the CPU
        self.corruption = contract.get("corruption")
        self.device_jpeg = device_jpeg and not (masks or volumes or self.corruption)

    def __call__(self, batch: dict) -> dict:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["uri"]))]
        parts = [self._row(row) for row in rows] or [self._empty()]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _row(self, row: dict) -> dict:
        try:
            if self.volumes:
                return self._volume(row)
            data = storage.read_bytes(row["uri"])
            if self.device_jpeg and defer_to_device(str(row["uri"]), data, self.contract):
                return self._rows(row, 1, {"encoded": np.array([data], dtype=object)}, "")
            decoded = {"image": decode(row["uri"], data, self.contract, self._corrupt(row))[None]}
            if self.masks:
                mask = read_mask(_mask_uri(row), storage.read_bytes(_mask_uri(row)))
                decoded["mask"] = resize_labels(mask, (self.contract.size,) * 2)[None]
                decoded["shape"] = np.array([[1, *mask.shape]], np.int64)
            return self._rows(row, 1, decoded, "")
        except StorageError:
            raise  # the store, not this image: fail the job, record nothing
        except Exception as e:  # noqa: BLE001 - one bad image must not end the run
            return self._rows(row, 1, {}, failure_reason(e, str(row["uri"])))

    def _corrupt(self, row: dict):
        """The row's corruption (a function of its [0, 1] image), deterministic per sample id and seed."""
        if not self.corruption:
            return None
        from raddist.robustness import corrupt

        c, sample_id = self.corruption, _text(row.get("sample_id"))
        if not sample_id:
            raise InputError(str(row["uri"]), "a corrupted row needs its sample_id (the corruption's seed)")
        return lambda unit: corrupt(unit, c["name"], int(c["severity"]), int(c["seed"]), sample_id)

    def _volume(self, row: dict) -> dict:
        if self.corruption:
            raise InputError(str(row["uri"]), "corruptions of volumes are not supported (2D images only)")
        mask_uri = _mask_uri(row) if self.masks else None
        vol = decode_volume(row["uri"], storage.read_bytes(row["uri"]), self.contract, _text(row.get("modality")),
                            mask_uri, storage.read_bytes(mask_uri) if mask_uri else None)
        depth = len(vol["image"])
        decoded = {"image": vol["image"], "shape": np.tile(np.asarray(vol["shape"], np.int64), (depth, 1)),
                   "affine": np.tile(np.asarray(vol["affine"], np.float64).reshape(1, 16), (depth, 1)),
                   "slice": np.arange(depth, dtype=np.int64)}
        if self.masks:
            decoded["mask"] = vol["mask"]
        return self._rows(row, depth, decoded, "")

    def _rows(self, row: dict, n: int, decoded: dict, error: str) -> dict:
        size = self.contract.size
        out = {"row": np.full(n, int(row["row"]), np.int64), "slice": decoded.get("slice", np.full(n, -1, np.int64)),
               "image": decoded.get("image", np.zeros((n, size, size), np.uint8)),
               "error": np.array([error] * n, dtype=object)}
        if self.masks:
            out["mask"] = decoded.get("mask", np.zeros((n, size, size), np.uint8))
        if self.device_jpeg:
            out["encoded"] = decoded.get("encoded", np.array([b""] * n, dtype=object))
        if self.masks or self.volumes:
            out["shape"] = decoded.get("shape", np.zeros((n, 3), np.int64))
        if self.volumes:
            out["affine"] = decoded.get("affine", np.zeros((n, 16), np.float64))
        return out

    def _empty(self) -> dict:
        return {k: v[:0] for k, v in self._rows({"row": -1, "uri": ""}, 1, {}, "").items()}


def failure_reason(e: Exception, uri: str = "") -> str:
    """Why a row could not be decoded, without its uri (file names may carry patient ids)."""
    if isinstance(e, InputError):
        reason = e.reason
    elif isinstance(e, FileNotFoundError):
        return "object not found"
    else:
        reason = f"{type(e).__name__}: {e}"
    for name, mark in _uri_forms(uri):
        reason = reason.replace(name, mark)
    return reason[:300]


def _uri_forms(uri: str) -> list[tuple[str, str]]:
    """The uri as an error message may spell it, longest first: whole, without its scheme (as pyarrow
    and the OS name it), its folder (a path prefix may carry a patient id), and last its bare file name."""
    path = uri.split("://", 1)[-1]
    files = {uri, path, path.lstrip("/")}
    folders = {f.rsplit("/", 1)[0] for f in files if "/" in f.strip("/")}
    forms = [(f, "<file>") for f in files] + [(d, "<dir>") for d in folders]
    forms = sorted((form for form in forms if form[0]), key=lambda form: -len(form[0]))
    name = uri.rsplit("/", 1)[-1]
    return forms + ([(name, "<file>")] if name else [])


def _mask_uri(row: dict) -> str:
    uri = row.get("mask_uri")
    if _missing(uri) or not str(uri):
        raise InputError(str(row["uri"]), "segmentation row has no mask_uri")
    return str(uri)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)
