"""The embedding actor's forward pass: device batches of one size, sized to the card, optionally compiled.

Ray Data hands the actor batches of rows; the card wants batches as large as keep it busy and fit
its memory. `BatchedForward` cuts whatever it is given into device batches of `batch` images:
  - batch: the spec's resources.embed_batch_size, else on a GPU the largest power of two (up to
    MAX_GPU_BATCH) whose activations take at most half the free memory, measured by one probe
    forward (`sized_batch`); on a CPU, CPU_BATCH.
  - compile: torch.compile the embedder. Every batch is then padded to `batch` rows so that one
    graph serves the whole job (the pad rows' outputs are dropped). If compiling fails, the
    actor logs why and runs eagerly: the features are the same either way.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)

CPU_BATCH = 64
MAX_GPU_BATCH = 512  # beyond this a ViT's throughput no longer grows; it only holds memory
PROBE_BATCH = 16
MEMORY_BUDGET = 0.5  # of the card's free memory, for one batch's activations


def sized_batch(embedder, size: int, device) -> int:
    """Largest power of two <= MAX_GPU_BATCH whose forward peaks within MEMORY_BUDGET of free memory."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    embedder(torch.zeros(PROBE_BATCH, size, size, dtype=torch.uint8, device=device))
    torch.cuda.synchronize(device)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // PROBE_BATCH)
    free, _ = torch.cuda.mem_get_info(device)
    return power_of_two_at_most(min(MAX_GPU_BATCH, int(MEMORY_BUDGET * free // per_image)))


def power_of_two_at_most(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


class BatchedForward:
    def __init__(self, embedder, device: str, size: int, batch: Optional[int] = None, compile: bool = False,
                 backend: str = "inductor"):
        import torch

        self.embedder, self.device, self.size = embedder, device, size
        if batch is None:
            batch = sized_batch(embedder, size, device) if device == "cuda" else CPU_BATCH
        self.batch = int(batch)
        self.compiled = torch.compile(embedder, dynamic=False, backend=backend) if compile else None

    def __call__(self, images) -> Dict[str, np.ndarray]:
        """uint8 (N, S, S) numpy array or tensor -> float16 numpy features, N rows each."""
        import torch

        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        parts = [self._run(x[i : i + self.batch]) for i in range(0, len(x), self.batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, x) -> Dict[str, np.ndarray]:
        import torch

        if self.device == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        n = len(x)
        with torch.inference_mode():  # cast on the device: half the bytes to move, and what the cache holds
            if self.compiled is not None:
                out = self._compiled(x)
            else:
                out = self.embedder(x)
            return {k: v[:n].to(torch.float16).cpu().numpy() for k, v in out.items()}

    def _compiled(self, x):
        import torch

        if len(x) < self.batch:  # one shape for every call: no recompiles for the last batch
            x = torch.cat([x, x.new_zeros((self.batch - len(x), *x.shape[1:]))])
        try:
            return self.compiled(x)
        except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the job
            log.warning("torch.compile failed (%s: %s); embedding eagerly", type(e).__name__, str(e)[:200])
            self.compiled = None
            return self.embedder(x)
