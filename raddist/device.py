"""The one place that decides which torch device a process computes on.

A process that Ray gave GPUs computes on the first one it sees; anything else on the CPU. A process
that was promised a GPU (an embedding actor or a training worker placed on a GPU node) and finds
no CUDA fails at once instead of running quietly on the CPU: a node whose driver is missing would
otherwise take hours for minutes' work. RADDIST_FAKE_GPUS=1 allows it, for Ray's fake multi-node
clusters in tests, whose "GPU" nodes are CPU processes.
"""

from __future__ import annotations

import os

FAKE_GPUS_ENV = "RADDIST_FAKE_GPUS"


class NoCudaError(RuntimeError):
    """A process holding a Ray GPU finds no CUDA device."""


def torch_device(expect_gpu: bool = False):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if expect_gpu and os.environ.get(FAKE_GPUS_ENV) != "1":
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        raise NoCudaError(
            f"this process holds Ray GPU(s) {gpu_ids} but torch finds no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); the node's NVIDIA driver or "
            f"CUDA runtime is missing or does not match torch. Use a GPU image (cluster.yaml) or set "
            f"resources.device: cpu")
    return torch.device("cpu")
