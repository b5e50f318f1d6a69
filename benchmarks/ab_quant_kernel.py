"""A/B of the fused quant kernel against a variant of its source, same run, interleaved.

A variant is a named source edit of ``fpq_core/kernels/quant.py`` (``VARIANTS`` below), imported
as a module copy (``_common.quant_module_copy``: the kernel itself is not changed). Both are
timed the way ``bench_quant_kernels.py`` times the kernel (CUDA graphs over input sets holding
twice the L2, packed output, default launch), alternating kernel and variant ``--runs`` times
per case, and each variant's bytes are checked against the kernel's. Prints mean % of copy per
case and writes OUT/ab_quant_kernel[_TAG].json with every run.

    python benchmarks/ab_quant_kernel.py --out OUT --variant divrn [--cases w_4096x4096,...]
        [--formats nvfp4] [--rot 16,128] [--runs 3] [--tag NAME]

Variants (``VARIANTS``): ``divrn`` -- the NVFP4 group scale's reciprocal by ``tl.div_rn(1, s)``
(FCHK, a branch and the division's slow-path call per group) instead of ``rcp_rn``; ``session9`` --
that and the ninth session's E4M3 rounding of the group scale (a float64 min(t, 448) and a round
trip to float64 for the inexact test): the tenth session's first two changes undone, on today's
kernel otherwise (its A/B of the tenth session compared the kernel of then); ``absmax`` -- the group
amax and the amax pass by ``tl.max(tl.abs(y))`` instead of ``absmax2``; ``session11`` -- the
eleventh session's kernel (the twelfth session's changes undone: the load pointers, the NVFP4
per-group cuts and the reciprocal's Newton step); ``unroll2`` -- the MXFP4 packed-code walk unrolled
by 2; ``rcp2`` -- the NVFP4 reciprocal with the Newton step before its correction (the eleventh
session's ``rcp_rn``); ``mxsplitptrs`` -- the MXFP4 had128 split's loads through ``_tile_ptrs``
(tried and not kept in the twelfth session: measured then as the kernel against ``_tile_rows``,
ab_quant_kernel_mxsplit.json); ``nocs`` -- the packed codes and scale bytes stored without the
streaming cache hint (``.cs``) that the kernel has since the thirteenth session (measured then as
variant ``csstore``, the kernel without the hint against one with it: ab_quant_kernel_csstore*.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import (bench_graph, copy_baselines, device_info, module_copy, quant_bytes,  # noqa: E402
                                quant_module_copy, write_json)
from benchmarks.bench_quant_kernels import SHAPES, input_sets  # noqa: E402

_RCP = ("                r = rcp_rn(s)         # s in [2^-49, 2^49]: no range check needed\n",
        "                r = tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)\n")
_E4M3_NOW = """    f = tl.inline_asm_elementwise("cvt.rz.f32.f64 $0, $1;", "=f,d", [t], dtype=tl.float32, is_pure=True, pack=1)
    sticky = ((t.to(tl.int64, bitcast=True) & 0x1FFFFFFF) != 0).to(tl.int32)
    return (f.to(tl.int32, bitcast=True) | sticky).to(tl.float32, bitcast=True)
"""
_E4M3_PREV = """    t = tl.minimum(t, 448.0)
    f = tl.inline_asm_elementwise("cvt.rz.f32.f64 $0, $1;", "=f,d", [t], dtype=tl.float32, is_pure=True, pack=1)
    return (f.to(tl.int32, bitcast=True) | (f.to(tl.float64) != t).to(tl.int32)).to(tl.float32, bitcast=True)
"""
# the twelfth session's changes, as the eleventh session had them (for the "session11" variant)
_LOADS_NOW = """        if IS_NV and MODE == 2:
            rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            px = x_ptr + xrow[:, None] + kk[None, :]
        else:"""
_LOADS_PREV = """        if True:
            rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            px = x_ptr + xrow[:, None] + kk[None, :]
        else:"""
_CS_ON = '"stream_stores": True}'        # DEFAULT_LAUNCH's entry
_CS_OFF = '"stream_stores": False}'
_UNROLL = ('MX_PACKED_LAUNCH = dict(DEFAULT_LAUNCH, walk="linear", waves=4)',
           'MX_PACKED_LAUNCH = dict(DEFAULT_LAUNCH, walk="linear", waves=4, unroll=2)')
_SPLIT_PTRS = ("""        rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
        kh = tl.arange(0, TO)
        pa = x_ptr + xrow[:, None] + kh[None, :]""", """        kh = tl.arange(0, TO)
        if IS_NV:
            rows, xrow = _tile_rows(tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            pa = x_ptr + xrow[:, None] + kh[None, :]
        else:
            rows, xrow = _tile_ptrs(x_ptr, tl.arange(0, BM), pid_m, pid_k, stride_xm, T, BM, FOLD, FOLDC)
            pa = xrow[:, None] + kh[None, :]""")
_SCALE_NOW = """    b, e = e4m3_byte_value_hw(nv_group_ro32(amax, g))
    zero = e == 0.0
    s = tl.where(zero, 1.0, div_markstein(e, g, rg))
    byte = tl.where(zero, zero_byte, b)
    return s, byte.to(tl.uint8)
"""
_SCALE_PREV = """    b = nv_group_e4m3_hw(amax, g)
    e = e4m3_value(b)
    s = div_markstein(e, g, rg)
    s = tl.where(s == 0.0, 1.0, s)
    byte = tl.where(b == 0, zero_byte, b.to(tl.uint8))
    return s, byte
"""
_THRESH_NOW = """    th = tl.inline_asm_elementwise("fma.rm.f32 $0, $1, $2, $3;", "=f,f,f,f", [s, kz * 1.4901161193847656e-08, s * (kz * 0.25)],
                                   dtype=tl.float32, is_pure=True, pack=1)
    return (th.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)"""
_THRESH_PREV = """    th = tl.inline_asm_elementwise("fma.rm.f32 $0, $1, $2, $3;", "=f,f,f,f", [s, 1.4901161193847656e-08, s * 0.25],
                                   dtype=tl.float32, is_pure=True, pack=1)
    return (th.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True) * kz"""
_RCP_NOW = """        "fma.rn.f32 $0, r, e, r; }",
"""
_RCP_PREV = """        "fma.rn.f32 r, r, e, r; fma.rn.f32 e, n, r, 0f3F800000; fma.rn.f32 $0, r, e, r; }",
"""
# name -> {"quant": ((old, new), ...) applied to quant.py's source, "common": (...) to _common.py's}
VARIANTS = {
    # the NVFP4 group scale's reciprocal by tl.div_rn(1, s) (FCHK, a branch and the slow-path call per
    # group) instead of rcp_rn
    "divrn": {"quant": (_RCP,)},
    # the ninth session's NVFP4 per-group code where today's kernel still has its place: div_rn, and the
    # E4M3 rounding with the float64 min(t, 448)
    # and the round trip to float64 for the inexact test
    "session9": {"quant": (_RCP,), "common": ((_E4M3_NOW, _E4M3_PREV),)},
    # the group amax (packed codes) and the amax pass by tl.max(tl.abs(y)) / tl.maximum(m, tl.abs(y))
    # instead of absmax2 (max.xorsign.abs)
    "absmax": {"quant": (("        if HW_ROUND and MODE == 3 and not IS_NV:    # max |y| per group", "        if False:  # max |y| per group"),
                         ("            run_max = absmax2(run_max, y)\n", "            run_max = tl.maximum(run_max, tl.abs(y))\n"))},
    # the eleventh session's kernel: loads by _tile_rows, the NVFP4 group scale's value by e4m3_value
    # and two zero tests, kz applied after the threshold's fma, its reciprocal with a Newton step more
    "session11": {"quant": ((_LOADS_NOW, _LOADS_PREV),),
                  "common": ((_SCALE_NOW, _SCALE_PREV), (_THRESH_NOW, _THRESH_PREV), (_RCP_NOW, _RCP_PREV))},
    # the MXFP4 had128 split's loads through _tile_ptrs (measured as "mxsplitrows" against a kernel
    # that had them: +0.3 points at 4096x4096, -1.1 at 2048x4096; not kept)
    "mxsplitptrs": {"quant": (_SPLIT_PTRS,)},
    # the MXFP4 packed-code walk unrolled by 2 (fewer instructions per tile; measured slower)
    "unroll2": {"quant": (_UNROLL,)},
    # the NVFP4 group scale's reciprocal with the Newton step before its correction (the eleventh session's)
    "rcp2": {"common": ((_RCP_NOW, _RCP_PREV),)},
    # the packed codes and scale bytes stored without the streaming hint (plain st.global where the kernel
    # has st.global.cs, STG.E.EF in the sm_90 SASS); measured as "csstore" before the hint was the
    # default (ab_quant_kernel_csstore*.json: the variant then was the kernel with the hint). A load
    # hint (evict_first) is not a variant: Triton's cp.async pipelining drops it (same LDGSTS)
    "nocs": {"quant": ((_CS_ON, _CS_OFF),)},
}


def _edited(src: str, edits, name: str, what: str) -> str:
    for old, new in edits:
        if old not in src:
            raise SystemExit(f"variant {name!r}: {old.strip()[:60]!r} not found in {what}; update VARIANTS")
        src = src.replace(old, new)
    return src


def variant_module(name: str):
    """fpq_core.kernels.quant with the variant's edits (and, where it edits _common.py, importing an
    edited copy of that)."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    v = VARIANTS[name]
    common = None
    if v.get("common"):
        import fpq_core.kernels._common as c
        common = module_copy(c, lambda src: _edited(src, v["common"], name, "_common.py"), f"fpq_common_{name}").__name__

    def edit(src: str) -> str:
        src = _edited(src, v.get("quant", ()), name, "quant.py")
        return src.replace("from ._common import", f"from {common} import") if common else src
    return quant_module_copy(edit, f"fpq_quant_{name}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--cases", default="a_2048x4096,w_4096x4096,w_14336x4096,w_4096x14336,a_8192x14336")
    ap.add_argument("--formats", default="nvfp4")
    ap.add_argument("--rot", default="group", help="comma-separated rotation sizes; 'group' = the format's group size")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tag", default="")
    a = ap.parse_args(argv)
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels import quant as base
    from fpq_core.transforms import get_transform
    var = variant_module(a.variant)
    copy = copy_baselines()["best"]
    rows, summary = [], []
    for name in a.cases.split(","):
        M, K = SHAPES[name]
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(input_sets(M, K))]
        for fmt in a.formats.split(","):
            spec = QuantSpec.from_name(fmt)
            for r in a.rot.split(","):
                n = spec.group_size if r == "group" else int(r)
                t = get_transform("hadamard", size=n)
                g = torch.tensor([100.0], device="cuda") if fmt == "nvfp4" else None
                ref = base.rotate_quantize(xs[0], spec, t, "packed", global_scale=g)
                got = var.rotate_quantize(xs[0], spec, t, "packed", global_scale=g)
                same = bool(torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1]))
                nbytes = quant_bytes(M, K, spec.group_size)
                pct = {"kernel": [], a.variant: []}
                for run in range(a.runs):
                    for label, mod in (("kernel", base), (a.variant, var)):
                        ms = bench_graph(lambda x, mod=mod: mod.rotate_quantize(x, spec, t, "packed", global_scale=g), xs)
                        p = 100 * nbytes / (ms * 1e-3) / copy
                        pct[label].append(p)
                        rows.append({"case": name, "fmt": fmt, "rot": n, "which": label, "run": run, "ms": ms, "pct_copy": p})
                mk, mv = (sum(v) / len(v) for v in pct.values())
                summary.append({"case": name, "fmt": fmt, "rot": n, "kernel_pct": mk, f"{a.variant}_pct": mv,
                                "same_bytes": same})
                print(f"{name:14s} {fmt} had{n:<4d} kernel {mk:5.1f}%  {a.variant} {mv:5.1f}%  "
                      f"({' '.join(f'{x:.1f}' for x in pct['kernel'])} | {' '.join(f'{x:.1f}' for x in pct[a.variant])})"
                      f"  bytes equal: {same}", flush=True)
        del xs
        torch.cuda.empty_cache()
    write_json(a.out, "ab_quant_kernel" + (f"_{a.tag}" if a.tag else ""),
               {"device": device_info(), "variant": a.variant, "copy_GBps": copy / 1e9, "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
