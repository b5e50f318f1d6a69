"""Launch-parameter sweep of the fused rotation+quantization kernel (packed output).

Rows per tile (block_m), tile width (tile), warps, pipeline stages, a register cap per thread
(maxnreg, which sets how many programs fit on an SM) and programs per SM (waves) for
Llama-3.1-8B shapes; device time from CUDA graphs over input sets that hold twice the L2 (as
``bench_quant_kernels.py``; 3 sets before the sixth session's call 10); effective bandwidth (bytes read +
written / time) against a device-to-device copy timed the same way in the same run. Each config's
bytes are checked against the default launch. Writes OUT/sweep_quant_kernel.json; the best
config per case is printed (DEFAULT_LAUNCH in fpq_core/kernels/quant.py comes from here).

    python benchmarks/sweep_quant_kernel.py --out OUT [--grid quick|full|occupancy|codes|regcap|cvt|t128|rowstep|split|gen|walk|deep|fold|widefold|nvwalk|pdl|occ|unroll|splitreg] [--cases a,b]
                                                      [--formats mxfp4,nvfp4] [--rot N] [--tag NAME]

``--grid occupancy``: 64-column tiles, 4 warps; rows 32/64, stages 2/3, maxnreg none/96/80/72
(NVFP4; MXFP4 needs fewer than 64 registers, so none/56 there; none = 0), waves 4/6/8/12/16. Each row records
the compiled kernel's registers, spills and shared memory. ``--grid codes``: the default tile with
the packed codes from the integer path (``fma_codes=False``) and the multiply-add path, same run.
``--grid regcap``: the default launch with register caps none (0)/96/88/80 (NVFP4). ``--grid cvt``: the
default launch with the rotated values rounded to bf16 by Triton's cast (F2F, ``f2fp=False``) and
by ``bf16_round_hw`` (F2FP), each twice, interleaved. ``--grid t128`` (with ``--rot 128``): 128-column
tiles, rows per tile x warps (64x4, 32x2, 128x8, 32x4, 64x8) and stages 2/3, no register cap.
``--grid rowstep``: the default launch with the row stride of the programs' walk (programs per
column tile) from the default rule, 16, 12, 10 and 8 (recorded as ``row_step``; None: the rule).
Grids other than ``rowstep`` and ``walk`` use the default walk: for MXFP4 packed codes that is the
linear walk since the sixth session, where ``waves`` is the exact number of programs per SM (the
rows walk before, where it was a target). ``--grid walk``: the default launch and the rows walk against the linear walk (``walk="linear"``: SMs * waves
programs walking all tiles in row-major order) with 3, 4, 5, 6, 8 programs per SM and stages 2/3.
``--grid gen``: the default launch with the Hadamard matrix loaded from memory
(``gen_matrix=False``) and built in the kernel, each twice, interleaved. ``--grid split`` (with ``--rot 128``): the 128-column Hadamard tile rotated by one (128, 128) dot
(``split=False``) against two 64-column halves (``split=True``, see ``_rotq_tile``), stages 2/3,
register caps none/128, 4 or 8 warps, programs per SM (waves) 3, 4 and 16. ``--grid deep``: deeper
software pipelines (stages 3-6: loads issued up to five tiles ahead; a small shape's program walks
only 3-8 tiles, so its first loads wait behind the whole prologue) on the linear walk with 2-6
programs per SM, on the rows walk with 4/8/16, and 32-row tiles with stages 4-8 on the linear walk.
``--grid widefold``: the default launch with ``row_fold`` 8, 16, 32, 64 (64: a tile is one input
row of 64 tile widths) and the tile's rows taken rows-fastest (the default) or chunks-fastest
(``fold_order="chunks"``: consecutive tile rows are adjacent column chunks of one input row, so each
warp's load and store instructions cover contiguous bytes), each twice, interleaved.
``--grid pdl``: the default launch without programmatic dependent launch and with it, the next
kernel let launch at the start, the end or the exit of each program (``pdl="start"|"end"|"exit"``),
three times, interleaved; then copies of the MXFP4 byte count without and with PDL (each trigger).
``--grid occ``: more programs per SM on the default walk -- NVFP4 packed codes with register caps
80/72/64 and 6 programs per SM (3 stages), 72 with 7 and 64 with 8 (2 stages: less shared memory),
MXFP4 with 5 and 6 -- against the default, three times, interleaved.
``--grid nvwalk`` (for NVFP4): the default launch against the linear walk with 5 programs per SM
and 3 stages, three times, interleaved.
``--grid fold``: tiles of 64/F input rows times F tile widths (``row_fold`` F = 1, 2, 4, 8, each
twice, interleaved, default launch otherwise; 128 rows with 8 warps and F = 8, 16), then F = 2, 4 on the linear walk (3, 4, 6 programs
per SM, stages 2/3) and the rows walk (4, 16). (The ninth session's grids ``neg`` -- the had128 split's second half with b negated in registers
instead of -H in shared memory -- and ``popc`` -- the Hadamard's signs by the hardware popcount --
ran on the kernel of commit 613c70b, not kept: MXFP4 within a point, NVFP4 8-14 points slower (its
register cap spills); popc 0.2-1 point slower: results/sweep_quant_kernel_neg128.json, _popc.json.)
(The eleventh session's grid ``tail`` -- the linear walk's last, partial round of tiles cut into
sub-tiles of 32 or 16 rows, and for ``--rot 128`` the split's launches with and without it -- ran on
the kernel of commit fd974ba, slower on every shape, not kept; its ``tail 1`` rows of the split are
what moved the split's large launch down to 4096x4096: results/sweep_quant_kernel_tail.json, _tail128.json.)
(The eighth session's grid ``prefetch`` -- the L2 prefetch of each program's first two tiles
before its set-up, fold 8 and 32 -- ran on the kernel of commit 7a35218, slower on every shape,
not kept: results/sweep_quant_kernel_prefetch.json, _prefetch128.json.) (The seventh session's grids ``halves`` and ``wide`` -- 128-column tiles of the group-size
rotations, as two 64-column halves with their codes stored apart or together, or as one
(128, 128) dot with 4 or 8 warps -- ran on the kernel of commit 117ebbe, slower on every shape,
not kept: results/sweep_quant_kernel_halves.json, _wide.json, docs/performance.md.)
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import bench_graph, copy_baselines, copy_graph_bandwidth, device_info, quant_bytes, write_json  # noqa: E402
from benchmarks.bench_quant_kernels import SHAPES, input_sets  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--grid", choices=("quick", "full", "occupancy", "codes", "regcap", "cvt", "t128", "rowstep", "split", "gen", "walk", "deep", "fold", "widefold", "nvwalk", "pdl", "occ", "unroll", "splitreg"),
                    default=None)
    ap.add_argument("--rot", type=int, default=None, help="rotation size (default: the format's group size)")
    ap.add_argument("--cases", default="a_8192x14336,w_4096x4096",
                    help=f"comma-separated, from {','.join(SHAPES)}")
    ap.add_argument("--formats", default="mxfp4,nvfp4")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    a = ap.parse_args(argv)
    grid_name = a.grid or ("quick" if a.quick else "full")
    cases = [c for c in a.cases.split(",") if c]
    unknown = [c for c in cases if c not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(SHAPES)}")
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import last_launch_resources, make_plan, rotate_quantize
    from fpq_core.transforms import get_transform

    copies = copy_baselines()
    copy = copies["best"]
    rows = []
    for name in cases:
        M, K = SHAPES[name]
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(input_sets(M, K))]
        for fmt, n in (("mxfp4", 32), ("nvfp4", 16)):
            if fmt not in a.formats.split(","):
                continue
            n = a.rot or n
            spec = QuantSpec.from_name(fmt)
            t = get_transform("hadamard", size=n)
            g = torch.tensor([100.0], device="cuda") if fmt == "nvfp4" else None
            ref = rotate_quantize(xs[0], spec, t, "packed", global_scale=g)
            nbytes = quant_bytes(M, K, spec.group_size)
            best = None
            for bm, tile, nw, st, mr, fc, cv, waves_list, *more in _grid(grid_name, fmt):
                ext = more[0] if more else {}           # further launch options (split, gen_matrix)
                plan = make_plan(t, K, spec.group_size, tile=tile)
                for waves in waves_list:
                    kw = dict(global_scale=g, plan=plan, block_m=bm, num_warps=nw, stages=st, waves=waves, maxnreg=mr,
                              fma_codes=fc, f2fp=cv, **ext)
                    r = {"case": name, "fmt": fmt, "rot": n, "block_m": bm, "tile": plan.tile, "num_warps": nw,
                         "stages": st, "maxnreg": mr, "fma_codes": fc, "f2fp": cv, "waves": waves, **ext}
                    if grid_name == "rowstep":      # the list holds row strides (None: the default rule)
                        kw.update(waves=None, row_step=waves)
                        r.update(waves=None, row_step=waves)
                    try:
                        out = rotate_quantize(xs[0], spec, t, "packed", **kw)
                        r.update(last_launch_resources())
                        r["equal_to_default"] = bool(torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]))
                        del out
                        ms = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", **kw), xs)
                    except Exception as e:  # noqa: BLE001
                        r["error"] = repr(e)[:200]
                        rows.append(r)
                        break
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    r.update(ms=ms, GBps=gbps, pct_copy=100 * gbps * 1e9 / copy)
                    rows.append(r)
                    if best is None or gbps > best["GBps"]:
                        best = r
            keys = ("case", "fmt", "rot", "block_m", "tile", "num_warps", "stages", "maxnreg", "fma_codes", "waves")
            if grid_name in ("quick", "full"):    # the launch grids (the others are ablations of one knob)
                # the same best launch without the matrix-column order (ablation, same run)
                kw = dict(global_scale=g, plan=make_plan(t, K, spec.group_size, tile=best["tile"]),
                          **{k: best[k] for k in ("block_m", "num_warps", "stages", "waves", "maxnreg", "fma_codes")},
                          mma_order=False)
                ms = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", **kw), xs)
                gbps = nbytes / (ms * 1e-3) / 1e9
                rows.append({k: best[k] for k in keys} | {"mma_order": False, "ms": ms, "GBps": gbps,
                                                           "pct_copy": 100 * gbps * 1e9 / copy})
                best["no_mma_order_pct_copy"] = 100 * gbps * 1e9 / copy
            extra = (f"; without the column order {best['no_mma_order_pct_copy']:.0f}%"
                     if "no_mma_order_pct_copy" in best else "")
            print(f"{name:14s} {fmt}: best " + " ".join(f"{k}={best[k]}" for k in keys[3:] + ("row_step", "split", "gen_matrix")
                                                         if k in best)
                  + f" (regs {best.get('n_regs')}, smem {best.get('shared')}): {best['ms'] * 1e3:.1f} us, "
                  f"{best['GBps']:.0f} GB/s = {best['pct_copy']:.0f}% of copy ({copy / 1e9:.0f} GB/s){extra}", flush=True)
        if grid_name == "pdl":          # the like-for-like ceilings: copies of the kernel's byte count
            nb = (quant_bytes(M, K, 32) // 2) & ~15
            for trig in (False, 1, 2, 3):
                bw = copy_graph_bandwidth(nb, len(xs), pdl=trig)
                rows.append({"case": name, "fmt": "copy", "pdl": trig, "GBps": bw / 1e9, "pct_copy": 100 * bw / copy})
                print(f"{name:14s} same-size copy, pdl={trig}: {bw / 1e9:.0f} GB/s = {100 * bw / copy:.1f}% of copy", flush=True)
        del xs
        torch.cuda.empty_cache()
    bad = [r for r in rows if r.get("equal_to_default") is False]
    print(f"configs whose bytes differ from the default launch: {len(bad)}")
    write_json(a.out, "sweep_quant_kernel" + (f"_{a.tag}" if a.tag else ""),
               {"device": device_info(), "grid": grid_name, "copy_GBps": copy / 1e9,
                "copy_baselines_GBps": {k: v / 1e9 for k, v in copies.items()}, "rows": rows})


def _grid(name: str, fmt: str):
    """(block_m, tile, num_warps, stages, maxnreg, fma_codes, f2fp, waves list[, further launch options])
    per config of a named grid."""
    if name == "split":         # 128-column Hadamard tiles: one dot vs two halves
        return ([(64, 128, 4, 3, 0, None, None, (3, 16), {"split": False})]
                + [(bm, 128, nw, st, mr, None, None, (3, 4, 16), {"split": True})
                   for (bm, nw), st, mr in itertools.product(((64, 4), (128, 8)), (2, 3), (0, 128))])
    if name == "walk":          # the default launch (rows walk) vs SMs * waves programs walking the tiles in order
        return ([(None, None, None, None, None, None, None, (None,), {}),
                 (None, None, None, None, None, None, None, (None,), {"walk": "rows"})]
                + [(None, None, None, st, None, None, None, (3, 4, 5, 6, 8), {"walk": "linear"}) for st in (2, 3)])
    if name == "fold":          # tiles of 64/F input rows x F tile widths (row_fold), default launch, then walks
        return ([(None, None, None, None, None, None, None, (None,), {"row_fold": f}) for f in (1, 2, 4, 8, 1, 2, 4, 8)]
                + [(128, None, 8, None, None, None, None, (None,), {"row_fold": f}) for f in (8, 16)]
                + [(None, None, None, st, None, None, None, (3, 4, 6), {"walk": "linear", "row_fold": f})
                   for f, st in itertools.product((2, 4), (2, 3))]
                + [(None, None, None, 3, None, None, None, (4, 16), {"walk": "rows", "row_fold": f}) for f in (2, 4)])
    if name == "nvwalk":        # the default launch against the linear walk, 5 programs per SM, 3 stages; 3 times
        return [(None, None, None, st, None, None, None, (w,), kw) for _ in range(3)
                for st, w, kw in ((None, None, {}), (3, 5, {"walk": "linear"}))]
    if name == "occ":           # more programs per SM: NVFP4 under lower register caps (its hot loop's SASS has
        # no spills at 80-64; the launched kernel, with its fallback path, spills at 72 and 64), 2 stages for
        # 7-8 programs; MXFP4 5 and 6 programs; three times, interleaved
        if fmt == "nvfp4":
            cfg = ((None, None, None), (80, 6, 3), (72, 6, 3), (64, 6, 3), (72, 7, 2), (64, 8, 2))
        else:
            cfg = ((None, None, None), (None, 5, None), (None, 6, None))
        return [(None, None, None, st, mr, None, None, (w,), {}) for _ in range(3) for mr, w, st in cfg]
    if name == "splitreg":      # register caps for the had128 split's default launch (NVFP4: 128); three times, interleaved
        return [(None, None, None, None, mr, None, None, (None,), {}) for _ in range(3) for mr in (128, 144, 168)]
    if name == "unroll":        # the walk's loop unrolled by 1 or 2 (loop_unroll_factor); three times, interleaved
        return [(None, None, None, None, None, None, None, (None,), {"unroll": u}) for _ in range(3) for u in (1, 2)]
    if name == "pdl":           # the default launch without and with programmatic dependent launch, the next
        # kernel let launch at each program's start, end or exit; three times, interleaved
        return [(None, None, None, None, None, None, None, (None,), {"pdl": p})
                for _ in range(3) for p in (False, "start", "end", "exit")]
    if name == "widefold":      # row_fold 8-64 (down to one input row per tile), rows or chunks fastest, twice
        return [(None, None, None, None, None, None, None, (None,), {"row_fold": f, "fold_order": o})
                for _ in range(2) for f in (8, 16, 32, 64) for o in ("rows", "chunks")]
    if name == "deep":          # the default launch, then deeper pipelines on both walks and 32-row tiles
        return ([(None, None, None, None, None, None, None, (None,), {})]
                + [(None, None, None, st, None, None, None, (2, 3, 4, 5, 6), {"walk": "linear"}) for st in (3, 4, 5, 6)]
                + [(None, None, None, st, None, None, None, (4, 8, 16), {"walk": "rows"}) for st in (4, 5, 6)]
                + [(32, None, None, st, None, None, None, (4, 6, 8), {"walk": "linear"}) for st in (4, 6, 8)])
    if name == "gen":           # the default launch, the Hadamard matrix loaded or built, each twice, interleaved
        return [(None, None, None, None, None, None, None, (None,), {"gen_matrix": gm}) for gm in (False, True, False, True)]
    if name == "rowstep":       # the default tile; programs per column tile (row stride) given
        return [(64, 64, 4, 3, None, None, None, (None, 16, 12, 10, 8), {"walk": "rows"})]
    if name == "t128":          # 128-column tiles (rotation 128): rows x warps, stages
        return [(bm, 128, nw, st, 0, None, None, (16,))
                for (bm, nw), st in itertools.product(((64, 4), (32, 2), (128, 8), (32, 4), (64, 8)), (2, 3))]
    if name == "cvt":           # the default launch, each rounding of the rotated values twice, interleaved
        return [(64, 64, 4, 3, None, None, cv, (16,)) for cv in (False, True, False, True)]
    if name == "regcap":
        caps = (0, 96, 88, 80) if fmt == "nvfp4" else (0,)      # 0: no cap
        return [(64, 64, 4, 3, mr, None, None, (16,)) for mr in caps]
    if name == "codes":
        caps = (0, 96) if fmt == "nvfp4" else (0,)
        return [(64, 64, 4, 3, mr, fc, None, (8, 16)) for fc, mr in itertools.product((False, True), caps)]
    if name == "occupancy":
        caps = (0, 96, 80, 72) if fmt == "nvfp4" else (0, 56)        # 0: no cap
        return [(bm, 64, 4, st, mr, None, None, (4, 6, 8, 12, 16)) for bm, st, mr in itertools.product((32, 64), (2, 3), caps)]
    if name == "quick":
        return [(bm, tile, nw, st, None, None, None, (4, 8, 16))
                for bm, tile, nw, st in itertools.product((64, 128, 256), (64, 128), (4, 8), (3, 4))]
    return [(bm, tile, nw, st, None, None, None, (4, 8, 16))
            for bm, tile, nw, st in itertools.product((32, 64, 128, 256), (64, 128), (4, 8), (2, 3, 4))]


if __name__ == "__main__":
    main()
