"""Fused rotation + FP4 quantization: effective bandwidth vs a device copy, vs torch eager/compile.

python benchmarks/bench_quant_kernels.py --out OUT [--quick]
Bytes counted: input read once (bf16) + packed codes (K/2) + scale bytes (K/G) written.
``kernel_ms``: device time per call from a CUDA graph of 20 calls (no Python/launch overhead),
the same method as the copy it is compared with; ``call_ms``: wall time per call from Python
(launch overhead included). ``pct_copy``: against the largest of three 1 GiB copies (the
headline, conservative); ``pct_same_size_copy``: against a copy moving the kernel's own byte count
timed the same way as the kernel (CUDA graph, same number of rotating inputs): the ceiling a
kernel of this size can reach (small shapes pay launch and tail like the kernel).
``kernel_ms_no_pdl`` / ``kernel_ms_pdl``: the same launch without / with programmatic dependent
launch (each call may launch while the previous one runs, does its set-up, and waits for it before
touching memory; ``_rotq_kernel``), whatever the default; ``pct_same_size_pdl_copy``: the PDL
timing against the Triton copy of the same byte count launched the same way (a chain of PDL
copies), the like-for-like ceiling for it. ``v1_ms``: the kernel before the persistent rewrite
(benchmarks/_quant_v1.py), same inputs, same method, same run; ``v1_equal``: both give the same
bytes. Also checks on each shape that the kernel's packed output equals the engine's quantize()
of the kernel's rotated values, and reports the rotation's bf16 mismatch rate vs the torch twin.
Input sets rotated per case (``n_inputs``): ``--inputs`` if given, else enough that together they
hold at least twice the L2 cache (at least 3, at most 64), so that no call reads its input from L2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import (bench, bench_graph, copy_baselines, copy_graph_bandwidth, device_info, quant_bytes,  # noqa: E402
                                soft, table, write_json)

SHAPES = {"w_4096x4096": (4096, 4096), "w_14336x4096": (14336, 4096), "w_4096x14336": (4096, 14336),
          "a_2048x4096": (2048, 4096), "a_8192x14336": (8192, 14336)}


def _torch_simple(x, S, scale, G, is_nv, gs):
    """A straightforward torch implementation (for torch.compile): rotate, group scales, RNE, pack."""
    M, K = x.shape
    n = S.shape[0]
    y = ((x.float().reshape(M, K // n, n) @ S) * scale).to(x.dtype).float().reshape(M, K // G, G)
    amax = y.abs().amax(-1, keepdim=True)
    if is_nv:
        t = (amax.double() / 6 * gs.double()).clamp(max=448).float().to(torch.float8_e4m3fn)
        s = (t.double() / gs.double()).float()
        s = torch.where(s == 0, torch.ones_like(s), s)
        sb = t.view(torch.uint8)
    else:
        e = torch.frexp(amax.clamp(min=2.0**-126))[1] - 1
        s = (torch.pow(2.0, e.double()) / 3).float()
        sb = (e + 127).to(torch.uint8)
    m = (y / s).abs()
    idx = ((m > 0.25).int() + (m >= 0.75).int() + (m > 1.25).int() + (m >= 1.75).int() + (m > 2.5).int()
           + (m >= 3.5).int() + (m > 5.0).int())
    code = torch.where((y / s) < 0, idx | 8, idx).reshape(M, K)
    code = torch.where((code & 7) == 0, torch.full_like(code, 8), code).to(torch.uint8)
    return code[:, 0::2] | (code[:, 1::2] << 4), sb.reshape(M, K // G)


_SAME_SIZE: dict = {}


def run_case(label, M, K, fmt, n, copy_bw, n_inputs, with_compile, with_eager):
    from fpq_core.formats import QuantSpec, quantize
    from fpq_core.kernels.quant import make_plan, rotate_quantize, rotate_twin
    from fpq_core.transforms import get_transform
    spec = QuantSpec.from_name(fmt)
    t = get_transform("hadamard", size=n)
    xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) * (1 + i) for i in range(n_inputs)]
    gs = torch.tensor([0.5], device="cuda") if fmt == "nvfp4" else None   # given global scale: one pass
    plan = make_plan(t, K, spec.group_size)
    # correctness on this shape
    y = rotate_quantize(xs[0], spec, t, "rotated", plan=plan)
    pk, sb, _ = rotate_quantize(xs[0], spec, t, "packed", global_scale=gs, plan=plan)
    qt = quantize(y, spec, global_scale=gs)
    rp, rs = qt.pack()
    exact = bool(torch.equal(pk, rp) and torch.equal(sb, rs))
    tw = rotate_twin(xs[0], t)
    mism = float((y.view(torch.int16) != tw.view(torch.int16)).float().mean())
    eng = t.apply(xs[0])
    mism_eng = float((y.view(torch.int16) != eng.view(torch.int16)).float().mean())
    del y, pk, sb, qt, rp, rs, tw, eng
    nbytes = quant_bytes(M, K, spec.group_size)
    from benchmarks._quant_v1 import rotate_quantize_v1
    gs1 = gs if gs is not None else torch.tensor([1.0], device="cuda")
    pk1, sb1 = rotate_quantize_v1(xs[0], spec, plan, "packed", gs1)
    pk2, sb2, _ = rotate_quantize(xs[0], spec, t, "packed", global_scale=gs, plan=plan)
    v1_equal = bool(torch.equal(pk1, pk2) and torch.equal(sb1, sb2))
    del pk1, sb1, pk2, sb2
    ms = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", global_scale=gs, plan=plan), xs)
    # the same launch without and with programmatic dependent launch, explicitly (whatever the default)
    ms_np = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", global_scale=gs, plan=plan, pdl=False), xs)
    ms_p = bench_graph(lambda x: rotate_quantize(x, spec, t, "packed", global_scale=gs, plan=plan, pdl=True), xs)
    call_ms = bench(lambda x: rotate_quantize(x, spec, t, "packed", global_scale=gs, plan=plan), xs)
    v1_ms = bench_graph(lambda x: rotate_quantize_v1(x, spec, plan, "packed", gs1), xs)
    key = ((nbytes // 2) & ~15, n_inputs)
    if key not in _SAME_SIZE:                     # a copy that moves as many bytes as the kernel
        _SAME_SIZE[key] = copy_graph_bandwidth(key[0], n_inputs)
        _SAME_SIZE[key + ("pdl",)] = copy_graph_bandwidth(key[0], n_inputs, pdl=True)
    pdl_copy = _SAME_SIZE[key + ("pdl",)]

    def pct(t_ms, bw):          # % of bandwidth bw (bytes/s) for this kernel's bytes moved in t_ms
        return 100 * (nbytes / (t_ms * 1e-3)) / bw

    row = {"name": f"{label}/{fmt}/had{n}", "shape": f"{M}x{K}", "format": fmt, "rot": n, "n_inputs": n_inputs, "kernel_ms": ms,
           "GBps": nbytes / ms / 1e6, "pct_copy": pct(ms, copy_bw), "call_ms": call_ms,
           "same_size_copy_GBps": _SAME_SIZE[key] / 1e9, "pct_same_size_copy": pct(ms, _SAME_SIZE[key]),
           "v1_ms": v1_ms, "v1_pct_copy": pct(v1_ms, copy_bw), "speedup_vs_v1": v1_ms / ms,
           "v1_equal": v1_equal,
           "kernel_ms_no_pdl": ms_np, "pct_copy_no_pdl": pct(ms_np, copy_bw),
           "pct_same_size_copy_no_pdl": pct(ms_np, _SAME_SIZE[key]),
           "kernel_ms_pdl": ms_p, "pct_copy_pdl": pct(ms_p, copy_bw),
           "same_size_pdl_copy_GBps": pdl_copy / 1e9, "pct_same_size_pdl_copy": pct(ms_p, pdl_copy),
           "bit_exact_given_rotation": exact, "rot_mismatch_vs_twin": mism, "rot_mismatch_vs_engine": mism_eng}
    if with_eager:
        def eager(x):
            return quantize(t.apply(x), spec, global_scale=gs).pack()
        row["eager_ms"] = bench(eager, xs, warmup_ms=5, rep_ms=30)
    if with_compile:
        S = t._sign.to(device="cuda", dtype=torch.float32)
        sc = float(torch.tensor(1.0 / n ** 0.5, dtype=torch.float32))
        g = gs if gs is not None else torch.tensor([1.0], device="cuda")
        f = torch.compile(_torch_simple)
        t0 = time.perf_counter()
        try:          # torch.compile's own failures must not drop the kernel's row
            f(xs[0], S, sc, spec.group_size, fmt == "nvfp4", g)
            row["compile_s"] = time.perf_counter() - t0
            row["compile_ms"] = bench_graph(lambda x: f(x, S, sc, spec.group_size, fmt == "nvfp4", g), xs)
        except Exception as e:  # noqa: BLE001
            row["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for k in ("eager_ms", "compile_ms"):
        if k in row:
            row["speedup_vs_" + k[:-3]] = row[k] / ms
    print(f"{row['name']}: {ms:.3f} ms, {row['GBps']:.0f} GB/s ({row['pct_copy']:.0f}% of copy; "
          f"v1 {v1_ms:.3f} ms = {row['v1_pct_copy']:.0f}%; without / with PDL {row['pct_copy_no_pdl']:.1f} / "
          f"{row['pct_copy_pdl']:.1f}%, same-size copy {row['pct_same_size_copy_no_pdl']:.1f}%, same-size PDL copy "
          f"{row['pct_same_size_pdl_copy']:.1f}%), exact={exact} v1_equal={v1_equal}", flush=True)
    del xs
    return row


def input_sets(M: int, K: int, given: int | None = None, l2_bytes: int | None = None) -> int:
    """Input sets to rotate among for an (M, K) bf16 input: ``given``, else enough to hold twice
    the L2 cache together (at least 3; at most 64, for inputs too small to matter here)."""
    if given:
        return int(given)
    if l2_bytes is None:
        l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    return min(64, max(3, math.ceil(2 * l2_bytes / (M * K * 2))))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="fewer cases (the suite's default)")
    ap.add_argument("--inputs", type=int, default=None,
                    help="input sets rotated per case (default: twice the L2 cache in all, at least 3)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    a = ap.parse_args(argv)
    info = device_info()
    copies = copy_baselines()
    copy_bw = copies["best"]
    print(f"{info.get('gpu')}: device copy (read + write) " + ", ".join(f"{k} {v / 1e9:.0f} GB/s" for k, v in copies.items()),
          flush=True)
    rows: list = []
    for label, (M, K) in SHAPES.items():
        if label not in a.shapes.split(","):
            continue
        for fmt in ("mxfp4", "nvfp4"):
            for n in (16, 32, 128):
                if a.quick and n == 32 and label.startswith("w_4096x4"):
                    continue
                first = n == 128
                soft(rows, f"{label}/{fmt}/had{n}", run_case, label, M, K, fmt, n, copy_bw, input_sets(M, K, a.inputs),
                     with_compile=first and label in ("a_2048x4096", "w_4096x14336"),
                     with_eager=first)
    payload = {"device": info, "copy_GBps": copy_bw / 1e9, "copy_baselines_GBps": {k: v / 1e9 for k, v in copies.items()}, "rows": rows}
    write_json(a.out, "bench_quant_kernels", payload)
    print(table(rows, ["name", "kernel_ms", "GBps", "pct_copy", "pct_same_size_copy", "pct_copy_no_pdl", "pct_copy_pdl",
                       "pct_same_size_pdl_copy", "v1_ms", "speedup_vs_v1", "call_ms", "eager_ms",
                       "compile_ms", "bit_exact_given_rotation", "v1_equal", "rot_mismatch_vs_twin"]))
    return payload


if __name__ == "__main__":
    main()
