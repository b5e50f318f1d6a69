"""When the engine may use the Triton kernels: CUDA, triton and a GPU of compute capability
>= MIN_CAPABILITY (sm_89: the NVFP4 scale's E4M3 conversion); otherwise the torch path, and a
clear error where fast kernels were asked for. CPU-only: the CUDA queries are monkeypatched."""
from __future__ import annotations

import pytest
import torch

import fpq_core.kernels as K


@pytest.fixture
def gpu(monkeypatch):
    def set_gpu(cap, triton=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
        monkeypatch.setattr(K, "triton_installed", lambda: triton)
    return set_gpu


@pytest.mark.parametrize("cap, ok", [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True), ((10, 0), True)])
def test_kernels_need_compute_capability_8_9(gpu, cap, ok):
    gpu(cap)
    assert K.kernels_available() is ok
    why = K.kernels_unavailable_reason()
    assert (why is None) is ok
    if not ok:
        assert f"{cap[0]}.{cap[1]}" in why and "8.9" in why and "torch path" in why


def test_no_triton_or_no_cuda_is_named(gpu, monkeypatch):
    gpu((9, 0), triton=False)
    assert "triton" in K.kernels_unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert K.kernels_unavailable_reason() == "no CUDA device"


def test_pipeline_falls_back_on_an_old_gpu_and_says_why_when_forced(gpu):
    from fpq_core.pipeline import RunOptions, _backend
    gpu((8, 0))
    assert _backend(torch.device("cuda"), RunOptions(device="cuda")).name == "torch"
    with pytest.raises(RuntimeError, match=r"compute capability 8\.0.*8\.9"):
        _backend(torch.device("cuda"), RunOptions(device="cuda", fast_kernels=True))
