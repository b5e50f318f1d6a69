"""Run every GPU test and benchmark in one call, within a time budget, failing soft per step.

python benchmarks/run_gpu_suite.py --out $OUT [--budget 480] [--gguf PATH] [--full]
Writes OUT/suite.json (every step: command, return code, seconds, tail of its output), each
benchmark's JSON, and prints a summary table last. Steps that would start after the budget is
spent are recorded as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for the whole suite")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--full", action="store_true", help="full e2e model (32 blocks) instead of 2 blocks")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    steps = [
        ("pytest_gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/kernels", "-x", "--timeout=200",
                        f"--junitxml={out}/pytest_gpu.xml"], 150),
        ("bench_quant_kernels", [py, "benchmarks/bench_quant_kernels.py", "--out", str(out), "--quick"], 110),
        ("bench_gptq", [py, "benchmarks/bench_gptq.py", "--out", str(out)], 100),
        ("bench_e2e", [py, "benchmarks/bench_e2e.py", "--out", str(out), "--formats", "nvfp4",
                       *([] if a.full else ["--blocks", "2", "--seqs", "128"]), "--offload-blocks", "1"], 150),
    ]
    if a.gguf:
        steps.append(("bench_smollm2_gpu", [py, "benchmarks/bench_smollm2_gpu.py", "--out", str(out), "--gguf", a.gguf,
                                            "--fast-kernels"], 120))
    t_start = time.perf_counter()
    results = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, cmd, limit in steps:
        left = a.budget - (time.perf_counter() - t_start)
        if left < 20:
            results.append({"step": name, "status": "skipped (budget spent)"})
            continue
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(limit, left))
            rc, txt = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, txt = "timeout", ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
        dt = time.perf_counter() - t0
        (out / f"{name}.log").write_text(txt)
        results.append({"step": name, "rc": rc, "seconds": round(dt, 1), "tail": txt[-3000:],
                        "status": "ok" if rc == 0 else "FAILED"})
        print(f"== {name}: {results[-1]['status']} ({dt:.0f} s)\n{txt[-2500:]}", flush=True)
    (out / "suite.json").write_text(json.dumps({"steps": results, "seconds": time.perf_counter() - t_start}, indent=1))
    print("\nSUMMARY")
    for r in results:
        print(f"  {r['step']:<22} {r['status']:<24} {r.get('seconds', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
