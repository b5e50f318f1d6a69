"""The quant kernel's grid rule (host code, no GPU): the H100's 132 SMs and the default launch
give the strides the sweeps measured -- 32 for the large shapes (7-16 tiles per program), and
about 4 programs per SM where 16 per SM would leave a program one or two tiles."""
from __future__ import annotations

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
