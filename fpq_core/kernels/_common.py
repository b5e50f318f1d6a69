"""Triton device functions shared by the kernels: the engine's ``numerics="exact"`` rules.

Every function reproduces one step of ``fpq_core.formats.quantize`` bit for bit:

* scale selection in float64 as the engine (float64 ``/`` lowers to div.rn.f64; float32
  divisions use ``tl.div_rn``, never ``/``, which Triton lowers to an approximate division);
* MX x3 rule: ``E = floor(log2(max(amax, 2^-126)))`` from the exponent bits,
  ``s = fl32(2^E / 3)``, byte ``E + 127``;
* NV: ``s0 = amax/6``, ``e = RNE_e4m3(min(s0*G, 448))`` with one rounding from float64,
  ``s = fl32(e / G)``, ``0 -> 1``;
* E2M1: ties-to-even thresholds, saturation at 6; the sign bit is ``q < 0`` (torch.sign(-0.) is
  +0., so a -0. input gives code 0x0, a small negative value gives 0x8 = -0.).

Kernels using these must be launched with ``enable_fp_fusion=False`` so that no multiply-add is
contracted into an FMA (the torch twin rounds each product separately).
"""
from __future__ import annotations

import triton
import triton.language as tl

MIN_NORMAL = 1.1754943508222875e-38  # 2^-126


@triton.jit
def pow2i(e):
    """2^e as float32 for integer e in [-126, 127] (built from the exponent bits)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def floor_log2(a):
    """floor(log2(a)) as int32 for positive normal float32 a (exact: exponent bits)."""
    return ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def mx_scale(amax):
    """(float scale 2^E/3, E8M0 byte E+127) of the FP-Quant x3 MXFP4 rule, exact numerics.

    The engine computes s0 = amax/6 and fl32(6*s0) in float64, which gives back amax exactly, so
    E is simply the exponent of max(amax, 2^-126). The engine's fl32(2^E/3) equals
    2^E * fl32(1/3) wherever that is normal (E >= -124: scaling by a power of two commutes with
    rounding); the two subnormal cases E = -126, -125 are constants. No float64 division."""
    e = floor_log2(tl.maximum(amax, 1.1754943508222875e-38))
    s = pow2i(tl.maximum(e, -124)) * 0.3333333432674408
    s = tl.where(e >= -124, s, tl.where(e == -125, 7.836628538382429e-39, 3.9183149698404465e-39))
    return s.to(tl.float32), (e + 127).to(tl.uint8)


@triton.jit
def e4m3_rne64(t):
    """Single RNE rounding of a non-negative float64 t <= 448 to E4M3 (as float64): adding
    c = 2^(max(floor(log2 t), -6) + 49) leaves exactly the E4M3 ulp in float64's mantissa."""
    tb = tl.maximum(t, 1e-300).to(tl.int64, bitcast=True)
    e = tl.maximum(((tb >> 52) & 0x7FF) - 1023, -6)
    c = ((e + 49 + 1023) << 52).to(tl.float64, bitcast=True)
    return (t + c) - c


@triton.jit
def e4m3_rne(v):
    """Round non-negative float32 v <= 448 to the nearest E4M3 value (ties to even), as float32.

    Adding c = 2^(max(floor(log2 v), -6) + 20) makes float32's own RNE drop the bits below the
    E4M3 ulp (2^(e-3), subnormal ulp 2^-9); subtracting c again is exact."""
    e = tl.maximum(floor_log2(tl.maximum(v, 1.1754943508222875e-38)), -6)
    c = pow2i(e + 20)
    return (v + c) - c


@triton.jit
def e4m3_byte(r):
    """Byte of a non-negative float32 r that is already an E4M3 value."""
    bits = r.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    normal = (((e + 7) << 3) | ((bits >> 20) & 7))
    sub = (r * 512.0).to(tl.int32)
    return tl.where(r >= 0.015625, normal, sub).to(tl.uint8)


@triton.jit
def div6_f64(a, EXACT_FMA: tl.constexpr):
    """RN64(a / 6) for float64 a: Markstein's correction from RN64(1/6) (three DFMAs instead of a
    float64 division; checked exhaustively over all float32 mantissas on the GPU). Triton's CPU
    interpreter has no real fma, so there (EXACT_FMA=False) it divides."""
    if EXACT_FMA:
        q0 = a * 0.16666666666666666
        rem = tl.fma(q0, -6.0, a)
        return tl.fma(rem, 0.16666666666666666, q0)
    else:
        return a / 6.0


@triton.jit
def nv_group_e4m3(amax, g, EXACT_FMA: tl.constexpr):
    """The NVFP4 group scale as the engine rounds it: s0 = amax/6 and t = s0*g in float64,
    e = RNE_e4m3(min(t, 448)) (one rounding), returned as float32 (exact: an E4M3 value)."""
    s0 = div6_f64(amax.to(tl.float64), EXACT_FMA)
    return e4m3_rne64(tl.minimum(s0 * g.to(tl.float64), 448.0)).to(tl.float32)


@triton.jit
def nv_scale(amax, g, EXACT_FMA: tl.constexpr):
    """(float scale e/G with 0 -> 1, E4M3 byte of clamp(fl32(s*G))) for NVFP4, exact numerics:
    s0 = amax/6 and t = s0*G in float64, e = RNE_e4m3(min(t, 448)) (one rounding), s = fl32(e/G).
    fl32(e/G) is a float32 division: e has <= 4 significant bits and G 24, so e/G is never within
    2^-49 (relative) of a float32 rounding boundary and the engine's float64 quotient rounds to the
    same float32."""
    e = nv_group_e4m3(amax, g, EXACT_FMA)
    s = tl.div_rn(e, g)
    s = tl.where(s == 0.0, 1.0, s)
    byte = e4m3_byte(e4m3_rne(tl.minimum(s * g, 448.0)))
    return s, byte


@triton.jit
def nv_scale_fast(amax, g, rg, zero_byte):
    """:func:`nv_scale` for a global scale g in [2^-40, 2^40], given rg = RN(1/g) and the byte
    of an all-zero group (``zero_byte`` = E4M3 byte of min(g, 448): its scale is 1). GPU only.

    * the E4M3 value e and its byte from one hardware cast and one decode
      (:func:`e4m3_byte_value_hw`); e == 0 (byte 0) marks the all-zero group, one predicate for
      both of its selects;
    * fl32(e/g) by Markstein's correction from rg (:func:`div_markstein`): e has at most 4
      significant bits, so it is among the bf16 mantissas the exhaustive check covers, and
      e/g lies in [2^-49, 2^49] (nothing under/overflows);
    * the byte straight from e: s = fl32(e/g) gives fl32(s*g) = e (1 + d) with |d| <= 2^-23,
      far inside E4M3's spacing (>= 2^-4 relative for normals, 2^-9 absolute for subnormals),
      so the engine's RNE_e4m3(min(s*g, 448)) is e itself, whose byte the cast gave."""
    b, e = e4m3_byte_value_hw(nv_group_ro32(amax, g))
    zero = e == 0.0
    s = tl.where(zero, 1.0, div_markstein(e, g, rg))
    byte = tl.where(zero, zero_byte, b)
    return s, byte.to(tl.uint8)


@triton.jit
def e4m3_value(b):
    """The value of E4M3 byte b (int32, 0..0x7E) as float32: b << 20 read as float32 bits has b's
    exponent field and mantissa in place, so it is 2^(E-127) (1 + m/8) for E >= 1 and the float32
    subnormal m 2^-129 for E = 0; times 2^120 (exact) that is 2^(E-7) (1 + m/8), resp. m 2^-9.
    (Not Triton's float8 -> float32 cast: see :func:`e4m3_byte_hw`.)"""
    return (b << 20).to(tl.float32, bitcast=True) * 1.329227995784916e+36


@triton.jit
def nv_group_e4m3_hw(amax, g):
    """:func:`nv_group_e4m3` with the E4M3 rounding in hardware (GPU only), as its byte (int32):
    t = fl64(fl64(amax/6) g) is rounded to float32 *to odd* (:func:`nv_group_ro32`: truncated by
    cvt.rz, its last bit set where the float64 mantissa bits the truncation dropped -- the low 29,
    for a normal float32 -- are not all zero) and the float32 to E4M3 cast (round to nearest even,
    saturating at 448) follows. Rounding to odd with at least two more bits than the target makes the second
    rounding equal to a single one (float32 keeps >= 20 more bits than E4M3 here).
    No min(t, 448) as in the float64 rule: the cast saturates, and min(RO32(t), 448) =
    RO32(min(t, 448)) (448 is a float32 and round to odd is monotone). A t below float32's normal
    range drops more than the 29 bits tested, but E4M3 rounds anything below 2^-10 to 0 whatever
    its last bit; a t above FLT_MAX truncates to FLT_MAX. (The tenth session's form: the earlier
    float64 min and the round trip to float64 for the inexact test were 8 more instructions per
    thread and tile in the quant kernel's NVFP4 loop, two of them on the conversion unit.)
    Checked against the float64 rule for every bf16 and fp16 amax and global scales across the
    fast path's range on the GPU."""
    return e4m3_byte_hw(nv_group_ro32(amax, g))


@triton.jit
def nv_group_ro32(amax, g):
    """t = fl64(fl64(amax/6) g) rounded to float32 to odd (GPU only), whose E4M3 rounding is the
    float64 rule's: see :func:`nv_group_e4m3_hw`."""
    t = div6_f64(amax.to(tl.float64), True) * g.to(tl.float64)
    f = tl.inline_asm_elementwise("cvt.rz.f32.f64 $0, $1;", "=f,d", [t], dtype=tl.float32, is_pure=True, pack=1)
    sticky = ((t.to(tl.int64, bitcast=True) & 0x1FFFFFFF) != 0).to(tl.int32)
    return (f.to(tl.int32, bitcast=True) | sticky).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_byte_hw(v):
    """E4M3 byte (int32) of RNE(v) for float32 v >= 0, by the hardware cast (saturating at 448).
    Not Triton's float8 cast: that converts values in pairs, and where a thread holds an odd
    number of them the partner is an undefined register -- ptxas was seen to return garbage for
    the defined half too. Here both halves of the pair are v."""
    h = tl.inline_asm_elementwise("{ .reg .b16 h; cvt.rn.satfinite.e4m3x2.f32 h, $1, $1; cvt.u32.u16 $0, h; }",
                                  "=r,f", [v], dtype=tl.int32, is_pure=True, pack=1)
    return h & 0xFF


@triton.jit
def e4m3_byte_value_hw(v):
    """(byte, value) of RNE_e4m3(v) for float32 v >= 0 (saturating at 448), GPU only: the byte as
    :func:`e4m3_byte_hw` gives it (int16 holding it in both bytes: store the low one) and the
    E4M3 value as float32, decoded by the hardware (cvt.rn.f16x2.e4m3x2 then float16 -> float32:
    exact, every E4M3 value is a float16) -- two conversions where :func:`e4m3_value` takes a
    mask, a shift, a mask and a multiply, and no mask for the byte."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; .reg .b32 p; cvt.rn.satfinite.e4m3x2.f32 $0, $2, $2; "
        "cvt.rn.f16x2.e4m3x2 p, $0; mov.b32 {lo, hi}, p; cvt.f32.f16 $1, lo; }",
        "=h,=f,f", [v], dtype=(tl.int16, tl.float32), is_pure=True, pack=1)


@triton.jit
def e2m1(q):
    """E2M1 rounding of q (float32): (value as float32, 4-bit code as int32)."""
    m = tl.abs(q)
    idx = ((m > 0.25).to(tl.int32) + (m >= 0.75).to(tl.int32) + (m > 1.25).to(tl.int32)
           + (m >= 1.75).to(tl.int32) + (m > 2.5).to(tl.int32) + (m >= 3.5).to(tl.int32)
           + (m > 5.0).to(tl.int32))
    f = idx.to(tl.float32)
    mag = tl.where(idx < 4, f * 0.5, tl.where(idx < 6, f - 2.0, tl.where(idx == 6, 4.0, 6.0)))
    neg = q < 0.0
    val = tl.where(neg, mag * -1.0, mag)   # not -mag: Triton negates as 0 - x, which loses -0.
    code = tl.where(neg, idx | 8, idx)
    return val, code


@triton.jit
def int_round(q, qmin, qmax):
    """clamp(round_half_even(q), qmin, qmax) for float32 q (magic-number RNE, |q| < 2^22)."""
    c = 12582912.0  # 1.5 * 2^23
    r = (q + c) - c
    r = tl.where(tl.abs(q) < 4194304.0, r, q)
    return tl.minimum(tl.maximum(r, qmin), qmax)


@triton.jit
def bf16_rne(y):
    """float32 -> the nearest bfloat16 value (ties to even), still as float32 (exactly
    representable in bf16, so a later cast is exact). Done on the bits because Triton's CPU
    interpreter truncates in its float32 -> bf16 cast (the GPU rounds to nearest even)."""
    b = y.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def bf16_round_hw(y):
    """float32 -> the nearest bfloat16 value (ties to even, subnormals kept), still as float32,
    by cvt.rn.bf16x2.f32 with a zero partner in the low half: the rounded value is then the
    float32 bit pattern itself (no shift back), and the F2FP it compiles to issues on the ALU
    pipe. Triton's own round trip is one F2F per element on the conversion unit (16 lanes per
    SM: a warp's F2F holds it 8 cycles) and a shift: the NVFP4 loop had 38 of them per thread,
    the conversion unit was 35% busy and the kernel 5% slower (benchmarks/sweep_quant_kernel.py
    --grid cvt, docs/performance.md). Every float32 is checked against the cast on the GPU."""
    b = tl.inline_asm_elementwise("{ .reg .f32 z; mov.f32 z, 0f00000000; cvt.rn.bf16x2.f32 $0, $1, z; }",
                                  "=r,r", [y.to(tl.int32, bitcast=True)], dtype=tl.int32, is_pure=True, pack=1)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def round_to_dtype(y, IS_BF16: tl.constexpr):
    if IS_BF16:
        return bf16_rne(y)
    else:
        return y


@triton.jit
def e2m1_round(m):
    """RNE of a non-negative float32 m onto the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6, 8, 12, ...}
    (not yet saturated), in one rounding: adding c = 2^(e + 22) with e = clamp(floor(log2 m), 0, 2)
    leaves exactly the grid's ulp (0.5, 1 or 2) in float32's mantissa, so float32's own RNE
    rounds to the grid (ties to even code); subtracting c again is exact. Same result as the
    threshold ladder of :func:`e2m1` (ties 0.25/1.25/2.5/5 down, 0.75/1.75/3.5 up)."""
    eb = tl.minimum(tl.maximum(m.to(tl.int32, bitcast=True) >> 23, 127), 129)
    c = ((eb + 22) << 23).to(tl.float32, bitcast=True)
    return (m + c) - c


@triton.jit
def div_markstein(y, s, r):
    """fl32(y / s) given r = RN(1/s) (one division per group instead of one per element):
    q0 = RN(y r); rem = fma(-q0, s, y) is exact; q = RN(q0 + rem r) is the correctly rounded
    quotient (Markstein's correction, the sequence of CUDA's div.rn fast path). Valid when nothing
    that matters under- or overflows (the quant kernel's conditions are in its comment). Needs a real FMA: not for
    Triton's CPU interpreter, whose fma rounds twice. Checked exhaustively over all bf16 and fp16
    mantissas against every float32 divisor mantissa in tests/kernels/test_division_shortcuts.py."""
    q0 = y * r
    rem = tl.fma(q0, s * -1.0, y)
    return tl.fma(rem, r, q0)


@triton.jit
def e2m1_code(q, y, SAT: tl.constexpr):
    """The 4-bit code the reference packer stores for q = fl32(y / s), s > 0: the E2M1 index of
    RNE(|q|) (ties to even code, saturating at 6), | 8 when y is negative or q rounds to zero
    (zeros are stored as 0x8). Same codes as the threshold ladder of :func:`e2m1`.

    With eb = the exponent bits of max(|q|, 1) (the binade, [0, 1) counted with [1, 2)), adding
    c = 2^(eb - 105) + 6 ulp(c) (bits cb = (eb << 23) + (22 << 23) + 6) rounds |q| to the
    binade's E2M1 spacing in one float32 rounding (RNE on the mantissa k + 6, whose parity is
    k's), so t = |q| + c holds k + 6 in its low mantissa bits, k the multiple of the spacing; the
    index k + 2 (eb - 127) is then (bits(t) + (cb >> 22)) & 7, since cb >> 22 = 2 eb + 44 and the
    exponent field of t and the offset 6 + 44 + 254 = 304 vanish mod 8. Needs |q| < 8 (eb <= 129):
    ``SAT`` caps |q| at 6 first (and maps a NaN quotient to 6; the sign comes from y); without
    it the caller guarantees |q| < 7 and q not NaN, and q <= 0.25 alone gives "negative or
    rounds to zero" (q has y's sign)."""
    m = tl.abs(q)
    if SAT:
        m = tl.minimum(m, 6.0)
        # m with y's sign: <= 0.25 exactly when y is negative or q rounds to zero
        ms = (m.to(tl.int32, bitcast=True) | (y.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)
        small = ms <= 0.25
    else:
        small = q <= 0.25
    cb = (tl.maximum(m, 1.0).to(tl.int32, bitcast=True) & 0x7F800000) + 184549382
    t = m + cb.to(tl.float32, bitcast=True)
    idx = (t.to(tl.int32, bitcast=True) + (cb >> 22)) & 7
    return idx | tl.where(small, 8, 0)


# ----------------------------------------------------------------------------- packed codes on the FMA pipe
# The packed-code path is bound by the integer/compare pipe (LOP3, SEL, FSETP, FMNMX issue at
# half the rate of FFMA on sm_90), so the functions below compute the code with float multiply-adds
# and pack it with integer multiply-adds (IMAD runs on the FMA pipe).

@triton.jit
def absmax2(a, b):
    """max(|a|, |b|) in magnitude, with the sign of a XOR b (max.xorsign.abs.f32, sm_86+; GPU only):
    the combine of the quant kernel's group amax (callers take |.| of the result). One FMNMX
    with both operands' absolute values, where tl.max(tl.abs(y)) left ptxas a LOP3 per element
    for the |.| it could not fold: 23 fewer instructions per thread and tile in the MXFP4 packed
    loop (522 -> 499), 44 in the NVFP4 had128 split's, 32 in the amax pass. Used for MXFP4 packed
    codes and the amax pass: on the H100 (benchmarks/ab_quant_kernel.py --variant absmax, three
    runs each) MXFP4 had128 4096x4096 75.8 -> 79.3% of copy, 2048x4096 68.3 -> 72.8%, the large
    shapes within a point; NVFP4 packed codes within a point, had128 on the small shapes 1 point
    slower, so NVFP4 keeps tl.max(tl.abs(y)); fake quant has 2 more instructions with it."""
    return tl.inline_asm_elementwise("max.xorsign.abs.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def rcp_rn(s):
    """RN(1/s), float32, for |s| in [2^-64, 2^64] (GPU only): MUFU.RCP (rcp.approx), then one
    correction e = 1 - s r, r + r e (two FFMAs). ``tl.div_rn(1, s)`` compiles to MUFU.RCP, a Newton
    step and that correction (four FFMAs) plus FCHK, which sends operands whose exponents could
    under/overflow an intermediate to a slow subroutine; in this range it never does, so the
    check, its branch and the call's set-up (about a dozen instructions per NVFP4 group in the
    quant kernel's loop) are dropped (tenth session), and the Newton step before the correction
    too (twelfth session: rcp.approx is within an ulp, and the one correction already lands on
    RN(1/s)). Checked against ``tl.div_rn`` for every float32 mantissa at every exponent in the
    range, both signs (2^31 values, none differ on the H100), in
    tests/kernels/test_division_shortcuts.py."""
    return tl.inline_asm_elementwise(
        "{ .reg .f32 n, r, e; neg.f32 n, $1; rcp.approx.ftz.f32 r, $1; fma.rn.f32 e, n, r, 0f3F800000; "
        "fma.rn.f32 $0, r, e, r; }",
        "=f,f", [s], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def e2m1_index_f(m, SAT: tl.constexpr):
    """2^23 + the E2M1 index of RNE(m) for m >= 0 (a float32 whose low mantissa bits are the index),
    in three multiply-adds and two or three minima:

        a1 = 2^23 + RNE(2m)        exact on [0, 2): spacing 0.5, index 2v
        a2 = 2^23 + RNE(m) + 2     exact on [2, 4): spacing 1,   index v + 2
        a4 = 2^23 + RNE(m/2) + 4   exact on [4, 8): spacing 2,   index v/2 + 4

    each one float32 rounding (the products are exact; the even offsets keep ties to even), and
    on its own interval each is the smallest of the three (2m <= m + 2 <= m/2 + 4 on [0, 2], the
    order reverses past 2 and 4, and RNE is monotone), so min(a1, a2, a4) is the index
    (checked for every float32 in [0, 16) in tests/kernels/test_division_shortcuts.py). Without
    ``SAT`` the caller guarantees m < 7; with it the minimum with 2^23 + 7 saturates (a huge, inf
    or NaN m gives 7: the hardware minimum returns the non-NaN operand)."""
    a = tl.minimum(tl.fma(m, 2.0, 8388608.0), m + 8388610.0)
    a = tl.minimum(a, tl.fma(m, 0.5, 8388612.0))
    if SAT:
        a = tl.minimum(a, 8388615.0)
    return a


@triton.jit
def fma_sat(a, b, c, HW: tl.constexpr):
    """clamp(fl32(a*b + c), 0, 1) -- one FFMA.SAT on the GPU (``HW``); a where() in the interpreter."""
    if HW:
        return tl.inline_asm_elementwise("fma.rn.sat.f32 $0, $1, $2, $3;", "=f,f,f,f", [a, b, c],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        v = tl.fma(a, b, c)
        return tl.where(v >= 1.0, 1.0, tl.where(v > 0.0, v, 0.0))


@triton.jit
def pack_codes_f(codef, R: tl.constexpr, C: tl.constexpr):
    """Pack (R, C) float32 codes 2^23 + c (c in 0..15) into (R, C/8) int32 words, code j of a word
    in bits 4j..4j+3 (the byte order of the reference packer: low nibble first, little-endian), by
    integer multiply-adds on the bits: sum_j bits_j 16^j = word + 0x4B000000 (1 + 16) mod 2^32."""
    b = codef.to(tl.int32, bitcast=True)
    lo, hi = tl.split(tl.reshape(b, (R, C // 2, 2)))
    b = lo + hi * 16
    lo, hi = tl.split(tl.reshape(b, (R, C // 4, 2)))
    b = lo + hi * 256
    lo, hi = tl.split(tl.reshape(b, (R, C // 8, 2)))
    return lo + hi * 65536 + 83886080          # + 0x05000000 == - 0xFB000000 (mod 2^32)


@triton.jit
def small_f(q, HW: tl.constexpr):
    """1.0 where q <= 0.25 (negative, or rounds to E2M1 zero: the packer's bit 3), else 0.0, for q
    not NaN: clamp(2^100 (0.25 + 2^-25 - q), 0, 1), whose sign is exact (q*2^100 is exact) and
    whose magnitude is >= 2^75 where positive (0.25 + 2^-25 is the float after 0.25)."""
    return fma_sat(q, -1.2676506002282294e30, 3.169126878359892e+29, HW)


@triton.jit
def nv_small_threshold(s, kz):
    """Per NVFP4 group, for :func:`nv_small_f`: kz * t with t the float after RD32(s (1/4 + 2^-26))
    (``kz``: the program's power of two from :func:`nv_small_scale`). GPU only (fma.rm)."""
    # kz folded into the fma's operands: kz RD(s/4 + s 2^-26) = RD(s (kz/4) + s (kz 2^-26)) and
    # kz nextfloat(x) = nextfloat(kz x), kz a power of two and every value here normal
    th = tl.inline_asm_elementwise("fma.rm.f32 $0, $1, $2, $3;", "=f,f,f,f", [s, kz * 1.4901161193847656e-08, s * (kz * 0.25)],
                                   dtype=tl.float32, is_pure=True, pack=1)
    return (th.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)


@triton.jit
def nv_small_scale(g):
    """kz = 2^(40 + max(floor(log2 g), -10)) for a global scale g in [2^-40, 2^40]: a power of two
    with kz ulp(s/4) >= 2^5 and kz s <= 2^80 for every group scale s of such a g (s is 1 or in
    [2^-9/g, 449/g])."""
    return pow2i(40 + tl.maximum(floor_log2(g), -10))


@triton.jit
def nv_small_f(y, tk, kz):
    """1.0 where RN(y / s) <= 0.25 (the packer's bit 3: negative, or rounds to E2M1 zero), else 0.0,
    from y and the group's ``tk`` = :func:`nv_small_threshold` -- not from the quotient, which an
    overflowing Markstein step leaves NaN. One FFMA.SAT per element. GPU only.

    RN(y/s) <= 1/4 iff y <= s (1/4 + 2^-26) (the midpoint below the float after 1/4 rounds to
    1/4, its even neighbour) iff y <= RD32(s (1/4 + 2^-26)) (y is a float) iff y < t, the next
    float. clamp(fma(y, -kz, kz t), 0, 1): the fma is exact before its one rounding, so its sign is
    that of t - y; kz t is exact (a power of two); where positive, it is >= kz ulp(t) >= 2^5;
    where y*kz overflows the result is -inf or +inf with the same sign."""
    return fma_sat(y, kz * -1.0, tk, True)
