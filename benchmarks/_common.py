"""Shared helpers of the GPU benchmarks: device info, median timing, JSON + table output."""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch


def device_info() -> dict:
    d = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                 memory_gb=round(p.total_memory / 2**30, 1))
    try:
        import triton
        d["triton"] = triton.__version__
    except ImportError:
        d["triton"] = None
    return d


def _rotating(fn, inputs: list):
    """A no-argument call of fn that takes the next of several input sets each time (defeats the
    L2 cache); a tuple is unpacked into arguments."""
    state = {"i": 0}

    def run():
        a = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        fn(*a) if isinstance(a, tuple) else fn(a)

    return run


def bench(fn, inputs: list, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds per call, rotating among several input sets (defeats the L2 cache)."""
    import triton.testing

    return float(triton.testing.do_bench(_rotating(fn, inputs), warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def bench_graph(fn, inputs: list, rep: int = 20) -> float:
    """Median milliseconds per call of fn from a CUDA graph that replays ``rep`` calls (rotating
    among the inputs): device time only, without the Python/launch overhead of each call."""
    run = _rotating(fn, inputs)
    for _ in range(3):                       # compile + warm up outside the capture
        run()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(rep):
            run()
    times = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / rep)
    times.sort()
    return float(times[len(times) // 2])


try:  # GPU benchmarks only; CPU-only installs import this module without triton
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(src, dst, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)

    from triton.language.extra.cuda import gdc_launch_dependents

    from fpq_core.kernels.quant import _gdc_wait

    @triton.jit
    def _copy_pdl(src, dst, n, BLOCK: tl.constexpr, TRIG: tl.constexpr):
        """_copy for a launch with programmatic dependent launch, as the quant kernel does it: reads
        nothing before the previous kernel has completed (griddepcontrol.wait) and lets the next
        kernel launch at its start (``TRIG`` 1), at its end (2) or when it exits (3)."""
        if TRIG == 1:
            gdc_launch_dependents()
        pid = tl.program_id(0) + _gdc_wait(1)
        for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)
        if TRIG == 2:
            gdc_launch_dependents()
except ImportError:  # pragma: no cover
    triton = None


def quant_bytes(M: int, K: int, group: int) -> int:
    """Bytes the packed quant kernel moves for an (M, K) bf16 input: the input read once, the packed
    codes (K/2 bytes a row) and the scale bytes (K/group) written."""
    return M * K * 2 + M * K // 2 + M * K // group


def _copy_setup(nbytes: int, n_inputs: int):
    """``n_inputs`` random bf16 sources of ``nbytes`` bytes each and one destination."""
    src = [torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_() for _ in range(n_inputs)]
    return src, torch.empty_like(src[0])


def _triton_copy_ms(src: list, dst, rep: int, pdl: bool | int = False) -> float:
    """Best CUDA-graph milliseconds per call of the vectorised Triton copy over a few launch shapes
    (``pdl``: each launched with programmatic dependent launch, as a chain of such kernels runs, the
    next one let launch at the start, the end or the exit of each program -- the best of the three,
    or the one given: 1, 2, 3)."""
    n = src[0].numel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if pdl:
        trigs = (1, 2, 3) if pdl is True else (int(pdl),)
        return min(bench_graph(lambda x: _copy_pdl[(sms * waves,)](x, dst, n, BLOCK=block, TRIG=trig, launch_pdl=True),
                               src, rep=rep)
                   for block, waves in ((4096, 4), (8192, 8), (4096, 16)) for trig in trigs)
    return min(bench_graph(lambda x: _copy[(sms * waves,)](x, dst, n, BLOCK=block), src, rep=rep)
               for block, waves in ((4096, 4), (8192, 8), (4096, 16)))


def copy_baselines(nbytes: int = 1 << 30) -> dict:
    """Device-to-device copy bandwidth (bytes read + written per second), measured three ways in
    this run: torch ``copy_`` timed by a CUDA graph, torch ``copy_`` by ``triton.testing.do_bench``
    (per call, L2 flushed), and a vectorised Triton copy kernel by a CUDA graph. Callers divide by
    the largest (``best``), the conservative choice for a percentage-of-copy claim."""
    src, dst = _copy_setup(nbytes, 2)
    out = {"torch_graph": 2 * nbytes / (bench_graph(lambda x: dst.copy_(x), src, rep=10) * 1e-3),
           "torch_do_bench": 2 * nbytes / (bench(lambda x: dst.copy_(x), src) * 1e-3),
           "triton_graph": 2 * nbytes / (_triton_copy_ms(src, dst, rep=10) * 1e-3)}
    out["best"] = max(out.values())
    del src, dst
    return out


def copy_graph_bandwidth(nbytes: int, n_inputs: int = 3, pdl: bool | int = False) -> float:
    """Copy bandwidth (bytes read + written per second) of a copy of ``nbytes`` bytes, timed as
    the kernels are (CUDA graph, rotating among ``n_inputs`` sources): the larger of torch
    ``copy_`` and the Triton copy kernel. The ceiling a kernel moving as many bytes can reach.
    ``pdl``: the Triton copy launched with programmatic dependent launch (torch's copy has none),
    the baseline for a kernel timed in a chain of such launches."""
    src, dst = _copy_setup(nbytes, n_inputs)
    if pdl:
        best = _triton_copy_ms(src, dst, rep=20, pdl=pdl)
    else:
        best = min(bench_graph(lambda x: dst.copy_(x), src), _triton_copy_ms(src, dst, rep=20))
    del src, dst
    return 2 * nbytes / (best * 1e-3)


def soft(results: list, name: str, fn, *a, **kw):
    """Run fn; on failure record the error and go on."""
    t0 = time.perf_counter()
    try:
        r = fn(*a, **kw)
        if r is not None:
            results.append(r) if isinstance(r, dict) else results.extend(r)
        return r
    except Exception as e:  # noqa: BLE001 - a benchmark must not stop the others
        results.append({"name": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:],
                        "seconds": time.perf_counter() - t0})
        print(f"[FAILED] {name}: {type(e).__name__}: {e}", flush=True)
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def add_fp_quant_check_args(ap) -> None:
    """The arguments the two fp-quant comparison scripts share (output folder, calibration size,
    formats)."""
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--formats", default="mxfp,nvfp")


def write_json(out: str | Path, name: str, payload: dict) -> Path:
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    f = p / f"{name}.json"
    f.write_text(json.dumps(payload, indent=1, default=str))
    return f


def table(rows: list[dict], cols: list[str]) -> str:
    rows = [r for r in rows if "error" not in r]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)   # noqa: E731
    w = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols}
    lines = [" ".join(c.ljust(w[c]) for c in cols)]
    lines += [" ".join(fmt(r.get(c, "")).ljust(w[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def module_copy(module, edit, name: str):
    """A copy of ``module`` whose source text went through ``edit`` (str -> str), imported as module
    ``name`` and registered in ``sys.modules`` (so that another copy can import from it by that
    name, and Triton can resolve a kernel's globals through it). ``edit`` raises SystemExit where
    the text it expects is gone."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(edit(Path(module.__file__).read_text()))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def quant_module_copy(edit, name: str):
    """A copy of ``fpq_core.kernels.quant`` whose source text went through ``edit`` (str -> str),
    imported as module ``name``: for benchmarks that trim or instrument the kernel (the kernel
    itself is not changed). Its ``from ._common import`` becomes an absolute import unless ``edit``
    already pointed it at another module (e.g. an edited copy of _common made by module_copy)."""
    import fpq_core.kernels.quant as q
    return module_copy(q, lambda src: edit(src).replace("from ._common import", "from fpq_core.kernels._common import"),
                       name)
