"""``QuantLinear``: an ``nn.Linear`` with an online input rotation and activation quantizer.

We wrap Linears instead of re-implementing attention/MLP forwards (the reference copies Hugging
Face's attention code per model and breaks when transformers changes). Linears that read the
same input (q/k/v, gate/up) share one :class:`InputPath`, so the rotation and activation
quantization of that input are computed once and the activation global scale is shared, as the
reference does with one quantizer object per input.

Weight life cycle: ``weight`` holds the original weight until :meth:`QuantLinear.set_quantized`
stores the dequantized weight *in the rotated basis* (``W·T^{-T}``) together with the
:class:`~fpq_core.formats.QuantizedTensor` used for export. Before that, forward rotates the
original weight on the fly, so calibration passes see the full-precision function.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fpq_core.formats import ActivationQuantizer, QuantizedTensor

__all__ = ["InputPath", "QuantLinear"]


class InputPath(nn.Module):
    """Rotation + activation fake-quantization of one input, shared by the Linears reading it."""

    def __init__(self, transform=None, act_quantizer: ActivationQuantizer | None = None):
        super().__init__()
        self.transform = transform
        self.act_quantizer = act_quantizer
        self.observers: list[Callable[[torch.Tensor], None]] = []   # e.g. Hessian accumulators
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    @staticmethod
    def _version(x: torch.Tensor) -> int:
        return -1 if x.is_inference() else x._version     # inference tensors have no version counter

    def cached(self, x: torch.Tensor) -> torch.Tensor | None:
        """The result for ``x`` if this very tensor (unchanged) was the last input."""
        if self._last is not None and self._last[0] is x and self._last[1] == self._version(x):
            return self._last[2]
        return None

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._last = (x, self._version(x), y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The Linears of a group receive the very same tensor object: reuse the result.
        hit = self.cached(x)
        if hit is not None:
            return hit
        if self.transform is not None:
            x_in = x
            x = self.transform.apply(x)
        else:
            x_in = x
        for obs in self.observers:                  # Hessian sees the rotated, unquantized input
            obs(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        return self.remember(x_in, x)

    def clear_cache(self) -> None:
        self._last = None


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, input_path: InputPath, name: str = ""):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.name = name
        self.weight = nn.Parameter(linear.weight.data, requires_grad=False)      # (out, in)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data, requires_grad=False)
        self.input_path = input_path
        self.rotated = False                  # True once weight is stored in the rotated basis
        self.qtensor: QuantizedTensor | None = None

    @property
    def transform(self):
        return self.input_path.transform

    def rotated_weight(self) -> torch.Tensor:
        if self.rotated or self.transform is None:
            return self.weight.data
        return self.transform.apply_to_weight(self.weight.data)

    @torch.no_grad()
    def set_quantized(self, weight: torch.Tensor, qtensor: QuantizedTensor | None) -> None:
        """Store the dequantized weight (rotated basis) and its quantized form for export."""
        if weight.shape != self.weight.shape:
            raise ValueError(f"{self.name}: quantized weight shape {tuple(weight.shape)} != {tuple(self.weight.shape)}")
        self.weight.data = weight.to(self.weight.dtype)
        self.rotated = True
        self.qtensor = qtensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_path(x)
        w = self.rotated_weight()
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        t = self.transform
        aq = self.input_path.act_quantizer
        return (f"in={self.in_features}, out={self.out_features}, "
                f"transform={getattr(t, 'name', None)}{'/' + str(t.size) if t is not None else ''}, "
                f"act={getattr(getattr(aq, 'spec', None), 'name', None)}, quantized={self.rotated}")
