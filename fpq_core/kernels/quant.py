"""Fused block rotation + FP4 quantization (MXFP4 x3 rule / NVFP4), Triton, with its torch twin.

``rotate_quantize(x, spec, transform, output=...)`` for x (..., K) bf16/fp16/fp32:

* ``output="fake"``   -> dequantized values, x's shape and dtype (fake quant);
* ``output="packed"`` -> ``(qweight uint8 (M, K/2), scale_bytes uint8 (M, K/G), global_scale)``,
  byte-identical to ``quantize(y, spec).pack()`` (zeros stored as 0x8, as the reference packer);
* ``output="rotated"``-> the rotated input only (the kernel's rotation, rounded to x's dtype);
* ``output="amax"``   -> max |rotated| (the first pass of the NVFP4 global scale).

One persistent kernel (``_rotq_kernel``): each program rotates (BM, T) tiles on the tensor cores
with a block-diagonal matrix -- a Sylvester Hadamard is built in the kernel, other matrices are
loaded -- and quantizes them in registers; a 128-column Hadamard tile is rotated as two 64-column
halves (same sums, half the registers); a tile's 64 rows are 64/F input rows x F adjacent tile
widths (``row_fold``, F = 32 where K allows: longer row segments per load and store); programs walk
the tiles by rows of one column tile or linearly over all tiles (``launch_defaults``, from the
H100 sweeps in docs/performance.md). On sm_90+ it is launched with programmatic dependent launch:
its launch and set-up overlap the previous kernel's end, and it touches memory only after that
kernel has completed (``pdl``).

The packed codes are computed on the FMA pipe (``_common.e2m1_index_f``: the E2M1 index as the
minimum of three float roundings; bit 3 by one saturated FMA; eight codes to an int32 word by
integer multiply-adds), since the integer/compare pipe, at half the issue rate, bounded the
earlier integer version (``fma_codes=False`` keeps it, for comparison).

What is bit-exact (tested in ``tests/kernels/test_quant.py``):

1. **Given the same rotated input, codes, scales, bytes and fake-quant values are bit-exact** with
   ``fpq_core.formats.quantize(y, spec)`` in ``numerics="exact"`` (minmax observer; FP4 RNE with
   saturation, not the reference Triton kernels' ties-toward-zero).
2. The rotation is ``y = dtype(fp32_dot(x_blk, M))``; for Hadamard ``M`` is the +-1 Sylvester
   matrix (exact in bf16, so a bf16 input runs on the tensor cores with exact products) and the
   fp32 sum is multiplied by fl32(1/sqrt(n)) afterwards. :func:`rotate_twin` is the same
   definition in torch (fp32 matmul). The two may differ in the last bit of the fp32 sum when the
   summation order differs (the matrix units' accumulation order is not torch's); after rounding
   to bf16 this is rare -- the GPU suite measures the mismatch rate against ``rotate_twin`` and
   against the engine's ``transform.apply``.

Unsupported here (use the engine): ``numerics="fp-quant"``, observers other than minmax, INT
formats, OCP MX rule, float64 input. Inputs must be finite (not checked: a NaN gives garbage,
the engine raises).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from fpq_core.formats.quantize import global_encode_scale, quantize
from fpq_core.formats.spec import QuantSpec

from ._common import (absmax2, div_markstein, e2m1_code, e2m1_index_f, e2m1_round, e4m3_byte, e4m3_rne, floor_log2,
                      mx_scale, nv_scale, nv_scale_fast, nv_small_f, nv_small_scale, nv_small_threshold, pack_codes_f,
                      pow2i, rcp_rn, bf16_round_hw, round_to_dtype, small_f)

__all__ = ["rotate_quantize", "rotate_quantize_twin", "rotate_twin", "check_supported", "RotationPlan",
           "make_plan"]

_OUTPUTS = {"rotated": 0, "amax": 1, "fake": 2, "packed": 3}
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def check_supported(spec: QuantSpec, x: torch.Tensor | None = None) -> None:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    ok = (spec.format == "fp" and spec.granularity == "group" and spec.numerics == "exact"
          and ((spec.scale_precision == "e8m0" and spec.scale_rule == "fpquant")
               or spec.scale_precision == "e4m3"))
    if not ok:
        raise ValueError(f"the fused quant kernel supports MXFP4 (x3 rule) and NVFP4-style FP4 with "
                         f"numerics='exact'; got {spec}. Use fpq_core.formats.quantize for this spec")
    if spec.group_size not in (8, 16, 32, 64, 128):
        raise ValueError(f"group size {spec.group_size} not supported by the kernel (use 16, 32, 64 or 128)")
    if x is not None and x.dtype not in _TL_DTYPES:
        raise TypeError(f"the fused quant kernel takes bf16/fp16/fp32 input, got {x.dtype}")


# ----------------------------------------------------------------------------- rotation plan
class RotationPlan:
    """The (T, T) block-diagonal matrix the kernel multiplies a tile of T columns by.

    ``matrix``: +-1 Sylvester signs for Hadamard (then ``scale`` = fl32(1/sqrt(n))), else the
    transform's float32 block matrix (``scale`` = 1, no post-multiply). ``None`` = no rotation.
    ``foldable``: the Hadamard scale is a power of two (n = 16, 64, 256), so ``on(..., folded=True)``
    returns the matrix times the scale -- still exact in bf16, and the fp32 sum of the scaled
    products is the scaled sum bit for bit -- and the kernel skips the post-multiply."""

    def __init__(self, matrix: torch.Tensor | None, n: int, scale: float | None, tile: int):
        self.matrix, self.n, self.scale, self.tile = matrix, n, scale, tile
        self.foldable = scale is not None and math.frexp(scale)[0] == 0.5
        self._cache: dict = {}

    @property
    def splittable(self) -> bool:
        """The tile is one Sylvester block [[H, H], [H, -H]] of 128 columns: the kernel can rotate it
        as two 64-column halves (``split`` in :func:`_rotq_tile`), same sums, half the registers."""
        if self.matrix is None or self.tile != 128 or self.n != self.tile or self.scale is None:
            return False
        if "split_ok" not in self._cache:
            m, h = self.matrix, self.tile // 2
            a = m[:h, :h]
            self._cache["split_ok"] = bool(torch.equal(m[:h, h:], a) and torch.equal(m[h:, :h], a)
                                           and torch.equal(m[h:, h:], -a))
        return self._cache["split_ok"]

    def on(self, device, dtype, folded: bool = False, permuted: bool = False, split: bool = False) -> torch.Tensor:
        """The matrix on ``device``; ``permuted``: columns in the order of :func:`mma_column_order`.
        ``split`` (only where :attr:`splittable`): the (T/2, T/2) block H stacked over -H."""
        k = (str(device), dtype, folded, permuted, split)
        if k not in self._cache:
            m = self.matrix * self.scale if folded else self.matrix
            if split:
                if not self.splittable:
                    raise ValueError("this rotation plan cannot be split (not one 128-column Sylvester block)")
                h = self.tile // 2
                m = m[:h, :h]
                if permuted:
                    m = m[:, mma_column_order(h)]
                m = torch.cat([m, -m])
            elif permuted:
                m = m[:, mma_column_order(self.tile)]
            self._cache[k] = m.to(device=device, dtype=dtype).contiguous()
        return self._cache[k]


def mma_column_order(T: int) -> torch.Tensor:
    """Column j = 8c + 2l + b of the permuted matrix is column l*T/4 + 2c + b of the original.

    The matrix units' accumulator gives lane l (of 4 in a row quad) the columns 8c + 2l + b; with
    the matrix's columns in this order those are the original columns [l*T/4, (l+1)*T/4), so each
    thread holds T/4 contiguous columns of a row: a group of up to T/4 is reduced inside one
    thread and its packed codes are one contiguous store. The kernel undoes the order on the
    logical tensor (a reshape + permute that moves no data), so results do not depend on it."""
    j = torch.arange(T)
    c, lb = j // 8, j % 8
    return (lb // 2) * (T // 4) + 2 * c + lb % 2


def _hadamard_like(transform) -> bool:
    return getattr(transform, "name", None) == "hadamard"


def make_plan(transform, K: int, group: int, tile: int | None = None) -> RotationPlan:
    """Pick the tile width T (multiple of the transform size and of the group, dividing K, grown
    to ``tile`` -- default 64 with a rotation, 128 without -- where K allows) and build the
    block-diagonal (T, T) matrix."""
    n = 0 if transform is None or getattr(transform, "name", None) == "identity" else int(transform.size)
    if n and K % n:
        raise ValueError(f"last dim {K} is not divisible by the transform size {n}")
    if K % group:
        raise ValueError(f"last dim {K} is not divisible by the group size {group}; pad K to a multiple of {group}")
    base = max(n, group)
    if K % base:
        raise ValueError(f"last dim {K} is not divisible by max(transform size {n}, group {group}) = {base}")
    target = tile or (64 if n else 128)
    tile = base
    while tile < target and K % (tile * 2) == 0:
        tile *= 2
    if not n:
        return RotationPlan(None, 0, None, tile)
    if _hadamard_like(transform):
        blk = transform._sign.to(torch.float32)                      # (n, n) +-1
        scale = float(torch.tensor(1.0 / math.sqrt(n), dtype=torch.float32))
    else:
        if not getattr(transform, "is_orthogonal", True):
            raise ValueError(f"{transform.name}: only transforms with apply == x @ M are supported "
                             "(the fused activation path); rotate weights with the engine")
        blk = transform.matrix(dtype=torch.float64, device="cpu").to(torch.float32)
        scale = None
    mat = torch.block_diag(*([blk] * (tile // n)))                      # (T, T)
    return RotationPlan(mat, n, scale, tile)


def rotate_twin(x: torch.Tensor, transform) -> torch.Tensor:
    """The kernel's rotation in torch: dtype(fp32(x_blk @ M) [* fl32(1/sqrt n)])."""
    if transform is None or getattr(transform, "name", None) == "identity":
        return x
    n = transform.size
    xb = x.float().reshape(*x.shape[:-1], x.shape[-1] // n, n)
    if _hadamard_like(transform):
        s = transform._sign.to(device=x.device, dtype=torch.float32)
        scale = torch.tensor(1.0 / math.sqrt(n), dtype=torch.float32, device=x.device)
        y = (xb @ s) * scale
    else:
        y = xb @ transform.matrix(dtype=torch.float64, device="cpu").to(device=x.device, dtype=torch.float32)
    return y.reshape(x.shape).to(x.dtype)


def rotate_quantize_twin(x: torch.Tensor, spec: QuantSpec, transform=None, output: str = "fake",
                         global_scale=None):
    """Pure-torch twin of :func:`rotate_quantize` (engine ``quantize`` on :func:`rotate_twin`)."""
    y = rotate_twin(x, transform)
    if output == "rotated":
        return y
    if output == "amax":
        return y.float().abs().amax().reshape(1)
    qt = quantize(y, spec, global_scale=global_scale)
    if output == "fake":
        return qt.dequantize()
    qw, sb = qt.pack()
    return qw.reshape(-1, qw.shape[-1]), sb.reshape(-1, sb.shape[-1]), qt.global_scale


# ----------------------------------------------------------------------------- kernel
@triton.jit
def _round_rotated(y, rot_scale, x_ptr, POST_SCALE: tl.constexpr, IS_BF16: tl.constexpr, HW_ROUND: tl.constexpr,
                   F2FP: tl.constexpr):
    """The fp32 dot times fl32(1/sqrt n) where not folded, rounded to the input dtype as the
    transforms do (the hardware cast rounds to nearest even; Triton's CPU interpreter truncates
    bf16, hence the bit version there)."""
    if POST_SCALE:
        y = y * rot_scale
    if HW_ROUND:
        if F2FP and IS_BF16:    # on the ALU pipe, not the conversion unit (see bf16_round_hw)
            y = bf16_round_hw(y)
        else:
            y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        y = round_to_dtype(y, IS_BF16).to(x_ptr.dtype.element_ty).to(tl.float32)
    return y


@triton.jit
def _rotq_tile(pid_m, pid_k, x_ptr, mat, mat2, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K, stride_xm,
               rot_scale, T: tl.constexpr, TO: tl.constexpr, G: tl.constexpr, BM: tl.constexpr,
               HAS_ROT: tl.constexpr, DOT_LOWP: tl.constexpr, POST_SCALE: tl.constexpr,
               MODE: tl.constexpr, IS_NV: tl.constexpr, IS_BF16: tl.constexpr,
               HW_ROUND: tl.constexpr, MX_MUL: tl.constexpr, NV_FMA: tl.constexpr, PERM: tl.constexpr,
               ROWP: tl.constexpr, NW: tl.constexpr, FCODE: tl.constexpr, EVEN: tl.constexpr,
               F2FP: tl.constexpr, FOLD: tl.constexpr, FOLDC: tl.constexpr, CS: tl.constexpr):
    """One (BM, T) tile: load, rotate, then store / track amax / quantize (see _rotq_kernel).

    ``FOLD`` > 1: the tile's BM rows are BM/FOLD rows of the input times FOLD adjacent T-column
    chunks (row i of the tile is input row i % (BM/FOLD), chunk i // (BM/FOLD); ``FOLDC``: the
    chunks fastest): the tile reads and writes BM/FOLD row segments of FOLD*T columns instead of BM
    of T (see _tile_rows).

    ``TO == T``: one dot with the (T, T) block matrix. ``TO == T // 2`` (the split, for a
    Sylvester Hadamard of size T = 2 TO): with the tile's halves a, b and H_T = [[H, H], [H, -H]],
    y = [a H + b H | a H + b (-H)]; each half is one chain of matrix-unit steps over a then b with
    ``mat`` = H and ``mat2`` = -H (TO x TO, columns in the matrix-unit order), i.e. the same fp32
    sums in the same order as the (BM, T) x (T, T) dot, but half the accumulator registers and half
    the matrix in shared memory; each half then goes through the epilogue on its own."""
    if TO == T:
        kk = tl.arange(0, T)
        if IS_NV and MODE == 2:
            rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            px = x_ptr + xrow[:, None] + kk[None, :]
        else:
            # the tile's pointer once per tile, the rows' offsets hoisted out of the walk: 5-8 fewer
            # instructions per tile (sm_90 SASS). Not for NVFP4 fake quant (ptxas then spills under its
            # 96-register cap) nor the split below (NVFP4 spills at 128; MXFP4 measured 0.3 points faster
            # at 4096x4096, 1.1 slower at 2048x4096: ab_quant_kernel.py --variant mxsplitptrs)
            rows, xrow = _tile_ptrs(x_ptr, tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            px = xrow[:, None] + kk[None, :]
        if EVEN:        # every row block of every program's walk is whole and inside: no masks
            x = tl.load(px)
        else:           # the mask also covers the row blocks past the end of a program's walk
            x = tl.load(px, mask=rows[:, None] < M, other=0.0)
        if HAS_ROT:
            if DOT_LOWP:   # bf16/fp16 input times the exact +-1 matrix: tensor cores, fp32 accumulate
                y = tl.dot(x, mat, out_dtype=tl.float32)
            else:
                y = tl.dot(x.to(tl.float32), mat, input_precision="ieee", out_dtype=tl.float32)
            y = _round_rotated(y, rot_scale, x_ptr, POST_SCALE, IS_BF16, HW_ROUND, F2FP)
        else:
            y = x.to(tl.float32)
        run_max = _rotq_epi(y, pid_m, pid_k, 0, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                            T, T, G, BM, HAS_ROT, DOT_LOWP, MODE, IS_NV, IS_BF16, HW_ROUND, MX_MUL, NV_FMA, PERM,
                            ROWP, NW, FCODE, EVEN, FOLD, FOLDC, CS)
    else:
        rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
        kh = tl.arange(0, TO)
        pa = x_ptr + xrow[:, None] + kh[None, :]
        if EVEN:
            xa = tl.load(pa)
            xb = tl.load(pa + TO)
        else:
            xa = tl.load(pa, mask=rows[:, None] < M, other=0.0)
            xb = tl.load(pa + TO, mask=rows[:, None] < M, other=0.0)
        for ch in tl.static_range(2):          # [a H + b H | a H + b (-H)]
            if ch == 0:
                mb = mat
            else:
                mb = mat2
            y = _round_rotated(_dot_chain(xa, xb, mat, mb, DOT_LOWP), rot_scale, x_ptr, POST_SCALE, IS_BF16, HW_ROUND, F2FP)
            run_max = _rotq_epi(y, pid_m, pid_k, ch, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                                T, TO, G, BM, HAS_ROT, DOT_LOWP, MODE, IS_NV, IS_BF16, HW_ROUND, MX_MUL, NV_FMA, PERM,
                                ROWP, NW, FCODE, EVEN, FOLD, FOLDC, CS)
    return run_max


@triton.jit
def _fold(i, BM: tl.constexpr, FOLD: tl.constexpr, FOLDC: tl.constexpr):
    """(input row within the tile, column chunk) of tile rows i: with ``FOLD`` > 1 the tile is
    BM/FOLD input rows x FOLD chunks (row i: input row i % (BM/FOLD), chunk i // (BM/FOLD); with
    ``FOLDC``, chunks fastest: input row i // FOLD, chunk i % FOLD); FOLD = 1: row i, chunk 0."""
    if FOLD == 1:
        return i, 0
    elif FOLDC:
        return i // FOLD, i % FOLD
    else:
        R: tl.constexpr = BM // FOLD
        return i % R, i // R


@triton.jit
def _tile_rows(i, pid_m, pid_k, stride, W: tl.constexpr, BM: tl.constexpr, FOLD: tl.constexpr, FOLDC: tl.constexpr):
    """(input row, offset of the row's first element) of tile rows i of tile (pid_m, pid_k), for an
    input with row stride ``stride`` and tiles W columns wide, the tile BM/FOLD input rows x FOLD
    chunks of W columns (:func:`_fold`). Offsets in elements of that input (codes, scale bytes:
    pass their stride and width)."""
    r, c = _fold(i, BM, FOLD, FOLDC)
    rows = pid_m * (BM // FOLD) + r
    return rows, rows * stride + (pid_k * FOLD + c) * W


@triton.jit
def _tile_ptrs(base, i, pid_m, pid_k, stride, W: tl.constexpr, BM: tl.constexpr, FOLD: tl.constexpr, FOLDC: tl.constexpr):
    """(input row, pointer to the row's first element) of tile rows i, as _tile_rows, with the
    pointer formed as (base + the tile's offset) + the row's offset within the tile: the tile's
    offset is one scalar per tile, the rows' offsets do not change from tile to tile (hoisted out
    of the walk), so each address is one 64-bit add of a loop-invariant offset."""
    r, c = _fold(i, BM, FOLD, FOLDC)
    R: tl.constexpr = BM // FOLD
    return pid_m * R + r, (base + (pid_m * R * stride + pid_k * FOLD * W)) + (r * stride + c * W)


@triton.jit
def _dot_chain(xa, xb, ma, mb, DOT_LOWP: tl.constexpr):
    """fp32 xa @ ma + xb @ mb as one chain of matrix-unit steps, xa's first (bf16/fp16 operands on
    the tensor cores; else float32 with IEEE products)."""
    if DOT_LOWP:
        return tl.dot(xb, mb, acc=tl.dot(xa, ma, out_dtype=tl.float32), out_dtype=tl.float32)
    else:
        return tl.dot(xb.to(tl.float32), mb, acc=tl.dot(xa.to(tl.float32), ma, input_precision="ieee", out_dtype=tl.float32),
                      input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def _rotq_epi(y, pid_m, pid_k, CH: tl.constexpr, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
              TT: tl.constexpr, T: tl.constexpr, G: tl.constexpr, BM: tl.constexpr,
              HAS_ROT: tl.constexpr, DOT_LOWP: tl.constexpr,
              MODE: tl.constexpr, IS_NV: tl.constexpr, IS_BF16: tl.constexpr,
              HW_ROUND: tl.constexpr, MX_MUL: tl.constexpr, NV_FMA: tl.constexpr, PERM: tl.constexpr,
              ROWP: tl.constexpr, NW: tl.constexpr, FCODE: tl.constexpr, EVEN: tl.constexpr,
              FOLD: tl.constexpr, FOLDC: tl.constexpr, CS: tl.constexpr):
    """Chunk CH (T columns) of the (BM, TT) tile (pid_m, pid_k), rotated and rounded in y:
    store it (MODE 0), track its amax (1), or quantize it (2 fake, 3 packed). Rows as _tile_rows.
    ``CS``: the packed codes and scale bytes (MODE 3) stored with the streaming cache hint (st.global.cs,
    evict first from L2)."""
    kk = tl.arange(0, T)
    NG: tl.constexpr = T // G
    if HAS_ROT:
        if PERM:    # mat's columns are in mma_column_order: back to column order (no data moves)
            y = tl.reshape(tl.permute(tl.reshape(y, (BM, T // 8, 4, 2)), (0, 2, 1, 3)), (BM, T))
    if ROWP:
        # Relabel the tile's rows (a logical reshape + permute, no data moves) so that the rows each
        # warp holds after the matrix units are the rows the stores' coalesced layout gives it:
        # row 16w + 8h + t of warp w (of NW) becomes row 8w + 8NW h + t, per 16NW-row slab. The
        # stores then need no round trip through shared memory; they write row srows[i].
        RS: tl.constexpr = BM // (16 * NW)
        y = tl.reshape(tl.permute(tl.reshape(y, (RS, NW, 2, 8, T)), (0, 2, 1, 3, 4)), (BM, T))
        lrow = tl.reshape(tl.permute(tl.reshape(tl.arange(0, BM), (RS, NW, 2, 8)), (0, 2, 1, 3)), (BM,))
    else:
        lrow = tl.arange(0, BM)
    # the rows' offsets in the output (K), the packed codes (K/8 words or K/2 bytes) and the scale bytes (K/G)
    srows, orow = _tile_rows(lrow, pid_m, pid_k, K, TT, BM, FOLD, FOLDC)
    CM: tl.constexpr = ".cs" if CS else ""      # MODE 3's stores: the streaming hint where CS
    if EVEN:
        rmask = None
    else:
        rmask = srows[:, None] < M
    if MODE == 0:
        tl.store(out_ptr + orow[:, None] + (CH * T + kk)[None, :], y.to(out_ptr.dtype.element_ty), mask=rmask)
    elif MODE == 1:     # (its sign is garbage with absmax2: the kernel takes |run_max| at the end)
        if HW_ROUND:
            run_max = absmax2(run_max, y)
        else:
            run_max = tl.maximum(run_max, tl.abs(y))
    else:
        y3 = tl.reshape(y, (BM, NG, G))
        if HW_ROUND and MODE == 3 and not IS_NV:    # max |y| per group, the |.| inside each max of the
            amax = tl.abs(tl.reduce(y3, 2, absmax2))            # tree (absmax2; see the note there)
        else:
            amax = tl.max(tl.abs(y3), axis=2)
        # q = fl32(y / s), computed without a per-element division where that gives the same
        # E2M1 code (tests/kernels/test_division_shortcuts.py checks each claim exhaustively):
        #  * MX, bf16/fp16 input: s = fl32(2^E/3) = 2^E/3 (1 + 2^-25) for E >= -124, and
        #    y*3*2^-E (<= 13 significant bits, exact) is within a quarter ulp of y/s, so
        #    fl32(y/s) = y*(3*2^-E). For E = -126/-125 the engine's scale is subnormal and off
        #    by +1.2e-7/-6.0e-8 (relative): y*3*2^-E is then still exact and >= 2^-10 (relative)
        #    from every E2M1 threshold unless it sits exactly on one, where the engine's quotient
        #    lies just below/above it; multiplying by (1 -/+ 2^-20) reproduces that side.
        #  * NV, bf16/fp16 input: Markstein's correction with r = RN(1/s) per group,
        #    q0 = RN(y r), rem = fma(-q0, s, y) (exact), q = fma(rem, r, q0) -- the sequence of
        #    CUDA's own div.rn fast path. Exact while nothing that matters under/overflows: with
        #    the global scale in [2^-40, 2^40] (checked once per program), s is in
        #    [2^-49, 2^49]; q >= 0.25 then keeps rem normal; an overflowing q0 (q > 2^127) gives
        #    NaN, which the saturating min() of the E2M1 index maps to 6 -- what q is. The sign
        #    (and the packer's zero rule) is taken from y and s, never from q. The group scale
        #    itself: nv_scale_fast.
        # z: the packer's bit 3 (negative or rounds to zero) as 1.0/0.0, for the packed codes of
        # MODE 3 only (pure arithmetic: where unused, the compiler drops it -- same SASS).
        if NV_FMA:                          # (NV_FMA implies IS_NV)
            if (g >= 9.094947017729282e-13) & (g <= 1099511627776.0):
                s, sbyte = nv_scale_fast(amax, g, rg, zbyte)
                sb3 = tl.broadcast_to(s[:, :, None], (BM, NG, G))
                r = rcp_rn(s)         # s in [2^-49, 2^49]: no range check needed
                q = div_markstein(y3, sb3, tl.broadcast_to(r[:, :, None], (BM, NG, G)))
                # the packer's "negative or rounds to zero" from y and s, not from q (an
                # overflowing Markstein step leaves q NaN): see nv_small_f
                z = nv_small_f(y3, tl.broadcast_to(nv_small_threshold(s, kz)[:, :, None], (BM, NG, G)), kz)
            else:
                s, sbyte = nv_scale(amax, g, True)
                sb3 = tl.broadcast_to(s[:, :, None], (BM, NG, G))
                q = tl.div_rn(y3, sb3)
                z = small_f(q, HW_ROUND)    # q = +-inf at worst here, never NaN
        else:
            if IS_NV:
                s, sbyte = nv_scale(amax, g, HW_ROUND)      # HW_ROUND: compiled, i.e. a real fma
            else:
                s, sbyte = mx_scale(amax)
            sb3 = tl.broadcast_to(s[:, :, None], (BM, NG, G))
            if MX_MUL:
                e = floor_log2(tl.maximum(amax, 1.1754943508222875e-38))
                c = pow2i(1 - e) * 1.5                            # 3 * 2^-E, exact
                c = tl.where(e >= -124, c, tl.where(e == -125, c * 1.00000095367431640625, c * 0.99999904632568359375))
                q = y3 * tl.broadcast_to(c[:, :, None], (BM, NG, G))
            else:
                q = tl.div_rn(y3, sb3)
            z = small_f(q, HW_ROUND)    # q finite (MX) or +-inf (NV, exact division), never NaN
        if MODE == 2:
            qb = y3.to(tl.int32, bitcast=True)                # sign of q = sign of y (s > 0)
            rr = e2m1_round(tl.abs(q))
            v = tl.minimum(rr, 6.0).to(tl.int32, bitcast=True) | (qb & -2147483648)   # sign
            dq = v.to(tl.float32, bitcast=True) * sb3 + 0.0   # + 0.0: zeros as +0.0, as the engine
            dq = tl.reshape(dq, (BM, T))
            if HW_ROUND:
                dq = dq.to(out_ptr.dtype.element_ty)
            else:
                dq = round_to_dtype(dq, IS_BF16).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + orow[:, None] + (CH * T + kk)[None, :], dq, mask=rmask)
        else:
            if FCODE:
                # code = E2M1 index | 8 (negative or zero), as a float 2^23 + code on the FMA pipe,
                # packed eight to an int32 word by integer multiply-adds (pk_ptr is int32 here).
                # MX: |q| < 6 (1 + 2^-20), no saturation needed.
                codef = tl.fma(z, 8.0, e2m1_index_f(tl.abs(q), IS_NV))
                words = pack_codes_f(tl.reshape(codef, (BM, T)), BM, T)
                _, wrow = _tile_rows(lrow, pid_m, pid_k, K // 8, TT // 8, BM, FOLD, FOLDC)
                tl.store(pk_ptr + wrow[:, None] + (CH * (T // 8) + tl.arange(0, T // 8))[None, :], words, mask=rmask,
                         cache_modifier=CM)
            else:
                code = e2m1_code(q, y3, IS_NV)     # MX: |q| < 6 (1 + 2^-20), no saturation needed
                lo, hi = tl.split(tl.reshape(code, (BM, T // 2, 2)))
                _, brow = _tile_rows(lrow, pid_m, pid_k, K // 2, TT // 2, BM, FOLD, FOLDC)
                tl.store(pk_ptr + brow[:, None] + (CH * (T // 2) + tl.arange(0, T // 2))[None, :],
                         (lo | (hi << 4)).to(tl.uint8), mask=rmask, cache_modifier=CM)
            _, grow = _tile_rows(lrow, pid_m, pid_k, K // G, TT // G, BM, FOLD, FOLDC)
            sptr = sb_ptr + grow[:, None] + (CH * NG + tl.arange(0, NG))[None, :]
            if HW_ROUND and not IS_NV:
                # MX: a group spans two lanes, a layout Triton's coalesced store would shuffle
                # through shared memory (a block barrier per tile); store each byte from the
                # registers instead (both lanes of a group write the same byte)
                if EVEN:
                    tl.inline_asm_elementwise("{ st.global" + CM + ".b8 [$1], $2; mov.b32 $0, 0; }",
                                              "=r,l,r", [sptr, sbyte.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
                else:
                    tl.inline_asm_elementwise(
                        "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global" + CM + ".b8 [$1], $2; mov.b32 $0, 0; }",
                        "=r,l,r,r", [sptr, sbyte.to(tl.int32), rmask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
            else:
                tl.store(sptr, sbyte, mask=rmask, cache_modifier=CM)
    return run_max


@triton.jit
def _sylvester_tile(R: tl.constexpr, N: tl.constexpr, PERM: tl.constexpr, V: tl.constexpr):
    """The (R, R) block-diagonal matrix of Sylvester Hadamard blocks of size N (N <= 256) with entries
    +-V -- (-1)^popcount(i & j) within a block, 0 outside -- its columns in mma_column_order where
    PERM: the matrix of RotationPlan.on(folded, permuted), built in registers (a few hundred integer
    instructions per program) instead of loaded, so that a program's first tile loads do not
    wait behind a load of the matrix."""
    i = tl.arange(0, R)[:, None]
    j = tl.arange(0, R)[None, :]
    if PERM:
        j = ((j % 8) // 2) * (R // 4) + 2 * (j // 8) + j % 2
    p = i & j & (N - 1)
    p = p ^ (p >> 4)
    p = p ^ (p >> 2)
    p = p ^ (p >> 1)
    return tl.where((i // N) == (j // N), tl.where((p & 1) == 1, -V, V), 0.0)


@triton.jit
def _gdc_wait(PDL: tl.constexpr):
    """0, returned by the instruction after griddepcontrol.wait (which waits for the previous kernel in
    the stream to complete and its writes to be visible) where ``PDL``: callers add it to their
    addresses, so that no load or store can be scheduled before the wait (Triton's own gdc_wait
    returns nothing to depend on)."""
    if PDL > 0:
        return tl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                         is_pure=False, pack=1)
    else:
        return 0


@triton.jit
def _rotq_kernel(x_ptr, m_ptr, out_ptr, pk_ptr, sb_ptr, amax_ptr, gs_ptr, gso_ptr,
                 M, K, stride_xm, rot_scale, tiles_k, row_step, iters,
                 T: tl.constexpr, TO: tl.constexpr, G: tl.constexpr, BM: tl.constexpr,
                 HAS_ROT: tl.constexpr, DOT_LOWP: tl.constexpr, POST_SCALE: tl.constexpr,
                 MODE: tl.constexpr, IS_NV: tl.constexpr, IS_BF16: tl.constexpr,
                 HW_ROUND: tl.constexpr, MX_MUL: tl.constexpr, NV_FMA: tl.constexpr, PERM: tl.constexpr,
                 ROWP: tl.constexpr, NW: tl.constexpr, FCODE: tl.constexpr, EVEN: tl.constexpr, STAGES: tl.constexpr,
                 ITERS_C: tl.constexpr, F2FP: tl.constexpr, HGEN: tl.constexpr, HVAL: tl.constexpr,
                 LINEAR: tl.constexpr, FOLD: tl.constexpr, FOLDC: tl.constexpr, PDL: tl.constexpr,
                 UNROLL: tl.constexpr, CS: tl.constexpr):
    """Persistent: each program loads (or builds) the rotation matrix once, keeps one column tile
    (pid % tiles_k) and walks the row blocks pid // tiles_k + i * row_step (the grid is
    tiles_k * row_step programs, so no division per tile; where row_step does not divide the row
    blocks, some walks are one tile shorter). MODE 0 rotated, 1 amax (one value per
    program), 2 fake quant, 3 packed codes + scale bytes. ``TO < T``: the split rotation of
    _rotq_tile, m_ptr holding H and -H (2 TO x TO). ``HGEN`` > 0: the matrix is the Sylvester
    Hadamard of that size with entries +-HVAL, built here (_sylvester_tile), not loaded.
    ``LINEAR``: the programs instead walk the tiles in row-major order, tile pid + i * row_step
    (row_step = the number of programs), each tile's row block and column tile advanced from the
    previous one's (one wrap, no division) -- any program count, so the grid can be exactly what
    fits on the SMs at once. ``FOLD``: each tile is BM/FOLD input rows x FOLD tile widths
    (_tile_rows); tiles_k and the row blocks count such tiles.

    ``PDL`` > 0 (launched with programmatic dependent launch): the program builds its Hadamard
    matrix and only then waits for the previous kernel in the stream to complete
    (griddepcontrol.wait); every global load and store depends on the wait's result, so nothing is
    read or written before the previous kernel's writes are visible -- the order of a launch
    without PDL, with this kernel's launch and set-up overlapping the previous kernel's end. It lets
    the next kernel launch (griddepcontrol.launch_dependents) at its start (``PDL`` 1: the next
    kernel's programs may then take free slots and do their set-up while this one runs), after its
    last tile (2), or when it exits (3).

    ``UNROLL``: the walk's loop unrolled by that factor (Triton's loop_unroll_factor; 1: not).
    ``CS``: packed codes and scale bytes stored with the streaming hint (see _rotq_epi).
    """
    if PDL == 1:
        gdc_launch_dependents()
    kk = tl.arange(0, TO)
    if HAS_ROT:
        if HGEN > 0:
            mat = _sylvester_tile(TO, HGEN, PERM, HVAL)
            if TO < T:
                mat2 = _sylvester_tile(TO, HGEN, PERM, -HVAL)
            else:
                mat2 = mat
            if DOT_LOWP:
                mat = mat.to(x_ptr.dtype.element_ty)
                mat2 = mat2.to(x_ptr.dtype.element_ty)
        else:
            zero = _gdc_wait(PDL)       # (the matrix may come from the previous kernel)
            mat = tl.load(m_ptr + zero + kk[:, None] * TO + kk[None, :])
            if TO < T:
                mat2 = tl.load(m_ptr + zero + TO * TO + kk[:, None] * TO + kk[None, :])
            else:
                mat2 = mat
            if not DOT_LOWP:
                mat = mat.to(tl.float32)
                mat2 = mat2.to(tl.float32)
    else:
        mat = 0.0
        mat2 = 0.0
    if (not HAS_ROT) or (HGEN > 0):
        zero = _gdc_wait(PDL)           # after the set-up that needs no memory
    pid = tl.program_id(0) + zero       # every address below depends on the wait
    if IS_NV and MODE >= 2:
        g = tl.load(gs_ptr + zero)
    else:
        g = 1.0
    if NV_FMA and MODE >= 2:   # per program: RN(1/g) and the scale byte of an all-zero group (scale 1) for nv_scale_fast
        rg = tl.div_rn(1.0, g)
        zbyte = e4m3_byte(e4m3_rne(tl.minimum(g, 448.0)))
        kz = nv_small_scale(g)
    else:
        rg = 1.0
        zbyte = 0
        kz = 1.0
    run_max = tl.zeros((BM, TO), dtype=tl.float32)
    pid_k = pid % tiles_k
    pid_m0 = pid // tiles_k
    if LINEAR:
        if ITERS_C > 0:  # (the interpreter: past the last tile the row block is past M: masked)
            for it in range(0, ITERS_C):
                t = pid + it * row_step
                run_max = _rotq_tile(t // tiles_k, t % tiles_k, x_ptr, mat, mat2, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                                     stride_xm, rot_scale, T, TO, G, BM, HAS_ROT, DOT_LOWP, POST_SCALE, MODE, IS_NV, IS_BF16,
                                     HW_ROUND, MX_MUL, NV_FMA, PERM, ROWP, NW, FCODE, EVEN, F2FP, FOLD, FOLDC, CS)
        else:
            # (row block, column tile) of tile pid + it * row_step, advanced by (dm, dk) per tile
            # with one wrap instead of a division per tile
            n_it = tl.cdiv(tl.cdiv(M, BM // FOLD) * tiles_k - pid, row_step)
            dm = row_step // tiles_k
            dk = row_step % tiles_k
            pm = pid_m0
            pk = pid_k
            for it in tl.range(0, n_it, num_stages=STAGES, loop_unroll_factor=UNROLL):
                run_max = _rotq_tile(pm, pk, x_ptr, mat, mat2, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                                     stride_xm, rot_scale, T, TO, G, BM, HAS_ROT, DOT_LOWP, POST_SCALE, MODE, IS_NV, IS_BF16,
                                     HW_ROUND, MX_MUL, NV_FMA, PERM, ROWP, NW, FCODE, EVEN, F2FP, FOLD, FOLDC, CS)
                pk = pk + dk
                wrap = pk >= tiles_k
                pk = tl.where(wrap, pk - tiles_k, pk)
                pm = pm + tl.where(wrap, dm + 1, dm)
    elif ITERS_C > 0:      # Triton's CPU interpreter needs a Python int as the loop bound
        for it in range(0, ITERS_C):
            run_max = _rotq_tile(pid_m0 + it * row_step, pid_k, x_ptr, mat, mat2, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                                 stride_xm, rot_scale, T, TO, G, BM, HAS_ROT, DOT_LOWP, POST_SCALE, MODE, IS_NV, IS_BF16,
                                 HW_ROUND, MX_MUL, NV_FMA, PERM, ROWP, NW, FCODE, EVEN, F2FP, FOLD, FOLDC, CS)
    else:
        if EVEN:
            n_it = iters
        else:   # a walk ends at the last row block: no idle masked tile where the stride is uneven
            n_it = tl.cdiv(tl.cdiv(M, BM // FOLD) - pid_m0, row_step)
        for it in tl.range(0, n_it, num_stages=STAGES, loop_unroll_factor=UNROLL):
            run_max = _rotq_tile(pid_m0 + it * row_step, pid_k, x_ptr, mat, mat2, out_ptr, pk_ptr, sb_ptr, g, rg, zbyte, kz, run_max, M, K,
                                 stride_xm, rot_scale, T, TO, G, BM, HAS_ROT, DOT_LOWP, POST_SCALE, MODE, IS_NV, IS_BF16,
                                 HW_ROUND, MX_MUL, NV_FMA, PERM, ROWP, NW, FCODE, EVEN, F2FP, FOLD, FOLDC, CS)
    if PDL == 2:
        gdc_launch_dependents()
    if MODE == 1:
        tl.store(amax_ptr + pid, tl.max(tl.max(tl.abs(run_max), axis=1), axis=0))
    if (MODE == 3) and (not IS_NV):
        if pid == 0:    # MX: the global scale returned with the codes, written here (not by a copy kernel)
            tl.store(gso_ptr + zero, tl.load(gs_ptr + zero))


_SM_COUNT: dict = {}
_PDL_OK: dict = {}
_CONST: dict = {}
_LAST: dict = {}


def last_launch_resources() -> dict:
    """Registers and spills per thread and shared memory per program of the last kernel launched
    on a GPU (for benchmarks: these set how many programs fit on an SM); {} if none."""
    k = _LAST.get("kernel")
    if k is None or not hasattr(k, "metadata"):
        return {}
    try:
        k._init_handles()
    except Exception:  # noqa: BLE001
        return {}
    return {"n_regs": getattr(k, "n_regs", None), "n_spills": getattr(k, "n_spills", None),
            "shared": getattr(k.metadata, "shared", None)}


def resolve_pdl(pdl, launch_default, env: str | None = None):
    """The PDL trigger of a launch: False or "start" / "end" / "exit". ``pdl``: None (the launch's
    default, unless the environment variable FPQ_PDL=0 -- ``env`` here, read from os.environ when
    None -- switches PDL off for every launch that does not ask for it), True (the launch's own
    trigger, "end" where it has none), False, or a trigger; anything else is an error."""
    if pdl is None:
        env = os.environ.get("FPQ_PDL", "1") if env is None else env
        if env not in ("0", "1"):
            raise ValueError(f"FPQ_PDL must be 0 or 1, got {env!r}")
        pdl = launch_default if env == "1" else False
    elif pdl is True:
        pdl = launch_default or "end"
    if pdl is not False and pdl not in ("start", "end", "exit"):
        raise ValueError(f"pdl must be True, False, 'start', 'end' or 'exit', got {pdl!r}")
    return pdl


def _pdl_capable(device) -> bool:
    """Programmatic dependent launch (griddepcontrol) needs sm_90 or newer."""
    if device.type != "cuda":
        return False
    k = device.index if device.index is not None else torch.cuda.current_device()
    if k not in _PDL_OK:
        _PDL_OK[k] = torch.cuda.get_device_capability(k)[0] >= 9
    return _PDL_OK[k]


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4                                       # interpreter: a few programs, loop exercised
    k = device.index if device.index is not None else torch.cuda.current_device()
    if k not in _SM_COUNT:
        _SM_COUNT[k] = torch.cuda.get_device_properties(k).multi_processor_count
    return _SM_COUNT[k]


def _const(value: float, device) -> torch.Tensor:
    """A cached one-element float32 device tensor (no host-to-device copy per call)."""
    k = (float(value), str(device))
    if k not in _CONST:
        _CONST[k] = torch.tensor([value], dtype=torch.float32, device=device)
    return _CONST[k]


def _row_stride(row_blocks: int, target: int, whole_blocks: bool) -> tuple[int, bool]:
    """The row-block stride of the programs' walk (programs per column tile), near ``target``:
    a divisor of ``row_blocks`` in [3/4 target, target] where one exists and the row blocks are
    whole (then every walk is full and the kernel needs no masks: ``even``), else the balanced
    stride cdiv(row_blocks, iters) (same iteration count; the kernel ends each walk at the last
    row block, so some walks are one tile shorter)."""
    if whole_blocks:
        for d in range(target, max(1, (3 * target) // 4) - 1, -1):
            if row_blocks % d == 0:
                return d, True
    iters = -(-row_blocks // target)
    step = -(-row_blocks // iters)
    return step, whole_blocks and step * iters == row_blocks


def grid_stride(row_blocks: int, tiles_k: int, sms: int, waves: int, small_waves: int | None,
                whole_blocks: bool) -> tuple[int, bool]:
    """(row stride, unmasked) of the persistent grid: tiles_k * stride programs, about
    ``sms * waves``; where that leaves a program one or two tiles and ``small_waves`` is given,
    about ``sms * small_waves`` programs instead (each then walks several tiles)."""
    target = max(1, min(row_blocks, (sms * waves) // tiles_k))
    step, even = _row_stride(row_blocks, target, whole_blocks)
    if small_waves and -(-row_blocks // step) <= 2:
        target = max(1, min(row_blocks, (sms * small_waves) // tiles_k))
        step, even = _row_stride(row_blocks, target, whole_blocks)
    return step, even


# Launch defaults from benchmarks/sweep_quant_kernel.py on the H100 (docs/performance.md).
# ``maxnreg``: a cap on registers per thread (None: the compiler's choice), which sets how many
# programs fit on an SM. ``small_waves``: programs per SM where ``waves`` would leave a program
# one or two tiles (small M): then each program walks several tiles, whose loads it pipelines,
# instead of many one-tile programs running in rounds that each wait for their loads
# (``sweep_quant_kernel.py --grid rowstep``: 2048x4096 NVFP4 49% -> 56%, MXFP4 56% -> 60%).
# ``walk``: "rows" (programs keep a column tile; ``waves`` ~ programs per SM, oversubscribed) or
# "linear" (exactly SMs * ``waves`` programs over all tiles in row-major order). ``large``: the
# launch used instead where the tiles number at least ``large_tiles_per_sm`` per SM.
# ``row_fold``: a tile of 64 rows is 64/F input rows x F tile widths of columns (_tile_rows) where K
# allows (else 16, 8, ...), so each load and store covers F times longer row segments (F = 32: two
# input rows of 2048 columns of 64-column tiles, 4096 of the had128 split's 128).
# ``sweep_quant_kernel.py --grid fold`` (seventh session): F = 4 against 1, MXFP4 +3 to +6 points on
# every shape, NVFP4 +0.5 to +2.5, had128 +0 to +2.5; F = 8 against 4, MXFP4 +0.5 to +2 (had128 +1
# to +2), NVFP4 -1 to +1. ``--grid widefold`` and ``--grid prefetch`` (eighth session, H100, each
# twice): F = 32 against 8, +1 to +2 points on most shapes, NVFP4 8192x14336 88.4 -> 92.0%; F = 16
# and 64 within a point of 32. ``fold_order="chunks"`` (consecutive tile rows = adjacent chunks of
# one input row): +1 at F = 8, nothing at F >= 16 (not the default). benchmarks/floor_quant_kernel.py:
# a kernel doing nothing but these loads and stores reaches at most 72-73% of copy at 2048x4096 with
# 64x64 tiles and 85-86% with 16x256 (docs/performance.md, section 1).
# ``pdl``: launched with programmatic dependent launch (sm_90+; see _rotq_kernel), the next kernel let
# launch at each program's "end" or "start" (``sweep_quant_kernel.py --grid pdl``, ninth session, H100,
# three runs each, against no PDL: "end" +0.2 to +2.2 points everywhere; "start" +0.7 to +3.5 where the
# programs fill the SM -- NVFP4's register cap, the had128 split's shared memory -- and 12 to 20
# points slower for MXFP4 packed codes, whose SMs keep room for the next kernel's programs (our
# reading, not profiled: they take it early)).
# ``stream_stores`` (packed codes only): the codes and scale bytes stored with st.global.cs (evict first from
# L2; thirteenth session, ``ab_quant_kernel.py --variant csstore``, H100, three runs each: 4096x4096 +0.4
# to +2.6 points, the other shapes within +-0.3).
DEFAULT_LAUNCH = {"block_m": 64, "num_warps": 4, "waves": 16, "stages": 3, "maxnreg": None, "small_waves": 4,
                  "walk": "rows", "row_fold": 32, "pdl": "end", "unroll": 1, "stream_stores": True}
NV_LAUNCH = dict(DEFAULT_LAUNCH, maxnreg=96)     # NVFP4: a 96-register cap gave 1-3% (64-column bf16 tiles)
# MXFP4 packed codes: 4 programs per SM walking all tiles (``--grid walk``: +0.4 to +6.5 points on
# the large shapes, the same on the small ones). NVFP4 packed codes: 5 programs per SM walking all
# tiles since the eighth session (at fold 8 and below NVFP4 lost 1-3 points that way; at fold 32,
# ``--grid nvwalk``, three runs each: +1.3 to +2.2 points on the weights, +0.3 at 2048x4096, -0.8 at
# 8192x14336, within its runs' spread; the had128 split keeps its own launch, where it lost 1-7)
MX_PACKED_LAUNCH = dict(DEFAULT_LAUNCH, walk="linear", waves=4)
NV_PACKED_LAUNCH = dict(NV_LAUNCH, walk="linear", waves=5, pdl="start")
# 128-column Hadamard tiles rotated as two halves (``split``): the two 64x64 matrices and two stages of
# 64x128 tiles are 48 KB of shared memory (4 programs per SM); NVFP4 needs 128 registers there (96 spill).
# Large shapes: three stages (64 KB, 3 programs per SM) and 3 programs per SM walking all tiles
# (``--grid split`` and ``--grid walk --rot 128``: +4 to +11 points against rows / 2 stages there;
# the ninth session put both small shapes on the latter). From 12 tiles per SM since the eleventh
# session (was 32): 4096x4096 (15.5 per SM) gains 1.8 (MXFP4) and 2.3 (NVFP4) points that way;
# 2048x4096 (7.8) keeps rows / 2 stages, 10 points ahead for MXFP4 (``--grid tail --rot 128``, its
# "tail 1" rows, three runs each; docs/performance.md, section 1).
SPLIT_LAUNCH = dict(DEFAULT_LAUNCH, stages=2, large_tiles_per_sm=12, pdl="start",
                    large={"walk": "linear", "waves": 3, "stages": 3})
NV_SPLIT_LAUNCH = dict(SPLIT_LAUNCH, maxnreg=128)


def launch_defaults(is_nv: bool, mode: int, split: bool, tiles: int, sms: int) -> dict:
    """The default launch for a format, output mode (0 rotated, 1 amax, 2 fake, 3 packed), split
    had128 rotation or not, and the number of (64-row) tiles on ``sms`` SMs."""
    if split:
        d = NV_SPLIT_LAUNCH if is_nv and mode >= 2 else SPLIT_LAUNCH
    elif is_nv and mode >= 2:
        d = NV_PACKED_LAUNCH if mode == 3 else NV_LAUNCH
    else:
        d = MX_PACKED_LAUNCH if mode == 3 else DEFAULT_LAUNCH
    if "large" in d and tiles >= d["large_tiles_per_sm"] * sms:
        d = dict(d, **d["large"])
    return d


def _launch(x2, plan: RotationPlan, spec, mode, out=None, pk=None, sb=None, amax=None, gs=None, block_m=None, num_warps: int | None = None, waves: int | None = None, stages: int | None = None,
            mma_order: bool | None = None, maxnreg: int | None = None, fma_codes: bool | None = None,
            f2fp: bool | None = None, row_step: int | None = None, split: bool | None = None,
            gen_matrix: bool | None = None, walk: str | None = None, row_fold: int | None = None,
            fold_order: str | None = None, pdl: bool | str | None = None, unroll: int | None = None,
            stream_stores: bool | None = None):
    """Launch the persistent kernel. MODE 1 returns its partial maxima (one per program, in a
    buffer allocated here); MODE 3 with an MX format returns the global scale the kernel copied
    from ``gs`` into a tensor allocated here (so the caller's constant is never handed out); the
    other modes write into the given outputs and return None."""
    M, K = x2.shape
    T, G = plan.tile, spec.group_size
    is_nv = spec.scale_precision == "e4m3"
    has_rot = plan.matrix is not None
    # a 128-column Sylvester tile rotated as two 64-column halves (see _rotq_tile), groups inside a half
    sp = has_rot and plan.splittable and (T // 2) % G == 0 and (True if split is None else bool(split))
    TO = T // 2 if sp else T
    dflt = launch_defaults(is_nv, mode, sp, triton.cdiv(M, block_m or DEFAULT_LAUNCH["block_m"]) * (K // T),
                           _sm_count(x2.device))
    bm = block_m or dflt["block_m"]
    # a tile of bm/rf input rows x rf chunks of T columns (_tile_rows): the default, else the largest
    # power of two below it that K and bm allow
    if row_fold is None:
        rf = dflt["row_fold"]
        while rf > 1 and (K % (rf * T) or bm % rf):
            rf //= 2
    else:
        rf = int(row_fold)
        if rf < 1 or bm % rf or K % (rf * T):
            raise ValueError(f"row_fold={rf}: needs block_m ({bm}) divisible by it and K ({K}) divisible by "
                             f"row_fold * tile width ({rf} * {T})")
    if fold_order not in (None, "rows", "chunks"):
        raise ValueError(f"fold_order must be 'rows' or 'chunks', got {fold_order!r}")
    tiles_k = K // (rf * T)
    bm_rows = bm // rf                                      # input rows per tile
    row_blocks = triton.cdiv(M, bm_rows)
    walk = walk or dflt["walk"]
    if walk not in ("rows", "linear"):
        raise ValueError(f"walk must be 'rows' or 'linear', got {walk!r}")
    linear = walk == "linear"
    if linear:      # SMs * waves programs walk the tiles in row-major order, stride = the program count
        total = row_blocks * tiles_k
        row_step = max(1, min(total, _sm_count(x2.device) * (waves or dflt["waves"]) if row_step is None else int(row_step)))
        even = M % bm_rows == 0 and (x2.is_cuda or total % row_step == 0)
    # tiles_k * row_step programs (about SMs * waves): each keeps its column tile and walks the
    # row blocks with stride row_step
    elif row_step is None:
        row_step, even = grid_stride(row_blocks, tiles_k, _sm_count(x2.device), waves or dflt["waves"],
                                     None if waves else dflt["small_waves"], M % bm_rows == 0)
    else:                                                   # benchmarks: the stride given
        row_step = max(1, min(int(row_step), row_blocks))
        even = M % bm_rows == 0 and row_blocks % row_step == 0
    iters = triton.cdiv(row_blocks * tiles_k if linear else row_blocks, row_step)
    nprog = row_step if linear else tiles_k * row_step
    interp = not x2.is_cuda
    # bf16/fp16 x +-1 matrix on the tensor cores (exact products). Triton's CPU interpreter reads
    # bf16 operands of tl.dot as raw integers, so there the tile is upcast first (same products).
    lowp = has_rot and plan.scale is not None and x2.dtype in (torch.bfloat16, torch.float16) and not interp
    fold_scale = plan.foldable
    perm = has_rot and T % 8 == 0 and (lowp or interp)     # (the interpreter: to test the order)
    if mma_order is not None:                                 # benchmarks: the order on/off
        perm = perm and mma_order
    # a Sylvester Hadamard is built in the kernel (no load before the first tiles); other matrices are loaded
    hgen = has_rot and plan.scale is not None and plan.n <= 256 and (True if gen_matrix is None else bool(gen_matrix))
    if has_rot and not hgen:
        mat = plan.on(x2.device, x2.dtype if lowp else torch.float32, folded=fold_scale, permuted=perm, split=sp)
    else:
        mat = x2
    small = x2.dtype in (torch.bfloat16, torch.float16)
    nw = num_warps or dflt["num_warps"]
    rowp = perm and bm % (16 * nw) == 0
    if mode == 1:
        amax = torch.empty(nprog, dtype=torch.float32, device=x2.device)
    gso = torch.empty(1, dtype=torch.float32, device=x2.device) if mode == 3 and not is_nv else None
    dummy = x2
    fcode = True if fma_codes is None else bool(fma_codes)
    if mode == 3 and fcode:
        pk = pk.view(torch.int32)                           # codes packed eight to a word
    # the NVFP4 cap is for 64-column tiles of bf16/fp16 (wider tiles and float32 would spill);
    # maxnreg=0: no cap (the compiler's choice)
    mr = (dflt["maxnreg"] if TO <= 64 and small else None) if maxnreg is None else (maxnreg or None)
    extra = {"maxnreg": mr} if mr and not interp else {}
    pdl = resolve_pdl(pdl, dflt["pdl"])
    unr = int(dflt["unroll"] if unroll is None else unroll)
    if unr < 1:
        raise ValueError(f"unroll must be >= 1, got {unroll!r}")
    use_pdl = 0 if pdl is False or not _pdl_capable(x2.device) else {"start": 1, "end": 2, "exit": 3}[pdl]
    if use_pdl:
        extra["launch_pdl"] = True
    _LAST["kernel"] = _rotq_kernel[(nprog,)](
        x2, mat, out if out is not None else dummy, pk if pk is not None else dummy,
        sb if sb is not None else dummy, amax if amax is not None else dummy, gs if gs is not None else dummy,
        gso if gso is not None else dummy,
        M, K, x2.stride(0), float(plan.scale or 1.0), tiles_k, row_step, iters,
        T=T, TO=TO, G=G, BM=bm, HAS_ROT=has_rot, DOT_LOWP=lowp, POST_SCALE=plan.scale is not None and not fold_scale,
        MODE=mode, IS_BF16=x2.dtype == torch.bfloat16, IS_NV=is_nv, HW_ROUND=not interp, PERM=perm, ROWP=rowp, NW=nw, FCODE=fcode, EVEN=even,
        MX_MUL=small and not is_nv, NV_FMA=small and is_nv and not interp,
        STAGES=None if interp else (stages or dflt["stages"]), ITERS_C=iters if interp else 0, num_warps=nw,
        F2FP=True if f2fp is None else bool(f2fp), HGEN=plan.n if hgen else 0,
        HVAL=float(plan.scale) if hgen and fold_scale else 1.0, LINEAR=linear, FOLD=rf, FOLDC=fold_order == "chunks", PDL=use_pdl,
        UNROLL=1 if interp else unr,
        CS=mode == 3 and bool(dflt["stream_stores"] if stream_stores is None else stream_stores),
        enable_fp_fusion=False, **extra)
    return amax if mode == 1 else gso


def rotate_quantize(x: torch.Tensor, spec: QuantSpec, transform=None, output: str = "fake",
                    global_scale=None, plan: RotationPlan | None = None, block_m: int | None = None,
                    num_warps: int | None = None, waves: int | None = None, stages: int | None = None,
                    mma_order: bool | None = None, maxnreg: int | None = None, fma_codes: bool | None = None,
                    f2fp: bool | None = None, row_step: int | None = None, split: bool | None = None,
                    gen_matrix: bool | None = None, walk: str | None = None, row_fold: int | None = None,
                    fold_order: str | None = None, pdl: bool | str | None = None, unroll: int | None = None,
                    stream_stores: bool | None = None):
    """Fused rotation + FP4 quantization; see the module docstring. ``global_scale`` (NVFP4):
    the fp32 encode scale to use; None computes it from the rotated input (an extra amax pass).
    A float or CPU tensor is checked here (finite, > 0); a CUDA tensor is used as is, without a
    host synchronisation (the engine's global scales are finite and positive by construction).
    ``block_m``/``num_warps``/``waves``/``stages``/``maxnreg``: launch overrides (rows per tile,
    warps, programs per SM, pipeline depth, register cap per thread, 0 = no cap); defaults in
    ``DEFAULT_LAUNCH`` (NVFP4 quantization: ``NV_LAUNCH``).
    For benchmarks (same results either way): ``mma_order=False`` turns the matrix-column order of
    :func:`mma_column_order` off; ``fma_codes=False`` computes the packed codes with the integer
    ``e2m1_code`` instead of the multiply-add path (``e2m1_index_f`` + ``pack_codes_f``);
    ``f2fp=False`` rounds the rotated values to bf16 with Triton's cast (F2F on the conversion
    unit) instead of :func:`bf16_round_hw` (F2FP on the ALU pipe); ``row_step`` sets the programs
    per column tile (the stride of their walk over row blocks) instead of ``waves``; ``split=False``
    rotates a 128-column Hadamard tile with one (T, T) matrix instead of two 64-column halves;
    ``gen_matrix=False`` loads a Hadamard matrix from memory instead of building it in the kernel;
    ``walk``: "rows" (each program keeps a column tile and walks its row blocks; ``waves`` about
    programs per SM) or "linear" (SMs * ``waves`` programs walk the tiles in row-major order;
    ``row_step`` then sets the program count); ``row_fold`` = F: each tile is block_m/F input rows
    times F adjacent tile-widths of columns (same matrix-unit work, longer row segments per load and
    store; 1 = block_m rows of one tile width); ``fold_order``: "rows" (the default: consecutive
    tile rows are consecutive input rows) or "chunks" (consecutive tile rows are adjacent chunks of
    one input row); ``pdl``: programmatic dependent launch (sm_90+, see _rotq_kernel): False (off),
    "start" / "end" / "exit" (where each program lets the next kernel in the stream launch), True
    (the launch's own choice, see ``DEFAULT_LAUNCH``); None: the launch's default (off for every
    call that leaves it None when the environment has FPQ_PDL=0); ``unroll``: the walk's loop
    unrolled by that factor (1, the default: not; 2 has fewer instructions per tile for MXFP4 but
    ran 6-10 points slower, ``sweep_quant_kernel.py --grid unroll``); ``stream_stores`` (packed
    output): the codes and scale bytes stored with the streaming cache hint (``.cs``, evict first
    from L2; the default, ``DEFAULT_LAUNCH``) or plainly (False: where a kernel that reads them
    follows at once, e.g. an FP4 matmul, and they should stay in L2)."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {list(_OUTPUTS)}, got {output!r}")
    if output in ("fake", "packed"):
        check_supported(spec, x)
    elif x.dtype not in _TL_DTYPES:
        raise TypeError(f"the fused kernel takes bf16/fp16/fp32 input, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("cannot quantize a 0-dim tensor")
    K = x.shape[-1]
    group = spec.group_size if output in ("fake", "packed") else 16
    plan = plan or make_plan(transform, K, group)
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    launch = dict(block_m=block_m, num_warps=num_warps, waves=waves, stages=stages, mma_order=mma_order, maxnreg=maxnreg,
                  fma_codes=fma_codes, f2fp=f2fp, row_step=row_step, split=split,
                  gen_matrix=gen_matrix, walk=walk, row_fold=row_fold, fold_order=fold_order, pdl=pdl, unroll=unroll,
                  stream_stores=stream_stores)
    if output == "rotated":
        out = torch.empty_like(x2)
        _launch(x2, plan, spec, 0, out=out, **launch)
        return out.reshape(x.shape)
    if output == "amax" or (spec.scale_precision == "e4m3" and global_scale is None):
        amax = _launch(x2, plan, spec, 1, **launch).amax().reshape(1)
        if output == "amax":
            return amax
        gs = global_encode_scale(amax, spec)          # fl32(2688/amax), 1 for an all-zero tensor
    elif spec.scale_precision == "e4m3":
        if isinstance(global_scale, torch.Tensor) and global_scale.is_cuda:
            gs = global_scale.reshape(1).to(torch.float32)
        else:
            gs = torch.as_tensor(global_scale, dtype=torch.float32).reshape(1)
            if not torch.isfinite(gs).all() or (gs <= 0).any():
                raise ValueError(f"global scale must be finite and > 0, got {gs.tolist()}")
            gs = gs.to(x.device)
    else:
        gs = _const(spec.mx_global_scale, x.device)
    if output == "fake":
        out = torch.empty_like(x2)
        _launch(x2, plan, spec, 2, out=out, gs=gs, **launch)
        return out.reshape(x.shape)
    pk = torch.empty(M, K // 2, dtype=torch.uint8, device=x.device)
    sb = torch.empty(M, K // spec.group_size, dtype=torch.uint8, device=x.device)
    # MX: the returned global scale is the kernel's own copy of the constant (a clone here was a
    # second kernel, 1.2-1.5 us in a CUDA graph: benchmarks/profile_quant_kernel.py --timeline)
    gso = _launch(x2, plan, spec, 3, pk=pk, sb=sb, gs=gs, **launch)
    return pk, sb, (gs if spec.scale_precision == "e4m3" else gso)
