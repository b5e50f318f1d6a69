"""The quant kernel's profiling tool (benchmarks/profile_quant_kernel.py) on the CPU: the
timeline summary on records whose answer is known, and the instrumented copy of the kernel
(compiled for sm_90, no GPU): its loop does the kernel's arithmetic, loads and stores (only the
integer address arithmetic may be scheduled differently)."""
from __future__ import annotations

import os

import numpy as np
import pytest


def _rec(rows):
    return np.array(rows, dtype=np.int64)


def test_timeline_summary_of_known_records():
    from benchmarks.profile_quant_kernel import analyse_records
    # SM 0: two programs at once then one; SM 1: one program, finishes early. ns and cycles alike.
    rec = _rec([[0, 0, 100, 0, 100], [0, 0, 60, 0, 60], [0, 60, 200, 60, 200],
                [1, 10, 50, 10, 50]])
    r = analyse_records(rec, n_sms=2)
    assert r["programs"] == 4 and r["sms_used"] == 2
    assert r["programs_per_sm_at_once"] == 2
    assert r["span_us"] == pytest.approx(0.2)
    assert r["ramp_pct"] == pytest.approx(5.0)          # SM 1 starts at 10 of 200
    assert r["tail_pct"] == pytest.approx(75.0)         # SM 1 done at 50: 150 of 200 after
    assert r["sm_busy_pct"] == pytest.approx(100 * (200 + 40) / 2 / 200)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for sm_90")
def test_instrumented_copy_keeps_the_kernels_loop():
    pytest.importorskip("triton")
    import triton

    from benchmarks.profile_quant_kernel import _timeline_module
    from benchmarks.sass_quant_kernel import count_loop
    from fpq_core.kernels.quant import _rotq_kernel
    mod = _timeline_module()
    real = triton.compile

    def compile_i64(src, target=None, options=None):     # the records buffer is int64
        if src.fn is mod._rotq_kernel.fn:
            src.signature["amax_ptr"] = "*i64"
        return real(src, target=target, options=options)

    triton.compile = compile_i64
    try:
        inst, _, _ = count_loop(mod._rotq_kernel, "mxfp4")
    except FileNotFoundError as e:
        pytest.skip(f"cuobjdump not found: {e}")
    finally:
        triton.compile = real
    orig, _, _ = count_loop(_rotq_kernel, "mxfp4")
    # integer bookkeeping (addresses, the walk's tile indices and their wrap, in vector or uniform
    # registers as the compiler likes): may differ; the arithmetic, loads and stores may not
    address = {"IMAD", "IADD3", "MOV", "LEA", "VIADD", "SHF", "LOP3", "UIADD3", "UMOV", "ULEA",
               "ISETP", "UISETP", "SEL", "USEL", "PLOP3", "USHF"}
    assert {k: v for k, v in inst.items() if k not in address} == {k: v for k, v in orig.items() if k not in address}
    assert abs(sum(inst.values()) - sum(orig.values())) <= 0.02 * sum(orig.values())
