"""Activation quantizer with a calibrated (static) NVFP4 global scale."""
from __future__ import annotations

import torch

from .quantize import QuantizedTensor, _as_global, global_encode_scale, quantize
from .spec import QuantSpec


class ActivationQuantizer:
    """Fake-quantize activations per token, in groups along the last dim.

    While ``observe`` is True (the start state), every call updates the e4m3 encode global
    scale as a running **minimum** of 448*6/amax(x) (2688/amax for NVFP4: the smallest encode
    scale = the largest amax seen, so nothing overflows); ``freeze()`` stops tracking and later
    calls reuse it, as the reference's calibrated activation quantizer does. All-zero batches do
    not update it. MX formats use the constant global scale (3.0 for the fpquant rule).

    >>> aq = ActivationQuantizer(QuantSpec.nvfp4())
    >>> for batch in calib: aq(batch)       # doctest: +SKIP
    >>> aq.freeze(); y = aq(x)              # doctest: +SKIP
    """

    def __init__(self, spec: QuantSpec, observer="minmax", global_scale=None):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.observer = observer
        self.observe = global_scale is None
        self._g = None if global_scale is None else _as_global(global_scale, "cpu")
        self.last: QuantizedTensor | None = None

    @property
    def global_scale(self) -> torch.Tensor | None:
        """fp32 (1,) encode scale (e4m3), the MX constant (e8m0) or None (fp16 scales)."""
        if self.spec.scale_precision == "e8m0":
            return torch.tensor([self.spec.mx_global_scale], dtype=torch.float32)
        return self._g

    @global_scale.setter
    def global_scale(self, g) -> None:
        self._g = _as_global(g, "cpu")

    def freeze(self) -> "ActivationQuantizer":
        """Stop tracking: the global scale is fixed from now on."""
        self.observe = False
        return self

    def _update(self, x: torch.Tensor) -> None:
        self.update_from_amax(x.detach().abs().amax())

    def update_from_amax(self, amax: torch.Tensor) -> None:
        """Track the encode scale from a batch's abs-max (used by fused kernels that compute
        the amax themselves); all-zero batches do not update it."""
        amax = torch.as_tensor(amax).reshape(-1).amax()
        if amax == 0:
            return
        g = global_encode_scale(amax.reshape(1), self.spec)
        self._g = g if self._g is None else torch.minimum(self._g.to(g.device), g)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = None
        if self.spec.uses_global_scale:
            if self.observe:
                self._update(x)
            elif self._g is None:
                raise ValueError("activation quantizer is frozen without a global scale; "
                                 "run calibration batches before freeze() or set .global_scale")
            g = self._g.to(x.device) if self._g is not None else None
        self.last = quantize(x.detach(), self.spec, self.observer, global_scale=g)
        dq = self.last.dequantize()
        if x.requires_grad:  # straight-through estimator
            return x + (dq - x).detach()
        return dq

    def __repr__(self) -> str:
        g = None if self.global_scale is None else float(self.global_scale)
        return f"ActivationQuantizer({self.spec.name}, observe={self.observe}, global_scale={g})"
