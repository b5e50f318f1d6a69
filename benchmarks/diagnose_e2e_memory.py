"""Where does GPU memory go in the 8B-shaped MR-GPTQ run? Prints allocated/peak memory after each
block and the largest live CUDA tensors (by shape) at the end of each block.

python benchmarks/diagnose_e2e_memory.py --blocks 3 --fmt nvfp [--model-on-cpu]
"""
from __future__ import annotations

import argparse
import collections
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_e2e import build, install_fast_kernels  # noqa: E402


def live_cuda_tensors(top=12):
    c = collections.Counter()
    for o in gc.get_objects():
        try:
            if torch.is_tensor(o) and o.is_cuda:
                c[(tuple(o.shape), str(o.dtype))] += o.numel() * o.element_size()
        except Exception:  # noqa: BLE001
            pass
    return [(k, round(v / 2**30, 2)) for k, v in c.most_common(top)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--seqs", type=int, default=128)
    ap.add_argument("--fmt", default="nvfp")
    ap.add_argument("--model-on-cpu", action="store_true")
    a = ap.parse_args()
    install_fast_kernels()
    from fpq_core.config import QuantConfig
    from fpq_core.pipeline import RunOptions, quantize_model
    model = build(a.blocks, "cpu" if a.model_on_cpu else "cuda")
    print(f"model built: allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB", flush=True)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128256, (1, 2048), generator=g) for _ in range(a.seqs)]

    def on_block(i, n):
        torch.cuda.synchronize()
        print(f"block {i + 1}/{n}: allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
        print("  largest live:", live_cuda_tensors(), flush=True)
        torch.cuda.reset_peak_memory_stats()

    opts = RunOptions(device="cuda", cpu_offload_modules=a.model_on_cpu)
    quantize_model(model, QuantConfig.preset("mr_gptq", fmt=a.fmt), batches, options=opts, on_block=on_block)


if __name__ == "__main__":
    main()
