"""The one place that picks a device: a process promised a GPU that finds no CUDA fails at once,
except on Ray's fake GPU nodes (RADDIST_FAKE_GPUS=1), whose GPUs are CPU processes."""

import pytest
import torch

from raddist.device import FAKE_GPUS_ENV, NoCudaError, torch_device

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@needs_no_cuda
def test_a_promised_gpu_without_cuda_fails_with_what_to_do(monkeypatch):
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    assert torch_device().type == "cpu"  # nothing promised: the CPU is right
    with pytest.raises(NoCudaError, match="finds no CUDA device.*resources.device: cpu"):
        torch_device(expect_gpu=True)


@needs_no_cuda
def test_fake_gpu_nodes_compute_on_the_cpu(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert torch_device(expect_gpu=True).type == "cpu"
