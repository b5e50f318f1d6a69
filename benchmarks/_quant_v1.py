"""The fused rotation + quantization kernel as it was before the persistent rewrite (frozen copy).

Kept only so that ``bench_quant_kernels.py`` can time the old and the new kernel side by side in
one run (same inputs, same card). Not used by the product. ``rotate_quantize_v1`` takes the same
arguments as ``fpq_core.kernels.quant.rotate_quantize`` for output "fake"/"packed" with a given
global scale (NVFP4) and returns the same results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fpq_core.kernels._common import e2m1, e4m3_byte, e4m3_rne, e4m3_rne64, floor_log2, pow2i, round_to_dtype
from fpq_core.kernels.quant import RotationPlan


@triton.jit
def mx_scale_v1(amax):
    """(float scale 2^E/3, E8M0 byte E+127) of the FP-Quant x3 MXFP4 rule, exact numerics.

    The engine computes s0 = amax/6 and fl32(6*s0) in float64, which gives back amax exactly, so
    E is simply the exponent of max(amax, 2^-126)."""
    e = floor_log2(tl.maximum(amax, 1.1754943508222875e-38))
    s = (pow2i(e).to(tl.float64) / 3.0).to(tl.float32)   # float64 '/' lowers to div.rn.f64
    return s, (e + 127).to(tl.uint8)


@triton.jit
def nv_scale_v1(amax, g):
    """(float scale e/G with 0 -> 1, E4M3 byte of clamp(fl32(s*G))) for NVFP4, exact numerics:
    s0 = amax/6 and t = s0*G in float64, e = RNE_e4m3(min(t, 448)) (one rounding), s = fl32(e/G)."""
    g64 = g.to(tl.float64)
    s0 = (amax.to(tl.float64) * 2.0) / 12.0
    e = e4m3_rne64(tl.minimum(s0 * g64, 448.0))
    s = (e / g64).to(tl.float32)
    s = tl.where(s == 0.0, 1.0, s)
    byte = e4m3_byte(e4m3_rne(tl.minimum(s * g, 448.0)))
    return s, byte


@triton.jit
def _rotq_kernel_v1(x_ptr, m_ptr, out_ptr, pk_ptr, sb_ptr, amax_ptr, gs_ptr,
                 M, K, stride_xm, rot_scale,
                 T: tl.constexpr, G: tl.constexpr, BM: tl.constexpr,
                 HAS_ROT: tl.constexpr, DOT_LOWP: tl.constexpr, POST_SCALE: tl.constexpr,
                 MODE: tl.constexpr, IS_NV: tl.constexpr, IS_BF16: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_k * T + tl.arange(0, T)
    rmask = rows[:, None] < M
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask, other=0.0)   # (BM, T)
    if HAS_ROT:
        kk = tl.arange(0, T)
        if DOT_LOWP:   # bf16/fp16 input times the exact +-1 matrix: tensor cores, fp32 accumulate
            mat = tl.load(m_ptr + kk[:, None] * T + kk[None, :])
            y = tl.dot(x, mat, out_dtype=tl.float32)
        else:
            mat = tl.load(m_ptr + kk[:, None] * T + kk[None, :])
            y = tl.dot(x.to(tl.float32), mat, input_precision="ieee", out_dtype=tl.float32)
        if POST_SCALE:
            y = y * rot_scale
        y = round_to_dtype(y, IS_BF16).to(x_ptr.dtype.element_ty).to(tl.float32)    # rounded to the input dtype, as transforms do
    else:
        y = x.to(tl.float32)
    if MODE == 0:
        tl.store(out_ptr + rows[:, None] * K + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=rmask)
    elif MODE == 1:
        tl.store(amax_ptr + pid_m * tl.num_programs(1) + pid_k, tl.max(tl.max(tl.abs(y), axis=1), axis=0))
    else:
        NG: tl.constexpr = T // G
        y3 = tl.reshape(y, (BM, NG, G))
        amax = tl.max(tl.abs(y3), axis=2)                     # (BM, NG)
        if IS_NV:
            g = tl.load(gs_ptr)
            s, sbyte = nv_scale_v1(amax, g)
        else:
            s, sbyte = mx_scale_v1(amax)
        q = tl.div_rn(y3, tl.broadcast_to(s[:, :, None], (BM, NG, G)))
        val, code = e2m1(q)
        if MODE == 2:
            dq = tl.reshape(val * s[:, :, None] + 0.0, (BM, T))   # + 0.0: zeros as +0.0, as the engine
            tl.store(out_ptr + rows[:, None] * K + cols[None, :], round_to_dtype(dq, IS_BF16).to(out_ptr.dtype.element_ty), mask=rmask)
        else:
            code = tl.where((code & 7) == 0, 8, code)         # the reference packer stores zeros as 0x8
            lo, hi = tl.split(tl.reshape(code, (BM, T // 2, 2)))
            pcols = pid_k * (T // 2) + tl.arange(0, T // 2)
            tl.store(pk_ptr + rows[:, None] * (K // 2) + pcols[None, :], (lo | (hi << 4)).to(tl.uint8), mask=rmask)
            gcols = pid_k * NG + tl.arange(0, NG)
            tl.store(sb_ptr + rows[:, None] * (K // G) + gcols[None, :], sbyte, mask=rmask)


def _launch(x2, plan: RotationPlan, spec, mode, out=None, pk=None, sb=None, amax=None, gs=None, block_m=None,
            num_warps: int | None = None):
    M, K = x2.shape
    T, G = plan.tile, spec.group_size
    bm = block_m or (32 if T >= 128 else 64)
    grid = (triton.cdiv(M, bm), K // T)
    has_rot = plan.matrix is not None
    # bf16/fp16 x +-1 matrix on the tensor cores (exact products). Triton's CPU interpreter reads
    # bf16 operands of tl.dot as raw integers, so there the tile is upcast first (same products).
    lowp = (has_rot and plan.scale is not None and x2.dtype in (torch.bfloat16, torch.float16)
            and x2.is_cuda)
    mat = plan.on(x2.device, x2.dtype if lowp else torch.float32) if has_rot else x2
    dummy = x2
    _rotq_kernel_v1[grid](
        x2, mat, out if out is not None else dummy, pk if pk is not None else dummy,
        sb if sb is not None else dummy, amax if amax is not None else dummy, gs if gs is not None else dummy,
        M, K, x2.stride(0), float(plan.scale or 1.0),
        T=T, G=G, BM=bm, HAS_ROT=has_rot, DOT_LOWP=lowp, POST_SCALE=plan.scale is not None,
        MODE=mode, IS_BF16=x2.dtype == torch.bfloat16, IS_NV=spec.scale_precision == "e4m3", num_warps=num_warps or 4, enable_fp_fusion=False)
    return grid


def rotate_quantize_v1(x2, spec, plan, output, gs, block_m=None, num_warps=None):
    M, K = x2.shape
    if output == "fake":
        out = torch.empty_like(x2)
        _launch(x2, plan, spec, 2, out=out, gs=gs, block_m=block_m, num_warps=num_warps)
        return out
    pk = torch.empty(M, K // 2, dtype=torch.uint8, device=x2.device)
    sb = torch.empty(M, K // spec.group_size, dtype=torch.uint8, device=x2.device)
    _launch(x2, plan, spec, 3, pk=pk, sb=sb, gs=gs, block_m=block_m, num_warps=num_warps)
    return pk, sb
