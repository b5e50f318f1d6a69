"""GPTQ sweep: Triton block kernel vs the engine's torch sweep on CUDA (same run, same codes check).

python benchmarks/bench_gptq.py --out OUT [--shapes 4096x4096,14336x4096,4096x14336]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import device_info, soft, table, write_json  # noqa: E402


def _timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t0


def run_case(out_f, in_f, fmt, order, observer, skip_ref):
    from fpq_core.formats import QuantSpec
    from fpq_core.gptq import gptq_quantize
    from fpq_core.kernels.gptq import gptq_quantize_fast
    spec = QuantSpec.from_name(fmt)
    g = torch.Generator(device="cuda").manual_seed(out_f + in_f)
    W = (torch.randn(out_f, in_f, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    X = torch.randn(8192, in_f, device="cuda", generator=g) * torch.exp(torch.randn(in_f, device="cuda", generator=g))
    H = 2.0 / 4 * X.T @ X
    del X
    gptq_quantize_fast(W[:256, :], H, spec, observer=observer, order=order)      # compile / warm up
    fast, t_fast = _timed(lambda: gptq_quantize_fast(W, H, spec, observer=observer, order=order))
    row = {"name": f"{out_f}x{in_f}/{fmt}/{order}/{observer}", "fast_s": t_fast, "rel_error": fast.rel_error}
    if not skip_ref:
        ref, t_ref = _timed(lambda: gptq_quantize(W, H, spec, observer=observer, order=order))
        agree = float((ref.qtensor.codes == fast.qtensor.codes).float().mean())
        row.update(ref_s=t_ref, speedup=t_ref / t_fast, code_agreement=agree,
                   weights_identical=bool(torch.equal(ref.weight, fast.weight)), ref_rel_error=ref.rel_error)
    print(row, flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shapes", default="4096x4096,14336x4096,4096x14336")
    ap.add_argument("--skip-ref-over", type=int, default=10**9, help="skip the torch sweep for in_features above this")
    a = ap.parse_args(argv)
    rows: list = []
    for s in a.shapes.split(","):
        out_f, in_f = map(int, s.split("x"))
        for fmt, order, obs in (("mxfp4", "activation", "mse"), ("nvfp4", "default", "minmax")):
            soft(rows, f"{s}/{fmt}", run_case, out_f, in_f, fmt, order, obs, in_f > a.skip_ref_over)
    payload = {"device": device_info(), "rows": rows}
    write_json(a.out, "bench_gptq", payload)
    print(table(rows, ["name", "fast_s", "ref_s", "speedup", "code_agreement", "weights_identical"]))
    return payload


if __name__ == "__main__":
    main()
