"""The quant kernel's shortcuts around the per-element division q = fl32(y / s), checked
exhaustively (fpq_core/kernels/quant.py explains why they are exact):

* MX x3 rule, bf16/fp16 input: fl32(y / fl32(2^E/3)) == y * (3 * 2^-E) for every value y of the
  input dtype inside the group's range (|y| < 2^(E+1)) and every E with a normal scale -- a plain
  torch check, runs everywhere;
* NVFP4, bf16/fp16 input: Markstein's correction from r = RN(1/s) equals tl.div_rn for every
  input mantissa against every float32 divisor mantissa (2^30 / 2^33 pairs; scaling both by
  powers of two changes nothing away from under/overflow) -- needs the GPU's FMA;
* the E2M1 rounding by magic-number addition equals the engine's threshold ladder.
"""
from __future__ import annotations

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

    from fpq_core.kernels._common import div6_f64, div_markstein, e2m1, e2m1_code, e2m1_round
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
    def _div6_check(bad_ptr, BLOCK: tl.constexpr):
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = (1.0 + j.to(tl.float32) * 1.1920928955078125e-07).to(tl.float64)   # every float32 mantissa
        nbad = (div6_f64(a, True) != a / 6.0).to(tl.int32)
        tl.atomic_add(bad_ptr, tl.sum(nbad, axis=0))

    @triton.jit
    def _e2m1_check(q_ptr, out_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        q = tl.load(q_ptr + offs, mask=m, other=0.0)
        val, code = e2m1(q)
        rr = e2m1_round(tl.abs(q))
        packed = tl.where((code & 7) == 0, 8, code)          # what the reference packer stores
        ok = (tl.minimum(rr, 6.0) == tl.abs(val)) & (e2m1_code(q, q, True) == packed)
        # without saturation: the kernel guarantees |q| < 7 (MX) -- checked there only
        ok = ok & ((tl.abs(q) >= 7.0) | (e2m1_code(q, q, False) == packed))
        tl.store(out_ptr + offs, ok.to(tl.int8), mask=m)

    @triton.jit
    def _e2m1_nan_check(y_ptr, out_ptr, BLOCK: tl.constexpr):
        # NVFP4's overflowing quotient is NaN: saturates to 6 with y's sign
        y = tl.load(y_ptr + tl.arange(0, BLOCK))
        q = tl.full((BLOCK,), float("nan"), tl.float32)
        tl.store(out_ptr + tl.arange(0, BLOCK), e2m1_code(q, y, True))


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
    """e2m1_round and the packed code e2m1_code (with and without saturation) against the
    threshold ladder e2m1, zeros stored as 0x8."""
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
    _e2m1_check[((q.numel() + block - 1) // block,)](q, out, q.numel(), BLOCK=block)
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
