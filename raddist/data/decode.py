"""The decode step of the embedding pipeline: manifest rows -> uint8 squares at the model's size.

A row that fails to read or decode is carried on as an error string, never raised: one bad image
must not end the run. Volumes become one row per slice here; segmentation rows bring their masks.
"""

from __future__ import annotations

import math

import numpy as np

from raddist import storage
from raddist.data.device_decode import defer_to_device
from raddist.data.transforms import decode
from raddist.data.volumes import decode_volume, read_mask, resize_labels
from raddist.errors import InputError


class DecodeBatch:
    """Read and decode a batch of rows; a failing row becomes an error string, not an exception.

    masks:   also read each row's mask_uri (class indices) at the model's size, nearest (segmentation).
    volumes: each row is a NIfTI volume: it becomes one row per slice (volumes.decode_volume), with
             sample_id f"{volume_id}:{z}", slice_index z, and the source's shape and affine.
    Rows of a manifest with volume_id (slices of volumes) carry volume_id and slice_index along.
    device_jpeg: a JPEG that device_decode can take is passed on undecoded, its bytes in `encoded`
             (b"" for every other row), for the actor to decode on its GPU.
    """

    def __init__(self, contract: dict, masks: bool = False, volumes: bool = False, device_jpeg: bool = False):
        from raddist.data.contract import PreprocessContract

        self.contract = PreprocessContract.from_dict(contract)
        self.masks, self.volumes = masks, volumes
        self.device_jpeg = device_jpeg and not (masks or volumes)

    def __call__(self, batch: dict) -> dict:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["uri"]))]
        parts = [self._row(row) for row in rows] or [self._empty(batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _row(self, row: dict) -> dict:
        try:
            if self.volumes:
                return self._volume(row)
            data = storage.read_bytes(row["uri"])
            if self.device_jpeg and defer_to_device(str(row["uri"]), data, self.contract):
                return self._rows(row, [str(row["sample_id"])], {"encoded": np.array([data], dtype=object)}, "")
            decoded = {"image": decode(row["uri"], data, self.contract)[None]}
            if self.masks:
                mask = read_mask(_mask_uri(row), storage.read_bytes(_mask_uri(row)))
                decoded["mask"] = resize_labels(mask, (self.contract.size,) * 2)[None]
                decoded["shape"] = np.array([[1, *mask.shape]], np.int64)
            return self._rows(row, [str(row["sample_id"])], decoded, "")
        except Exception as e:  # noqa: BLE001 - one bad image must not end the run
            return self._failed(row, e)

    def _volume(self, row: dict) -> dict:
        mask_uri = _mask_uri(row) if self.masks else None
        vol = decode_volume(row["uri"], storage.read_bytes(row["uri"]), self.contract, _text(row.get("modality")),
                            mask_uri, storage.read_bytes(mask_uri) if mask_uri else None)
        depth = len(vol["image"])
        decoded = {"image": vol["image"], "shape": np.tile(np.asarray(vol["shape"], np.int64), (depth, 1)),
                   "affine": np.tile(np.asarray(vol["affine"], np.float64).reshape(1, 16), (depth, 1)),
                   "slice_index": np.arange(depth, dtype=np.int64)}
        if self.masks:
            decoded["mask"] = vol["mask"]
        volume_id = _text(row["volume_id"])
        return self._rows(row, [f"{volume_id}:{z}" for z in range(depth)], decoded, "")

    def _rows(self, row: dict, sample_ids, decoded: dict, error: str) -> dict:
        n, size = len(sample_ids), self.contract.size
        out = {"sample_id": np.array(sample_ids, dtype=object), "uri": np.array([str(row["uri"])] * n, dtype=object),
               "image": decoded.get("image", np.zeros((n, size, size), np.uint8)),
               "error": np.array([error] * n, dtype=object)}
        if self.masks:
            out["mask"] = decoded.get("mask", np.zeros((n, size, size), np.uint8))
        if self.device_jpeg:
            out["encoded"] = decoded.get("encoded", np.array([b""] * n, dtype=object))
        if "volume_id" in row:
            out["volume_id"] = np.array([_text(row["volume_id"])] * n, dtype=object)
            default = int(row["slice_index"]) if "slice_index" in row and not _missing(row["slice_index"]) else -1
            out["slice_index"] = decoded.get("slice_index", np.full(n, default, np.int64))
        if self.masks or self.volumes:
            out["shape"] = decoded.get("shape", np.zeros((n, 3), np.int64))
        if self.volumes:
            out["affine"] = decoded.get("affine", np.zeros((n, 16), np.float64))
        return out

    def _failed(self, row: dict, e: Exception) -> dict:
        return self._rows(row, [str(row["sample_id"])], {}, failure_reason(e))

    def _empty(self, batch: dict) -> dict:
        row = {k: None for k in batch}
        row["uri"] = ""
        return {k: v[:0] for k, v in self._rows(row, [""], {}, "").items()}


def failure_reason(e: Exception) -> str:
    """What a row's error column says about why it could not be decoded."""
    if isinstance(e, InputError):
        return e.reason
    if isinstance(e, FileNotFoundError):
        return "object not found"
    return f"{type(e).__name__}: {e}"[:300]


def _mask_uri(row: dict) -> str:
    uri = row.get("mask_uri")
    if _missing(uri) or not str(uri):
        raise InputError(str(row["uri"]), "segmentation row has no mask_uri")
    return str(uri)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)
