"""GPTQ column sweep on the GPU: one Triton launch per block of ``block_size`` columns.

:func:`gptq_quantize_fast` has the signature and result of :func:`fpq_core.gptq.gptq_quantize`.
Everything around the sweep (scales by the observer, dead columns, act-order permutation,
dampening, ``chol(inv(H))``, relative error) is the engine's own code; only the sweep changes:

* per block ``[c1, c2)``, a Triton kernel takes ``BR`` rows per program and keeps the block's
  ``(BR, b)`` tile of the working weight in registers; for each column ``i`` it quantizes with
  the fixed per-row scale, computes ``err = (w - q) / U[i, i]`` (true division) and applies the
  rank-1 update ``W1 -= err * U[i, :]`` to the tile (``U`` is upper triangular, so columns < i are
  unchanged); products and subtractions are rounded separately (``enable_fp_fusion=False``)
  exactly as torch's ``W1[:, i:] -= err @ U[i, i:]`` does;
* the trailing update ``W[:, c2:] -= E1 @ U[c1:c2, c2:]`` is the very same torch (cuBLAS) call as
  in the engine, on the same shapes and layouts.

So the codes are meant to be **identical** to the torch sweep on the same device; the GPU suite
checks this (``benchmarks/bench_gptq.py`` reports the agreement rate).
"""
from __future__ import annotations

from functools import partial

import torch
import triton
import triton.language as tl

from fpq_core.formats.spec import QuantSpec
from fpq_core.gptq import GPTQResult, gptq_quantize

from ._common import e2m1, int_round

__all__ = ["gptq_quantize_fast", "gptq_quantize_auto", "sweep_supported", "gptq_sweep"]


def sweep_supported(spec: QuantSpec) -> bool:
    """The kernel implements the engine's element rule for ``numerics="exact"`` (fp and int)."""
    return isinstance(spec, QuantSpec) and spec.numerics == "exact"


@triton.jit
def _gptq_block_kernel(w_ptr, q_ptr, c_ptr, e_ptr, u_ptr, s_ptr, cg_ptr,
                       R, width, c1, ldw, ldq, ldc, lde, ldu, lds, qmin, qmax,
                       BR: tl.constexpr, B: tl.constexpr, IS_FP: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    cols = tl.arange(0, B)
    rmask = rows < R
    cmask = cols < width
    m2 = rmask[:, None] & cmask[None, :]
    W = tl.load(w_ptr + rows[:, None] * ldw + (c1 + cols)[None, :], mask=m2, other=0.0)   # (BR, B) fp32
    E = tl.zeros((BR, B), tl.float32)
    Q = tl.zeros((BR, B), tl.float32)
    C = tl.zeros((BR, B), tl.int32)
    for i in range(B):                       # columns >= width are zeros: err = 0, no effect
        ok = i < width
        sel = cols[None, :] == i
        w = tl.max(tl.where(sel, W, float("-inf")), axis=1)          # column i, exact (keeps -0.)
        g = tl.load(cg_ptr + c1 + i, mask=ok, other=0)
        s = tl.load(s_ptr + rows * lds + g, mask=rmask, other=1.0)
        q = tl.div_rn(w, s)
        if IS_FP:
            val, code = e2m1(q)
        else:
            val = int_round(q, qmin, qmax)
            code = val.to(tl.int32)
        dq = val * s + 0.0
        d = tl.load(u_ptr + (c1 + i) * ldu + c1 + i, mask=ok, other=1.0)
        err = tl.div_rn(w - dq, d + tl.zeros_like(w))
        urow = tl.load(u_ptr + (c1 + i) * ldu + c1 + cols, mask=cmask & ok, other=0.0)
        W = W - err[:, None] * urow[None, :]
        E = tl.where(sel, err[:, None], E)
        Q = tl.where(sel, dq[:, None], Q)
        C = tl.where(sel, code[:, None], C)
    tl.store(e_ptr + rows[:, None] * lde + cols[None, :], E, mask=m2)
    tl.store(q_ptr + rows[:, None] * ldq + (c1 + cols)[None, :], Q, mask=m2)
    tl.store(c_ptr + rows[:, None] * ldc + (c1 + cols)[None, :], C.to(tl.int16), mask=m2)


def gptq_sweep(W32: torch.Tensor, U: torch.Tensor, scales: torch.Tensor, col_group: torch.Tensor,
               spec: QuantSpec, block_size: int = 128, block_rows: int = 16, num_warps: int = 4):
    """The lazy-batch GPTQ sweep. W32 (out, in) fp32 is updated in place (trailing updates);
    returns (Q fp32 (out, in), codes int16 (out, in))."""
    out_f, in_f = W32.shape
    Q = torch.zeros_like(W32)
    codes = torch.zeros(out_f, in_f, dtype=torch.int16, device=W32.device)
    cg = col_group.to(torch.int32).contiguous()
    scales = scales.float().contiguous()
    U = U.contiguous()
    B = triton.next_power_of_2(block_size)
    grid = (triton.cdiv(out_f, block_rows),)
    for c1 in range(0, in_f, block_size):
        c2 = min(c1 + block_size, in_f)
        E1 = torch.empty(out_f, c2 - c1, dtype=torch.float32, device=W32.device)    # (out, b)
        _gptq_block_kernel[grid](
            W32, Q, codes, E1, U, scales, cg,
            out_f, c2 - c1, c1, W32.stride(0), Q.stride(0), codes.stride(0), E1.stride(0), U.stride(0),
            scales.stride(0), float(spec.qmin), float(spec.qmax),
            BR=block_rows, B=B, IS_FP=spec.format == "fp", num_warps=num_warps, enable_fp_fusion=False)
        if c2 < in_f:
            W32[:, c2:] -= E1 @ U[c1:c2, c2:]                 # the engine's own cuBLAS call
    return Q, codes


@torch.no_grad()
def gptq_quantize_fast(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, observer: str = "minmax",
                       order: str = "default", rel_damp: float = 0.01, block_size: int = 128,
                       global_scale: torch.Tensor | None = None, block_rows: int = 16) -> GPTQResult:
    """Same contract as :func:`fpq_core.gptq.gptq_quantize`, with the sweep on the GPU."""
    if not sweep_supported(spec):
        raise ValueError(f"the GPTQ kernel supports numerics='exact' only, got {spec}; use fpq_core.gptq.gptq_quantize")
    if block_size <= 0 or block_size > 256:
        raise ValueError("block_size must be in 1..256 for the GPTQ kernel (the reference uses 128)")
    return gptq_quantize(W, H, spec, observer=observer, order=order, rel_damp=rel_damp, block_size=block_size,
                         global_scale=global_scale, sweep=partial(gptq_sweep, block_rows=block_rows))


def gptq_quantize_auto(W, H, spec, *args, **kwargs) -> GPTQResult:
    """The fast sweep on CUDA (when triton is there and the spec is supported), else the engine."""
    from . import kernels_usable_for

    if kernels_usable_for(W) and sweep_supported(spec):
        return gptq_quantize_fast(W, H, spec, *args, **kwargs)
    return gptq_quantize(W, H, spec, *args, **kwargs)
