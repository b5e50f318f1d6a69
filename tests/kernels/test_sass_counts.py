"""The SASS instruction-count tool of the quant kernel (benchmarks/sass_quant_kernel.py) on the
CPU: it needs triton (and the cuobjdump it ships), no GPU. It checks the tool still finds the
loop and its NVFP4 fast path (the source transformation it applies), and the design claim the
packed-code path rests on: the multiply-add codes move work off the integer/compare pipe; and
that the bf16 rounding of the rotated values no longer uses the conversion unit (F2F)."""
from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("Triton's interpreter mode replaces the kernels by interpreted functions: nothing to compile",
                allow_module_level=True)


def _counts(kernel, nv: bool, fcode: bool, f2fp: bool = True, opcodes: bool = False):
    from benchmarks.sass_quant_kernel import count_loop
    try:
        cnt, pipes, _ = count_loop(kernel, "nvfp4" if nv else "mxfp4", fma_codes=fcode, f2fp=f2fp)
    except FileNotFoundError as e:          # a triton without its bundled cuobjdump
        pytest.skip(f"cuobjdump not found: {e}")
    return (sum(cnt.values()), pipes) + ((cnt,) if opcodes else ())


def _loop(fmt: str, **compile_kw) -> list:
    """(opcode with its suffixes, operands) of each instruction of the hot module's loop over tiles,
    compiled for sm_90 (benchmarks.sass_quant_kernel._compile with ``compile_kw``)."""
    from benchmarks.sass_quant_kernel import _compile, _hot_module, _instructions, _longest_loop
    try:
        sass = _compile(_hot_module()._rotq_kernel, fmt, **compile_kw)[0]
    except FileNotFoundError as e:          # a triton without its bundled cuobjdump
        pytest.skip(f"cuobjdump not found: {e}")
    ins = _instructions(sass, suffixes=True)
    lo, hi = _longest_loop(ins)
    return [(op, rest) for a, op, rest in ins if lo <= a <= hi]


@pytest.mark.parametrize("nv", [False, True])
def test_fma_codes_take_work_off_the_integer_pipe(nv):
    from benchmarks.sass_quant_kernel import _hot_module
    kernel = _hot_module()._rotq_kernel
    total_f, pipes_f = _counts(kernel, nv, True)
    total_i, pipes_i = _counts(kernel, nv, False)
    assert total_f > 0 and total_i > 0
    assert pipes_f["int"] < 0.75 * pipes_i["int"], (pipes_f, pipes_i)
    assert pipes_f["fma"] > pipes_i["fma"]


@pytest.mark.parametrize("nv", [False, True])
def test_bf16_rounding_by_f2fp_leaves_the_conversion_unit(nv):
    """32 values per thread and tile: Triton's cast rounds each by an F2F (conversion unit); the
    kernel's bf16_round_hw by an F2FP (ALU pipe), with no more loop instructions."""
    from benchmarks.sass_quant_kernel import _hot_module
    kernel = _hot_module()._rotq_kernel
    total_on, pipes_on, cnt_on = _counts(kernel, nv, True, f2fp=True, opcodes=True)
    total_off, pipes_off, cnt_off = _counts(kernel, nv, True, f2fp=False, opcodes=True)
    assert cnt_off["F2F"] >= 32 and cnt_on["F2F"] <= cnt_off["F2F"] - 32, (cnt_on, cnt_off)
    assert pipes_on["xu"] <= pipes_off["xu"] - 32
    assert total_on <= total_off


@pytest.mark.parametrize("nv", [False, True])
@pytest.mark.parametrize("mode,split,gen,pdl", [(3, False, True, 0), (3, False, True, 1), (3, False, True, 2),
                                                (3, True, True, 1), (2, False, True, 2), (0, False, True, 3),
                                                (3, False, False, 1)])
def test_pdl_waits_before_any_global_access(nv, mode, split, gen, pdl):
    """Programmatic dependent launch, in the sm_90 SASS of the kernel as it is: the wait for the
    previous kernel (ACQBULK) comes before the first global load or store -- for packed codes,
    fake quant and rotated output, the had128 split, a built or a loaded matrix -- and the next
    kernel is let launch (PREEXIT) once: before the wait for the trigger "start", after the loop
    over tiles for "end", not at all (the exit does it) for "exit"; without PDL neither is there."""
    from benchmarks.sass_quant_kernel import pdl_order
    from fpq_core.kernels.quant import _rotq_kernel
    try:
        o = pdl_order(_rotq_kernel, "nvfp4" if nv else "mxfp4", mode=mode, split=split, gen=gen, pdl=pdl)
    except FileNotFoundError as e:          # a triton without its bundled cuobjdump
        pytest.skip(f"cuobjdump not found: {e}")
    if pdl == 0:
        assert o["wait"] == [] and o["trigger"] == [], o
        return
    assert len(o["wait"]) == 1 and o["wait"][0] < o["first_global"], o
    if pdl == 1:
        assert len(o["trigger"]) == 1 and o["trigger"][0] < o["wait"][0], o
    elif pdl == 2:
        assert len(o["trigger"]) == 1 and o["trigger"][0] > o["loop_end"], o
    else:
        assert o["trigger"] == [], o


def test_per_group_bound_counts_the_nvfp4_group_work():
    """--per-group-bound: the NVFP4 hot loop with its per-group work (scale byte, scale, reciprocal,
    zero threshold) replaced by one-instruction stand-ins is shorter, and still has every
    per-element step (the Markstein correction's two FFMAs per element remain)."""
    from benchmarks.sass_quant_kernel import _hot_module, _per_group_free_module, count_loop
    try:
        hot, _, per = count_loop(_hot_module()._rotq_kernel, "nvfp4")
        free, _, _ = count_loop(_per_group_free_module()._rotq_kernel, "nvfp4")
    except FileNotFoundError as e:
        pytest.skip(f"cuobjdump not found: {e}")
    assert sum(free.values()) < sum(hot.values())
    assert free["FFMA"] >= 6 * per and hot["DFMA"] > 0 and free["DFMA"] == 0   # the float64 scale rule is per group


def test_nvfp4_hot_loop_has_no_division_slow_path():
    """The NVFP4 group scale's reciprocal is rcp_rn (div.rn's fast path without its range check):
    the hot loop holds one MUFU.RCP per group and no FCHK and no call to the division's slow
    subroutine (tl.div_rn(1, s) put an FCHK, a branch and a CALL per group there)."""
    from benchmarks.sass_quant_kernel import _hot_module, count_loop
    try:
        hot, _, _ = count_loop(_hot_module()._rotq_kernel, "nvfp4")
    except FileNotFoundError as e:
        pytest.skip(f"cuobjdump not found: {e}")
    assert hot["FCHK"] == 0 and hot["CALL"] == 0, dict(hot)
    assert hot["MUFU"] == 2, dict(hot)          # two groups of 16 per thread and 64-column tile


@pytest.mark.parametrize("fmt", ["mxfp4"])
def test_packed_loop_takes_absolute_values_as_operand_modifiers(fmt):
    """The MXFP4 group amax's tree is FMNMX.XORSIGN with both operands' |.| (absmax2): of the LOP3s
    with the 0x7fffffff mask only the |.| of each group's result is left in the packed-code loop,
    two per thread and tile (tl.max(tl.abs(y)) left 28, one per element it could not fold). NVFP4
    keeps tl.max(tl.abs(y)), which measured as fast or faster there (absmax2's docstring)."""
    loop = _loop(fmt)
    assert len([r for op, r in loop if op.startswith("LOP3") and "0x7fffffff" in r]) <= 2
    xs = [r for op, r in loop if op.startswith("FMNMX.XORSIGN")]
    assert len(xs) >= 16 and all(r.count("|") >= 4 for r in xs), xs[:3]


@pytest.mark.parametrize("fmt,split", [("mxfp4", False), ("nvfp4", False), ("nvfp4", True)])
def test_packed_stores_carry_the_streaming_hint(fmt, split):
    """Packed codes and scale bytes: every global store of the loop is STG.E.EF (st.global.cs, evict
    first) with the default launch, none with CS off; the instruction count is the same."""
    def stores(cs):
        loop = _loop(fmt, split=split, CS=cs)
        return [op for op, _ in loop if op.startswith("STG")], len(loop)

    on, n_on = stores(True)
    off, n_off = stores(False)
    assert on and all(".EF" in op for op in on), on
    assert off and not any(".EF" in op for op in off), off
    assert len(on) == len(off) and n_on == n_off
