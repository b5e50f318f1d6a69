"""The paper's Table-1 grid on the embedded SmolLM2, as WikiText-2 perplexity on this machine.

Methods (paper Table 1 rows): RTN, RTN+HT (Hadamard of the group size), GPTQ, MR-GPTQ; formats
MXFP4 and NVFP4; W4A4 and W4A16; plus the unquantized baseline. Each cell is one
``fpq quantize`` run (its command is recorded), so the run directories can be reopened in the
app and the notebooks. Resumable: finished cells are skipped.

    python benchmarks/table1_smollm2.py --runs_root runs/table1 --ppl_num_windows 20 \
        --num_sequences 64 --sequence_length 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["rtn", "rtn_had", "gptq", "mr_gptq"]
FORMATS = ["mxfp", "nvfp"]
ACTS = [4, 16]


def cell_command(method: str | None, fmt: str | None, a_bits: int | None, a) -> list[str]:
    cmd = [sys.executable, "-m", "fpq_core", "quantize", "--eval_perplexity", "--ppl_num_windows",
           str(a.ppl_num_windows), "--sequence_length", str(a.sequence_length), "--num_sequences",
           str(a.num_sequences), "--no_progress", "--seed", "42"]
    if method is None:
        return cmd + ["--w_bits", "16"]
    return cmd + ["--format", fmt, "--w_bits", "4", "--a_bits", str(a_bits), "--method", method]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs_root", default="runs/table1")
    ap.add_argument("--ppl_num_windows", type=int, default=20)
    ap.add_argument("--sequence_length", type=int, default=512,
                    help="calibration AND perplexity window length (the reference ties them)")
    ap.add_argument("--num_sequences", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "table1_smollm2.json"))
    ap.add_argument("--cells", default=None, help="comma-separated subset of cells (e.g. bf16,mxfp_w4a4_rtn)")
    ap.add_argument("--extra", default="", help="extra fpq quantize flags for every cell, e.g. '--device cuda --dtype float32'")
    a = ap.parse_args()
    root = Path(a.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    cells = [("bf16", None, None, None)] + [
        (f"{fmt}_w4a{ab}_{m}", m, fmt, ab) for fmt in FORMATS for ab in ACTS for m in METHODS]
    if a.cells:
        keep = set(a.cells.split(","))
        unknown = keep - {c[0] for c in cells}
        if unknown:
            raise SystemExit(f"unknown cells {sorted(unknown)}; known: {[c[0] for c in cells]}")
        cells = [c for c in cells if c[0] in keep]
    rows = []
    for name, m, fmt, ab in cells:
        run_dir = root / name
        cmd = cell_command(m, fmt, ab, a) + ["--run_dir", str(run_dir)] + a.extra.split()
        res_file = run_dir / "results.json"
        if not (res_file.exists() and "wikitext2_ppl" in json.loads(res_file.read_text())):
            if run_dir.exists():
                import shutil
                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{name}: FAILED\n{p.stderr[-3000:]}", flush=True)
                rows.append({"cell": name, "error": p.stderr[-3000:], "command": " ".join(cmd[1:])})
                continue
            print(f"{name}: done in {time.perf_counter() - t0:.0f}s", flush=True)
        res = json.loads(res_file.read_text())
        timings = json.loads((run_dir / "timings.json").read_text())
        layers = json.loads((run_dir / "layers.json").read_text()) if (run_dir / "layers.json").exists() else []
        rows.append({"cell": name, "method": m or "bf16", "format": fmt, "a_bits": ab,
                     "ppl": res["wikitext2_ppl"]["ppl"], "num_windows": res["wikitext2_ppl"]["num_windows"],
                     "quantize_s": timings.get("quantize_s"),
                     "mean_rel_error": (sum(l["rel_error"] for l in layers) / len(layers)) if layers else None,
                     "command": "fpq " + " ".join(cmd[3:]).replace(str(run_dir), "RUN_DIR")})
        print(f"  {name}: ppl {rows[-1]['ppl']:.3f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out + ".tmp"
    env_file = root / "bf16" / "environment.json"
    machine = json.loads(env_file.read_text()) if env_file.exists() else {}
    Path(tmp).write_text(json.dumps({"settings": vars(a), "machine": machine, "rows": rows}, indent=1))
    os.replace(tmp, a.out)
    base = next((r["ppl"] for r in rows if r["cell"] == "bf16" and "ppl" in r), None)
    print(f"\nWikiText-2 perplexity, SmolLM2-135M-Instruct, {a.ppl_num_windows} windows of {a.sequence_length}")
    print(f"{'format':6s} {'acts':5s} " + " ".join(f"{m:>9s}" for m in METHODS))
    print(f"bf16 baseline: {base}")
    for fmt in FORMATS:
        for ab in ACTS:
            vals = []
            for m in METHODS:
                r = next((r for r in rows if r["cell"] == f"{fmt}_w4a{ab}_{m}"), {})
                vals.append(f"{r['ppl']:9.3f}" if "ppl" in r else f"{'ERR':>9s}")
            print(f"{fmt:6s} W4A{ab:<3d}" + " ".join(vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
