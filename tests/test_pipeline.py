"""The block-by-block pipeline on tiny random Llama / Qwen3 / Qwen2 / Mistral models."""
from __future__ import annotations

import pytest
import torch

from fpq_core.config import QuantConfig
from fpq_core.formats import QuantSpec, quantize
from fpq_core.models.adapters import get_adapter
from fpq_core.models.tiny import make_tiny_model
from fpq_core.nn import QuantLinear
from fpq_core.pipeline import QuantizationCancelled, RunOptions, quantize_model

CPU = RunOptions(device="cpu")


def tiny(arch="llama", **kw):
    m = make_tiny_model(arch, **kw)
    return m[0] if isinstance(m, tuple) else m


def batches(model, n=4, L=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, L), generator=g) for _ in range(n)]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def qlinears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2", "mistral"])
def test_every_arch_mr_gptq_w4a4(arch):
    m = tiny(arch)
    ids = batches(m)
    ref = logits(m, ids[0])
    cfg = QuantConfig.preset("mr_gptq", fmt="nvfp", w_bits=4, a_bits=4)
    res = quantize_model(m, cfg, ids, options=CPU)
    ql = qlinears(m)
    assert len(ql) == 7 * m.config.num_hidden_layers == len(res.layers)
    out = logits(m, ids[0])
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5, rel
    for r in res.layers:
        assert r.method == "gptq" and 0 <= r.rel_error < 1 and r.act_global_scale is not None


def test_rtn_weights_lie_on_the_grid():
    m = tiny()
    res = quantize_model(m, QuantConfig.preset("rtn", fmt="mxfp", w_bits=4, a_bits=16), None, options=CPU)
    assert all(r.method == "rtn" for r in res.layers)
    spec = QuantSpec.mxfp4()
    for name, q in qlinears(m).items():
        assert torch.equal(q.qtensor.dequantize(), q.weight.data), name
        # the codes are RTN of the (unrotated, identity-transform) weight with those scales
        assert torch.equal(quantize(q.weight.data, spec, scales=q.qtensor.scales).dequantize(), q.weight.data), name


def test_rotation_alone_keeps_the_function():
    """W16A16 with a Hadamard: weights rotated offline, inputs online -> same logits."""
    m = tiny(hidden_size=64, intermediate_size=128)
    ids = batches(m, n=2)
    ref = logits(m, ids[0])
    cfg = QuantConfig(format="int", w_bits=16, a_bits=16, transform_class="hadamard", hadamard_group_size=32)
    quantize_model(m, cfg, ids, options=CPU)
    assert all(q.rotated for q in qlinears(m).values())
    torch.testing.assert_close(logits(m, ids[0]), ref, rtol=1e-4, atol=1e-4)


def test_same_seed_same_result_bit_for_bit():
    outs = []
    for _ in range(2):
        m = tiny()
        ids = batches(m)
        quantize_model(m, QuantConfig.preset("mr_gptq", fmt="mxfp", w_bits=4, a_bits=4), ids, options=CPU)
        outs.append({k: v.clone() for k, v in m.state_dict().items()})
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


def test_resume_after_cancel_matches_uninterrupted(tmp_path):
    cfg = QuantConfig.preset("gptq", fmt="nvfp", w_bits=4, a_bits=4)
    m_full = tiny(num_layers=3)
    ids = batches(m_full)
    quantize_model(m_full, cfg, ids, options=CPU)

    m = tiny(num_layers=3)
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2            # blocks 0 and 1 finish, cancel before block 2

    opts = RunOptions(device="cpu", state_dir=str(tmp_path / "state"))
    with pytest.raises(QuantizationCancelled):
        quantize_model(m, cfg, ids, options=opts, should_stop=stop_after_two)
    m2 = tiny(num_layers=3)
    res = quantize_model(m2, cfg, ids, options=opts)
    assert res.resumed_from_block == 2
    assert len(res.layers) == 21
    full, resumed = m_full.state_dict(), m2.state_dict()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_resume_refuses_another_config(tmp_path):
    m = tiny()
    opts = RunOptions(device="cpu", state_dir=str(tmp_path))
    quantize_model(m, QuantConfig.preset("rtn", fmt="mxfp", w_bits=4, a_bits=16), None, options=opts)
    with pytest.raises(ValueError, match="another configuration"):
        quantize_model(tiny(), QuantConfig.preset("rtn", fmt="nvfp", w_bits=4, a_bits=16), None, options=opts)


def test_fuse_global_scale_shares_qkv_and_gate_up():
    m = tiny()
    cfg = QuantConfig.preset("rtn", fmt="nvfp", w_bits=4, a_bits=4, fuse_global_scale=True)
    quantize_model(m, cfg, batches(m), options=CPU)
    blk = get_adapter(m).get_blocks(m)[0]
    g = {n: float(get_adapter(m).block_linears(blk)[n].qtensor.global_scale) for n in
         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.o_proj")}
    assert g["self_attn.q_proj"] == g["self_attn.k_proj"] == g["self_attn.v_proj"]
    assert g["mlp.gate_proj"] == g["mlp.up_proj"]
    # the fused scale is the minimum (the one for the largest amax): nothing overflows
    m2 = tiny()
    quantize_model(m2, QuantConfig.preset("rtn", fmt="nvfp", w_bits=4, a_bits=4), batches(m2), options=CPU)
    blk2 = get_adapter(m2).get_blocks(m2)[0]
    unfused = [float(get_adapter(m2).block_linears(blk2)[n].qtensor.global_scale)
               for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    assert g["self_attn.q_proj"] == min(unfused)


def test_nvfp4_activation_scale_is_minimum_over_batches():
    """Activation global scale = min over calibration batches of 2688/amax (static)."""
    m = tiny(num_layers=1)
    ids = batches(m, n=3)
    blk = get_adapter(m).get_blocks(m)[0]
    seen = []
    h = blk.input_layernorm.register_forward_hook(lambda mod, i, o: seen.append(o.detach().abs().max()))
    cfg = QuantConfig.preset("rtn", fmt="nvfp", w_bits=4, a_bits=4)
    quantize_model(m, cfg, ids, options=CPU)
    h.remove()
    expected = min(2688.0 / float(a) for a in seen[:3])
    q = get_adapter(m).block_linears(blk)["self_attn.q_proj"]
    got = float(torch.as_tensor(q.input_path.act_quantizer.global_scale).reshape(-1)[0])
    assert got == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_fail_before_work():
    m = tiny(hidden_size=96, intermediate_size=192, num_heads=3, num_kv_heads=1)
    cfg = QuantConfig(format="mxfp", w_bits=4, transform_class="hadamard", hadamard_group_size=64)
    with pytest.raises(ValueError, match=r"does not divide.*\[16, 32\]"):
        quantize_model(m, cfg, None, options=CPU)
    m = tiny()
    with torch.no_grad():
        get_adapter(m).get_blocks(m)[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_model(m, QuantConfig.preset("rtn", fmt="mxfp", w_bits=4, a_bits=16), None, options=CPU)
    with pytest.raises(ValueError, match="calibration data"):
        quantize_model(tiny(), QuantConfig.preset("gptq", fmt="mxfp", w_bits=4, a_bits=16), None, options=CPU)
    with pytest.raises(ValueError, match="w_bits"):
        QuantConfig(format="int", w_bits=12).normalized()
    with pytest.raises(ValueError, match="group_size"):
        QuantConfig(format="int", w_bits=4).normalized()
    with pytest.raises(ValueError, match="only 4-bit"):
        QuantConfig(format="mxfp", w_bits=8).normalized()
    with pytest.raises(ValueError, match="not supported"):
        get_adapter("gpt2")


def test_reference_post_parse_rules():
    c = QuantConfig(format="nvfp", w_bits=4, a_bits=4, w_group_size=32).normalized()
    assert (c.w_group_size, c.a_group_size, c.scale_precision) == (16, 16, "e4m3")
    assert any("nvfp forces" in n for n in c.notes)
    c = QuantConfig(format="mxfp", w_bits=4).normalized()
    assert (c.w_group_size, c.scale_precision) == (32, "e8m0")
    mr = QuantConfig.preset("mr_gptq", fmt="mxfp")
    assert (mr.gptq, mr.transform_class, mr.hadamard_group_size, mr.w_observer, mr.quantization_order) == \
        (True, "hadamard", 32, "mse", "activation")
    assert mr.method_name == "MXFP W4A4 MR-GPTQ"


def test_no_autograd_graph_kept_for_grad_requiring_parameters():
    """from_pretrained leaves parameters requiring grad: the pipeline must not record autograd
    graphs (each block's outputs would pin all of its calibration activations, and the fused GPU
    kernels skip grad inputs)."""
    m = tiny("llama")
    for p in m.parameters():
        p.requires_grad_(True)              # as from_pretrained leaves them
    seen = []
    blocks = get_adapter(m).get_blocks(m)
    hook = blocks[1].register_forward_pre_hook(lambda mod, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).requires_grad or torch.is_grad_enabled()), with_kwargs=True)
    try:
        quantize_model(m, QuantConfig.preset("mr_gptq", fmt="nvfp"), batches(m, n=2), options=CPU)
    finally:
        hook.remove()
    assert seen and not any(seen)
