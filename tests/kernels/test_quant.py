"""Fused rotation + quantization kernel vs its torch twin (engine ``quantize``), bit for bit."""
from __future__ import annotations

import pytest
import torch

from .conftest import interp

pytestmark = pytest.mark.gpu

SPECS = ["mxfp4", "nvfp4"]


def _spec(name):
    from fpq_core.formats.spec import QuantSpec
    return QuantSpec.from_name(name)


def _x(m, k, dtype, dev, seed, zero_rows=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g))
    x[:, : k // 4] *= 20.0                          # outliers: groups of very different scale
    if zero_rows:
        x[1, :] = 0.0                               # all-zero groups (whole row)
        x[2, 32:64] = 0.0
        x[3, 5] = -0.0
    return x.to(dtype).to(dev)


def _bits(t):
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


SHAPES = [(8, 128), (33, 256)] if interp() else [(8, 128), (33, 256), (1000, 4096), (77, 14336)]


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_quant_only_bit_exact(dev, name, dtype, shape):
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import rotate_quantize
    spec = _spec(name)
    x = _x(*shape, dtype, dev, seed=shape[0] + shape[1])
    qt = quantize(x, spec)
    fake = rotate_quantize(x, spec, None, "fake")
    assert torch.equal(_bits(fake), _bits(qt.dequantize()))
    pk, sb, gs = rotate_quantize(x, spec, None, "packed")
    ref_pk, ref_sb = qt.pack()
    assert torch.equal(pk, ref_pk) and torch.equal(sb, ref_sb)
    assert torch.equal(gs, qt.global_scale)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("n", [16, 32, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_rotation_bit_exact_given_rotation(dev, name, n, dtype):
    """fused output == quantize(kernel's rotated values) bit for bit; the rotation itself is
    compared with the twin (fp32 matmul) and the engine (float64) by mismatch rate."""
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import rotate_quantize, rotate_twin
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=n)
    x = _x(40, 256, dtype, dev, seed=n)
    y = rotate_quantize(x, spec, t, "rotated")
    qt = quantize(y, spec)
    assert torch.equal(_bits(rotate_quantize(x, spec, t, "fake")), _bits(qt.dequantize()))
    pk, sb, _ = rotate_quantize(x, spec, t, "packed")
    rp, rs = qt.pack()
    assert torch.equal(pk, rp) and torch.equal(sb, rs)
    twin = rotate_twin(x, t)
    mism = (_bits(y) != _bits(twin)).float().mean().item()
    rel_twin = ((y.double() - twin.double()).norm() / twin.double().norm()).item()
    if dtype == torch.bfloat16:
        assert mism < 1e-2, mism           # last-bit differences of the fp32 sum rarely survive bf16 rounding
    assert rel_twin < 1e-6, rel_twin
    eng = t.apply(x.cpu()).to(dev)
    rel = ((y.double() - eng.double()).norm() / eng.double().norm()).item()
    assert rel < (1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_given_global_scale_and_amax(dev):
    from fpq_core.formats.quantize import global_encode_scale, quantize
    from fpq_core.kernels.quant import rotate_quantize
    spec = _spec("nvfp4")
    x = _x(16, 128, torch.bfloat16, dev, seed=3)
    amax = rotate_quantize(x, spec, None, "amax")
    assert amax.item() == x.float().abs().max().item()
    g = global_encode_scale(x * 2, spec)
    fake = rotate_quantize(x, spec, None, "fake", global_scale=g)
    assert torch.equal(_bits(fake), _bits(quantize(x, spec, global_scale=g).dequantize()))


def test_all_zero_tensor(dev):
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import rotate_quantize
    for name in SPECS:
        spec = _spec(name)
        x = torch.zeros(4, 64, dtype=torch.bfloat16, device=dev)
        pk, sb, gs = rotate_quantize(x, spec, None, "packed")
        rp, rs = quantize(x, spec).pack()
        assert torch.equal(pk, rp) and torch.equal(sb, rs)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extreme_group_scales(dev, name, dtype):
    """Groups whose amax spans the whole range of the dtype (subnormal MX scales, NVFP4 scales far
    from 1, bf16 subnormals): the kernel's division shortcuts and their fallbacks stay bit-exact."""
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import rotate_quantize
    spec = _spec(name)
    g = torch.Generator().manual_seed(7)
    lo, hi = (-133, 127) if dtype == torch.bfloat16 else (-24, 15)
    if interp() and dtype == torch.bfloat16:
        lo = -118          # Triton's interpreter converts bf16 subnormals wrongly (the GPU does not)
    exps = torch.arange(lo, hi + 1)
    G = spec.group_size
    rows = []
    for e in exps.tolist():
        v = torch.randn(2, G, generator=g) * 2.0 ** e
        rows.append(v)
    x = torch.cat(rows).to(dtype)
    x = x.reshape(-1, 4 * G) if x.shape[0] % 4 == 0 else x
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x)).to(dev)
    for sub in (x, x[: x.shape[0] // 3]):          # whole range; and the small-magnitude rows alone
        qt = quantize(sub, spec)
        assert torch.equal(_bits(rotate_quantize(sub, spec, None, "fake")), _bits(qt.dequantize()))
        pk, sb, _ = rotate_quantize(sub, spec, None, "packed")
        rp, rs = qt.pack()
        assert torch.equal(pk, rp) and torch.equal(sb, rs)
    if spec.scale_precision == "e4m3":
        # given global scales inside the kernel's fast range [2^-40, 2^40]: the groups' E4M3
        # scales run through zero, subnormals and saturation at 448 (quotients far above 6)
        for gval in (2.0 ** -30, 1.0, 2.0 ** 12, 2.0 ** 30, 3.0e-7):
            gs = torch.tensor([gval], dtype=torch.float32, device=dev)
            qt = quantize(x, spec, global_scale=gs)
            assert torch.equal(_bits(rotate_quantize(x, spec, None, "fake", global_scale=gs)), _bits(qt.dequantize()))
            pk, sb, _ = rotate_quantize(x, spec, None, "packed", global_scale=gs)
            rp, rs = qt.pack()
            assert torch.equal(pk, rp) and torch.equal(sb, rs), gval


def test_bad_dims_raise(dev):
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform
    x = torch.randn(4, 48, device=dev)
    with pytest.raises(ValueError, match="divisible"):
        rotate_quantize(x, _spec("mxfp4"), None, "fake")
    with pytest.raises(ValueError, match="divisible"):
        rotate_quantize(torch.randn(4, 96, device=dev), _spec("nvfp4"), get_transform("hadamard", size=64), "fake")
    with pytest.raises(ValueError, match="supports"):
        rotate_quantize(x[:, :32], _spec("int4"), None, "fake")


@pytest.mark.parametrize("name", SPECS)
def test_launch_configurations_give_the_same_bytes(dev, name):
    """Rows per tile, warps, programs per SM, the lane order, the walk over row blocks (fewer
    programs than column tiles, uneven row strides, a partial last row block), the packed-code
    path, the bf16 conversion, a loaded instead of built Hadamard matrix and the linear walk over
    tiles (any program count) change nothing."""
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=spec.group_size)
    # a partial last row block; more column tiles (of F x 64 columns, the default fold: 8 where K is
    # 2560, 32 on the GPU's K) than programs at waves=1 (the interpreter runs 4 "SMs", an H100 132)
    x = _x(130, 512 * 5 if interp() else 2048 * 134, torch.bfloat16, dev, seed=11)
    gs = torch.tensor([0.75], device=dev) if name == "nvfp4" else None
    ref = rotate_quantize(x, spec, t, "packed", global_scale=gs)
    fake = rotate_quantize(x, spec, t, "fake", global_scale=gs)
    for kw in (dict(waves=1), dict(waves=2), dict(block_m=128, num_warps=8), dict(block_m=32),
               dict(mma_order=False), dict(stages=2, waves=3), dict(maxnreg=72), dict(fma_codes=False),
               dict(f2fp=False), dict(row_step=2), dict(gen_matrix=False), dict(walk="linear"),
               dict(walk="linear", waves=1), dict(walk="linear", row_step=7), dict(row_fold=1), dict(row_fold=2),
               dict(row_fold=2, walk="linear"), dict(row_fold=4, block_m=32), dict(row_fold=8, block_m=128, num_warps=8),
               dict(unroll=2), dict(unroll=2, walk="linear"), dict(stream_stores=False),
               dict(stream_stores=False, walk="linear")):
        pk, sb, _ = rotate_quantize(x, spec, t, "packed", global_scale=gs, **kw)
        assert torch.equal(pk, ref[0]) and torch.equal(sb, ref[1]), kw
        assert torch.equal(_bits(rotate_quantize(x, spec, t, "fake", global_scale=gs, **kw)), _bits(fake)), kw
    with pytest.raises(ValueError, match="unroll must be >= 1"):
        rotate_quantize(x, spec, t, "packed", global_scale=gs, unroll=0)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("n", [16, 128])
def test_row_fold_gives_the_same_bytes(dev, name, n):
    """Tiles of block_m/F input rows x F tile widths (``row_fold``, default 32 where K allows; rows
    or chunks fastest, ``fold_order``) give the bytes of block_m x one tile width in every output
    mode -- rotated, amax, fake, packed --
    with a partial last row block (masks) and whole ones, on the rows and the linear walk; the
    had128 split tile too. A fold K or block_m does not allow is an error naming both, an unknown
    fold order an error naming it; the default falls back to no fold there."""
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=n)
    K = 1024 if n == 128 else 512
    for m, k, seed in ((70, K, 31), (64, K, 32), (35, 32 * 64 if n == 16 else 32 * 128, 34)):   # the last: fold 32
        x = _x(m, k, torch.bfloat16, dev, seed=seed)
        gs = torch.tensor([0.6], device=dev) if name == "nvfp4" else None
        ref = {o: rotate_quantize(x, spec, t, o, global_scale=gs, row_fold=1) for o in ("rotated", "amax", "fake", "packed")}
        for kw in (dict(), dict(row_fold=2), dict(row_fold=4), dict(row_fold=4, walk="linear"), dict(row_fold=4, walk="rows"),
                   dict(fold_order="chunks"), dict(row_fold=4, fold_order="chunks", walk="linear"),
                   dict(row_fold=4, fold_order="chunks", walk="rows"), dict(row_fold=8, fold_order="chunks")):
            assert torch.equal(_bits(rotate_quantize(x, spec, t, "rotated", **kw)), _bits(ref["rotated"])), kw
            assert torch.equal(rotate_quantize(x, spec, t, "amax", **kw), ref["amax"]), kw
            assert torch.equal(_bits(rotate_quantize(x, spec, t, "fake", global_scale=gs, **kw)), _bits(ref["fake"])), kw
            pk, sb, _ = rotate_quantize(x, spec, t, "packed", global_scale=gs, **kw)
            assert torch.equal(pk, ref["packed"][0]) and torch.equal(sb, ref["packed"][1]), kw
    h16 = get_transform("hadamard", size=16)
    gs = torch.tensor([0.6], device=dev) if name == "nvfp4" else None
    for k, bad in ((192, 2), (384, 4)):          # 3 / 6 tiles of 64: no fold of 2 / 4 (the default: 1 / 2)
        x = _x(64, k, torch.bfloat16, dev, seed=33)
        with pytest.raises(ValueError, match=f"row_fold={bad}"):
            rotate_quantize(x, spec, h16, "packed", row_fold=bad)
        with pytest.raises(ValueError, match="fold_order"):
            rotate_quantize(x, spec, h16, "packed", fold_order="cols")
        pk, sb, _ = rotate_quantize(x, spec, h16, "packed", global_scale=gs)
        pk1, sb1, _ = rotate_quantize(x, spec, h16, "packed", global_scale=gs, row_fold=1)
        assert torch.equal(pk, pk1) and torch.equal(sb, sb1)


@pytest.mark.parametrize("name", SPECS)
def test_whole_row_blocks_run_without_masks(dev, name):
    """M a multiple of the row block and a walk stride that divides the row blocks: the kernel's
    unmasked variant (``EVEN``) -- same bytes as the engine given the rotation, for several strides."""
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import _row_stride, rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=spec.group_size)
    x = _x(256, 64 * 6, torch.bfloat16, dev, seed=5)
    assert _row_stride(4, 4, True) == (4, True) and _row_stride(4, 3, True) == (2, True)
    assert _row_stride(5, 4, False)[1] is False
    qt = quantize(rotate_quantize(x, spec, t, "rotated"), spec, global_scale=None)
    gs = qt.global_scale if name == "nvfp4" else None
    rp, rs = qt.pack()
    for kw in (dict(), dict(waves=1), dict(block_m=32), dict(block_m=128, num_warps=8), dict(walk="linear"),
               dict(walk="linear", row_step=6), dict(row_fold=1), dict(row_fold=2, walk="linear")):
        pk, sb, _ = rotate_quantize(x, spec, t, "packed", global_scale=gs, **kw)
        assert torch.equal(pk, rp) and torch.equal(sb, rs), kw
        assert torch.equal(_bits(rotate_quantize(x, spec, t, "fake", global_scale=gs, **kw)), _bits(qt.dequantize())), kw


def test_mx_packed_global_scale_is_the_kernels_own_copy(dev):
    """MXFP4 packed output: the global scale comes back in a fresh tensor the kernel wrote (no
    copy kernel); a direct launch without that output never writes into the input."""
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import _launch, make_plan, rotate_quantize
    spec = QuantSpec.from_name("mxfp4")
    x = _x(64, 128, torch.bfloat16, dev, seed=3)
    x0 = x.clone()
    _, _, g1 = rotate_quantize(x, spec, None, "packed")
    _, _, g2 = rotate_quantize(x, spec, None, "packed")
    assert g1.item() == spec.mx_global_scale and g1.data_ptr() != g2.data_ptr()
    g1.mul_(3.0)                                   # the caller's tensor: later calls unaffected
    assert rotate_quantize(x, spec, None, "packed")[2].item() == spec.mx_global_scale
    pk = torch.empty(64, 64, dtype=torch.uint8, device=dev)
    sb = torch.empty(64, 4, dtype=torch.uint8, device=dev)
    gs = torch.full((1,), spec.mx_global_scale, dtype=torch.float32, device=dev)
    _launch(x, make_plan(None, 128, 32), spec, 3, pk=pk, sb=sb, gs=gs)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_hadamard_128_gives_the_same_bytes(dev, name, dtype):
    """A 128-column Hadamard tile rotated as two 64-column halves (H and -H, one chain of
    matrix-unit steps each): on the GPU with bf16 input (the matrix units) the bytes of the single
    (128, 128) dot -- rotated values, amax, fake quant, packed codes and scales -- with and without
    masks. float32 input (an FMA dot) and Triton's interpreter (numpy) may sum in another order:
    there the rotation agrees to float32 rounding. Always: the engine's bytes given the kernel's
    rotation."""
    from fpq_core.formats.quantize import quantize
    from fpq_core.kernels.quant import make_plan, rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=128)
    assert make_plan(t, 512, spec.group_size).splittable
    assert not make_plan(get_transform("hadamard", size=64), 512, spec.group_size).splittable
    for m, seed in ((130, 21), (128, 22)):                       # a partial row block; whole ones (no masks)
        x = _x(m, 512, dtype, dev, seed=seed)
        gs = torch.tensor([0.5], device=dev) if name == "nvfp4" else None
        y = rotate_quantize(x, spec, t, "rotated", split=True)
        y0 = rotate_quantize(x, spec, t, "rotated", split=False)
        fake = rotate_quantize(x, spec, t, "fake", global_scale=gs, split=True)
        pk, sb, _ = rotate_quantize(x, spec, t, "packed", global_scale=gs, split=True)
        # the Hadamard built in the kernel is the plan's matrix: loading it gives the same bytes
        assert torch.equal(_bits(y), _bits(rotate_quantize(x, spec, t, "rotated", split=True, gen_matrix=False)))
        assert torch.equal(pk, rotate_quantize(x, spec, t, "packed", global_scale=gs, gen_matrix=False)[0])
        if dtype == torch.bfloat16 and not interp():
            assert torch.equal(_bits(y), _bits(y0))
            assert torch.equal(rotate_quantize(x, spec, t, "amax", split=True),
                               rotate_quantize(x, spec, t, "amax", split=False))
            assert torch.equal(_bits(fake), _bits(rotate_quantize(x, spec, t, "fake", global_scale=gs, split=False)))
            pk0, sb0, _ = rotate_quantize(x, spec, t, "packed", global_scale=gs, split=False)
            assert torch.equal(pk, pk0) and torch.equal(sb, sb0)
        else:
            assert ((y.double() - y0.double()).norm() / y0.double().norm()).item() < 1e-6
        qt = quantize(y, spec, global_scale=gs)
        rp, rs = qt.pack()
        assert torch.equal(pk, rp) and torch.equal(sb, rs)
        assert torch.equal(_bits(fake), _bits(qt.dequantize()))


@pytest.mark.parametrize("name", SPECS)
def test_pdl_chain_reads_only_what_the_previous_kernel_finished(dev, name):
    """Programmatic dependent launch (``pdl=True``): each call lets the next kernel launch at once and
    waits for the previous one before it touches memory. A chain on one stream in which every call
    reads what the one before wrote -- rotated (into a fresh buffer), rotated again, fake quant, packed
    codes, with the had128 split and the NVFP4 global scale of an amax pass; the next kernel let
    launch at each program's start, end (the default) or exit -- gives, without any
    synchronisation, the bytes of the same chain launched without PDL (a load issued before the
    wait would read a buffer still being written). Launching with PDL after any other kernel
    changes nothing either. GPU only (the interpreter has no grid dependency control)."""
    if interp():
        pytest.skip("GPU only: programmatic dependent launch")
    from benchmarks.pdl_race_check import pdl_chain
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    x = _x(8192, 4096, torch.bfloat16, dev, seed=41)
    for n in (spec.group_size, 128):
        t = get_transform("hadamard", size=n)
        # each chain on other values (x * c), so that a read of a buffer the allocator handed back
        # before the previous call wrote it would see the last chain's bytes, not these
        for c, pdl in ((1.5, True), (-3.0, "start"), (0.375, "end"), (6.0, "exit"), (-0.75, "start")):
            torch.cuda._sleep(20_000_000)      # the GPU busy while Python queues the chain: back-to-back kernels
            got = pdl_chain(rotate_quantize, x, spec, t, c, pdl)
            ref = pdl_chain(rotate_quantize, x, spec, t, c, False)
            for a, b in zip(got, ref):
                assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (name, n, c, pdl)


@pytest.mark.parametrize("name", SPECS)
def test_pdl_option_is_checked_and_changes_no_byte(dev, name):
    """``pdl``: every accepted value gives the bytes of ``pdl=False`` (on a GPU before sm_90 and in
    the interpreter PDL is simply not used); anything else is an error naming the choices."""
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform
    spec = _spec(name)
    t = get_transform("hadamard", size=spec.group_size)
    x = _x(70, 512, torch.bfloat16, dev, seed=43)
    ref = rotate_quantize(x, spec, t, "packed", pdl=False)
    for pdl in (None, True, "start", "end", "exit"):
        pk, sb, gs = rotate_quantize(x, spec, t, "packed", pdl=pdl)
        assert torch.equal(pk, ref[0]) and torch.equal(sb, ref[1]) and torch.equal(gs, ref[2]), pdl
    with pytest.raises(ValueError, match="pdl must be True, False, 'start', 'end' or 'exit'"):
        rotate_quantize(x, spec, t, "rotated", pdl="early")
