"""Kernel tests: marked ``gpu``; they run on CUDA, or on the CPU through Triton's interpreter
when ``FPQ_TRITON_INTERPRET=1`` (slow; for development without a GPU). Otherwise they skip."""
from __future__ import annotations

import importlib.util
import os

import pytest

if os.environ.get("FPQ_TRITON_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"      # must be set before triton is imported

import torch  # noqa: E402


def kernel_device() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return None


@pytest.fixture
def dev() -> str:
    d = kernel_device()
    if d is None:
        pytest.skip("needs CUDA + triton (or FPQ_TRITON_INTERPRET=1 with triton installed)")
    return d


def interp() -> bool:
    return kernel_device() == "cpu"
