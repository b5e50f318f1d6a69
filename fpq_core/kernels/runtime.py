"""Online activation path: fused rotate + activation fake-quant for ``QuantLinear`` inputs.

:class:`FusedInputPath` is an :class:`fpq_core.nn.InputPath` whose forward runs the Triton
kernel of :mod:`.quant` (one pass: rotation + MXFP4/NVFP4 fake quant) when it can, and the
engine path otherwise (calibration: Hessian observers attached or the NVFP4 activation global
scale still being tracked; gradients; unsupported specs/transforms; non-CUDA tensors).
``fuse_input_paths(model)`` switches every InputPath of a model to it (in place).
Note: the fused path does not fill ``act_quantizer.last``.
"""
from __future__ import annotations

import torch

from fpq_core.nn import InputPath

from . import kernels_usable_for
from .quant import check_supported, make_plan, rotate_quantize

__all__ = ["FusedInputPath", "fuse_input_paths", "fused_activation"]


def _can_fuse(path: InputPath, x: torch.Tensor) -> bool:
    aq = path.act_quantizer
    if path.observers or x.requires_grad or not kernels_usable_for(x):
        return False
    t = path.transform
    if t is not None and not (getattr(t, "name", "") in ("hadamard", "identity") or getattr(t, "is_orthogonal", False)):
        return False
    if aq is None:
        return False
    try:
        check_supported(aq.spec, x)
    except (TypeError, ValueError):
        return False
    if aq.observer != "minmax":
        return False
    return not (aq.spec.uses_global_scale and (aq.observe or aq.global_scale is None))


def fused_activation(path: InputPath, x: torch.Tensor) -> torch.Tensor:
    """rotate + fake-quant of x with the path's transform and frozen activation quantizer."""
    aq = path.act_quantizer
    plans = path.__dict__.setdefault("_fpq_plans", {})
    key = (x.shape[-1], aq.spec.group_size)
    if key not in plans:
        plans[key] = make_plan(path.transform, *key)
    g = aq.global_scale if aq.spec.uses_global_scale else None
    return rotate_quantize(x, aq.spec, path.transform, "fake", global_scale=g, plan=plans[key])


class FusedInputPath(InputPath):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _can_fuse(self, x):
            return super().forward(x)
        hit = self.cached(x)
        if hit is not None:
            return hit
        return self.remember(x, fused_activation(self, x))


def fuse_input_paths(model: torch.nn.Module) -> int:
    """Switch every InputPath in ``model`` to :class:`FusedInputPath`; returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is InputPath:
            m.__class__ = FusedInputPath
            n += 1
    return n
