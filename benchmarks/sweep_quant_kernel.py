"""Launch-parameter sweep of the fused rotation+quantization kernel (rows per program, warps).

Prints effective bandwidth (bytes read + written / time) against a device-to-device copy measured
in the same run, for a few Llama-3.1-8B shapes; writes OUT/sweep_quant_kernel.json.

    python benchmarks/sweep_quant_kernel.py --out OUT
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import bench, copy_bandwidth, device_info, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import make_plan, rotate_quantize
    from fpq_core.transforms import get_transform

    rows = []
    copy = copy_bandwidth(2 * 8192 * 14336)
    cases = [("a_8192x14336", 8192, 14336), ("w_14336x4096", 14336, 4096), ("a_2048x4096", 2048, 4096)]
    for name, M, K in cases:
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        for fmt, n in (("mxfp4", 32), ("nvfp4", 16)):
            spec = QuantSpec.from_name(fmt)
            t = get_transform("hadamard", size=n)
            plan = make_plan(t, K, spec.group_size)
            g = torch.tensor([100.0], device="cuda") if fmt == "nvfp4" else None
            nbytes = 2 * M * K * 2            # bf16 in, bf16 out (fake quant)
            best = None
            for bm in (16, 32, 64, 128):
                for nw in (2, 4, 8):
                    try:
                        ms = bench(lambda x: rotate_quantize(x, spec, t, "fake", global_scale=g, plan=plan,
                                                             block_m=bm, num_warps=nw), xs)
                    except Exception as e:  # noqa: BLE001
                        rows.append({"case": name, "fmt": fmt, "block_m": bm, "num_warps": nw, "error": repr(e)[:200]})
                        continue
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    r = {"case": name, "fmt": fmt, "rot": n, "block_m": bm, "num_warps": nw, "ms": ms,
                         "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / copy, "tile": plan.tile}
                    rows.append(r)
                    if best is None or gbps > best["GBps"]:
                        best = r
            print(f"{name:14s} {fmt}: best block_m={best['block_m']} warps={best['num_warps']} "
                  f"{best['GBps']:.0f} GB/s = {best['pct_copy']:.0f}% of copy ({copy / 1e9:.0f} GB/s)", flush=True)
    write_json(a.out, "sweep_quant_kernel", {"device": device_info(), "copy_GBps": copy / 1e9, "rows": rows})


if __name__ == "__main__":
    main()
