"""GPTQ Hessian accumulation on the GPU: ``H <- H*n/(n+b) + (2/(n+b)) X^T X`` (fp32).

The Triton kernel computes only the lower-triangle tiles of ``X^T X`` (half the FLOPs of a full
``addmm``) and mirrors each off-diagonal tile, so ``H`` stays exactly symmetric. The running
average is the one of :class:`fpq_core.gptq.HessianAccumulator` (rows of X scaled by
fl32(sqrt(2/(n+b))) first, as the engine does).

Precision: ``allow_tf32=False`` (default) runs the dot in IEEE fp32 (``input_precision="ieee"``):
relative error vs a float64 reference ~1e-7, like torch's fp32 addmm; it is **not** bit-identical
to cuBLAS (different summation order). ``allow_tf32=True`` uses the tensor cores in TF32
(10-bit mantissa inputs): several times faster, relative error ~3e-4 per entry, which is what the
reference harness' Triton kernel effectively does (Triton's fp32 ``tl.dot`` default is TF32).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fpq_core.formats import all_finite
from fpq_core.gptq import HessianAccumulator

__all__ = ["accumulate", "accumulate_twin", "TritonHessianAccumulator"]


@triton.jit
def _chunk(x_ptr, t0, T, D, ldx, ri, rj, c, acc, BT: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr):
    rt = t0 + tl.arange(0, BT)
    tm = rt < T
    xi = tl.load(x_ptr + rt[:, None] * ldx + ri[None, :], mask=tm[:, None] & (ri[None, :] < D), other=0.0)
    xj = tl.load(x_ptr + rt[:, None] * ldx + rj[None, :], mask=tm[:, None] & (rj[None, :] < D), other=0.0)
    if LOWP:   # bf16/fp16 inputs: products are exact in the fp32 accumulator (tensor cores)
        return tl.dot(tl.trans(xi), xj, acc)
    xi = xi.to(tl.float32) * c
    xj = xj.to(tl.float32) * c
    return tl.dot(tl.trans(xi), xj, acc, input_precision=PREC)


@triton.jit
def _syrk_lower_kernel(x_ptr, h_ptr, T, D, ldx, ldh, ratio, c,
                       BD: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, NT_CONST: tl.constexpr,
                       LOWP: tl.constexpr):
    pi = tl.program_id(0)
    pj = tl.program_id(1)
    if pj <= pi:
        ri = pi * BD + tl.arange(0, BD)
        rj = pj * BD + tl.arange(0, BD)
        acc = tl.zeros((BD, BD), tl.float32)
        if NT_CONST > 0:      # interpreter: runtime loop bounds break on numpy >= 2.3 there
            for k in range(NT_CONST):
                acc = _chunk(x_ptr, k * BT, T, D, ldx, ri, rj, c, acc, BT, PREC, LOWP)
        else:
            for t0 in range(0, T, BT):
                acc = _chunk(x_ptr, t0, T, D, ldx, ri, rj, c, acc, BT, PREC, LOWP)
        if LOWP:
            acc = acc * (c * c)          # the 2/(n+b) factor, applied once in fp32
        m = (ri[:, None] < D) & (rj[None, :] < D)
        hp = h_ptr + ri[:, None] * ldh + rj[None, :]
        h = tl.load(hp, mask=m, other=0.0) * ratio + acc
        if pj == pi:      # diagonal tile: keep its lower triangle, mirror it (exact symmetry)
            h = tl.where(ri[:, None] >= rj[None, :], h, tl.trans(h))
        tl.store(hp, h, mask=m)
        if pj < pi:
            tl.store(h_ptr + rj[None, :] * ldh + ri[:, None], h, mask=m)   # mirror


def accumulate(H: torch.Tensor, x: torch.Tensor, n: int, b: int, allow_tf32: bool = False,
               block_d: int = 64, block_t: int = 32) -> int:
    """In place: ``H <- H*n/(n+b) + (2/(n+b)) X^T X`` with X = x flattened to (tokens, d).
    Returns the new sample count ``n + b``. H: (d, d) float32 contiguous on x's device."""
    d = H.shape[0]
    if H.dtype != torch.float32 or H.shape != (d, d) or not H.is_contiguous():
        raise ValueError("H must be a contiguous float32 (d, d) tensor")
    if x.shape[-1] != d:
        raise ValueError(f"Hessian of dim {d} got inputs with last dim {x.shape[-1]}")
    if b <= 0:
        raise ValueError("batch count b must be positive")
    X = x.reshape(-1, d)
    if X.stride(-1) != 1:
        X = X.contiguous()
    total = n + b
    ratio = n / total
    c = math.sqrt(2.0 / total)
    nb = triton.cdiv(d, block_d)
    # 16-bit activations (a bf16 model) go to the tensor cores as they are: their products are
    # exact in fp32, so this is as accurate as the fp32 path and ~10x faster. (The interpreter
    # cannot run 16-bit dots: it upcasts.)
    lowp = X.dtype in (torch.bfloat16, torch.float16) and X.is_cuda
    if lowp:
        block_t = max(block_t, 64)
    _syrk_lower_kernel[(nb, nb)](X, H, X.shape[0], d, X.stride(0), H.stride(0), float(ratio), float(c),
                                 BD=block_d, BT=block_t, PREC="tf32" if allow_tf32 else "ieee",
                                 NT_CONST=0 if X.is_cuda else triton.cdiv(X.shape[0], block_t), LOWP=lowp,
                                 num_warps=4)
    return total


def accumulate_twin(H: torch.Tensor, x: torch.Tensor, n: int, b: int) -> int:
    """The engine's update (fpq_core.gptq.HessianAccumulator.add), in torch."""
    d = H.shape[0]
    X = x.reshape(-1, d).float()
    total = n + b
    H.mul_(n / total)
    X = X * math.sqrt(2.0 / total)
    H.addmm_(X.t(), X)
    return total


class TritonHessianAccumulator(HessianAccumulator):
    """Drop-in :class:`~fpq_core.gptq.HessianAccumulator` whose ``add`` runs the Triton kernel."""

    allow_tf32 = False

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"Hessian of dim {self.dim} got inputs with last dim {x.shape[-1]}")
        b = x.shape[0] if x.dim() == 3 else 1
        x = x.to(device=self.H.device)
        if not all_finite(x):
            raise ValueError("non-finite calibration activations reached the Hessian (NaN/inf): "
                             "check the model's dtype (use float32 on CPU) and the inputs")
        self.num_samples = accumulate(self.H, x, self.num_samples, b, allow_tf32=self.allow_tf32)
