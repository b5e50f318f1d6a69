"""Checkpoint export: the fp_quant contract (reference §6), our w4a16, compressed-tensors, atomicity."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fpq_core import export as ex
from fpq_core.config import QuantConfig

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def calib(n=2, length=16, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, length), generator=g) for _ in range(n)]


_CACHE: dict = {}


def quantized_tiny(arch="llama", fmt="nvfp", method="rtn_had", a_bits=4, seed=0, prep=None, **kw):
    """A quantized tiny model; cached (export and load never modify it) unless ``prep`` is given."""
    key = (arch, fmt, method, a_bits, seed, tuple(sorted(kw.items())))
    if prep is None and key in _CACHE:
        return _CACHE[key]
    model = _quantize_tiny(arch, fmt, method, a_bits, seed, prep, **kw)
    if prep is None:
        _CACHE[key] = model
    return model


def _quantize_tiny(arch, fmt, method, a_bits, seed, prep, **kw):
    from fpq_core.models.tiny import make_tiny_model
    from fpq_core.pipeline import RunOptions, quantize_model

    model, _ = make_tiny_model(arch, seed=seed)
    if prep is not None:
        prep(model)
    cfg = QuantConfig.preset(method, fmt=fmt, a_bits=a_bits, **kw)
    quantize_model(model, cfg, calib(), RunOptions(device="cpu"))
    return model


@pytest.fixture(scope="module")
def nv_model():
    return quantized_tiny("llama", "nvfp", "rtn_had")


@pytest.fixture(scope="module")
def mx_model():
    return quantized_tiny("qwen3", "mxfp", "rtn_had")


def _load_all(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    idx = json.loads((folder / ex.INDEX_NAME).read_text())
    out = {}
    for f in sorted(set(idx["weight_map"].values())):
        out.update(load_file(str(folder / f)))
    return out


# ----------------------------------------------------------------------------- contract table
# What vLLM's fp_quant method registers per quantized Linear (reference §6.4), for a layer with
# `out` rows, `in_` columns, format group size G and hadamard size H:
#   key suffix                 dtype           shape                  vLLM meaning
VLLM_FP_QUANT_TABLE = {
    "qweight":                 (torch.uint8,   lambda o, i, G, H: (o, i // 2)),   # packed dim 1, pack factor 2
    "scales":                  (torch.uint8,   lambda o, i, G, H: (o, i // G)),   # pack factor = group size
    "weight_global_scale":     (torch.float32, lambda o, i, G, H: (1,)),          # scalar
    "act_global_scale":        (torch.float32, lambda o, i, G, H: (1,)),          # scalar
    "forward_hadamard_matrix": (torch.bfloat16, lambda o, i, G, H: (H, H)),
    "backward_hadamard_matrix": (torch.bfloat16, lambda o, i, G, H: (H, H)),      # written (reference), unused by vLLM
}
VLLM_REQUIRED_CONFIG_KEYS = {"hadamard_group_size", "forward_dtype", "forward_method", "modules_to_not_convert"}
REFERENCE_CONFIG_KEYS = {"forward_dtype", "backward_dtype", "forward_method", "hadamard_group_size",
                         "modules_to_not_convert", "quant_method", "store_master_weights", "pseudoquantization"}


@pytest.mark.parametrize("which", ["nv", "mx"])
def test_realquant_matches_vllm_contract_table(tmp_path, which, nv_model, mx_model):
    model = nv_model if which == "nv" else mx_model
    G = 16 if which == "nv" else 32
    rep = ex.export_model(model, None, tmp_path / "ck", kind="realquant", dtype=torch.bfloat16)
    assert rep.verified and rep.verification["max_weight_abs_diff"] == 0.0
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert set(qc) == REFERENCE_CONFIG_KEYS and VLLM_REQUIRED_CONFIG_KEYS <= set(qc)
    assert qc["forward_dtype"] == ("nvfp4" if which == "nv" else "mxfp4")
    assert qc["quant_method"] == "fp_quant" and qc["pseudoquantization"] is False
    assert qc["backward_dtype"] == "bf16" and qc["forward_method"] == "abs_max"
    assert qc["modules_to_not_convert"] == ["lm_head"] and qc["store_master_weights"] is False
    H = qc["hadamard_group_size"]
    t = _load_all(tmp_path / "ck")
    n_layers = model.config.num_hidden_layers
    for i in range(n_layers):
        for part, names in (("self_attn", ATTN), ("mlp", MLP)):
            for nm in names:
                p = f"model.layers.{i}.{part}.{nm}."
                assert p + "weight" not in t, "plain weight of a quantized layer must not be saved"
                out_f, in_f = t[p + "qweight"].shape[0], t[p + "qweight"].shape[1] * 2
                assert in_f % H == 0
                for suffix, (dt, shape) in VLLM_FP_QUANT_TABLE.items():
                    assert t[p + suffix].dtype == dt, (p + suffix, t[p + suffix].dtype)
                    assert tuple(t[p + suffix].shape) == shape(out_f, in_f, G, H), p + suffix
                if which == "mx":
                    assert float(t[p + "weight_global_scale"]) == 3.0 == float(t[p + "act_global_scale"])
                else:
                    assert float(t[p + "weight_global_scale"]) > 0 and float(t[p + "act_global_scale"]) > 0
                assert not [k for k in t if k.startswith(p) and k.split(".")[-1] not in VLLM_FP_QUANT_TABLE]
    # everything else from the state dict: embeddings, norms, lm_head (untied), qwen3 q/k norms
    assert "model.embed_tokens.weight" in t and "model.norm.weight" in t and "lm_head.weight" in t
    if which == "mx":
        assert "model.layers.0.self_attn.q_norm.weight" in t and "model.layers.0.self_attn.k_norm.weight" in t
    assert t["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert (tmp_path / "ck" / "generation_config.json").is_file()


def test_hadamard_matrices_and_nibble_order(tmp_path, nv_model):
    from fpq_core.formats.e2m1 import e2m1_decode, unpack_fp4
    from fpq_core.transforms import sylvester_hadamard

    ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    t = _load_all(tmp_path / "ck")
    p = "model.layers.1.mlp.down_proj."
    H = t[p + "forward_hadamard_matrix"]
    n = H.shape[0]
    assert torch.allclose(H.double(), sylvester_hadamard(n) / n**0.5, atol=1e-7)
    assert torch.equal(H, t[p + "backward_hadamard_matrix"])
    ql = nv_model.get_submodule(p[:-1])
    qw = t[p + "qweight"]
    codes = ql.qtensor.codes
    lo, hi = qw & 0xF, qw >> 4         # low nibble = even column
    assert torch.equal(e2m1_decode(lo), e2m1_decode(codes[:, 0::2]))
    assert torch.equal(e2m1_decode(hi), e2m1_decode(codes[:, 1::2]))
    assert torch.equal(t[p + "scales"], ql.qtensor.scale_bytes)   # row-major, unswizzled
    assert torch.equal(unpack_fp4(qw) & 7, codes & 7)


def test_pseudoquant_dqweight(tmp_path, nv_model):
    rep = ex.export_model(nv_model, None, tmp_path / "ck", kind="pseudoquant")
    t = _load_all(tmp_path / "ck")
    qc = json.loads((tmp_path / "ck" / "config.json").read_text())["quantization_config"]
    assert qc["pseudoquantization"] is True and set(qc) == REFERENCE_CONFIG_KEYS
    p = "model.layers.0.self_attn.q_proj."
    assert p + "qweight" not in t and p + "scales" not in t
    assert torch.equal(t[p + "dqweight"], nv_model.get_submodule(p[:-1]).weight)
    assert {p + s for s in ("forward_hadamard_matrix", "backward_hadamard_matrix", "weight_global_scale",
                            "act_global_scale")} <= set(t)
    assert rep.verified


def test_sharding_names_and_index(tmp_path, nv_model):
    rep = ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant", max_shard_size=6_000)
    files = sorted(f for f in os.listdir(tmp_path / "ck") if f.endswith(".safetensors"))
    n = len(files)
    assert n >= 10, n           # forces 2-digit padding
    assert files[0] == f"model-01-of-{n}.safetensors" and f"model-{n}-of-{n}.safetensors" in files
    idx = json.loads((tmp_path / "ck" / ex.INDEX_NAME).read_text())
    assert idx["metadata"] == {} and set(idx["weight_map"].values()) == set(files)
    assert rep.verified
    assert ex.shard_name(1, 1) == "model-1-of-1.safetensors"
    assert ex.shard_name(3, 12) == "model-03-of-12.safetensors"
    big = {"a": torch.zeros(10), "b": torch.zeros(1000), "c": torch.zeros(1)}
    assert ex.plan_shards(big, 100) == [["a"], ["b"], ["c"]]   # too-large tensor alone


def test_single_shard_still_indexed(tmp_path, nv_model):
    ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    assert (tmp_path / "ck" / "model-1-of-1.safetensors").is_file()
    assert (tmp_path / "ck" / ex.INDEX_NAME).is_file()


def test_fused_global_scale_equal_in_groups(tmp_path):
    model = quantized_tiny("llama", "nvfp", "rtn_had", fuse_global_scale=True)
    ex.export_model(model, None, tmp_path / "ck", kind="realquant")
    t = _load_all(tmp_path / "ck")
    for i in range(model.config.num_hidden_layers):
        for part, group in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))):
            for key in ("weight_global_scale", "act_global_scale"):
                vals = {float(t[f"model.layers.{i}.{part}.{nm}.{key}"]) for nm in group}
                assert len(vals) == 1, (i, part, key, vals)
    unfused = quantized_tiny("llama", "nvfp", "rtn_had")
    ex.export_model(unfused, None, tmp_path / "u", kind="realquant")
    u = _load_all(tmp_path / "u")
    assert len({float(u[f"model.layers.0.self_attn.{nm}.weight_global_scale"]) for nm in ("q_proj", "k_proj", "v_proj")}) > 1


def _zero_groups(model):
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :32] = 0       # whole NVFP4 groups (and Hadamard blocks of 16)
        model.model.layers[0].self_attn.q_proj.weight[:4, :] = 0     # whole rows


def zero_group_model():
    if "zero" not in _CACHE:
        _CACHE["zero"] = quantized_tiny("llama", "nvfp", "rtn", prep=_zero_groups)
    return _CACHE["zero"]


def test_nvfp_all_zero_groups_write_valid_bytes(tmp_path):
    model = zero_group_model()
    rep = ex.export_model(model, None, tmp_path / "ck", kind="realquant")
    t = _load_all(tmp_path / "ck")
    for k, v in t.items():
        if k.endswith(".scales"):
            assert not bool(((v & 0x7F) == 0x7F).any()), f"NaN e4m3 byte in {k}"
    assert rep.verified


def test_sanitize_replaces_nan_bytes_only_in_zero_groups():
    from fpq_core.formats import QuantSpec

    spec = QuantSpec.nvfp4()
    codes = torch.zeros(2, 32, dtype=torch.uint8)
    codes[1, 16:] = 3
    sb = torch.tensor([[0x7F, 0x30], [0x30, 0x30]], dtype=torch.uint8)
    fixed = ex._sanitize_scales(sb, codes, spec, 1000.0, "x")
    assert fixed[0, 0] == 0x7E and torch.equal(fixed[1], sb[1])
    sb[1, 1] = 0x7F
    with pytest.raises(ex.ExportError, match="NaN scale bytes"):
        ex._sanitize_scales(sb, codes, spec, 1000.0, "x")


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("cfg_kw, kind, match", [
    (dict(format="int", w_bits=4, a_bits=4, w_group_size=32, a_group_size=32), "realquant", "nvfp/mxfp"),
    (dict(format="nvfp", w_bits=4, a_bits=16), "realquant", "w4a16"),
    (dict(format="nvfp", w_bits=4, a_bits=4, transform_class="dct", hadamard_group_size=16), "realquant", "not exportable"),
    (dict(format="nvfp", w_bits=4, a_bits=4, transform_class="hadamard", hadamard_group_size=16), "compressed-tensors", "rotation"),
    (dict(format="mxfp", w_bits=4, a_bits=4), "compressed-tensors", "3x too large"),
    (dict(format="mxfp", w_bits=4, a_bits=4, mx_scale_rule="ocp"), "realquant", "x3 rule"),
    (dict(format="nvfp", w_bits=4, a_bits=4), "gguf", "unknown export kind"),
])
def test_check_exportable_refuses_with_reason(cfg_kw, kind, match):
    cfg = QuantConfig(**cfg_kw).normalized()
    with pytest.raises(ex.ExportError, match=match):
        ex.check_exportable(cfg, kind)


def test_unquantized_model_refused(tmp_path):
    from fpq_core.models.tiny import make_tiny_model

    model, _ = make_tiny_model("llama")
    with pytest.raises(ex.ExportError, match="quantize_model"):
        ex.export_model(model, None, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


# ----------------------------------------------------------------------------- atomicity
def _leftovers(parent: Path, name: str):
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_failure_mid_write_leaves_nothing(tmp_path, nv_model, monkeypatch):
    calls = {"n": 0}
    real = ex._save_shard

    def flaky(tensors, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        real(tensors, path)

    monkeypatch.setattr(ex, "_save_shard", flaky)
    with pytest.raises(OSError, match="injected"):
        ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant", max_shard_size=50_000)
    assert not (tmp_path / "ck").exists() and not _leftovers(tmp_path, "ck")
    # an existing export survives a failed overwrite untouched
    monkeypatch.setattr(ex, "_save_shard", real)
    ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    before = sorted(os.listdir(tmp_path / "ck"))
    calls["n"] = 0
    monkeypatch.setattr(ex, "_save_shard", flaky)
    with pytest.raises(OSError):
        ex.export_model(nv_model, None, tmp_path / "ck", kind="pseudoquant", max_shard_size=50_000, overwrite=True)
    assert sorted(os.listdir(tmp_path / "ck")) == before and not _leftovers(tmp_path, "ck")


def test_existing_path_needs_overwrite(tmp_path, nv_model):
    ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ex.export_model(nv_model, None, tmp_path / "ck", kind="pseudoquant")
    ex.export_model(nv_model, None, tmp_path / "ck", kind="pseudoquant", overwrite=True)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["quantization_config"]["pseudoquantization"] is True
    assert not any(f.endswith(".safetensors") and "qweight" in f for f in os.listdir(tmp_path / "ck"))
    assert not _leftovers(tmp_path, "ck")


def test_verification_failure_is_an_error(tmp_path, nv_model, monkeypatch):
    real = ex._save_shard

    def corrupting(tensors, path):
        tensors = {k: (v.clone() ^ 1 if k.endswith("qweight") else v) for k, v in tensors.items()}
        real(tensors, path)

    monkeypatch.setattr(ex, "_save_shard", corrupting)
    with pytest.raises(ex.ExportError, match="verification failed"):
        ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    assert not (tmp_path / "ck").exists() and not _leftovers(tmp_path, "ck")


# ----------------------------------------------------------------------------- w4a16
def test_w4a16_format(tmp_path):
    model = quantized_tiny("llama", "mxfp", "rtn_had", a_bits=16)
    with pytest.raises(ex.ExportError, match="w4a16"):
        ex.export_model(model, None, tmp_path / "rq", kind="realquant")
    rep = ex.export_model(model, None, tmp_path / "ck", kind="w4a16")
    qc = json.loads((tmp_path / "ck" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fpq_w4a16" and qc["activation_dtype"] == "bf16"
    assert qc["weight_dtype"] == "mxfp4" and qc["mx_scale_rule"] == "fpquant"
    t = _load_all(tmp_path / "ck")
    assert not [k for k in t if k.endswith("act_global_scale")]
    assert t["model.layers.0.mlp.up_proj.qweight"].dtype == torch.uint8
    assert rep.verified


# ----------------------------------------------------------------------------- compressed-tensors
@pytest.mark.parametrize("fmt, a_bits, kw", [("nvfp", 4, {}), ("nvfp", 16, {}), ("mxfp", 4, {"mx_scale_rule": "ocp"})])
def test_compressed_tensors_export_decompresses_with_ct(tmp_path, fmt, a_bits, kw):
    model = quantized_tiny("llama", fmt, "rtn", a_bits=a_bits, **kw)
    rep = ex.export_model(model, None, tmp_path / "ck", kind="compressed-tensors")
    ct = rep.verification["compressed_tensors"]
    assert ct["problems"] == [] and ct["max_rel_diff"] <= 2.0**-8
    qc = json.loads((tmp_path / "ck" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["ignore"] == ["lm_head"]
    assert qc["format"] == ("nvfp4-pack-quantized" if fmt == "nvfp" else "mxfp4-pack-quantized")
    assert qc["quantization_status"] == "compressed"
    t = _load_all(tmp_path / "ck")
    p = "model.layers.0.self_attn.k_proj."
    assert t[p + "weight_packed"].dtype == torch.uint8
    if fmt == "nvfp":
        assert t[p + "weight_scale"].dtype == torch.float8_e4m3fn
        # compressed-tensors divides by weight_global_scale: it is the encode scale, written as is
        ql = model.get_submodule(p[:-1])
        assert torch.equal(t[p + "weight_global_scale"], ql.qtensor.global_scale.float().reshape(1))
        assert (p + "input_global_scale" in t) == (a_bits == 4)
    else:
        assert t[p + "weight_scale"].dtype == torch.uint8 and p + "weight_global_scale" not in t


# ----------------------------------------------------------------------------- archive
def test_archive_zip_and_stream(tmp_path, nv_model):
    import io
    import zipfile

    ex.export_model(nv_model, None, tmp_path / "ck", kind="realquant")
    z = ex.export_run_archive(tmp_path / "ck")
    with zipfile.ZipFile(z) as zf:
        names = zf.namelist()
    assert "ck/config.json" in names and "ck/model-1-of-1.safetensors" in names
    data = b"".join(ex.iter_archive_bytes(tmp_path / "ck", chunk_size=4096))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted(names)
