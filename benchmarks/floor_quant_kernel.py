"""The memory floor of the quant kernel's access pattern: what a kernel that moves the same bytes in
the same tiles, with almost no arithmetic, reaches against a device copy.

    python benchmarks/floor_quant_kernel.py --out OUT [--cases a,b] [--tiles 64x64,128x64]

``_floor_kernel`` reads the (M, K) bf16 input in (BM, T) tiles and writes what the packed quant
kernel writes -- one int32 word per 8 inputs (the sum of their bits) and one byte per group of 32
(the largest bits), optionally as several loads of adjacent column chunks -- walking the tiles as ``rotate_quantize`` does: ``linear`` (exactly SMs * waves
persistent programs, tile pid + i * programs, loads pipelined ``stages`` deep) or ``tile`` (one
program per tile, the hardware's scheduler balancing). No rotation, no scales, no rounding: where
this kernel stays below 80% of a copy at a shape, the fused kernel's arithmetic is not what holds
that shape back. Same timing as bench_quant_kernels.py (CUDA graph of 20 calls over input sets that
hold twice the L2), the copy ceiling from the same run; the quant kernel's default launch is timed
beside it for each shape (MXFP4 had32, NVFP4 had16). Writes OUT/floor_quant_kernel.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import bench_graph, copy_baselines, device_info, quant_bytes, table, write_json  # noqa: E402
from benchmarks.bench_quant_kernels import SHAPES, input_sets  # noqa: E402

try:  # GPU only
    import triton
    import triton.language as tl

    @triton.jit
    def _floor_parts(x, BM: tl.constexpr, C: tl.constexpr):
        b = x.to(tl.int16, bitcast=True).to(tl.int32)
        return tl.sum(tl.reshape(b, (BM, C // 8, 8)), axis=2), tl.max(tl.reshape(b, (BM, C // 32, 32)), axis=2)

    @triton.jit
    def _floor_tile(t, x_ptr, w_ptr, s_ptr, K, tiles_k, BM: tl.constexpr, T: tl.constexpr, CH: tl.constexpr,
                    HOW: tl.constexpr):
        """HOW 0: CH loads of T/CH columns, each chunk stored on its own; 1: one load of the tile
        split in two in registers, each half stored on its own; 2: two loads, one store of the tile."""
        pm = t // tiles_k
        pk = t % tiles_k
        rows = pm * BM + tl.arange(0, BM)
        wrow = w_ptr + rows[:, None] * (K // 8)
        srow = s_ptr + rows[:, None] * (K // 32)
        if HOW == 0:
            C: tl.constexpr = T // CH
            for c in tl.static_range(CH):
                cols = pk * T + c * C + tl.arange(0, C)
                w, s = _floor_parts(tl.load(x_ptr + rows[:, None] * K + cols[None, :]), BM, C)
                tl.store(wrow + (pk * (T // 8) + c * (C // 8) + tl.arange(0, C // 8))[None, :], w)
                tl.store(srow + (pk * (T // 32) + c * (C // 32) + tl.arange(0, C // 32))[None, :], s.to(tl.uint8))
        elif HOW == 1:
            H: tl.constexpr = T // 2
            x = tl.load(x_ptr + rows[:, None] * K + (pk * T + tl.arange(0, T))[None, :])
            xa, xb = tl.split(tl.permute(tl.reshape(x, (BM, 2, H)), (0, 2, 1)))
            for c in tl.static_range(2):
                if c == 0:
                    xc = xa
                else:
                    xc = xb
                w, s = _floor_parts(xc, BM, H)
                tl.store(wrow + (pk * (T // 8) + c * (H // 8) + tl.arange(0, H // 8))[None, :], w)
                tl.store(srow + (pk * (T // 32) + c * (H // 32) + tl.arange(0, H // 32))[None, :], s.to(tl.uint8))
        else:
            H: tl.constexpr = T // 2
            pa = x_ptr + rows[:, None] * K + (pk * T + tl.arange(0, H))[None, :]
            wa, sa = _floor_parts(tl.load(pa), BM, H)
            wb, sb = _floor_parts(tl.load(pa + H), BM, H)
            w = tl.reshape(tl.permute(tl.join(wa, wb), (0, 2, 1)), (BM, T // 8))
            s = tl.reshape(tl.permute(tl.join(sa, sb), (0, 2, 1)), (BM, T // 32))
            tl.store(wrow + (pk * (T // 8) + tl.arange(0, T // 8))[None, :], w)
            tl.store(srow + (pk * (T // 32) + tl.arange(0, T // 32))[None, :], s.to(tl.uint8))

    @triton.jit
    def _floor_kernel(x_ptr, w_ptr, s_ptr, K, tiles_k, n_tiles, nprog,
                      BM: tl.constexpr, T: tl.constexpr, CH: tl.constexpr, HOW: tl.constexpr,
                      PERSIST: tl.constexpr, STAGES: tl.constexpr):
        pid = tl.program_id(0)
        if PERSIST:
            for t in tl.range(pid, n_tiles, nprog, num_stages=STAGES):
                _floor_tile(t, x_ptr, w_ptr, s_ptr, K, tiles_k, BM, T, CH, HOW)
        else:
            _floor_tile(pid, x_ptr, w_ptr, s_ptr, K, tiles_k, BM, T, CH, HOW)
except ImportError:  # CPU-only installs
    triton = None


def parse_tile(spec: str) -> tuple[int, int, int, int]:
    """"BMxT[/C|/s|/j]" -> (BM, T, loads per tile, HOW of _floor_tile)."""
    shape, _, ch = spec.partition("/")
    bm, t = (int(v) for v in shape.split("x"))
    how = {"s": 1, "j": 2}.get(ch, 0)
    return bm, t, 2 if how else int(ch or 1), how


def floor_call(x, w, s, bm: int, t: int, walk: str, waves: int, stages: int, num_warps: int = 4, ch: int = 1, how: int = 0):
    M, K = x.shape
    if M % bm or K % t:
        raise ValueError(f"({M}, {K}) is not a whole number of ({bm}, {t}) tiles")
    tiles_k = K // t
    n_tiles = (M // bm) * tiles_k
    if walk == "linear":
        nprog = min(n_tiles, torch.cuda.get_device_properties(x.device).multi_processor_count * waves)
        _floor_kernel[(nprog,)](x, w, s, K, tiles_k, n_tiles, nprog, BM=bm, T=t, CH=ch, HOW=how, PERSIST=True, STAGES=stages,
                                num_warps=num_warps)
    else:
        _floor_kernel[(n_tiles,)](x, w, s, K, tiles_k, n_tiles, n_tiles, BM=bm, T=t, CH=ch, HOW=how, PERSIST=False, STAGES=1,
                                  num_warps=num_warps)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default=",".join(SHAPES))
    ap.add_argument("--tiles", default="64x64,128x64,32x128,16x256",
                    help="BMxT tile shapes; BMxT/C: the tile loaded as C loads of T/C columns; BMxT/s: one load "
                         "split in two halves in registers, each stored on its own; BMxT/j: two loads, one store")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available() or triton is None:
        raise SystemExit("floor_quant_kernel.py needs a CUDA GPU and triton")
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.transforms import get_transform

    copies = copy_baselines()
    copy = copies["best"]
    rows = []
    configs = [("linear", 4, 3), ("linear", 4, 2), ("linear", 8, 2), ("tile", 0, 1)]
    for name in [c for c in a.cases.split(",") if c]:
        M, K = SHAPES[name]
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(input_sets(M, K))]
        nbytes = quant_bytes(M, K, 32)
        w = torch.empty(M, K // 8, dtype=torch.int32, device="cuda")
        s = torch.empty(M, K // 32, dtype=torch.uint8, device="cuda")
        for tile in a.tiles.split(","):
            bm, t, ch, how = parse_tile(tile)
            for walk, waves, stages in configs:
                ms = bench_graph(lambda x: floor_call(x, w, s, bm, t, walk, waves, stages, ch=ch, how=how), xs)
                gbps = nbytes / (ms * 1e-3) / 1e9
                rows.append({"case": name, "kernel": "floor", "tile": tile, "walk": walk, "waves": waves,
                             "stages": stages, "us": ms * 1e3, "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / copy})
        for fmt, rot in (("mxfp4", 32), ("nvfp4", 16)):
            spec = QuantSpec.from_name(fmt)
            tr = get_transform("hadamard", size=rot)
            g = torch.tensor([100.0], device="cuda") if fmt == "nvfp4" else None
            ms = bench_graph(lambda x: rotate_quantize(x, spec, tr, "packed", global_scale=g), xs)
            qbytes = quant_bytes(M, K, spec.group_size)
            gbps = qbytes / (ms * 1e-3) / 1e9
            rows.append({"case": name, "kernel": f"quant {fmt} had{rot}", "tile": "default", "walk": "default",
                         "waves": None, "stages": None, "us": ms * 1e3, "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / copy})
        for r in rows:
            if r["case"] == name:
                r["n_inputs"] = len(xs)
        del xs
        torch.cuda.empty_cache()
    print(table(rows, ["case", "kernel", "tile", "walk", "waves", "stages", "us", "GBps", "pct_copy"]))
    print(f"copy ceiling {copy / 1e9:.0f} GB/s")
    write_json(a.out, "floor_quant_kernel", {"device": device_info(), "copy_GBps": copy / 1e9,
                                             "copy_baselines_GBps": {k: v / 1e9 for k, v in copies.items()},
                                             "rows": rows})


if __name__ == "__main__":
    main()
