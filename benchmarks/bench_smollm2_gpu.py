"""The embedded SmolLM2 pipeline on GPU vs CPU: RTN and MR-GPTQ MXFP4 W4A4, a few perplexity windows.

python benchmarks/bench_smollm2_gpu.py --out OUT --gguf PATH [--cpu-json FILE] [--windows 4] [--calib 16]
CPU numbers come from --cpu-json ({"rtn": ppl, "mr_gptq": ppl, "fp": ppl}) or are computed here on
the CPU (float32) when --cpu-json is not given and --no-cpu is not set. Pass criterion: relative
perplexity difference <= --tol (default 2%: GPU runs bf16 and a float32 butterfly Hadamard,
the CPU float32 and a float64 Hadamard, so codes differ at rounding boundaries).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import device_info, soft, write_json  # noqa: E402


def one(method, gguf, device, dtype, windows, calib, seq_len):
    from fpq_core.config import QuantConfig
    from fpq_core.data import get_calibration_data, get_wikitext2_test
    from fpq_core.evaluate import perplexity
    from fpq_core.models.loading import load_model
    from fpq_core.pipeline import RunOptions, quantize_model
    model, tok = load_model(gguf, dtype=dtype, device=device)
    ids = get_wikitext2_test(tok)
    t0 = time.perf_counter()
    if method != "fp":
        batches = get_calibration_data("embedded", tok, num_sequences=calib, sequence_length=seq_len)
        cfg = QuantConfig.preset(method, fmt="mxfp")
        quantize_model(model, cfg, batches, options=RunOptions(device=device))
    tq = time.perf_counter() - t0
    ppl = perplexity(model, ids, sequence_length=seq_len, num_windows=windows, device=device)
    val = float(getattr(ppl, "perplexity", getattr(ppl, "ppl", ppl)))
    return {"method": method, "device": device, "ppl": val, "quantize_s": tq}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: the embedded model)")
    ap.add_argument("--cpu-json", default=None)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tol", type=float, default=0.02)
    ap.add_argument("--fast-kernels", action="store_true", help="patch the pipeline with the Triton kernels")
    a = ap.parse_args(argv)
    if a.fast_kernels:
        from benchmarks.bench_e2e import install_fast_kernels
        install_fast_kernels()
    rows: list = []
    cpu = json.loads(Path(a.cpu_json).read_text()) if a.cpu_json else {}
    for m in ("fp", "rtn", "mr_gptq"):
        r = soft(rows, f"gpu/{m}", one, m, a.gguf, "cuda", torch.bfloat16, a.windows, a.calib, a.seq_len)
        if m not in cpu and not a.no_cpu:
            c = soft(rows, f"cpu/{m}", one, m, a.gguf, "cpu", torch.float32, a.windows, a.calib, a.seq_len)
            if c:
                cpu[m] = c["ppl"]
        if r and m in cpu:
            r["cpu_ppl"] = cpu[m]
            r["rel_diff"] = abs(r["ppl"] - cpu[m]) / cpu[m]
            r["within_tol"] = r["rel_diff"] <= a.tol
        print(r, flush=True)
    payload = {"device": device_info(), "tol": a.tol, "rows": rows}
    write_json(a.out, "bench_smollm2_gpu", payload)
    return payload


if __name__ == "__main__":
    main()
