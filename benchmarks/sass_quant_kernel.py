"""Instruction counts of the fused quant kernel's main loop, from its sm_90 SASS -- no GPU needed.

Compiles ``fpq_core.kernels.quant._rotq_kernel`` for sm_90 with Triton (``triton.compile`` on an
``ASTSource`` with ``GPUTarget("cuda", 90, 32)``), disassembles it with the ``cuobjdump`` that
ships with Triton, takes the longest backward branch as the loop over row blocks and counts its
instructions by opcode and by the pipe that issues them on sm_90: ``int`` (integer/compare/select
pipe: LOP3, IADD3, SHF, LEA, SEL, FSEL, FMNMX, FSETP, ISETP, PRMT, ... -- 16 lanes per scheduler,
half the issue rate of FFMA), ``fma`` (FFMA/FMUL/FADD/IMAD/...), ``xu`` (conversions, MUFU),
``fp64``, ``mem``, ``other``.

The NVFP4 loop holds the fast path and the exact-division fallback of the global-scale range
check; ``--hot`` counts the fast path alone by compiling a copy of the module in which that
check is ``True`` and the fallback removed (the kernel itself is not changed).

    python benchmarks/sass_quant_kernel.py [--hot | --per-group-bound] [--out DIR]

``--per-group-bound``: the NVFP4 hot loop against a copy whose per-group work (scale byte, scale,
its reciprocal, the zero threshold) is replaced by one-instruction stand-ins -- wrong numerics,
counted only: the most any cheaper per-group path could take off the loop.

Prints one row per configuration (format, packed-code path on/off, unmasked variant on/off) and
writes OUT/sass_quant_kernel.json. Instructions per element = loop instructions / (BM*T/threads).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import quant_module_copy, write_json  # noqa: E402

PIPES = {
    "int": ("LOP3", "IADD3", "SHF", "LEA", "SEL", "FSEL", "FMNMX", "FSETP", "ISETP", "PRMT", "VIADD", "VIMNMX",
            "PLOP3", "IABS", "BMSK", "SGXT", "POPC", "FLO", "BREV", "LOP", "IMNMX", "ICMP",
            "F2FP"),    # F2FP: on the ALU pipe (ncu's pipe counters, benchmarks/profile_quant_kernel.py)
    "fma": ("FFMA", "FMUL", "FADD", "IMAD", "HFMA2", "HADD2", "HMUL2", "FSWZADD", "MOV", "IMUL"),
    "xu": ("F2F", "F2I", "I2F", "MUFU", "FRND", "I2FP", "F2IP"),
    "fp64": ("DFMA", "DMUL", "DADD", "DSETP", "DMNMX"),
    "mem": ("LDG", "STG", "LDS", "STS", "LDGSTS", "LDSM", "STSM", "LDC", "ULDC", "LDL", "STL", "ATOMG", "RED"),
}
_RANGE_CHECK = "            if (g >= 9.094947017729282e-13) & (g <= 1099511627776.0):\n"


def _pipe(op: str) -> str:
    for name, ops in PIPES.items():
        if op in ops:
            return name
    return "other"


def _hot_edit(src: str) -> str:
    if _RANGE_CHECK not in src:
        raise SystemExit("the global-scale range check was not found in quant.py; update _RANGE_CHECK")
    a = src.index(_RANGE_CHECK)
    b = src.index("            else:\n                s, sbyte = nv_scale(amax, g, True)", a)
    end_marker = "                z = small_f(q, HW_ROUND)    # q = +-inf at worst here, never NaN\n"
    e = src.index(end_marker, b) + len(end_marker)
    return src[:a] + "            if True:\n" + src[a + len(_RANGE_CHECK):b] + src[e:]


def _hot_module():
    """A copy of fpq_core.kernels.quant whose NVFP4 global-scale check is always true."""
    return quant_module_copy(_hot_edit, "fpq_quant_hot")


# NVFP4's work per group of 16 (scale byte, scale, 1/scale, the zero threshold), replaced by stand-ins
# of one instruction each: WRONG numerics, for counting only (``--per-group-bound``)
_PER_GROUP = (("                s, sbyte = nv_scale_fast(amax, g, rg, zbyte)\n",
               "                s = amax * 0.16666\n                sbyte = (amax.to(tl.int32, bitcast=True) >> 20).to(tl.uint8)\n"),
              ("                r = rcp_rn(s)         # s in [2^-49, 2^49]: no range check needed\n", "                r = amax * 6.0\n"),
              ("nv_small_threshold(s, kz)", "(amax * 0.25)"))


def _per_group_free_module():
    """The hot module with NVFP4's per-group work replaced by one-instruction stand-ins (wrong
    numerics): how many loop instructions that work costs -- the most a cheaper per-group path
    (e.g. a per-program table of scales by byte) could save."""
    def edit(src: str) -> str:
        src = _hot_edit(src)
        for old, new in _PER_GROUP:
            if old not in src:
                raise SystemExit(f"{old.strip()!r} not found in quant.py; update _PER_GROUP")
            src = src.replace(old, new)
        return src
    return quant_module_copy(edit, "fpq_quant_per_group_free")


def _sass(kernel, constexprs: dict, num_warps: int, maxnreg: int | None) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {"x_ptr": "*bf16", "m_ptr": "*bf16", "out_ptr": "*bf16", "pk_ptr": "*i32" if constexprs["FCODE"] else "*u8",
           "sb_ptr": "*u8", "amax_ptr": "*fp32", "gs_ptr": "*fp32", "gso_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32",
           "rot_scale": "fp32", "tiles_k": "i32", "row_step": "i32", "iters": "i32"}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in
             ("x_ptr", "m_ptr", "out_ptr", "pk_ptr", "sb_ptr", "amax_ptr", "gs_ptr", "gso_ptr", "M", "K", "stride_xm")}
    sig.update({k: "constexpr" for k in constexprs})
    opts = {"num_warps": num_warps, "enable_fp_fusion": False}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    k = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=opts)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    try:
        return subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def _instructions(sass: str, suffixes: bool = False) -> list:
    """(address, opcode, operands) of every SASS instruction; the opcode without its suffixes
    ("FMNMX") unless ``suffixes`` ("FMNMX.XORSIGN")."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if m:
            out.append((int(m.group(1), 16), m.group(3) if suffixes else m.group(3).split(".")[0], m.group(4)))
    return out


def _longest_loop(ins: list) -> tuple[int, int]:
    """(first, last address) of the longest backward branch's body: the loop over row blocks."""
    loops = []
    for addr, op, rest in ins:
        t = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if t and int(t.group(1), 16) < addr:
            loops.append((int(t.group(1), 16), addr))
    if not loops:
        raise SystemExit("no loop found in the SASS")
    return max(loops, key=lambda p: p[1] - p[0])


def loop_counts(sass: str) -> collections.Counter:
    """Opcode counts of the longest backward branch's body (the loop over row blocks)."""
    ins = _instructions(sass)
    lo, hi = _longest_loop(ins)
    return collections.Counter(op for addr, op, _ in ins if lo <= addr <= hi)


def _compile(kernel, fmt: str, mode: int = 3, split: bool = False, gen: bool = True, **over) -> tuple[str, int, int]:
    """(sm_90 SASS, block_m, warps) of ``kernel`` for bf16 input with the format's default launch
    (``quant.launch_defaults`` for a small input) in output ``mode``, the had128 split or a 64-column
    tile with the format's group-size rotation, the Hadamard built (``gen``) or loaded; ``over``
    replaces constexprs (FCODE, EVEN, F2FP, PDL, ...). The default fold order, no PDL."""
    from fpq_core.kernels.quant import launch_defaults
    nv = fmt == "nvfp4"
    launch = launch_defaults(nv, mode, split, 0, 132)
    T, TO = (128, 64) if split else (64, 64)
    n = 128 if split else (16 if nv else 32)
    c = dict(T=T, TO=TO, G=16 if nv else 32, BM=launch["block_m"], HAS_ROT=True, DOT_LOWP=True,
             POST_SCALE=gen and n in (32, 128), MODE=mode, IS_NV=nv, IS_BF16=True, HW_ROUND=True,
             MX_MUL=not nv, NV_FMA=nv and mode >= 2, PERM=True, ROWP=True, NW=launch["num_warps"], FCODE=True,
             EVEN=True, STAGES=launch["stages"], ITERS_C=0, F2FP=True,
             HGEN=n if gen else 0, HVAL=0.25 if (gen and n == 16) else 1.0,     # the Hadamard built, as launched
             LINEAR=launch["walk"] == "linear", FOLD=launch["row_fold"], FOLDC=False, PDL=0,
             UNROLL=1,     # one tile per loop iteration: counts per tile (UNROLL=2 holds two)
             CS=mode == 3 and launch["stream_stores"])
    c.update(over)
    nw = launch["num_warps"]
    return _sass(kernel, c, nw, launch["maxnreg"] if TO <= 64 else None), launch["block_m"], nw


def count_loop(kernel, fmt: str, fma_codes: bool = True, even: bool = True, f2fp: bool = True):
    """(loop opcode counts, counts by pipe, elements per thread per tile) of ``kernel`` compiled
    for packed bf16 output with a 64-column tile and the format's default launch (no PDL: its two
    instructions sit outside the loop)."""
    sass, bm, nw = _compile(kernel, fmt, FCODE=fma_codes, EVEN=even, F2FP=f2fp)
    cnt = loop_counts(sass)
    pipes = collections.Counter()
    for op, n in cnt.items():
        pipes[_pipe(op)] += n
    return cnt, pipes, bm * 64 / (32 * nw)


_GLOBAL = ("LDG", "LDGSTS", "STG", "ATOMG", "ATOM", "RED", "LD", "ST")     # global (and generic) memory


def pdl_order(kernel, fmt: str, mode: int = 3, split: bool = False, gen: bool = True, pdl: int = 1) -> dict:
    """Where programmatic dependent launch's two instructions sit in ``kernel``'s sm_90 SASS, for the
    packed (``mode`` 3), fake (2) or rotated (0) output, the had128 split, a built (``gen``) or loaded
    rotation matrix, and trigger ``pdl`` (0 off, 1 start, 2 after the last tile, 3 exit): indices of
    griddepcontrol.wait (ACQBULK), of griddepcontrol.launch_dependents (PREEXIT), of the first
    global memory instruction, and the end of the loop over tiles (its longest backward branch)."""
    ins = _instructions(_compile(kernel, fmt, mode, split, gen, PDL=pdl)[0])
    ops = [op for _, op, _ in ins]
    _, hi = _longest_loop(ins)
    return {"wait": [i for i, op in enumerate(ops) if op == "ACQBULK"],
            "trigger": [i for i, op in enumerate(ops) if op == "PREEXIT"],
            "first_global": next(i for i, op in enumerate(ops) if op in _GLOBAL),
            "loop_end": next(i for i, (a, _, _) in enumerate(ins) if a == hi), "n": len(ops)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--hot", action="store_true", help="NVFP4: count the fast path alone (see the module docstring)")
    ap.add_argument("--per-group-bound", action="store_true",
                    help="NVFP4: also count the hot loop with its per-group work replaced by one-instruction stand-ins")
    a = ap.parse_args(argv)
    if a.per_group_bound:
        hot, _, per = count_loop(_hot_module()._rotq_kernel, "nvfp4")
        free, _, _ = count_loop(_per_group_free_module()._rotq_kernel, "nvfp4")
        h, f = sum(hot.values()), sum(free.values())
        print(f"nvfp4 had16 hot loop {h} instructions ({h / per:.2f}/element); per-group work replaced by stand-ins "
              f"{f} ({f / per:.2f}/element): that work costs {h - f} ({100 * (h - f) / h:.1f}%)", flush=True)
        write_json(a.out, "sass_quant_kernel_per_group_bound",
                   {"device": {"gpu": "none (sm_90 SASS compiled on the CPU)"}, "hot_loop": h, "per_group_free_loop": f,
                    "per_element": per, "opcodes_hot": dict(hot.most_common()), "opcodes_free": dict(free.most_common())})
        return
    if a.hot:
        kernel = _hot_module()._rotq_kernel
    else:
        from fpq_core.kernels.quant import _rotq_kernel as kernel
    rows = []
    for fmt in ("mxfp4", "nvfp4"):
        nv = fmt == "nvfp4"
        for fcode in (True, False):
            for even in (True, False):
                cnt, pipes, per = count_loop(kernel, fmt, fcode, even)
                total = sum(cnt.values())
                r = {"fmt": fmt, "rot": 16 if nv else 32, "fma_codes": fcode, "even": even, "hot_only": a.hot,
                     "loop_instructions": total, "per_element": total / per, "pipes": dict(pipes),
                     "opcodes": dict(cnt.most_common())}
                rows.append(r)
                print(f"{fmt} had{r['rot']} fma_codes={fcode!s:5} even={even!s:5}: {total:4d} loop instructions "
                      f"({total / per:5.2f}/element); int pipe {pipes['int']}, fma pipe {pipes['fma']}, "
                      f"xu {pipes['xu']}, fp64 {pipes['fp64']}", flush=True)
    write_json(a.out, "sass_quant_kernel" + ("_hot" if a.hot else ""),
               {"device": {"gpu": "none (sm_90 SASS compiled on the CPU)"}, "rows": rows})


if __name__ == "__main__":
    main()
