"""Launch-parameter sweep of the fused rotation+quantization kernel (packed output).

Rows per tile (block_m), tile width (tile), warps, pipeline stages and programs per SM (waves)
for a few Llama-3.1-8B shapes; device time from CUDA graphs; effective bandwidth (bytes read +
written / time) against a device-to-device copy timed the same way in the same run. Each config's
bytes are checked against the default launch. Writes OUT/sweep_quant_kernel.json; the best
config per case is printed (DEFAULT_LAUNCH in fpq_core/kernels/quant.py comes from here).

    python benchmarks/sweep_quant_kernel.py --out OUT [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import bench_graph, copy_baselines, device_info, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import make_plan, rotate_quantize
    from fpq_core.transforms import get_transform

    copies = copy_baselines()
    copy = copies["best"]
    rows = []
    cases = [("a_8192x14336", 8192, 14336), ("w_4096x4096", 4096, 4096)]
    grid = list(itertools.product((32, 64, 128, 256), (64, 128), (4, 8), (2, 3, 4)))
    if a.quick:
        grid = list(itertools.product((64, 128, 256), (64, 128), (4, 8), (3, 4)))
    for name, M, K in cases:
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        for fmt, n in (("mxfp4", 32), ("nvfp4", 16)):
            spec = QuantSpec.from_name(fmt)
            t = get_transform("hadamard", size=n)
            g = torch.tensor([100.0], device="cuda") if fmt == "nvfp4" else None
            ref = rotate_quantize(xs[0], spec, t, "packed", global_scale=g)
            nbytes = M * K * 2 + M * K // 2 + M * K // spec.group_size
            best = None
            for bm, tile, nw, st in grid:
                plan = make_plan(t, K, spec.group_size, tile=tile)
                for waves in (4, 8, 16):
                    kw = dict(global_scale=g, plan=plan, block_m=bm, num_warps=nw, stages=st, waves=waves)
                    r = {"case": name, "fmt": fmt, "rot": n, "block_m": bm, "tile": plan.tile, "num_warps": nw,
                         "stages": st, "waves": waves}
                    try:
                        out = rotate_quantize(xs[0], spec, t, "packed", **kw)
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
            # the same best launch without the matrix-column order (ablation, same run)
            kw = dict(global_scale=g, plan=make_plan(t, K, spec.group_size, tile=best["tile"]), block_m=best["block_m"],
                      num_warps=best["num_warps"], stages=best["stages"], waves=best["waves"], mma_order=False)
            ms = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", **kw), xs)
            gbps = nbytes / (ms * 1e-3) / 1e9
            rows.append({k: best[k] for k in ("case", "fmt", "rot", "block_m", "tile", "num_warps", "stages", "waves")}
                        | {"mma_order": False, "ms": ms, "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / copy})
            best["no_mma_order_pct_copy"] = 100 * gbps * 1e9 / copy
            print(f"{name:14s} {fmt}: best block_m={best['block_m']} tile={best['tile']} warps={best['num_warps']} "
                  f"stages={best['stages']} waves={best['waves']}: {best['ms']:.3f} ms, {best['GBps']:.0f} GB/s = "
                  f"{best['pct_copy']:.0f}% of copy ({copy / 1e9:.0f} GB/s); without the column order "
                  f"{best['no_mma_order_pct_copy']:.0f}%", flush=True)
        del xs
        torch.cuda.empty_cache()
    bad = [r for r in rows if r.get("equal_to_default") is False]
    print(f"configs whose bytes differ from the default launch: {len(bad)}")
    write_json(a.out, "sweep_quant_kernel", {"device": device_info(), "copy_GBps": copy / 1e9,
                                             "copy_baselines_GBps": {k: v / 1e9 for k, v in copies.items()}, "rows": rows})


if __name__ == "__main__":
    main()
