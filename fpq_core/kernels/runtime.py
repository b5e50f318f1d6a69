"""Online activation path: fused rotate + activation fake-quant for ``QuantLinear`` inputs.

:class:`FusedInputPath` is an :class:`fpq_core.nn.InputPath` whose forward runs the Triton
kernel of :mod:`.quant` (one pass: rotation + MXFP4/NVFP4 fake quant) when it can; during calibration (Hessian
observers attached, NVFP4 activation global scale being tracked) it runs the rotation, amax and
quantization as separate kernel passes; the engine path serves everything else (gradients,
unsupported specs/transforms, non-CUDA tensors).
``fuse_input_paths(model)`` switches every InputPath of a model to it (in place).
Note: the fused path does not fill ``act_quantizer.last``.
"""
from __future__ import annotations

import torch

from fpq_core.nn import InputPath

from . import kernels_usable_for
from .quant import check_supported, make_plan, rotate_quantize

__all__ = ["FusedInputPath", "fuse_input_paths", "fused_activation"]


def _can_fuse(path: InputPath, x: torch.Tensor, calibrating: bool = False) -> bool:
    """Can the fused kernel serve this call? With ``calibrating`` the Hessian observers and the
    NVFP4 global-scale tracking are served too (rotation pass + amax pass + quantize pass)."""
    aq = path.act_quantizer
    if x.requires_grad or not kernels_usable_for(x):
        return False
    if path.observers and not calibrating:
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
    if calibrating:
        return True
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
    def _plan(self, K: int, group: int, rotated: bool):
        plans = self.__dict__.setdefault("_fpq_plans", {})
        key = (K, group, rotated)
        if key not in plans:
            plans[key] = make_plan(None if rotated else self.transform, K, group)
        return plans[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.cached(x)
        if hit is not None:
            return hit
        if _can_fuse(self, x):
            return self.remember(x, fused_activation(self, x))
        if not _can_fuse(self, x, calibrating=True):
            return super().forward(x)
        # Calibration, fused: same arithmetic as the engine path (rotation, amax and quantization
        # are bit-exact with it: tests/kernels), in up to three kernel passes instead of ~20 ops.
        aq = self.act_quantizer
        spec, K = aq.spec, x.shape[-1]
        src, rotated = x, False
        if self.observers:
            if self.transform is not None:
                src = rotate_quantize(x, spec, self.transform, "rotated", plan=self._plan(K, 16, False))
                rotated = True
            for obs in self.observers:          # the Hessian sees the rotated, unquantized input
                obs(src)
        plan = self._plan(K, spec.group_size, rotated or self.transform is None)
        tf = None if (rotated or self.transform is None) else self.transform
        if spec.uses_global_scale and aq.observe:
            aq.update_from_amax(rotate_quantize(src, spec, tf, "amax", plan=plan))
        g = aq.global_scale if spec.uses_global_scale else None
        if spec.uses_global_scale and g is None:   # all-zero so far: the engine path decides
            return super().forward(x)
        y = rotate_quantize(src, spec, tf, "fake", global_scale=g, plan=plan)
        return self.remember(x, y)


def fuse_input_paths(model: torch.nn.Module) -> int:
    """Switch every InputPath in ``model`` to :class:`FusedInputPath`; returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is InputPath:
            m.__class__ = FusedInputPath
            n += 1
    return n
