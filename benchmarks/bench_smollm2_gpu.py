"""The embedded SmolLM2 pipeline on GPU vs CPU: RTN and MR-GPTQ MXFP4 W4A4, a few perplexity windows.

python benchmarks/bench_smollm2_gpu.py --out OUT --gguf PATH [--cpu-json FILE] [--windows 4] [--calib 16]
CPU numbers are computed in the same run (float32). Reported per method: GPU float32 and bfloat16
perplexity, the relative difference to the CPU, and (float32) the fraction of FP4 codes identical
to the CPU run. RTN W4A16 uses no data, so its codes must agree exactly; with activation
quantization or GPTQ, tiny float differences (matmul order, float32 vs float64 Hadamard) move a
few codes across rounding boundaries and a 4-bit model amplifies that into the perplexity.
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


def one(method, gguf, device, dtype, windows, calib, seq_len, fast_kernels=None):
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
        name, a_bits = (method[:-6], 16) if method.endswith("_w4a16") else (method, 4)
        cfg = QuantConfig.preset(name, fmt="mxfp", a_bits=a_bits)
        quantize_model(model, cfg, batches, options=RunOptions(device=device, fast_kernels=fast_kernels))
    tq = time.perf_counter() - t0
    ppl = perplexity(model, ids, sequence_length=seq_len, num_windows=windows, device=device)
    val = float(getattr(ppl, "perplexity", getattr(ppl, "ppl", ppl)))
    codes = {n: m.qtensor.codes.cpu() for n, m in model.named_modules()
             if getattr(m, "qtensor", None) is not None}
    return {"method": method, "device": device, "ppl": val, "quantize_s": tq, "_codes": codes}


def code_agreement(a: dict, b: dict) -> float | None:
    """Fraction of identical FP4 codes between two quantized copies of the model."""
    if not a or a.keys() != b.keys():
        return None
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    return same / sum(a[k].numel() for k in a)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: the embedded model)")
    ap.add_argument("--cpu-json", default=None)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tol", type=float, default=0.01, help="float32 GPU vs float32 CPU")
    ap.add_argument("--tol-bf16", type=float, default=0.03, help="bfloat16 GPU vs float32 CPU")
    ap.add_argument("--fast-kernels", action="store_true", help="patch the pipeline with the Triton kernels")
    ap.add_argument("--compare-paths", action="store_true",
                    help="only: GPU float32 with the Triton kernels vs the torch (engine) path, same GPU")
    a = ap.parse_args(argv)
    if a.compare_paths:
        return compare_paths(a)
    if a.fast_kernels:
        from benchmarks.bench_e2e import install_fast_kernels
        install_fast_kernels()
    rows: list = []
    cpu = json.loads(Path(a.cpu_json).read_text()) if a.cpu_json else {}
    cpu_codes = {}
    for m in ("fp", "rtn_w4a16", "rtn", "mr_gptq"):
        if m not in cpu and not a.no_cpu:
            c = soft(rows, f"cpu/{m}", one, m, a.gguf, "cpu", torch.float32, a.windows, a.calib, a.seq_len)
            if c:
                cpu[m] = c["ppl"]
                cpu_codes[m] = c.pop("_codes")
        # float32 on the GPU is the like-for-like comparison; bfloat16 is what users run
        for dt in (torch.float32, torch.bfloat16):
            r = soft(rows, f"gpu/{m}/{dt}", one, m, a.gguf, "cuda", dt, a.windows, a.calib, a.seq_len)
            if r:
                r["dtype"] = str(dt).replace("torch.", "")
                codes = r.pop("_codes")
                if dt == torch.float32 and m in cpu_codes:
                    r["code_agreement_vs_cpu"] = code_agreement(codes, cpu_codes[m])
            if r and m in cpu:
                r["cpu_ppl"] = cpu[m]
                r["rel_diff"] = abs(r["ppl"] - cpu[m]) / cpu[m]
                r["within_tol"] = r["rel_diff"] <= (a.tol if dt == torch.float32 else a.tol_bf16)
            print(r, flush=True)
    payload = {"device": device_info(), "tol": a.tol, "tol_bf16": a.tol_bf16, "rows": rows}
    write_json(a.out, "bench_smollm2_gpu", payload)
    return payload


def compare_paths(a):
    """Is a GPU-vs-CPU difference the kernels' doing or float noise? Same GPU, float32, the
    pipeline with fast_kernels on and off: perplexity of each and the share of identical codes."""
    rows = []
    for m in ("rtn", "mr_gptq"):
        on = one(m, a.gguf, "cuda", torch.float32, a.windows, a.calib, a.seq_len, fast_kernels=True)
        off = one(m, a.gguf, "cuda", torch.float32, a.windows, a.calib, a.seq_len, fast_kernels=False)
        r = {"method": m, "ppl_kernels": on["ppl"], "ppl_torch_path": off["ppl"],
             "rel_diff": abs(on["ppl"] - off["ppl"]) / off["ppl"],
             "code_agreement": code_agreement(on["_codes"], off["_codes"]),
             "quantize_s_kernels": on["quantize_s"], "quantize_s_torch_path": off["quantize_s"]}
        print(r, flush=True)
        rows.append(r)
    payload = {"device": device_info(), "rows": rows}
    write_json(a.out, "smollm2_gpu_kernels_vs_torch_path", payload)
    return payload


if __name__ == "__main__":
    main()
