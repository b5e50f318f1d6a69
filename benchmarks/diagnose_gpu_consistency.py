"""Where do GPU results differ, and why? Layer-level and model-level consistency on CUDA.

For the embedded SmolLM2 quantized W4A4 (RTN + Hadamard of the group size) on the GPU:
* layer level: the same input through (a) our in-memory QuantLinear with the fused Triton
  activation path, (b) the same layer with the torch activation path, (c) our runtime reloading the
  pseudoquant export, (d) transformers + fp_quant's FPQuantLinear (Triton pseudo-quant; FP4 ties
  rounded toward zero) -- relative L2 differences of the layer outputs;
* model level: logits of the same variants, plus an fp32 torch-path run as reference, to separate
  real disagreements from the amplification of rounding noise by a 4-bit model.

    python benchmarks/diagnose_gpu_consistency.py --out OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import add_fp_quant_check_args  # noqa: E402

PROMPTS = ["The capital of France is", "1 2 3 4 5", "Quantization of large language models is"]
TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def set_torch_paths(model, on: bool):
    """Switch every fused input path to the plain torch one (on=True) or back."""
    from fpq_core.kernels.runtime import FusedInputPath
    from fpq_core.nn import InputPath

    for m in model.modules():
        if isinstance(m, InputPath):
            m.__class__ = InputPath if on else FusedInputPath
            m.clear_cache()


def tie_fraction(path, x) -> float:
    from fpq_core.formats import quantize
    from fpq_core.formats.quantize import expand_scales

    aq = path.act_quantizer
    y = path.transform.apply(x) if path.transform is not None else x
    g = aq.global_scale if aq.spec.uses_global_scale else None
    qt = quantize(y, aq.spec, global_scale=g)
    v = (y.float() / expand_scales(qt.scales, y.shape, aq.spec).float()).abs()
    hit = torch.zeros_like(v, dtype=torch.bool)
    for t in TIES:
        hit |= v == t
    return float(hit.float().mean())


def run(fmt: str, out: Path, calib: int, seq_len: int) -> dict:
    from transformers import AutoModelForCausalLM

    from fpq_core.config import QuantConfig
    from fpq_core.data import get_calibration_data
    from fpq_core.export import export_model
    from fpq_core.models.adapters import get_adapter
    from fpq_core.models.loading import load_model
    from fpq_core.pipeline import RunOptions, quantize_model
    from fpq_core.runtime import load_quantized

    dev = "cuda"
    res: dict = {"format": fmt}
    model, tok = load_model("embedded", dtype=torch.bfloat16, device=dev)
    res["attn_impl_in_memory"] = getattr(model.config, "_attn_implementation", None)
    cfg = QuantConfig.preset("rtn_had", fmt=fmt, w_bits=4, a_bits=4)
    batches = get_calibration_data("embedded", tok, num_sequences=calib, sequence_length=seq_len, seed=42)
    quantize_model(model, cfg, batches, options=RunOptions(device=dev))
    folder = out / f"diag-{fmt}"
    export_model(model, tok, folder, kind="pseudoquant", dtype=torch.bfloat16, overwrite=True)
    ours, _ = load_quantized(folder, device=dev, dtype=torch.bfloat16)
    res["attn_impl_reloaded"] = getattr(ours.config, "_attn_implementation", None)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, device_map=dev)
    res["attn_impl_fp_quant"] = getattr(theirs.config, "_attn_implementation", None)

    # ---- layer level: capture real inputs of a few layers
    ad = get_adapter(model)
    names = ["self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"]
    caps = {}
    hooks = []
    blk = ad.get_blocks(model)[3]
    for n in names:
        mod = ad.block_linears(blk)[n]
        hooks.append(mod.register_forward_hook(lambda m, i, o, n=n: caps.__setitem__(n, i[0].detach().clone())))
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    layers = []
    for n in names:
        x = caps[n]
        q_mem = ad.block_linears(blk)[n]
        q_rel = ad.block_linears(ad.get_blocks(ours)[3])[n]
        t_mod = theirs.get_submodule(f"model.layers.3.{n}")
        with torch.no_grad():
            q_mem.input_path.clear_cache()
            y_fused = q_mem(x)
            set_torch_paths(model, True)
            y_torch = q_mem(x)
            set_torch_paths(model, False)
            q_rel.input_path.clear_cache()
            y_rel = q_rel(x)
            y_fp = t_mod(x)
            wdiff = float((q_mem.weight.float() - t_mod.dqweight.float()).abs().max())
        layers.append({"layer": f"layers.3.{n}", "fused_vs_torch": rel(y_fused, y_torch),
                       "reloaded_vs_in_memory_torch": rel(y_rel, y_torch),
                       "fp_quant_vs_ours_torch": rel(y_fp, y_torch),
                       "weight_max_abs_diff_vs_fp_quant_dqweight": wdiff,
                       "activation_tie_fraction": tie_fraction(q_mem.input_path, x),
                       "fp_quant_act_global_scale": float(t_mod.act_global_scale.float().reshape(-1)[0]),
                       "ours_act_global_scale": float(torch.as_tensor(q_mem.input_path.act_quantizer.global_scale).reshape(-1)[0])})
    res["layers"] = layers

    # ---- model level
    prompts = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids.to(dev)
            l_fused = model(input_ids=ids).logits.float()
            set_torch_paths(model, True)
            l_torch = model(input_ids=ids).logits.float()
            model.float()
            l_fp32 = model(input_ids=ids).logits.float()
            model.bfloat16()
            set_torch_paths(model, False)
            l_rel = ours(input_ids=ids).logits.float()
            l_fp = theirs(input_ids=ids).logits.float()
            prompts.append({"prompt": p, "vs_fp32_reference": {
                "in_memory_fused_bf16": rel(l_fused, l_fp32), "in_memory_torch_bf16": rel(l_torch, l_fp32),
                "reloaded_bf16": rel(l_rel, l_fp32), "fp_quant_bf16": rel(l_fp, l_fp32)},
                "fused_vs_torch_bf16": rel(l_fused, l_torch), "reloaded_vs_torch_bf16": rel(l_rel, l_torch),
                "fp_quant_vs_reloaded": rel(l_fp, l_rel),
                "top1_fp_quant_vs_reloaded": float((l_fp.argmax(-1) == l_rel.argmax(-1)).float().mean())})
    res["prompts"] = prompts
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_fp_quant_check_args(ap)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fmt in a.formats.split(","):
        try:
            results.append(run(fmt, out, a.calib, a.seq_len))
        except Exception as e:  # noqa: BLE001
            results.append({"format": fmt, "error": repr(e), "trace": traceback.format_exc()[-3000:]})
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (out / "gpu_consistency.json").write_text(json.dumps({"device": info, "results": results}, indent=1))
    print(json.dumps(results, indent=1)[-7000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
