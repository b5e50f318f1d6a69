"""``fpq``: the command line (also ``python -m fpq_core``).

``fpq quantize`` accepts every flag of the reference ``model_quant.py`` with the same meaning and
defaults (reference section 7), except that ``--model_name_or_path`` and
``--dataset_name_or_path`` default to the embedded SmolLM2 and C4 sample, so
``fpq quantize --format mxfp --w_bits 4`` works offline. Additions are marked "(ours)".

Where the reference is silent or buggy we differ, and say so:
- unknown ``--lm_eval_tasks`` are an error (the reference runs 4 tasks and silently drops the rest);
- every run writes a run directory (config, per-layer report, perplexity, timings, environment);
- ``--log_wandb`` logs only when wandb is installed, otherwise it is an error, never ignored.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_RUNS_ROOT = os.environ.get("FPQ_RUNS", str(Path.home() / ".cache" / "fpq-studio" / "runs"))
REFERENCE_LM_EVAL_TASKS = ["mmlu_cot_llama", "arc_challenge_llama", "gsm8k_llama", "hellaswag", "winogrande", "truthfulqa"]


def _int_or_auto(v: str):
    return v if v == "auto" else int(v)


def add_quantize_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reference model_quant.py flags")
    g.add_argument("--model_name_or_path", default="embedded",
                   help="hub id, local folder, .gguf file, or 'embedded' (SmolLM2-135M-Instruct; default)")
    g.add_argument("--dataset_name_or_path", default="embedded",
                   help="fineweb-edu, c4, wikitext2, open-thoughts, open-platypus, ultrachat-200k, tulu, a local "
                        ".txt/.jsonl/.parquet, or 'embedded' (C4 sample; default)")
    g.add_argument("--sequence_length", type=int, default=2048, help="calibration and perplexity window length")
    g.add_argument("--num_sequences", type=int, default=1024, help="calibration samples")
    g.add_argument("--format", default="int", choices=["int", "fp", "nvfp", "mxfp"])
    g.add_argument("--scale_precision", default="fp16", choices=["fp16", "e8m0", "e4m3"])
    g.add_argument("--w_granularity", default="group", choices=["tensor", "channel", "group"])
    g.add_argument("--w_bits", type=int, required=True)
    g.add_argument("--w_group_size", type=int, default=None)
    g.add_argument("--w_observer", default="minmax", choices=["minmax", "mse", "mse_alt"],
                   help="mse_alt (ours): alternating global/group scale search")
    g.add_argument("--a_bits", type=int, default=16)
    g.add_argument("--a_granularity", default="group", choices=["tensor", "channel", "group"])
    g.add_argument("--a_group_size", type=int, default=None)
    g.add_argument("--a_observer", default="minmax", choices=["minmax"])
    g.add_argument("--export_quantized_model", default="",
                   choices=["", "realquant", "pseudoquant", "w4a16", "compressed-tensors"],
                   help="w4a16 and compressed-tensors are ours")
    g.add_argument("--gptq", action="store_true")
    g.add_argument("--quantization_order", default="default", choices=["default", "activation"])
    g.add_argument("--rel_damp", type=float, default=0.01)
    g.add_argument("--transform_class", default="identity",
                   choices=["identity", "full", "hadamard", "kronecker", "identity_low_rank", "dct", "dst",
                            "fast_food", "gsr"])
    g.add_argument("--hadamard_group_size", type=int, default=128)
    g.add_argument("--log_wandb", action="store_true")
    g.add_argument("--verbose", action="store_true")
    g.add_argument("--dtype", default="auto", choices=["auto", "float16", "float32", "bfloat16"],
                   help="auto: float32 on CPU (bf16 matmuls are slow on CPUs without AVX-512), bfloat16 on GPU")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--cpu_offload_modules", action="store_true")
    g.add_argument("--cpu_offload_activations", action="store_true")
    g.add_argument("--amp", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model before evaluation")
    g.add_argument("--fuse_global_scale", action="store_true")
    g.add_argument("--eval_perplexity", action="store_true")
    g.add_argument("--eval_openllm", action="store_true")
    g.add_argument("--lm_eval_batch_size", type=_int_or_auto, default="auto")
    g.add_argument("--lm_eval_tasks", nargs="+", default=None,
                   help="with --eval_openllm: the reference's 4-task subset; otherwise any lm-eval task names")
    g.add_argument("--disable_thinking", action="store_true", help="Qwen3 chat template without thinking")
    g.add_argument("--save_path", default=None)
    g.add_argument("--max_shard_size", type=int, default=5 * 1024 ** 3)
    o = p.add_argument_group("FP-Quant Studio additions")
    o.add_argument("--method", choices=["rtn", "rtn_had", "gptq", "mr_gptq"], default=None,
                   help="named preset from the paper's Table 1 (sets gptq/transform/observer/order)")
    o.add_argument("--numerics", default="exact", choices=["exact", "fp-quant"],
                   help="fp-quant: reproduce the reference's floating-point chain bit for bit")
    o.add_argument("--mx_scale_rule", default="fpquant", choices=["fpquant", "ocp"])
    o.add_argument("--ppl_num_windows", type=int, default=None, help="limit WikiText-2 perplexity to N windows")
    o.add_argument("--run_dir", default=None, help=f"run directory (default: a new folder under {DEFAULT_RUNS_ROOT})")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run in --run_dir")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    o.add_argument("--lm_eval_limit", type=float, default=None, help="limit examples per lm-eval task")
    o.add_argument("--lm_eval_include_path", default=None, help="folder of task YAMLs (offline tasks)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --save_path")
    o.add_argument("--no_progress", action="store_true")


def config_from_args(a):
    from fpq_core.config import QuantConfig

    fields = dict(
        format=a.format, w_bits=a.w_bits, a_bits=a.a_bits, w_granularity=a.w_granularity,
        a_granularity=a.a_granularity, w_group_size=a.w_group_size, a_group_size=a.a_group_size,
        scale_precision=a.scale_precision, w_observer=a.w_observer, a_observer=a.a_observer, gptq=a.gptq,
        quantization_order=a.quantization_order, rel_damp=a.rel_damp, transform_class=a.transform_class,
        hadamard_group_size=a.hadamard_group_size, fuse_global_scale=a.fuse_global_scale,
        numerics=a.numerics, mx_scale_rule=a.mx_scale_rule, seed=a.seed)
    if a.method:
        preset = QuantConfig.preset(a.method, fmt=a.format if a.format in ("nvfp", "mxfp") else "mxfp",
                                    w_bits=a.w_bits, a_bits=a.a_bits)
        for k in ("gptq", "transform_class", "hadamard_group_size", "w_observer", "quantization_order"):
            fields[k] = getattr(preset, k)
    return QuantConfig(**fields).normalized()


def _resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return getattr(torch, name)


def _check_export_args(a, config) -> None:
    kind = a.export_quantized_model
    if not kind:
        return
    if not a.save_path:
        raise SystemExit("--export_quantized_model needs --save_path DIR")
    if Path(a.save_path).exists() and not a.overwrite:
        raise SystemExit(f"--save_path {a.save_path} already exists: choose a new folder or pass --overwrite")
    # the export module's own rules (one place), checked before any long work
    from fpq_core.export import ExportError, check_exportable
    try:
        for note in check_exportable(config, kind):
            print(f"note: {note}")
    except ExportError as e:
        raise SystemExit(f"--export_quantized_model {kind}: {e}") from None


def cmd_quantize(a) -> int:
    import torch

    from fpq_core.pipeline import LayerReport, RunOptions, quantize_model
    from fpq_core.runs import RunDir, environment_info

    config = config_from_args(a)
    for n in config.notes:
        print(f"note: {n}")
    _check_export_args(a, config)
    if a.log_wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise SystemExit("--log_wandb needs the wandb package: pip install wandb (or drop the flag)")
    if a.eval_openllm and a.lm_eval_tasks:
        unknown = sorted(set(a.lm_eval_tasks) - set(REFERENCE_LM_EVAL_TASKS))
        if unknown:
            print(f"note: with --eval_openllm, --lm_eval_tasks {unknown} are run as extra tasks")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _resolve_dtype(a.dtype, device.split(":")[0])

    run_dir = a.run_dir or os.path.join(DEFAULT_RUNS_ROOT, time.strftime("%Y%m%d-%H%M%S") + "-" +
                                        config.method_name.replace(" ", "_").replace("+", "-").lower())
    run = RunDir(run_dir) if a.resume else RunDir.create(run_dir)
    if a.resume and not (run.path / "run.json").exists():
        raise SystemExit(f"--resume: {run_dir} holds no run (run.json missing)")
    print(f"run directory: {run.path}")

    # -------- load (errors here come before any long work)
    from fpq_core.models.loading import load_model
    t0 = time.perf_counter()
    model, tok = load_model(a.model_name_or_path, dtype=dtype, device="cpu" if a.cpu_offload_modules else device)
    t_load = time.perf_counter() - t0
    from fpq_core.pipeline import validate_model_for_config
    validate_model_for_config(model, config)

    run.write("run", {"model": a.model_name_or_path, "dataset": a.dataset_name_or_path,
                      "method": config.method_name, "config": config.to_dict(), "argv": sys.argv[1:],
                      "status": "running", "device": device, "dtype": str(dtype).replace("torch.", ""),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    run.write("environment", environment_info())

    wspec, aspec = config.weight_spec(), config.act_spec()
    need_data = config.gptq or (aspec is not None and aspec.uses_global_scale)
    batches = None
    t_data = 0.0
    if need_data:
        from fpq_core.data import get_calibration_data
        t0 = time.perf_counter()
        batches = get_calibration_data(a.dataset_name_or_path, tok, num_sequences=a.num_sequences,
                                       sequence_length=a.sequence_length, seed=a.seed)
        t_data = time.perf_counter() - t0

    bar = None
    layers_done: list[dict] = []

    def on_layer(r: LayerReport):
        layers_done.append(r.to_dict())
        run.write("layers", layers_done)
        if a.verbose or a.no_progress:
            print(f"  layers.{r.block}.{r.name}: rel_error={r.rel_error:.3e} ({r.seconds:.2f}s)")

    n_blocks = len(model.model.layers)
    if not a.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=n_blocks, desc=config.method_name, unit="block")

    def on_block(i, n):
        if bar is not None:
            last = [l for l in layers_done if l["block"] == i]
            err = max((l["rel_error"] for l in last), default=float("nan"))
            bar.set_postfix(max_rel_err=f"{err:.2e}")
            bar.update(1)

    opts = RunOptions(device=device, cpu_offload_modules=a.cpu_offload_modules,
                      cpu_offload_activations=a.cpu_offload_activations, amp=a.amp, state_dir=str(run.state_dir))
    if config.quantize_weights or config.quantize_activations:
        res = quantize_model(model, config, batches, options=opts, on_layer=on_layer, on_block=on_block)
        if res.resumed_from_block and bar is not None:
            bar.update(res.resumed_from_block)
        layers_done[:] = [l.to_dict() for l in res.layers]
        run.write("layers", layers_done)
        t_quant = res.seconds
    else:
        t_quant = 0.0
        print("w_bits = a_bits = 16: no quantization (baseline)")
    if bar is not None:
        bar.close()
    timings = {"load_s": t_load, "calibration_data_s": t_data, "quantize_s": t_quant}

    if a.export_quantized_model:
        from fpq_core.export import export_model
        t0 = time.perf_counter()
        rep = export_model(model, tok, a.save_path, kind=a.export_quantized_model,
                           max_shard_size=a.max_shard_size, overwrite=a.overwrite)
        timings["export_s"] = time.perf_counter() - t0
        run.add_result("export", rep.to_dict() if hasattr(rep, "to_dict") else str(rep))
        print(f"exported {a.export_quantized_model} checkpoint to {a.save_path}")

    model.to(device)
    if a.compile:
        model = torch.compile(model)
    if a.eval_perplexity:
        from fpq_core.evaluate import wikitext2_perplexity
        t0 = time.perf_counter()
        ppl = wikitext2_perplexity(model, tok, sequence_length=a.sequence_length, num_windows=a.ppl_num_windows)
        timings["perplexity_s"] = time.perf_counter() - t0
        run.add_result("wikitext2_ppl", {"ppl": ppl.ppl, "nll": ppl.nll, "num_windows": ppl.num_windows,
                                          "num_tokens": ppl.num_tokens, "sequence_length": a.sequence_length})
        print(f"Wikitext-2 perplexity: {ppl.ppl}")
    if a.eval_openllm or (a.lm_eval_tasks and not a.eval_openllm):
        from fpq_core.evaluate import run_lm_eval
        t0 = time.perf_counter()
        if a.eval_openllm:
            r = run_lm_eval(model, tok, "openllm", batch_size=a.lm_eval_batch_size, limit=a.lm_eval_limit,
                            include_path=a.lm_eval_include_path)
            extra = [t for t in (a.lm_eval_tasks or []) if t not in REFERENCE_LM_EVAL_TASKS]
            scores = dict(r.scores)
            if extra:
                scores.update(run_lm_eval(model, tok, extra, batch_size=a.lm_eval_batch_size, limit=a.lm_eval_limit,
                                          include_path=a.lm_eval_include_path).scores)
        else:
            scores = run_lm_eval(model, tok, a.lm_eval_tasks, batch_size=a.lm_eval_batch_size,
                                 limit=a.lm_eval_limit, include_path=a.lm_eval_include_path).scores
        timings["lm_eval_s"] = time.perf_counter() - t0
        run.add_result("lm_eval", scores)
        print(json.dumps(scores, indent=1))
    run.write("timings", timings)
    run.update("run", status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if a.log_wandb:
        import wandb
        wandb.init(project="fpq-studio", config=config.to_dict())
        wandb.log({f"gptq/{l['block']}.{l['name']}_relative_mse": l["rel_error"] for l in layers_done})
        res = run.read("results", {})
        if "wikitext2_ppl" in res:
            wandb.log({"eval/wikitext2_ppl": res["wikitext2_ppl"]["ppl"]})
    return 0


def cmd_export(a) -> int:
    from fpq_core.export import export_model
    from fpq_core.runs import RunDir
    from fpq_core.session import load_run_model

    run = RunDir(a.run_dir)
    model, tok, config = load_run_model(run, device=a.device or "cpu")
    rep = export_model(model, tok, a.save_path, kind=a.format, max_shard_size=a.max_shard_size, overwrite=a.overwrite)
    run.add_result(f"export_{a.format}", rep.to_dict() if hasattr(rep, "to_dict") else str(rep))
    print(f"exported {a.format} checkpoint of {run.path} to {a.save_path}")
    return 0


def cmd_app(a) -> int:
    import subprocess

    app = Path(__file__).resolve().parents[1] / "app.py"
    if not app.exists():
        raise SystemExit("app.py not found: the app runs from a source checkout (git clone), not a wheel")
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(app), "--server.address", a.address,
                            "--server.port", str(a.port)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpq", description="FP-Quant Studio: MXFP4/NVFP4 quantization of LLMs")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="quantize a model (RTN, GPTQ, MR-GPTQ), evaluate, export")
    add_quantize_args(q)
    q.set_defaults(func=cmd_quantize)
    e = sub.add_parser("export", help="export a finished run directory")
    e.add_argument("run_dir")
    e.add_argument("--format", default="realquant", choices=["realquant", "pseudoquant", "w4a16", "compressed-tensors"])
    e.add_argument("--save_path", required=True)
    e.add_argument("--max_shard_size", type=int, default=5 * 1024 ** 3)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--device", default=None)
    e.set_defaults(func=cmd_export)
    s = sub.add_parser("app", help="start the Streamlit studio (localhost)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost")
    s.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `python -m fpq_core --w_bits 4 ...` (reference style, no sub-command) means quantize.
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv = ["quantize", *argv]
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
