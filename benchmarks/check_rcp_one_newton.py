"""Is RN(1/s) reached with one Newton step fewer than rcp_rn? (GPU only)

``rcp_rn`` (fpq_core/kernels/_common.py, the quant kernel's NVFP4 group-scale reciprocal) runs
div.rn's fast path: rcp.approx, a Newton step, then the quotient's correction (two FFMAs each).
This checks the sequence without the first Newton step -- rcp.approx then one correction, two
FFMAs fewer per group -- against tl.div_rn(1, s) for every float32 mantissa at every exponent in
[2^-64, 2^64), both signs, as tests/kernels/test_division_shortcuts.py checks rcp_rn. The kernel
could take it only if nothing differs (Markstein's correction needs r = RN(1/s)).

    python benchmarks/check_rcp_one_newton.py --out OUT

Prints the number of differing values (and a few of them) and writes OUT/check_rcp_one_newton.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import device_info, write_json  # noqa: E402

try:
    import triton
    import triton.language as tl

    @triton.jit
    def _rcp1(s):
        return tl.inline_asm_elementwise(
            "{ .reg .f32 n, r, e; neg.f32 n, $1; rcp.approx.ftz.f32 r, $1; fma.rn.f32 e, n, r, 0f3F800000; "
            "fma.rn.f32 $0, r, e, r; }", "=f,f", [s], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _check(bad_ptr, first_ptr, KLO, NK, BLOCK: tl.constexpr):
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = 1.0 + j.to(tl.float32) * 1.1920928955078125e-07         # every float32 mantissa in [1, 2)
        one = tl.full((BLOCK,), 1.0, tl.float32)
        nbad = tl.zeros((BLOCK,), dtype=tl.int32)
        for i in range(0, NK):
            p = ((KLO + i + 127) << 23).to(tl.float32, bitcast=True)  # 2^k, exact
            for sg in tl.static_range(2):
                s = m * p
                if sg == 1:
                    s = -s
                diff = _rcp1(s).to(tl.int32, bitcast=True) != tl.div_rn(one, s).to(tl.int32, bitcast=True)
                nbad += diff.to(tl.int32)
        tl.atomic_add(bad_ptr, tl.sum(nbad, axis=0))
        # the mantissa index j of differing values (any exponent), up to the buffer's size
        slot = tl.atomic_add(bad_ptr + 1 + tl.zeros((BLOCK,), tl.int32), (nbad > 0).to(tl.int32), mask=nbad > 0)
        tl.store(first_ptr + slot, j, mask=(nbad > 0) & (slot < 64))
except ImportError:  # pragma: no cover
    triton = None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    if triton is None or not torch.cuda.is_available():
        raise SystemExit("needs CUDA and triton")
    bad = torch.zeros(2, dtype=torch.int32, device="cuda")
    first = torch.full((64,), -1, dtype=torch.int32, device="cuda")
    _check[((1 << 23) // 1024,)](bad, first, -64, 128, BLOCK=1024, enable_fp_fusion=False)
    n_bad, n_mant = int(bad[0]), int(bad[1])
    mants = [1.0 + j * 2.0 ** -23 for j in first.tolist() if j >= 0]
    print(f"one Newton step fewer: {n_bad} of {2 * 128 * (1 << 23)} values differ from RN(1/s) "
          f"({n_mant} mantissas); first mantissas: {mants[:8]}", flush=True)
    write_json(a.out, "check_rcp_one_newton", {"device": device_info(), "values_checked": 2 * 128 * (1 << 23),
                                               "values_differing": n_bad, "mantissas_differing": n_mant,
                                               "some_mantissas": mants})


if __name__ == "__main__":
    main()
