"""Triton kernels (CUDA only), each with a pure-torch twin built from the engine functions.

Nothing here is imported by the engine unless :func:`kernels_available` is true, so CPU-only
installs (no triton) never touch this package's Triton modules.

* :mod:`.quant`   fused block rotation + MXFP4/NVFP4 quantization (fake-quant or packed bytes)
* :mod:`.hessian` GPTQ Hessian accumulation ``H = H*n/(n+b) + 2/(n+b) X^T X`` (lower triangle, mirrored)
* :mod:`.gptq`    the GPTQ column sweep (one 128-column block for all rows per launch)
* :mod:`.runtime` an ``InputPath``-compatible fused rotate + activation fake-quant

For development without a GPU, set ``TRITON_INTERPRET=1`` (Triton's CPU interpreter) before
importing triton and pass CPU tensors: :func:`interpreter_mode` is then true and the kernels run
(slowly) on the CPU, which is how the tests in ``tests/kernels`` check them off-GPU.
"""
from __future__ import annotations

import importlib.util
import os

__all__ = ["triton_installed", "interpreter_mode", "kernels_available", "kernels_usable_for"]


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_mode() -> bool:
    """True when Triton's CPU interpreter is switched on (env TRITON_INTERPRET=1) and triton exists."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and triton_installed()


def kernels_available() -> bool:
    """True only with CUDA and triton installed (the condition for the engine to use the kernels)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available()) and triton_installed()


def kernels_usable_for(t) -> bool:
    """Can the kernels run on this tensor: a CUDA tensor with kernels available, or a CPU tensor
    under the interpreter."""
    if t.is_cuda:
        return kernels_available()
    return interpreter_mode()
