"""benchmarks/bench_quant_kernels.py rotates among enough input sets that no call reads its input
from the L2 cache (host code, no GPU)."""
from __future__ import annotations


def test_input_sets_hold_twice_the_l2():
    from benchmarks.bench_quant_kernels import input_sets
    l2 = 50 * 2**20                                   # the H100's L2
    for M, K in ((2048, 4096), (4096, 4096), (14336, 4096), (8192, 14336)):
        n = input_sets(M, K, l2_bytes=l2)
        assert n >= 3 and n * M * K * 2 >= 2 * l2
        assert n == 3 or (n - 1) * M * K * 2 < 2 * l2    # no more than needed beyond the minimum of 3
    assert input_sets(2048, 4096, l2_bytes=l2) == 7
    assert input_sets(2048, 4096, given=5, l2_bytes=l2) == 5
    assert input_sets(16, 64, l2_bytes=l2) == 64                 # tiny inputs: capped
