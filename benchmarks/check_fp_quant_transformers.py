"""Our pseudoquant export loaded by a real client: transformers + the `fp-quant` package.

On a CUDA GPU (Hopper is enough for pseudo-quantization): quantize the embedded SmolLM2 with our
pipeline (W4A4, RTN + Hadamard of the group size, MXFP4 and NVFP4), export `pseudoquant` in bf16,
load it with ``AutoModelForCausalLM.from_pretrained`` (transformers reads the checkpoint's
``quantization_config`` -> ``FPQuantConfig(pseudoquantization=True)`` -> ``FPQuantLinear``),
generate text, and compare its logits with our runtime loading the same folder.

Known, expected difference: fp_quant's Triton pseudo-quant kernels round FP4 ties *toward zero*
(0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3), ours round to nearest even like QuTLASS and the reference
harness. Weights are identical (both use the stored `dqweight`); only activation codes that sit
exactly on a tie can differ. We measure how often activations hit a tie, and report the logit
difference with that in mind (no tolerance is loosened to hide it).

    python benchmarks/check_fp_quant_transformers.py --out OUT [--calib 16] [--seq-len 512]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import add_fp_quant_check_args  # noqa: E402

PROMPTS = ["The capital of France is", "1 2 3 4", "Quantization of large language models"]


def tie_fraction(model, tok, prompts) -> float:
    """Fraction of quantized activation elements whose scaled value |x/s| sits exactly on an FP4
    tie (where fp_quant's round-toward-zero and our round-to-nearest-even differ)."""
    from benchmarks.diagnose_gpu_consistency import tie_fraction as path_ties
    from fpq_core.nn import QuantLinear

    fr = []
    seen = set()
    hs = []
    for m in model.modules():
        if isinstance(m, QuantLinear) and id(m.input_path) not in seen and m.input_path.act_quantizer is not None:
            seen.add(id(m.input_path))
            hs.append(m.input_path.register_forward_pre_hook(
                lambda path, inp: fr.append((path_ties(path, inp[0]), inp[0].numel()))))
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids.to(next(model.parameters()).device)
            for m in model.modules():
                if hasattr(m, "clear_cache"):
                    m.clear_cache()
            model(input_ids=ids)
    for h in hs:
        h.remove()
    return sum(f * n for f, n in fr) / max(sum(n for _, n in fr), 1)


def run_format(fmt: str, out: Path, calib: int, seq_len: int, dev: str = "cuda") -> dict:
    from transformers import AutoModelForCausalLM

    from fpq_core.config import QuantConfig
    from fpq_core.data import get_calibration_data
    from fpq_core.export import export_model
    from fpq_core.models.loading import load_model
    from fpq_core.pipeline import RunOptions, quantize_model
    from fpq_core.runtime import load_quantized

    model, tok = load_model("embedded", dtype=torch.bfloat16, device=dev)
    cfg = QuantConfig.preset("rtn_had", fmt=fmt, w_bits=4, a_bits=4)
    batches = get_calibration_data("embedded", tok, num_sequences=calib, sequence_length=seq_len, seed=42)
    t0 = time.perf_counter()
    quantize_model(model, cfg, batches, options=RunOptions(device=dev))
    tq = time.perf_counter() - t0
    folder = out / f"smollm2-{fmt}-pseudo"
    rep = export_model(model, tok, folder, kind="pseudoquant", dtype=torch.bfloat16, overwrite=True)
    ties = tie_fraction(model, tok, PROMPTS)

    ours, _ = load_quantized(folder, device=dev, dtype=torch.bfloat16)
    if dev == "cpu":     # dry run of our half (fp_quant's kernels need CUDA)
        theirs = ours
    else:
        theirs = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, device_map=dev)
    n_fp = sum(type(m).__name__ == "FPQuantLinear" for m in theirs.modules())
    rows = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids.to(dev)
            a = ours(input_ids=ids).logits.float()
            b = theirs(input_ids=ids).logits.float()
            c = model(input_ids=ids).logits.float()
            gen_theirs = tok.decode(theirs.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
            gen_ours = tok.decode(ours.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
            rows.append({
                "prompt": p,
                "max_abs_diff_ours_vs_fp_quant": float((a - b).abs().max()),
                "rel_l2_ours_vs_fp_quant": float((a - b).norm() / b.norm()),
                "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                "max_abs_diff_reloaded_vs_in_memory": float((a - c).abs().max()),
                "generation_fp_quant": gen_theirs, "generation_ours": gen_ours,
            })
    return {"format": fmt, "method": cfg.method_name, "quantize_s": tq, "export": rep.to_dict(),
            "fp_quant_linear_modules": n_fp, "activation_tie_fraction": ties, "prompts": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_fp_quant_check_args(ap)
    ap.add_argument("--device", default="cuda", help="cpu: dry run of our half only")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import fp_quant  # noqa: F401
        import transformers
        info["transformers"] = transformers.__version__
        from importlib.metadata import version
        info["fp_quant"] = version("fp-quant")
    except Exception as e:  # noqa: BLE001
        info["import_error"] = repr(e)
    results = []
    for fmt in a.formats.split(","):
        try:
            results.append(run_format(fmt, out, a.calib, a.seq_len, a.device))
        except Exception as e:  # noqa: BLE001
            results.append({"format": fmt, "error": repr(e), "trace": traceback.format_exc()[-3000:]})
        print(json.dumps(results[-1], indent=1, default=str)[:4000], flush=True)
    (out / "fp_quant_transformers.json").write_text(json.dumps({"device": info, "results": results}, indent=1,
                                                               default=str))
    for r in results:
        if "error" in r:
            print(f"{r['format']}: ERROR {r['error']}")
            continue
        for p in r["prompts"]:
            print(f"{r['format']:5s} {p['prompt'][:30]:30s} maxdiff={p['max_abs_diff_ours_vs_fp_quant']:.4f} "
                  f"rel={p['rel_l2_ours_vs_fp_quant']:.4f} top1={p['top1_agreement']:.3f} | {p['generation_fp_quant']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
