"""Runtime loader: logits of a reloaded checkpoint equal the in-memory quantized model; bad input fails cleanly."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from fpq_core import export as ex
from fpq_core import runtime as rt
from tests.test_export import calib, quantized_tiny

# fp32 on CPU: the reloaded model runs the very same QuantLinear forward on bit-identical
# weights and global scales, so logits must match exactly; we allow 1e-5 absolute for safety.
LOGIT_ATOL = 1e-5
MEASURED: dict[str, float] = {}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _roundtrip(tmp_path, model, kind, **kw):
    ex.export_model(model, None, tmp_path / kind, kind=kind, **kw)
    loaded, tok = rt.load_quantized(tmp_path / kind, dtype=torch.float32)
    ids = calib(n=1, length=12, seed=7)[0]
    d = float((_logits(model, ids) - _logits(loaded, ids)).abs().max())
    return loaded, d


HAD = {"nvfp": 16, "mxfp": 32}


@pytest.mark.parametrize("arch, fmt, method", [
    ("llama", "nvfp", "rtn_had"), ("llama", "mxfp", "rtn_had"),
    ("qwen3", "nvfp", "gptq_had"), ("qwen3", "mxfp", "gptq_had"),
    pytest.param("qwen3", "mxfp", "rtn", marks=pytest.mark.slow),
    pytest.param("qwen3", "nvfp", "mr_gptq", marks=pytest.mark.slow),
    pytest.param("llama", "mxfp", "mr_gptq", marks=pytest.mark.slow),
])
def test_realquant_logits_match(tmp_path, arch, fmt, method):
    if method == "gptq_had":
        model = quantized_tiny(arch, fmt, "gptq", transform_class="hadamard", hadamard_group_size=HAD[fmt])
    else:
        model = quantized_tiny(arch, fmt, method)
    loaded, d = _roundtrip(tmp_path, model, "realquant")
    MEASURED[f"{arch}-{fmt}-{method}"] = d
    print(f"max |logit diff| {arch} {fmt} {method}: {d:.3g}")
    assert d <= LOGIT_ATOL
    from fpq_core.nn import QuantLinear

    qls = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert len(qls) == 7 * model.config.num_hidden_layers
    assert all(m.rotated and m.qtensor is not None for m in qls)


@pytest.mark.parametrize("kind", ["pseudoquant", "w4a16"])
def test_other_kinds_logits_match(tmp_path, kind):
    # the same (cached) models as tests/test_export.py
    model = quantized_tiny("llama", "mxfp", "rtn_had", a_bits=16) if kind == "w4a16" else quantized_tiny()
    _, d = _roundtrip(tmp_path, model, kind)
    print(f"max |logit diff| {kind}: {d:.3g}")
    assert d <= LOGIT_ATOL


@pytest.mark.parametrize("fmt, kw", [("nvfp", {}), ("mxfp", {"mx_scale_rule": "ocp"})])
def test_compressed_tensors_logits_match(tmp_path, fmt, kw):
    model = quantized_tiny("llama", fmt, "rtn", **kw)
    _, d = _roundtrip(tmp_path, model, "compressed-tensors")
    print(f"max |logit diff| compressed-tensors {fmt}: {d:.3g}")
    assert d <= LOGIT_ATOL


def test_bf16_export_loads_with_identical_weights(tmp_path):
    from fpq_core.nn import QuantLinear

    model = quantized_tiny("llama", "mxfp", "rtn_had")
    ex.export_model(model, None, tmp_path / "ck", kind="realquant", dtype=torch.bfloat16)
    loaded, _ = rt.load_quantized(tmp_path / "ck")               # default: the checkpoint dtype
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    mine = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for n, m in loaded.named_modules():
        if isinstance(m, QuantLinear):   # packed weights are dtype-free: bf16 of the same fp32 values
            assert torch.equal(m.weight, mine[n].weight.to(torch.bfloat16)), n
    ids = calib(n=1, length=8, seed=3)[0]
    assert torch.isfinite(_logits(loaded, ids)).all()


def test_zero_groups_roundtrip(tmp_path):
    from tests.test_export import zero_group_model

    model = zero_group_model()
    _, d = _roundtrip(tmp_path, model, "realquant")
    assert d <= LOGIT_ATOL


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    model = quantized_tiny("llama", "nvfp", "rtn_had")
    folder = tmp_path_factory.mktemp("exports") / "ck"
    ex.export_model(model, None, folder, kind="realquant", max_shard_size=60_000)
    return folder


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_shard(tmp_path, good_export):
    d = _copy(good_export, tmp_path / "ck")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(rt.CheckpointError, match="corrupt or truncated"):
        rt.load_quantized(d)


def test_garbage_shard(tmp_path, good_export):
    d = _copy(good_export, tmp_path / "ck")
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\xff" * 64)
    with pytest.raises(rt.CheckpointError, match="corrupt or truncated"):
        rt.load_quantized(d)


def test_missing_shard_file(tmp_path, good_export):
    d = _copy(good_export, tmp_path / "ck")
    sorted(d.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(rt.CheckpointError, match="missing"):
        rt.load_quantized(d)


@pytest.mark.parametrize("key, match", [("model.layers.1.mlp.up_proj.act_global_scale", "up_proj.act_global_scale"),
                                        ("model.norm.weight", "model.norm.weight")])
def test_missing_tensor(tmp_path, good_export, key, match):
    """A quantized layer's tensor or a plain one missing from its shard: the error names it."""
    from safetensors.torch import load_file, save_file

    d = _copy(good_export, tmp_path / "ck")
    idx = json.loads((d / ex.INDEX_NAME).read_text())
    fname = idx["weight_map"].pop(key)
    t = load_file(str(d / fname))
    t.pop(key)
    save_file(t, str(d / fname))
    (d / ex.INDEX_NAME).write_text(json.dumps(idx))
    with pytest.raises(rt.CheckpointError, match=match):
        rt.load_quantized(d)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["quantization_config"].update(quant_method="awq"), "unknown quant_method"),
    (lambda c: c["quantization_config"].update(forward_dtype="mxfp8"), "forward_dtype"),
    (lambda c: c.pop("quantization_config"), "no quantization_config"),
    (lambda c: c.pop("model_type"), "model_type"),
])
def test_bad_config(tmp_path, good_export, edit, match):
    d = _copy(good_export, tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(rt.CheckpointError, match=match):
        rt.load_quantized(d)


def test_not_a_folder(tmp_path):
    with pytest.raises(rt.CheckpointError, match="config.json"):
        rt.load_quantized(tmp_path)


def test_codec_against_hand_values():
    # MX x3: byte 127+1 -> 2^1/3; code 0x7 (6.0) -> 4.0; NV: e4m3 0x38 = 1.0, G = 2 -> 0.5 per unit
    from fpq_core.formats import QuantSpec

    qw = torch.tensor([[0xA7] * 16], dtype=torch.uint8)    # even col 6.0, odd col -1.0
    w = rt.dequantize_packed(qw, torch.tensor([[128]], dtype=torch.uint8), QuantSpec.mxfp4())
    assert w[0, 0] == 6.0 * 2 / 3 and w[0, 1] == -1.0 * 2 / 3
    w = rt.dequantize_packed(qw[:, :8], torch.tensor([[0x38]], dtype=torch.uint8), QuantSpec.nvfp4(),
                             torch.tensor([2.0]))
    assert w[0, 0] == 3.0 and w[0, 1] == -0.5


# ----------------------------------------------------------------------------- embedded SmolLM2
@pytest.mark.slow
def test_smollm2_roundtrip(tmp_path):
    from fpq_core.models.embedded import embedded_model_path, embedded_tokenizer
    from fpq_core.pipeline import RunOptions, quantize_model
    from fpq_core.config import QuantConfig
    from transformers import AutoModelForCausalLM

    try:
        path = embedded_model_path()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"embedded SmolLM2 not available: {e}")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    tok = embedded_tokenizer()
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    t0 = time.time()
    quantize_model(model, QuantConfig.preset("rtn_had", fmt="nvfp"), [ids], RunOptions(device="cpu"))
    rep = ex.export_model(model, tok, tmp_path / "smol", kind="realquant")
    loaded, ltok = rt.load_quantized(tmp_path / "smol", dtype=torch.float32)
    d = float((_logits(model, ids) - _logits(loaded, ids)).abs().max())
    print(f"SmolLM2 realquant NVFP4 round trip: max |logit diff| {d:.3g}, {time.time() - t0:.1f}s, "
          f"{rep.total_bytes / 2**20:.1f} MiB")
    assert ltok is not None and d <= LOGIT_ATOL
