"""The embedding actor: holds a backbone on its device for its lifetime and embeds the blocks it is given.

Blocks arrive as uint8 squares (decoded by the CPUs, or read from the pixel cache) or, for JPEGs
left to the GPU, as their bytes in `encoded`. Normalisation, channel replication and casting run on
the device (Embedder); device batches are sized and optionally compiled by embed.forward. Every
column of the block other than the pixels passes through: row, slice, error, job, masks, geometry.
A GPU actor that finds no CUDA fails at once (raddist.device).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from raddist.data.contract import PreprocessContract
from raddist.data.decode import failure_reason
from raddist.data.device_decode import decode_jpegs
from raddist.data.transforms import decode

PIXEL_COLUMNS = ("image", "encoded")


class EmbedBatch:
    def __init__(self, backbone: str, weights: str, features: dict, threads: int, size: int,
                 batch: Optional[int] = None, compile: bool = False, gpu: bool = False):
        import torch

        from raddist.backbones.embedder import Embedder
        from raddist.backbones.registry import get_config
        from raddist.backbones.weights import build_model
        from raddist.device import torch_device
        from raddist.embed.forward import BatchedForward

        self.device = torch_device(expect_gpu=gpu)
        if self.device.type == "cpu":
            # Ray pins OMP threads to the actor's (fractional) CPU share; set them as laid out
            torch.set_num_threads(max(1, threads))
        config = get_config(backbone)
        model = build_model(config, weights)
        embedder = Embedder(
            config, model, n_last_blocks=features["n_last_blocks"], patch_mean=features["patch_mean"],
            patch_tokens=features.get("patch_tokens", 0),
        ).to(self.device).eval()
        self.forward = BatchedForward(embedder, self.device, size, batch, compile)
        self.size = size
        self.shapes = None  # every output's shape: a batch whose every row failed still has all columns

    def __call__(self, batch: dict) -> dict:
        import torch

        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        images = batch["image"]
        if "encoded" in batch:
            images, errors = self._decode_deferred(images, batch["encoded"], errors)
        ok = errors == ""
        out = {k: v for k, v in batch.items() if k not in PIXEL_COLUMNS}
        out["error"] = errors
        if ok.any():
            feats = self.forward(images[ok] if isinstance(images, np.ndarray) else images[torch.from_numpy(ok).to(images.device)])
        elif self.shapes is None:  # every row of a first batch failed: a blank image tells the shapes
            feats = {k: v[:0] for k, v in self.forward(np.zeros((1, self.size, self.size), np.uint8)).items()}
        else:
            feats = {}
        self.shapes = self.shapes or {k: v.shape[1:] for k, v in feats.items()}
        for name, shape in self.shapes.items():
            full = np.zeros((len(ok), *shape), dtype=np.float16)
            if ok.any():
                full[ok] = feats[name]
            out[name] = full
        return out

    def _decode_deferred(self, images: np.ndarray, encoded: np.ndarray, errors: np.ndarray):
        """The batch's images as one tensor on the device, the deferred JPEGs decoded into it. A JPEG
        the device cannot decode is decoded by Pillow instead, so that a decoder's gap costs speed,
        never rows; only a file Pillow cannot read either becomes an error."""
        import torch

        todo = np.flatnonzero([len(b) > 0 for b in encoded] & (errors == ""))
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if len(todo):
            decoded, failed = decode_jpegs([encoded[i] for i in todo], self.size, self.device)
            x[torch.from_numpy(todo).to(self.device)] = decoded
            errors = errors.copy()
            for i, device_error in zip(todo, failed):
                if device_error:
                    x[int(i)], errors[i] = self._pillow(encoded[i])
        return x, errors

    def _pillow(self, data: bytes):
        import torch

        try:
            return torch.from_numpy(decode("image.jpg", data, PreprocessContract(size=self.size))).to(self.device), ""
        except Exception as e:  # noqa: BLE001 - as the decode step: one bad image must not end the run
            return torch.zeros((self.size, self.size), dtype=torch.uint8, device=self.device), failure_reason(e)
