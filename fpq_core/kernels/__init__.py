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

__all__ = ["triton_installed", "interpreter_mode", "kernels_available", "kernels_unavailable_reason", "kernels_usable_for",
           "MIN_CAPABILITY"]


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_mode() -> bool:
    """True when Triton's CPU interpreter is switched on (env TRITON_INTERPRET=1) and triton exists."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and triton_installed()


# The oldest GPU the kernels compile for: the NVFP4 scale byte is converted by
# cvt.rn.satfinite.e4m3x2.f32 (sm_89) and the group amax uses max.xorsign.abs (sm_86). They are
# tested on sm_90 (H100); programmatic dependent launch is used from sm_90 on (quant._pdl_capable).
MIN_CAPABILITY = (8, 9)


def kernels_unavailable_reason() -> str | None:
    """Why the engine cannot use the kernels here (None: it can): no CUDA, no triton, or a GPU
    older than :data:`MIN_CAPABILITY` (e.g. an A100, sm_80: the torch path runs there)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not triton_installed():
        return "triton is not installed (pip install triton)"
    cap = tuple(torch.cuda.get_device_capability())
    if cap < MIN_CAPABILITY:
        return (f"the GPU has compute capability {cap[0]}.{cap[1]}; the Triton kernels need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell); the torch path runs instead")
    return None


def kernels_available() -> bool:
    """True only with CUDA, triton and a GPU of compute capability >= MIN_CAPABILITY (the
    condition for the engine to use the kernels)."""
    return kernels_unavailable_reason() is None


def kernels_usable_for(t) -> bool:
    """Can the kernels run on this tensor: a CUDA tensor with kernels available, or a CPU tensor
    under the interpreter."""
    if t.is_cuda:
        return kernels_available()
    return interpreter_mode()
