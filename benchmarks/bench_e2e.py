"""MR-GPTQ W4A4 of a Llama-3.1-8B-shaped model (random weights) through quantize_model with the
fast kernels; time and peak GPU memory, then again with CPU offload of modules and activations.

python benchmarks/bench_e2e.py --out OUT [--shape 8b|70b] [--blocks N] [--seqs N] [--offload-blocks N]
    [--formats nvfp4,mxfp4 | --formats none]
With --blocks < the shape's block count (32 for 8b, 80 for 70b) the full-model time is
EXTRAPOLATED (printed as "measured on K blocks, extrapolated"): per-block time x blocks (+ the
measured capture time once). ``--shape 70b`` builds Llama-3.1-70B-shaped blocks (hidden 8192,
intermediate 28672, 64/8 heads): with ``--formats none --offload-blocks 2`` it measures the peak
GPU memory of the offloaded run on real 70B block shapes (the whole model, 141 GB in bf16, is
never built: only the blocks measured).
The fast kernels are installed by patching fpq_core.pipeline's gptq_quantize / HessianAccumulator /
InputPath names (until the pipeline has its own hook).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import device_info, soft, write_json  # noqa: E402

# Llama-3.1-8B and -70B shapes (their config.json on the hub); random weights
MODEL_SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
               full_blocks=32),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                full_blocks=80),
}


def install_fast_kernels():
    import fpq_core.pipeline as pl
    from fpq_core.kernels.gptq import gptq_quantize_auto
    from fpq_core.kernels.hessian import TritonHessianAccumulator
    from fpq_core.kernels.runtime import FusedInputPath
    pl.gptq_quantize = gptq_quantize_auto
    pl.HessianAccumulator = TritonHessianAccumulator
    pl.InputPath = FusedInputPath


def build(blocks, device, shape="8b"):
    """Random-weight Llama-3.1 shapes (``shape``: "8b" or "70b", ``blocks`` of them) in bf16,
    initialised on the GPU (fast) and, for a CPU model, moved there afterwards."""
    from transformers import LlamaConfig, LlamaForCausalLM
    dims = {k: v for k, v in MODEL_SHAPES[shape].items() if k != "full_blocks"}
    cfg = LlamaConfig(**dims, num_hidden_layers=blocks, vocab_size=128256, max_position_embeddings=4096,
                      rope_theta=500000.0, torch_dtype="bfloat16")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    if device != "cuda":
        model = model.to(device)
        torch.cuda.empty_cache()
    model.eval()
    return model


def run(fmt, blocks, seqs, seq_len, offload, modules_only=False, shape="8b"):
    """offload: model kept on the CPU, blocks moved to the GPU one at a time; with modules_only
    the calibration activations stay on the GPU (the fast setting when they fit), otherwise they
    are offloaded too (the smallest GPU footprint)."""
    from fpq_core.config import QuantConfig
    from fpq_core.pipeline import RunOptions, quantize_model
    torch.cuda.reset_peak_memory_stats()
    model = build(blocks, "cpu" if offload else "cuda", shape)
    full_blocks = MODEL_SHAPES[shape]["full_blocks"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128256, (1, seq_len), generator=g) for _ in range(seqs)]
    cfg = QuantConfig.preset("mr_gptq", fmt=fmt)
    times = []
    t0 = time.perf_counter()
    last = [t0]

    def on_block(i, n):
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        print(f"  block {i + 1}/{n}: {times[-1]:.1f} s", flush=True)

    opts = RunOptions(device="cuda", cpu_offload_modules=offload, cpu_offload_activations=offload and not modules_only)
    res = quantize_model(model, cfg, batches, options=opts, on_block=on_block)
    total = time.perf_counter() - t0
    per_block = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
    first_overhead = times[0] - per_block if times else 0.0
    est_full = first_overhead + per_block * full_blocks
    peak = torch.cuda.max_memory_allocated()
    mode = ("offload_modules" if modules_only else "offload") if offload else "gpu"
    row = {"name": f"mr_gptq/{fmt}/{mode}" + ("" if shape == "8b" else f"/{shape}"), "shape": shape,
           "full_blocks": full_blocks, "blocks": blocks, "seqs": seqs,
           "seq_len": seq_len, "measured_s": total, "per_block_s": per_block,
           "full_model_s": est_full if blocks < full_blocks else total,
           "full_model_note": "measured" if blocks >= full_blocks else f"measured on {blocks} blocks, extrapolated",
           "peak_gpu_GB": peak / 2**30, "pipeline_peak_GB": (res.peak_gpu_memory_bytes or 0) / 2**30,
           "mean_rel_error": sum(l.rel_error for l in res.layers) / max(1, len(res.layers))}
    if offload and not modules_only and shape == "8b":
        row["note_70b"] = ("with offload, GPU memory ~ one block + its calibration activations; "
                           "--shape 70b measures it on Llama-70B block shapes")
    print(row, flush=True)
    del model
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="8b",
                    help="Llama-3.1-8B or -70B block shapes (random weights)")
    ap.add_argument("--blocks", type=int, default=None, help="blocks to build and quantize (default: the whole model)")
    ap.add_argument("--seqs", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--offload-blocks", type=int, default=1)
    ap.add_argument("--formats", default="nvfp4,mxfp4", help="comma-separated, or 'none' (only the offload run)")
    ap.add_argument("--model-on-cpu", action="store_true",
                    help="keep the model on the CPU (--cpu_offload_modules), calibration activations on the GPU: "
                         "how a full 8B model runs when weights + activations do not fit the GPU together")
    a = ap.parse_args(argv)
    fmts = {"nvfp4": "nvfp", "mxfp4": "mxfp"}
    chosen = [] if a.formats == "none" else a.formats.split(",")
    bad = [f for f in chosen if f not in fmts]
    if bad:
        ap.error(f"unknown format(s) {bad}: use nvfp4, mxfp4 or none")
    blocks = a.blocks if a.blocks is not None else MODEL_SHAPES[a.shape]["full_blocks"]
    install_fast_kernels()
    rows: list = []
    for f in chosen:
        soft(rows, f"e2e/{f}", run, fmts[f], blocks, a.seqs, a.seq_len, a.model_on_cpu, a.model_on_cpu, a.shape)
    if a.offload_blocks > 0:
        soft(rows, "e2e/offload", run, "nvfp", a.offload_blocks, a.seqs, a.seq_len, True, False, a.shape)
    payload = {"device": device_info(), "rows": rows}
    write_json(a.out, "bench_e2e", payload)
    for r in rows:
        if "error" not in r:
            print(f"{r['name']}: full model {r['full_model_s']:.0f} s ({r['full_model_note']}), "
                  f"peak GPU {r['peak_gpu_GB']:.1f} GiB")
    return payload


if __name__ == "__main__":
    main()
