"""Exact cosine nearest neighbours, shared by kNN, ML-kNN and few-shot kNN.

One matrix product and a top-k per chunk of queries: the chunk bounds memory at chunk_size x bank
similarities (1024 x 100k floats = 400 MB), and the same code runs on CUDA when a GPU is present.
No approximate search: the study's numbers must not depend on an index's recall.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from scipy import sparse

from raddist.device import torch_device

DEFAULT_CHUNK = 1024


def _unit_rows(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """L2-normalised rows; float64 stays float64 (exact references), anything else becomes float32."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype != torch.float64:
        t = t.float()
    return torch.nn.functional.normalize(t.to(device), dim=1)


def topk_cosine(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    chunk_size: int = DEFAULT_CHUNK,
    exclude_self: bool = False,
    groups: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(similarities, bank indices), each (len(queries), k), nearest first.

    exclude_self: the queries are the bank itself, row for row, and a sample must not count as its
    own neighbour (ML-kNN's leave-one-out statistics). groups (with exclude_self): each bank row's
    patient; a sample's whole patient is left out, not only the sample (a follow-up study of the
    same patient is no independent neighbour).
    """
    if exclude_self and len(queries) != len(bank):
        raise ValueError("exclude_self needs the queries to be the bank itself")
    excluded = int(exclude_self)
    if exclude_self and groups is not None:
        excluded = int(np.unique(groups, return_counts=True)[1].max())
    if not 1 <= k <= len(bank) - excluded:
        raise ValueError(f"k={k} neighbours asked of a bank of {len(bank)} (leaving out {excluded} a query)")
    device = torch_device()
    bank_t = _unit_rows(bank, device)
    codes = None
    if exclude_self and groups is not None:
        codes = torch.from_numpy(np.unique(groups, return_inverse=True)[1].reshape(-1)).to(device)
    sims, idx = [torch.empty(0, k, dtype=bank_t.dtype)], [torch.empty(0, k, dtype=torch.long)]
    for start in range(0, len(queries), chunk_size):
        chunk = _unit_rows(queries[start : start + chunk_size], device)
        similarity = chunk @ bank_t.T
        if codes is not None:
            same = codes[start : start + len(chunk)].unsqueeze(1) == codes.unsqueeze(0)
            similarity.masked_fill_(same, -torch.inf)
        elif exclude_self:
            rows = torch.arange(len(chunk), device=device)
            similarity[rows, rows + start] = -torch.inf
        top = torch.topk(similarity, k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def neighbour_sum(idx: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """sum_j weights[i, j] * targets[idx[i, j]] for every query i, as one sparse product.

    idx, weights: (Nq, k); targets: (Nbank, C) -> (Nq, C).
    """
    n, k = idx.shape
    rows = sparse.csr_matrix(
        (weights.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, len(targets))
    )
    return np.asarray(rows @ targets)
