"""The quant kernel's grid rule (host code, no GPU): the H100's 132 SMs and the default launch
give the strides the sweeps measured -- 32 for the large shapes (7-16 tiles per program), and
about 4 programs per SM where 16 per SM would leave a program one or two tiles."""
from __future__ import annotations

import itertools

import pytest

pytest.importorskip("triton")


def _h100(M, K, waves=16, small=4):
    from fpq_core.kernels.quant import grid_stride
    rb, tk = -(-M // 64), K // 64
    step, even = grid_stride(rb, tk, 132, waves, small, M % 64 == 0)
    return step, even, -(-rb // step), tk * step


@pytest.mark.parametrize("M, K, want", [
    (14336, 4096, (32, True, 7, 2048)), (4096, 14336, (8, True, 8, 1792)), (8192, 14336, (8, True, 16, 1792)),
    (4096, 4096, (8, True, 8, 512)), (2048, 4096, (8, True, 4, 512)),
])
def test_llama_shapes(M, K, want):
    assert _h100(M, K) == want


def test_small_rule_off_keeps_one_tile_programs():
    assert _h100(2048, 4096, small=None) == (32, True, 1, 2048)


def test_few_rows_or_narrow_k_keep_the_default():
    assert _h100(128, 4096)[:3] == (2, True, 1)           # two row blocks: nothing to walk
    assert _h100(2048, 576) == (32, True, 1, 288)          # 9 column tiles: the SMs are not the limit


def test_uneven_rows_walk_is_balanced():
    step, even, iters, _ = _h100(2000, 4096)
    assert not even and iters * step >= 32 and (iters - 1) * step < 32


def test_launch_defaults_follow_the_sweeps():
    """MXFP4 packed: 4 programs per SM over all tiles; NVFP4 packed: 5, 96 registers (fake quant: the
    rows walk); had128 split: 2 stages on 2048x4096, 3 programs per SM walking all tiles (3 stages)
    from 4096x4096 up."""
    from fpq_core.kernels.quant import launch_defaults
    tiles = lambda M, K, T: -(-M // 64) * (K // T)           # noqa: E731
    mx = launch_defaults(False, 3, False, tiles(2048, 4096, 64), 132)
    assert (mx["walk"], mx["waves"]) == ("linear", 4)
    assert launch_defaults(False, 2, False, tiles(2048, 4096, 64), 132)["walk"] == "rows"   # fake quant: unchanged
    nv = launch_defaults(True, 3, False, tiles(14336, 4096, 64), 132)
    assert (nv["walk"], nv["waves"], nv["stages"], nv["maxnreg"]) == ("linear", 5, 3, 96)
    nv_fake = launch_defaults(True, 2, False, tiles(14336, 4096, 64), 132)
    assert (nv_fake["walk"], nv_fake["maxnreg"]) == ("rows", 96)                  # fake quant: unchanged
    big = launch_defaults(True, 3, True, tiles(14336, 4096, 128), 132)
    assert (big["walk"], big["waves"], big["stages"], big["maxnreg"]) == ("linear", 3, 3, 128)
    small = launch_defaults(False, 3, True, tiles(2048, 4096, 128), 132)
    assert (small["walk"], small["stages"]) == ("rows", 2)
    assert launch_defaults(False, 3, True, tiles(4096, 4096, 128), 132)["walk"] == "linear"   # 15.5 tiles per SM
    assert launch_defaults(True, 3, True, tiles(4096, 4096, 128), 132)["stages"] == 3
    assert launch_defaults(False, 3, True, tiles(8192, 14336, 128), 132)["walk"] == "linear"
    # every launch folds 32 tile widths into a 64-row tile (2 input rows) where K allows
    assert all(launch_defaults(nv, mode, sp, tiles(2048, 4096, 64), 132)["row_fold"] == 32
               for nv in (False, True) for mode in (0, 1, 2, 3) for sp in (False, True))
    # programmatic dependent launch (--grid pdl): the next kernel let launch at the start where the
    # programs fill the SM (NVFP4 packed codes, the had128 split), after the last tile elsewhere
    assert nv["pdl"] == big["pdl"] == small["pdl"] == "start"
    assert mx["pdl"] == nv_fake["pdl"] == launch_defaults(False, 0, False, tiles(2048, 4096, 64), 132)["pdl"] == "end"
    for nv_, mode, sp, M in itertools.product((False, True), (0, 1, 2, 3), (False, True), (2048, 14336)):
        d = launch_defaults(nv_, mode, sp, tiles(M, 4096, 64), 132)
        # no launch unrolls its walk (--grid unroll: MXFP4 packed codes 6-10 points slower unrolled by 2);
        # packed codes and scale bytes stored with the streaming hint (ab_quant_kernel.py --variant nocs)
        assert d["unroll"] == 1 and d["stream_stores"] is True, (nv_, mode, sp, M)


def test_pdl_choice_and_its_switch():
    """pdl=None takes the launch's trigger unless FPQ_PDL=0; True the launch's (or "end"); a trigger
    itself; anything else, and an FPQ_PDL other than 0/1, is an error naming the choices."""
    from fpq_core.kernels.quant import resolve_pdl
    assert resolve_pdl(None, "start", env="1") == "start" and resolve_pdl(None, "end", env="0") is False
    assert resolve_pdl(True, "start", env="0") == "start" and resolve_pdl(True, False) == "end"
    assert resolve_pdl(False, "start", env="1") is False and resolve_pdl("exit", "start", env="0") == "exit"
    for bad in ("early", 1, 0, "START"):
        with pytest.raises(ValueError, match="pdl must be True, False, 'start', 'end' or 'exit'"):
            resolve_pdl(bad, "end", env="1")
    with pytest.raises(ValueError, match="FPQ_PDL must be 0 or 1"):
        resolve_pdl(None, "end", env="off")


def test_split_plan_is_the_sylvester_block_and_its_negative():
    """A 128-column Hadamard tile is [[H, H], [H, -H]]: splittable; its split matrix is H over -H,
    each with its columns in the matrix-unit order; narrower tiles and other rotations do not split."""
    import torch
    from fpq_core.kernels.quant import make_plan, mma_column_order
    from fpq_core.transforms import get_transform
    plan = make_plan(get_transform("hadamard", size=128), 4096, 16)
    assert plan.tile == 128 and plan.splittable
    m = plan.matrix
    h = m[:64, :64]
    assert torch.equal(m[:64, 64:], h) and torch.equal(m[64:, :64], h) and torch.equal(m[64:, 64:], -h)
    sp = plan.on("cpu", torch.float32, permuted=True, split=True)
    perm = mma_column_order(64)
    assert sp.shape == (128, 64) and torch.equal(sp[:64], h[:, perm]) and torch.equal(sp[64:], -h[:, perm])
    assert not make_plan(get_transform("hadamard", size=64), 4096, 16).splittable
    assert not make_plan(get_transform("hadamard", size=16), 4096, 16).splittable
    with pytest.raises(ValueError, match="cannot be split"):
        make_plan(get_transform("hadamard", size=16), 4096, 16).on("cpu", torch.float32, split=True)
