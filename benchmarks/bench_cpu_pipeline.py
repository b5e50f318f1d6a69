"""CPU speed and memory of the pipeline on the embedded SmolLM2 (issue: quantize real models).

Targets on a 2-core machine: RTN W4A16 MXFP4 end to end (load + quantize) under 30 s; GPTQ with
64 x 512 calibration tokens under 5 min. Prints a table and writes JSON to
benchmarks/results/cpu_pipeline.json (override with --out).

    python benchmarks/bench_cpu_pipeline.py [--cases rtn_w4a16_mxfp4,gptq_w4a16_mxfp4,...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a checkout without install

CASES = {
    "rtn_w4a16_mxfp4": dict(method="rtn", fmt="mxfp", a_bits=16, data=False),
    "rtn_w4a4_nvfp4": dict(method="rtn", fmt="nvfp", a_bits=4, data=True),
    "gptq_w4a16_mxfp4": dict(method="gptq", fmt="mxfp", a_bits=16, data=True),
    "mr_gptq_w4a4_mxfp4": dict(method="mr_gptq", fmt="mxfp", a_bits=4, data=True),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(name: str, spec: dict, nseq: int, seqlen: int) -> dict:
    import torch

    from fpq_core.config import QuantConfig
    from fpq_core.data import get_calibration_data
    from fpq_core.models.loading import load_model
    from fpq_core.pipeline import RunOptions, quantize_model

    t0 = time.perf_counter()
    model, tok = load_model("embedded", dtype=torch.float32, device="cpu")
    t_load = time.perf_counter() - t0
    cfg = QuantConfig.preset(spec["method"], fmt=spec["fmt"], w_bits=4, a_bits=spec["a_bits"])
    if spec["method"] in ("rtn_had", "mr_gptq"):
        cfg.hadamard_group_size = 16 if spec["fmt"] == "nvfp" else 32
    batches = None
    t_data = 0.0
    if spec["data"]:
        t0 = time.perf_counter()
        batches = get_calibration_data("embedded", tok, num_sequences=nseq, sequence_length=seqlen, seed=42)
        t_data = time.perf_counter() - t0
    res = quantize_model(model, cfg, batches, options=RunOptions(device="cpu"))
    return {"case": name, "method": cfg.method_name, "load_s": t_load, "data_s": t_data,
            "quantize_s": res.seconds, "total_s": t_load + t_data + res.seconds,
            "calibration_tokens": (nseq * seqlen) if spec["data"] else 0, "peak_rss_mb": peak_rss_mb(),
            "layers": len(res.layers)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--num_sequences", type=int, default=64)
    ap.add_argument("--sequence_length", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_pipeline.json"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # child mode: run one case
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_case(a.one, CASES[a.one], a.num_sequences, a.sequence_length)))
        return 0
    import subprocess

    rows = []
    for name in a.cases.split(","):
        # one process per case, so peak RSS is that case's alone
        out = subprocess.run([sys.executable, __file__, "--one", name, "--num_sequences", str(a.num_sequences),
                              "--sequence_length", str(a.sequence_length)], capture_output=True, text=True)
        if out.returncode != 0:
            rows.append({"case": name, "error": out.stderr[-2000:]})
            print(f"{name}: FAILED\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out + ".tmp"
    Path(tmp).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    os.replace(tmp, a.out)
    print(f"\nmachine: {machine}")
    print(f"{'case':24s} {'calib tok':>10s} {'load s':>8s} {'data s':>8s} {'quant s':>9s} {'total s':>9s} {'peak RSS MB':>12s}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:24s} ERROR")
            continue
        print(f"{r['case']:24s} {r['calibration_tokens']:10d} {r['load_s']:8.1f} {r['data_s']:8.1f} "
              f"{r['quantize_s']:9.1f} {r['total_s']:9.1f} {r['peak_rss_mb']:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
