"""Where the fused quant kernel's time goes, on a GPU: a per-program timeline and Nsight Compute.

    python benchmarks/profile_quant_kernel.py --out DIR [--cases CASES] [--timeline] [--ncu]

``--timeline``: runs a copy of ``fpq_core.kernels.quant`` in which each program of
``_rotq_kernel`` records its SM, its start and end (``%globaltimer`` ns and the SM's ``clock64``)
into a buffer (the kernel itself is not changed; the copy is made by editing its source text, as
``sass_quant_kernel.py --hot`` does). From the records: programs per SM at once, how long a
program of the first wave takes against one of the last, and the "ramp" (first program start to
the moment every SM has started) and the "tail" (from the first SM that runs out of work to the
end), in per cent of the kernel's span. The records come from one launch after warm-up; the
kernel's CUDA-graph time (as bench_quant_kernels.py times it) and the same launch without the
Python wrapper (``_launch``, no output allocation, no MXFP4 global-scale clone) are timed beside it.

``--ncu``: runs the cases once more under ``ncu --clock-control none`` (profiling only between
``cudaProfilerStart``/``Stop``, after warm-up), with a Triton copy of each case's byte count
beside them, and keeps the headline metrics (duration, DRAM and SM throughput, issue-slot use,
achieved occupancy, warp stall reasons per issued instruction, pipe use) in the JSON.

CASES: comma-separated ``SHAPE:FMT:ROT`` with SHAPE ``MxK`` (default: the small and large shapes
of bench_quant_kernels.py in both formats). Writes OUT/profile_quant_kernel.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import quant_bytes, quant_module_copy, table, write_json  # noqa: E402

DEFAULT_CASES = ("2048x4096:nvfp4:16,2048x4096:mxfp4:32,4096x4096:nvfp4:16,4096x4096:mxfp4:32,"
                 "14336x4096:nvfp4:16,14336x4096:mxfp4:32,8192x14336:nvfp4:16")

_START = "    if PDL == 1:\n        gdc_launch_dependents()\n"     # the kernel's first statement
_END = "    if MODE == 1:\n        tl.store(amax_ptr + pid,"
_HELPERS = '''

@triton.jit
def _prof_globaltimer(d):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [d], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _prof_clock(d):
    return tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [d], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _prof_smid(d):
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [d], dtype=tl.int32, is_pure=False, pack=1)

'''


def _timeline_module():
    """A copy of fpq_core.kernels.quant whose kernel writes (smid, t0, t1, c0, c1) per program
    into amax_ptr (an int64 buffer of 5 * programs) in modes 2 and 3."""
    def edit(src: str) -> str:
        for marker in (_START, _END):
            if src.count(marker) != 1:
                raise SystemExit(f"marker {marker!r} not found once in quant.py; update profile_quant_kernel.py")
        src = src.replace(_START, "    prof_t0 = _prof_globaltimer(tl.program_id(0))\n"
                                  "    prof_c0 = _prof_clock(tl.program_id(0))\n" + _START)
        src = src.replace(_END, "    if MODE >= 2:\n"
                                "        prof_c1 = _prof_clock(pid)\n"
                                "        prof_t1 = _prof_globaltimer(pid)\n"
                                "        tl.store(amax_ptr + pid * 5, _prof_smid(pid).to(tl.int64))\n"
                                "        tl.store(amax_ptr + pid * 5 + 1, prof_t0)\n"
                                "        tl.store(amax_ptr + pid * 5 + 2, prof_t1)\n"
                                "        tl.store(amax_ptr + pid * 5 + 3, prof_c0)\n"
                                "        tl.store(amax_ptr + pid * 5 + 4, prof_c1)\n" + _END)
        k = src.index("@triton.jit\ndef _rotq_tile")
        return src[:k] + _HELPERS.lstrip("\n") + "\n" + src[k:]

    return quant_module_copy(edit, "fpq_quant_timeline")


def parse_cases(text: str) -> list[tuple[int, int, str, int, int | None]]:
    """``MxK:FMT:ROT[:F2FP]`` items; F2FP 0/1: the kernel's ``f2fp`` option (default: the kernel's)."""
    out = []
    for item in text.split(","):
        shape, fmt, rot, *cv = item.strip().split(":")
        m, k = shape.lower().split("x")
        out.append((int(m), int(k), fmt, int(rot), bool(int(cv[0])) if cv else None))
    return out


def _label(case) -> str:
    m, k, f, r, cv = case
    return f"{m}x{k}:{f}:{r}" + (f":{int(cv)}" if cv is not None else "")


def _setup(M, K, fmt, rot, n_inputs=None):
    import torch
    from fpq_core.formats import QuantSpec
    from fpq_core.kernels.quant import make_plan
    from fpq_core.transforms import get_transform
    from benchmarks.bench_quant_kernels import input_sets
    spec = QuantSpec.from_name(fmt)
    t = get_transform("hadamard", size=rot)
    n_inputs = n_inputs or input_sets(M, K)          # as the bench: out of L2
    xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) * (1 + i) for i in range(n_inputs)]
    gs = torch.tensor([0.5], device="cuda") if fmt == "nvfp4" else None
    return spec, t, xs, gs, make_plan(t, K, spec.group_size)


def analyse_records(rec, n_sms: int) -> dict:
    """Summary of one launch's per-program (smid, t0, t1, c0, c1) records (numpy int64, (P, 5))."""
    import numpy as np
    sm, t0, t1, c0, c1 = (rec[:, i] for i in range(5))
    start, end = int(t0.min()), int(t1.max())
    span = max(1, end - start)
    cyc = (c1 - c0).astype(np.float64)
    # programs at once per SM: the most intervals that overlap on one SM (sweep over its events)
    conc = 0
    for s in np.unique(sm):
        sel = sm == s
        ev = sorted([(int(a), 1) for a in c0[sel]] + [(int(b), -1) for b in c1[sel]], key=lambda e: (e[0], e[1]))
        cur = 0
        for _, d in ev:
            cur += d
            conc = max(conc, cur)
    first_start = np.array([t0[sm == s].min() for s in np.unique(sm)])
    last_end = np.array([t1[sm == s].max() for s in np.unique(sm)])
    order = np.argsort(t0, kind="stable")
    n_first = min(len(order), conc * n_sms)
    first = cyc[order[:n_first]]
    last = cyc[order[-n_first:]] if len(order) > n_first else first
    return {"programs": int(len(rec)), "sms_used": int(len(np.unique(sm))), "programs_per_sm_at_once": int(conc),
            "span_us": span / 1e3,
            "ramp_pct": 100 * float(first_start.max() - start) / span,         # until every SM has started
            "tail_pct": 100 * float(end - last_end.min()) / span,              # after the first SM finished
            "program_us_median": float(np.median(t1 - t0)) / 1e3,
            "program_kcycles_first_wave": float(np.median(first)) / 1e3,
            "program_kcycles_last": float(np.median(last)) / 1e3,
            "sm_busy_pct": 100 * float(np.mean(last_end - first_start)) / span}


def run_timeline(cases, out: Path) -> list[dict]:
    import numpy as np
    import torch
    from benchmarks._common import bench_graph
    import fpq_core.kernels.quant as q
    mod = _timeline_module()
    n_sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for M, K, fmt, rot, cv in cases:
        spec, t, xs, gs, plan = _setup(M, K, fmt, rot)
        gsv = gs if gs is not None else q._const(spec.mx_global_scale, xs[0].device)
        pk = torch.empty(M, K // 2, dtype=torch.uint8, device="cuda")
        sb = torch.empty(M, K // spec.group_size, dtype=torch.uint8, device="cuda")
        buf = torch.zeros(5 * 65536, dtype=torch.int64, device="cuda")
        ref = q.rotate_quantize(xs[0], spec, t, "packed", global_scale=gs, plan=plan, f2fp=False)
        for _ in range(3):
            mod._launch(xs[0], plan, spec, 3, pk=pk, sb=sb, gs=gsv, amax=buf, f2fp=cv)
        torch.cuda.synchronize()
        buf.zero_()
        mod._launch(xs[1], plan, spec, 3, pk=pk, sb=sb, gs=gsv, amax=buf, f2fp=cv)
        mod._launch(xs[0], plan, spec, 3, pk=pk, sb=sb, gs=gsv, amax=buf, f2fp=cv)   # the recorded launch
        torch.cuda.synchronize()
        same = bool(torch.equal(pk, ref[0]) and torch.equal(sb, ref[1]))
        used = (buf.view(-1, 5)[:, 1] > 0).nonzero().numel()
        rec = buf.view(-1, 5)[:used].cpu().numpy()
        r = {"case": f"{M}x{K}", "fmt": fmt, "rot": rot, "f2fp": cv, "instrumented_equal": same}
        r.update(analyse_records(rec, n_sms))
        wrapped = bench_graph(lambda x: q.rotate_quantize(x, spec, t, "packed", global_scale=gs, plan=plan, f2fp=cv), xs)
        bare = bench_graph(lambda x: q._launch(x, plan, spec, 3, pk=pk, sb=sb, gs=gsv, f2fp=cv), xs)
        inst = bench_graph(lambda x: mod._launch(x, plan, spec, 3, pk=pk, sb=sb, gs=gsv, amax=buf, f2fp=cv), xs)
        r.update({"graph_us": wrapped * 1e3, "graph_bare_launch_us": bare * 1e3, "graph_instrumented_us": inst * 1e3})
        np.save(out / f"timeline_{M}x{K}_{fmt}_{rot}.npy", rec)
        rows.append(r)
        print(f"{r['case']} {fmt} had{rot}: span {r['span_us']:.1f} us, graph {r['graph_us']:.1f} us "
              f"(bare {r['graph_bare_launch_us']:.1f}), {r['programs']} programs, {r['programs_per_sm_at_once']}/SM, "
              f"ramp {r['ramp_pct']:.0f}%, tail {r['tail_pct']:.0f}%", flush=True)
        del xs, pk, sb, buf
        torch.cuda.empty_cache()
    return rows


def _child(cases):
    """Under ncu: warm every case and its copy, then profile one launch of each."""
    import torch
    from benchmarks._common import _copy
    from fpq_core.kernels.quant import rotate_quantize
    work = []
    n_sms = torch.cuda.get_device_properties(0).multi_processor_count
    for M, K, fmt, rot, cv in cases:
        spec, t, xs, gs, plan = _setup(M, K, fmt, rot, n_inputs=1)
        nbytes = quant_bytes(M, K, spec.group_size)
        src = torch.empty(nbytes // 4, dtype=torch.bfloat16, device="cuda").normal_()
        dst = torch.empty_like(src)
        fq = (lambda xs=xs, spec=spec, t=t, gs=gs, plan=plan, cv=cv:
              rotate_quantize(xs[0], spec, t, "packed", global_scale=gs, plan=plan, f2fp=cv))
        fc = (lambda src=src, dst=dst: _copy[(n_sms * 4,)](src, dst, src.numel(), BLOCK=4096))
        fq(), fc()
        work.append((fq, fc))
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for fq, fc in work:
        fq()
        fc()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


_KEEP = ("gpu__time_duration.sum", "dram__bytes.sum.per_second", "dram__cycles_active.avg.pct_of_peak_sustained_elapsed",
         "gpc__cycles_elapsed.avg.per_second", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
         "smsp__issue_active.avg.pct_of_peak_sustained_active", "sm__warps_active.avg.pct_of_peak_sustained_active",
         "smsp__inst_executed.sum", "launch__registers_per_thread", "launch__occupancy_limit_registers",
         "launch__occupancy_limit_shared_mem", "launch__grid_size", "lts__t_sector_hit_rate.pct")


def run_ncu(cases, out: Path) -> list[dict]:
    exe = shutil.which("ncu") or next(iter(sorted(Path("/opt/nvidia").glob("nsight-compute/*/ncu"))), None)
    if exe is None:
        raise SystemExit("ncu not found")
    rep = out / "ncu_quant"
    sections = ["SpeedOfLight", "LaunchStats", "Occupancy", "SchedulerStats", "WarpStateStats",
                "ComputeWorkloadAnalysis", "MemoryWorkloadAnalysis", "InstructionStats"]
    cmd = [str(exe), "--clock-control", "none", "--profile-from-start", "off", "--force-overwrite", "-o", str(rep)]
    for s in sections:
        cmd += ["--section", s]
    spec = ",".join(_label(c) for c in cases)
    cmd += [sys.executable, __file__, "--child", "--cases", spec]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=560)
    (out / "ncu_stdout.txt").write_text(p.stdout[-200000:] + "\n--- stderr ---\n" + p.stderr[-50000:])
    if p.returncode != 0:
        raise SystemExit(f"ncu failed ({p.returncode}): {p.stderr[-2000:]}")
    raw = subprocess.run([str(exe), "--import", str(rep) + ".ncu-rep", "--page", "raw", "--csv"],
                         capture_output=True, text=True, timeout=300).stdout
    (out / "ncu_raw.csv").write_text(raw)
    return parse_ncu_raw(raw, [_label(c) for c in cases])


def parse_ncu_raw(raw: str, labels: list[str]) -> list[dict]:
    """Rows of ``ncu --page raw --csv`` (a quant kernel and its copy per case, in order) -> the
    kept metrics (``_KEEP``, stall reasons, pipe use) per kernel."""
    rows = list(csv.reader(io.StringIO(raw)))
    head, body = rows[0], rows[2:]                 # rows[1]: units
    res = []
    for i, vals in enumerate(body):
        d = dict(zip(head, vals))
        kind = "quant" if "rotq" in d.get("Kernel Name", "") else "copy"
        r = {"case": labels[i // 2] if i // 2 < len(labels) else "?", "kernel": kind}
        for key, v in d.items():
            if key in _KEEP or "issue_stalled" in key \
                    or (key.startswith("sm__inst_executed_pipe_") and key.endswith("pct_of_peak_sustained_active")) \
                    or (key.startswith("sm__pipe_") and key.endswith("pct_of_peak_sustained_active")):
                try:
                    r[key] = float(v.replace(",", ""))
                except ValueError:
                    r[key] = v
        res.append(r)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cases = parse_cases(a.cases)
    if a.child:
        return _child(cases)
    import torch
    from benchmarks._common import device_info
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_info()}
    if a.timeline:
        rows = run_timeline(cases, out)
        payload["timeline"] = rows
        print(table(rows, ["case", "fmt", "rot", "graph_us", "graph_bare_launch_us", "graph_instrumented_us",
                           "span_us", "programs", "programs_per_sm_at_once", "ramp_pct", "tail_pct",
                           "program_kcycles_first_wave", "program_kcycles_last", "sm_busy_pct", "instrumented_equal"]))
    if a.ncu:
        torch.cuda.empty_cache()
        rows = run_ncu(cases, out)
        payload["ncu"] = rows
        cols = ["case", "kernel", "gpu__time_duration.sum", "dram__bytes.sum.per_second", "gpc__cycles_elapsed.avg.per_second",
                "smsp__issue_active.avg.pct_of_peak_sustained_active", "sm__warps_active.avg.pct_of_peak_sustained_active",
                "launch__registers_per_thread"]
        print(table(rows, cols))
        stalls = sorted({k for r in rows for k in r if "issue_stalled" in k})
        for r in rows:
            if r["kernel"] == "quant":
                top = sorted(((r[k], k) for k in stalls if isinstance(r.get(k), float)), reverse=True)[:6]
                print(r["case"], "; ".join(f"{k.split('issue_stalled_')[1].split('_per')[0]} {v:.1f}" for v, k in top))
    write_json(out, "profile_quant_kernel", payload)


if __name__ == "__main__":
    main()
