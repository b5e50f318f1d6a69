"""benchmarks/floor_quant_kernel.py: the access-pattern floor kernel writes what it says (the sum of
each 8 inputs' bits, the largest bits of each 32) for every tile shape and way of loading and
storing it, so its bandwidth is that of the bytes it claims to move."""
from __future__ import annotations

import pytest
import torch

from tests.kernels.conftest import interp

pytestmark = pytest.mark.gpu


def _reference(x):
    M, K = x.shape
    b = x.view(torch.int16).to(torch.int32)
    return b.reshape(M, K // 8, 8).sum(-1), b.reshape(M, K // 32, 32).amax(-1).to(torch.uint8)


@pytest.mark.parametrize("tile", ["64x64", "64x128/2", "64x128/s", "64x128/j", "32x256/4", "16x256"])
def test_floor_kernel_bytes(dev, tile):
    from benchmarks.floor_quant_kernel import floor_call, parse_tile
    bm, t, ch, how = parse_tile(tile)
    torch.manual_seed(0)
    x = torch.randn(128, 512, dtype=torch.bfloat16, device=dev)
    rw, rs = _reference(x)
    # the persistent walk needs a real GPU (the interpreter's tl.range takes no tensor start)
    walks = [("tile", 0, 1)] + ([] if interp() else [("linear", 1, 2), ("linear", 4, 3)])
    for walk, waves, stages in walks:
        w = torch.zeros(128, 512 // 8, dtype=torch.int32, device=dev)
        s = torch.zeros(128, 512 // 32, dtype=torch.uint8, device=dev)
        floor_call(x, w, s, bm, t, walk, waves, stages, ch=ch, how=how)
        assert torch.equal(w, rw) and torch.equal(s, rs), (tile, walk)


def test_floor_kernel_rejects_partial_tiles(dev):
    from benchmarks.floor_quant_kernel import floor_call
    x = torch.zeros(100, 512, dtype=torch.bfloat16, device=dev)
    with pytest.raises(ValueError, match="whole number"):
        floor_call(x, None, None, 64, 64, "tile", 0, 1)
