"""The quant kernel's shortcuts around the per-element division q = fl32(y / s), checked
exhaustively (fpq_core/kernels/quant.py explains why they are exact):

* MX x3 rule, bf16/fp16 input: fl32(y / fl32(2^E/3)) == y * (3 * 2^-E) for every value y of the
  input dtype inside the group's range (|y| < 2^(E+1)) and every E with a normal scale -- a plain
  torch check, runs everywhere;
* NVFP4, bf16/fp16 input: Markstein's correction from r = RN(1/s) equals tl.div_rn for every
  input mantissa against every float32 divisor mantissa (2^30 / 2^33 pairs; scaling both by
  powers of two changes nothing away from under/overflow) -- needs the GPU's FMA;
* the E2M1 rounding by magic-number addition equals the engine's threshold ladder, and so does
  the multiply-add index of the packed path (min of three roundings: a numpy twin over every
  float32 in [0, 16) under ``-m slow``, a sample of it by default);
* the packed path's bit 3 (negative or rounds to zero) from y and the group scale, without the
  quotient (NVFP4, GPU);
* the rounding of the rotated values to bf16 by the F2FP conversion (every float32, GPU).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import interp, kernel_device


def _all_positive(dtype):
    """Every positive finite value of a 16-bit float dtype, as float32."""
    bits = torch.arange(1, 0x7C00 if dtype == torch.float16 else 0x7F80, dtype=torch.int32).to(torch.int16)
    return bits.view(dtype).float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mx_division_is_a_multiplication(dtype):
    y = _all_positive(dtype)
    checked = 0
    for E in range(-124, 128):
        yy = y[y < 2.0 ** (E + 1)]
        if yy.numel() == 0:
            continue
        s = torch.tensor(2.0 ** E / 3.0, dtype=torch.float64).float()        # the engine's fl32(2^E/3)
        c = torch.tensor(1.5 * 2.0 ** (1 - E), dtype=torch.float32)           # the kernel's 3 * 2^-E
        q_div, q_mul = yy / s, yy * c
        # subnormal quotients (y far below the group's amax) may differ, but both are < 0.25,
        # so both round to the E2M1 code 0 -- the only thing the kernel uses them for
        tiny = q_div < 2.0 ** -126
        assert bool((q_mul[tiny] < 0.25).all())
        q_div, q_mul = q_div[~tiny], q_mul[~tiny]
        bad = (q_div.view(torch.int32) != q_mul.view(torch.int32)).nonzero()
        assert bad.numel() == 0, (E, yy[bad[:5, 0]].tolist())
        checked += yy.numel()
    assert checked > 10**6


@pytest.mark.parametrize("E, factor", [(-126, 1 - 2.0 ** -20), (-125, 1 + 2.0 ** -20)])
def test_mx_subnormal_scale_shortcut_gives_the_engines_codes(E, factor):
    """E = -126/-125 (group amax < 2^-124): the engine's scale is subnormal and y/s is no longer
    y*3*2^-E, but the kernel's y*(3*2^-E)*(1 -/+ 2^-20) gives the same E2M1 code for every bf16
    y of such a group, ties included."""
    from fpq_core.formats.e2m1 import e2m1_index
    y = _all_positive(torch.bfloat16)
    y = y[y < 2.0 ** (E + 1)]
    y = torch.cat([y, -y])
    s = torch.tensor(2.0 ** E / 3.0, dtype=torch.float64).float()
    c = torch.tensor(1.5 * 2.0 ** (1 - E), dtype=torch.float32) * torch.tensor(factor, dtype=torch.float32)
    engine, kernel = e2m1_index(y / s), e2m1_index(y * c)
    assert torch.equal(engine, kernel)
    ties = (y * torch.tensor(1.5 * 2.0 ** (1 - E), dtype=torch.float32)).abs()
    assert bool(torch.isin(ties, torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])).any())   # ties were tested


def test_mx_division_shortcut_needs_normal_scale():
    """Below the kernel's 2^-124 bound the scale is subnormal and the shortcut really differs
    (so the bound is needed, and the test above would catch a wrong one)."""
    y = _all_positive(torch.bfloat16)
    E = -126
    yy = y[y < 2.0 ** (E + 1)]
    s = torch.tensor(2.0 ** E / 3.0, dtype=torch.float64).float()
    c = torch.tensor(1.5 * 2.0 ** (1 - E), dtype=torch.float32)
    assert (yy / s != yy * c).any()


try:
    import triton
    import triton.language as tl

    from fpq_core.kernels._common import (bf16_round_hw, div6_f64, div_markstein, e2m1, e2m1_code, e2m1_index_f, e2m1_round,
                                         e4m3_byte, e4m3_byte_value_hw, e4m3_value, nv_group_e4m3, nv_group_e4m3_hw,
                                         nv_group_ro32, nv_small_f, nv_small_scale,
                                         nv_small_threshold, rcp_rn, small_f)
except ImportError:      # CPU-only install: the two Triton tests below skip
    triton = None

if triton is not None:
    @triton.jit
    def _markstein_check(bad_ptr, NI: tl.constexpr, MBITS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        j = pid * BLOCK + tl.arange(0, BLOCK)
        s = 1.0 + j.to(tl.float32) * 1.1920928955078125e-07          # every float32 mantissa in [1, 2)
        r = tl.div_rn(tl.full((BLOCK,), 1.0, tl.float32), s)
        nbad = tl.zeros((BLOCK,), dtype=tl.int32)
        for i in range(0, NI):
            y = 1.0 + i * (1.0 / (1 << MBITS))                          # every input mantissa in [1, 2)
            yv = tl.full((BLOCK,), y, tl.float32)
            q_ref = tl.div_rn(yv, s)
            q_fast = div_markstein(yv, s, r)
            nbad += (q_ref != q_fast).to(tl.int32)
        tl.atomic_add(bad_ptr, tl.sum(nbad, axis=0))

    @triton.jit
    def _rcp_check(bad_ptr, KLO, NK, BLOCK: tl.constexpr, RAW: tl.constexpr):
        # every float32 mantissa in [1, 2) times 2^k for k in [KLO, KLO + NK), both signs:
        # rcp_rn against div.rn(1, s); RAW: the bare rcp.approx instead (the control: it differs)
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = 1.0 + j.to(tl.float32) * 1.1920928955078125e-07
        nbad = tl.zeros((BLOCK,), dtype=tl.int32)
        one = tl.full((BLOCK,), 1.0, tl.float32)
        for i in range(0, NK):
            p = ((KLO + i + 127) << 23).to(tl.float32, bitcast=True)      # 2^k, exact
            for sg in tl.static_range(2):
                s = m * p
                if sg == 1:
                    s = -s
                ref = tl.div_rn(one, s)
                if RAW:
                    got = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [s], dtype=tl.float32,
                                                    is_pure=True, pack=1)
                else:
                    got = rcp_rn(s)
                nbad += (got.to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True)).to(tl.int32)
        tl.atomic_add(bad_ptr, tl.sum(nbad, axis=0))

    @triton.jit
    def _div6_check(bad_ptr, BLOCK: tl.constexpr):
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = (1.0 + j.to(tl.float32) * 1.1920928955078125e-07).to(tl.float64)   # every float32 mantissa
        nbad = (div6_f64(a, True) != a / 6.0).to(tl.int32)
        tl.atomic_add(bad_ptr, tl.sum(nbad, axis=0))

    @triton.jit
    def _e2m1_check(q_ptr, out_ptr, N, BLOCK: tl.constexpr, HW: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        q = tl.load(q_ptr + offs, mask=m, other=0.0)
        val, code = e2m1(q)
        rr = e2m1_round(tl.abs(q))
        packed = tl.where((code & 7) == 0, 8, code)          # what the reference packer stores
        ok = (tl.minimum(rr, 6.0) == tl.abs(val)) & (e2m1_code(q, q, True) == packed)
        # without saturation: the kernel guarantees |q| < 7 (MX) -- checked there only
        ok = ok & ((tl.abs(q) >= 7.0) | (e2m1_code(q, q, False) == packed))
        # the multiply-add path: 2^23 + code as a float
        z = small_f(q, HW)
        f_sat = tl.fma(z, 8.0, e2m1_index_f(tl.abs(q), True)).to(tl.int32, bitcast=True) - 0x4B000000
        f_raw = tl.fma(z, 8.0, e2m1_index_f(tl.abs(q), False)).to(tl.int32, bitcast=True) - 0x4B000000
        ok = ok & (f_sat == packed) & ((tl.abs(q) >= 7.0) | (f_raw == packed))
        tl.store(out_ptr + offs, ok.to(tl.int8), mask=m)

    @triton.jit
    def _nv_e4m3_check(a_ptr, g, out_ptr, N, BLOCK: tl.constexpr):
        # out: [ref value, hw value, ref byte, hw byte, value and byte of e4m3_byte_value_hw] per amax
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        amax = tl.load(a_ptr + offs, mask=m, other=0.0)
        ref = nv_group_e4m3(amax, g, True)                   # the float64 rule
        hw = nv_group_e4m3_hw(amax, g)
        tl.store(out_ptr + offs, ref, mask=m)
        tl.store(out_ptr + N + offs, e4m3_value(hw), mask=m)
        tl.store(out_ptr + 2 * N + offs, e4m3_byte(ref).to(tl.float32), mask=m)
        tl.store(out_ptr + 3 * N + offs, hw.to(tl.float32), mask=m)
        b2, v2 = e4m3_byte_value_hw(nv_group_ro32(amax, g))   # what nv_scale_fast uses
        tl.store(out_ptr + 4 * N + offs, v2, mask=m)
        tl.store(out_ptr + 5 * N + offs, (b2.to(tl.int32) & 0xFF).to(tl.float32), mask=m)

    @triton.jit
    def _nv_small_check(y_ptr, s_ptr, g, out_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        y = tl.load(y_ptr + offs, mask=m, other=0.0)
        s = tl.load(s_ptr + offs, mask=m, other=1.0)
        kz = nv_small_scale(g)
        z = nv_small_f(y, nv_small_threshold(s, kz), kz)
        want = tl.div_rn(y, s) <= 0.25
        tl.store(out_ptr + offs, ((z == 1.0) == want).to(tl.int8) & ((z == 0.0) | (z == 1.0)).to(tl.int8), mask=m)

    @triton.jit
    def _e2m1_nan_check(y_ptr, out_ptr, BLOCK: tl.constexpr):
        # NVFP4's overflowing quotient is NaN: saturates to 6 with y's sign
        y = tl.load(y_ptr + tl.arange(0, BLOCK))
        q = tl.full((BLOCK,), float("nan"), tl.float32)
        tl.store(out_ptr + tl.arange(0, BLOCK), e2m1_code(q, y, True))

    @triton.jit
    def _bf16_round_check(bad_ptr, base, BLOCK: tl.constexpr):
        # every float32 bit pattern base + [0, grid * BLOCK): the kernel's rounding to bf16 against
        # Triton's own cast (cvt.rn.bf16.f32 per element); NaN in, NaN out counts as equal
        bits = (base + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)).to(tl.int32)
        y = bits.to(tl.float32, bitcast=True)
        ref = y.to(tl.bfloat16).to(tl.float32)
        got = bf16_round_hw(y)
        same = (got.to(tl.int32, bitcast=True) == ref.to(tl.int32, bitcast=True)) | ((got != got) & (ref != ref))
        tl.atomic_add(bad_ptr, tl.sum((~same).to(tl.int32), axis=0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nv_markstein_division_exhaustive(dtype):
    if kernel_device() != "cuda":
        pytest.skip("needs a real FMA (CUDA); Triton's interpreter rounds fma twice")
    mbits = 7 if dtype == torch.bfloat16 else 10
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    block = 1024
    _markstein_check[((1 << 23) // block,)](bad, NI=1 << mbits, MBITS=mbits, BLOCK=block, enable_fp_fusion=False)
    assert bad.item() == 0


@pytest.mark.gpu
def test_rcp_rn_equals_division_for_every_float32_in_range():
    """rcp_rn (div.rn's fast path without its range check) is RN(1/s) -- bit for bit the
    division -- for every float32 s with |s| in [2^-64, 2^64): 2^24 values per exponent, 128
    exponents. The quant kernel uses it for NVFP4 group scales, which lie in [2^-49, 2^49]."""
    if kernel_device() != "cuda":
        pytest.skip("inline PTX (rcp.approx): GPU only (the kernel uses it on the GPU only)")
    bad = torch.zeros(2, dtype=torch.int32, device="cuda")
    _rcp_check[((1 << 23) // 1024,)](bad, -64, 128, BLOCK=1024, RAW=False, enable_fp_fusion=False)
    _rcp_check[((1 << 23) // 1024,)](bad[1:], -64, 128, BLOCK=1024, RAW=True, enable_fp_fusion=False)
    assert bad[0].item() == 0
    assert bad[1].item() > 0, "the bare approximation should differ somewhere: is the comparison live?"


@pytest.mark.gpu
def test_nv_amax_over_six_exhaustive():
    """The NVFP4 scale's float64 amax/6 by Markstein's correction equals the float64 division
    for every float32 amax mantissa (float32 exponents are far inside float64's normal range)."""
    if kernel_device() != "cuda":
        pytest.skip("needs a real FMA (CUDA)")
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    _div6_check[((1 << 23) // 1024,)](bad, BLOCK=1024, enable_fp_fusion=False)
    assert bad.item() == 0


def test_mx_scale_without_float64_division():
    """fl32(2^E/3) (the engine: float64 division, then float32) equals 2^E * fl32(1/3) for
    E >= -124 -- the kernel's formula -- and the subnormal E = -125, -126 are its two constants."""
    third = torch.tensor(1 / 3, dtype=torch.float64).float()
    for E in range(-126, 128):
        engine = torch.tensor(2.0 ** E / 3, dtype=torch.float64).float()
        if E >= -124:
            kernel = torch.tensor(2.0 ** E, dtype=torch.float32) * third
        else:
            kernel = torch.tensor({-125: 7.836628538382429e-39, -126: 3.9183149698404465e-39}[E], dtype=torch.float32)
        assert engine.view(torch.int32) == kernel.view(torch.int32), E


@pytest.mark.gpu
def test_e2m1_magic_rounding_equals_ladder(dev):
    """e2m1_round, the packed code e2m1_code and the multiply-add path (small_f + e2m1_index_f),
    with and without saturation, against the threshold ladder e2m1, zeros stored as 0x8."""
    # every bf16 value in [0, 16) plus each threshold and its float32 neighbours
    q = _all_positive(torch.bfloat16)
    q = q[q < 16.0]
    th = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], dtype=torch.float32)
    near = torch.cat([th, torch.nextafter(th, torch.zeros(())), torch.nextafter(th, torch.full((), 8.0))])
    if not interp():
        dense = torch.arange(0, 1 << 24, dtype=torch.float32) * (8.0 / (1 << 24))   # a 2^-21 grid over [0, 8)
        near = torch.cat([near, dense])
    big = torch.tensor([7.0, 7.99, 8.0, 9.0, 1e6, 3.0e38], dtype=torch.float32)
    q = torch.cat([torch.zeros(1), torch.tensor([-0.0]), q, near, big, -q, -near, -big]).to(dev)
    out = torch.empty(q.numel(), dtype=torch.int8, device=dev)
    block = 1024
    _e2m1_check[((q.numel() + block - 1) // block,)](q, out, q.numel(), BLOCK=block, HW=not interp())
    assert bool(out.bool().all()), q[~out.bool()][:8].tolist()


@pytest.mark.gpu
def test_e2m1_code_of_a_nan_quotient_saturates_with_the_inputs_sign(dev):
    if kernel_device() != "cuda":
        pytest.skip("GPU min() returns the non-NaN operand (numpy's, in the interpreter, does not); "
                    "the NaN quotient only arises on the GPU-only Markstein path")
    y = torch.tensor([3.0e38, -3.0e38, 1.0, -1.0], device=dev)
    out = torch.empty(4, dtype=torch.int32, device=dev)
    _e2m1_nan_check[(1,)](y, out, BLOCK=4)
    assert out.tolist() == [7, 15, 7, 15]


def _e2m1_ladder_np(m):
    return ((m > 0.25).astype(np.int32) + (m >= 0.75) + (m > 1.25) + (m >= 1.75) + (m > 2.5) + (m >= 3.5)
            + (m > 5.0))


def _e2m1_index_np(m, sat):
    """numpy twin of e2m1_index_f: float32 adds of exact products are the FFMAs' one rounding."""
    f32 = np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.fmin(np.fmin(m * f32(2) + f32(2 ** 23), m + f32(2 ** 23 + 2)), m * f32(0.5) + f32(2 ** 23 + 4))
        if sat:
            a = np.fmin(a, f32(2 ** 23 + 7))
    return a.view(np.int32) - 0x4B000000


def _check_index_rule(bits_lo, bits_hi, stride):
    bad = 0
    for lo in range(bits_lo, bits_hi, 1 << 25):
        m = np.arange(lo, min(lo + (1 << 25), bits_hi), stride, dtype=np.int64).astype(np.uint32).view(np.float32)
        ref = _e2m1_ladder_np(m)
        bad += int((_e2m1_index_np(m, True) != np.minimum(ref, 7)).sum())
        raw = m < 7
        bad += int((_e2m1_index_np(m[raw], False) != ref[raw]).sum())
    return bad


def test_e2m1_multiply_add_index_sampled():
    """The min-of-three rule against the ladder: every float32 within 2^16 ulps of each threshold
    (and of 2, 4, 6, 7, 8, the binade edges), a stride-101 sample of [0, 16), and huge/inf/NaN
    with saturation."""
    edges = [0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0]
    bad = sum(_check_index_rule(int(np.float32(e).view(np.int32)) - (1 << 16),
                                int(np.float32(e).view(np.int32)) + (1 << 16), 1) for e in edges)
    bad += _check_index_rule(0, int(np.float32(16.0).view(np.int32)), 101)
    huge = np.array([16, 1e10, 3e38, np.inf, np.nan, 6.0000005, 7, 7.999, 8, 100], dtype=np.float32)
    assert bad == 0
    assert _e2m1_index_np(huge, True).tolist() == [7] * len(huge)


@pytest.mark.slow
def test_e2m1_multiply_add_index_every_float32_below_16():
    assert _check_index_rule(0, int(np.float32(16.0).view(np.int32)), 1) == 0


@pytest.mark.gpu
def test_nv_small_flag_from_y_and_scale(dev):
    """nv_small_f (one FFMA.SAT per element) == (div_rn(y, s) <= 0.25) for group scales of given
    global scales 2^-40 .. 2^40 (every E4M3 value e, s = fl32(e/g), and s = 1), against every bf16
    and fp16 y in [s/16, s] of both signs, plus zeros and values that overflow y * kz."""
    if kernel_device() != "cuda":
        pytest.skip("fma.rm / fma.sat inline assembly: GPU only (the kernel uses it on the GPU only)")
    from fpq_core.formats.scales import e4m3_decode
    e = e4m3_decode(torch.arange(1, 0x7F, dtype=torch.uint8))      # every positive finite E4M3 value
    ys = torch.cat([_all_positive(torch.bfloat16), _all_positive(torch.float16)]).cuda()
    for lg in (-40, -17, -9, -3, 0, 2, 7, 11, 15, 23, 40):
        for gm in (1.0, 1.37):
            g = torch.tensor(2.0 ** lg * gm, dtype=torch.float32)
            s_all = torch.cat([(e.double() / g.double()).float(), torch.ones(1)]).cuda()
            for s in s_all[:: max(1, s_all.numel() // 24)]:
                y = ys[(ys >= s / 16) & (ys <= s)]
                y = torch.cat([y, -y, torch.tensor([0.0, -0.0, 3.0e38, -3.0e38, 1e-40, -1e-40], device="cuda")])
                sv = s.expand(y.numel()).contiguous()
                out = torch.empty(y.numel(), dtype=torch.int8, device="cuda")
                _nv_small_check[((y.numel() + 1023) // 1024,)](y, sv, g.item(), out, y.numel(), BLOCK=1024,
                                                               enable_fp_fusion=False)
                assert bool(out.bool().all()), (lg, gm, s.item(), y[~out.bool()][:6].tolist())


@pytest.mark.gpu
def test_nv_group_scale_rounding_to_odd_equals_float64_rule(dev):
    """nv_group_e4m3_hw (float64 -> float32 rounded to odd, then the hardware E4M3 cast) gives the
    float64 rule's E4M3 byte, and e4m3_value of that byte its value, for every positive bf16 and
    fp16 amax and global scales across the fast path's range (groups on E4M3 ties, subnormals,
    448); so does e4m3_byte_value_hw (the cast and the hardware decode, as the kernel's
    nv_scale_fast takes them). One thread holds one value here: the pairwise cast's partner is
    undefined."""
    if kernel_device() != "cuda":
        pytest.skip("inline PTX conversion: GPU only (the kernel uses it on the GPU only)")
    a = torch.cat([_all_positive(torch.bfloat16), _all_positive(torch.float16), torch.zeros(1)]).cuda()
    n = a.numel()
    out = torch.empty(6 * n, dtype=torch.float32, device="cuda")
    gs = [2.0 ** k * f for k in range(-40, 41, 3) for f in (1.0, 1.5, 1.3333333, 1.0000001)] + [6.0, 12.0, 448 * 6.0]
    fails = []
    for g in gs:
        g32 = float(torch.tensor(g, dtype=torch.float32))
        _nv_e4m3_check[((n + 127) // 128,)](a, g32, out, n, BLOCK=128, enable_fp_fusion=False)
        ref, hw, rb, hb, v2, b2 = out.view(6, n)
        bad = (ref != hw) | (rb != hb) | (ref != v2) | (rb != b2)
        if bool(bad.any()):
            i = bad.nonzero()[:4, 0]
            fails.append((g32, int(bad.sum()), [(a[j].item(), ref[j].item(), hw[j].item(), rb[j].item(), hb[j].item())
                                                for j in i.tolist()]))
    assert not fails, fails[:6]


@pytest.mark.gpu
def test_bf16_rounding_by_f2fp_every_float32():
    """The quant kernel's rounding of the rotated values to bf16 (cvt.rn.bf16x2.f32 with a zero
    partner) equals the per-element cast for all 2^32 float32 bit patterns."""
    if kernel_device() != "cuda":
        pytest.skip("inline PTX: needs CUDA")
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    block, step = 4096, 1 << 30
    for base in range(0, 1 << 32, step):
        _bf16_round_check[(step // block,)](bad, base, BLOCK=block)
    assert bad.item() == 0
