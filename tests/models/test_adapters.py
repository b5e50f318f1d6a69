import pytest
import torch
from torch import nn

from fpq_core.models.adapters import (
    ArchAdapter,
    block_linears,
    get_adapter,
    iter_blocks,
    linear_groups,
    register_adapter,
    supported_model_types,
)
from fpq_core.models.tiny import TINY_ARCHS, make_tiny_model

ORDER = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_forward_and_adapter_names(arch):
    model, tok = make_tiny_model(arch, seed=0)
    assert tok is None and not model.training and model.config.use_cache is False
    assert not any(p.requires_grad for p in model.parameters())
    ad = get_adapter(model)
    assert ad.model_type == arch and list(ad.linears) == ORDER
    blocks = list(iter_blocks(model))
    assert [i for i, _ in blocks] == [0, 1]
    for i, block in blocks:
        lin = ad.block_linears(block)
        assert list(lin) == ORDER and all(isinstance(m, nn.Linear) for m in lin.values())
        for group in ad.linear_groups():  # members of a group read the same input width
            assert len({lin[n].in_features for n in group}) == 1
        assert lin["self_attn.q_proj"].in_features == 64 and lin["mlp.down_proj"].in_features == 128
        assert dict(model.named_modules())[ad.full_name(i, "mlp.up_proj")] is lin["mlp.up_proj"]
    for path in (ad.embedding, ad.final_norm, ad.lm_head, ad.rotary_emb):
        model.get_submodule(path)
    assert ad.modules_to_not_convert == ("lm_head",)
    x = torch.randint(0, 256, (2, 12))
    logits = model(x).logits  # (B, T, V)
    assert logits.shape == (2, 12, 256) and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_deterministic(arch):
    a, _ = make_tiny_model(arch, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    b, _ = make_tiny_model(arch, seed=3)
    c, _ = make_tiny_model(arch, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])


def test_qwen2_has_qkv_bias_and_block_linears_default():
    model, _ = make_tiny_model("qwen2")
    lin = block_linears(model.model.layers[0])
    assert lin["self_attn.q_proj"].bias is not None and lin["self_attn.o_proj"].bias is None


def test_groups():
    assert linear_groups() == [
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ]
    ad = get_adapter("qwen3")
    assert ad.group_of("self_attn.k_proj") == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    with pytest.raises(KeyError, match="not a quantized Linear"):
        ad.group_of("lm_head")


@pytest.mark.parametrize("obj", ["gpt2", {"model_type": "qwen3_moe"}, "gpt2-config-object"])
def test_unsupported_architecture(obj):
    if obj == "gpt2-config-object":
        from transformers import GPT2Config

        obj = GPT2Config()
    with pytest.raises(ValueError, match="not supported.*llama, mistral, qwen2, qwen3"):
        get_adapter(obj)


def test_get_adapter_accepts_model_config_dict_string():
    model, _ = make_tiny_model("mistral")
    assert get_adapter(model) is get_adapter(model.config) is get_adapter({"model_type": "mistral"}) is get_adapter("mistral")
    assert set(supported_model_types()) >= {"llama", "qwen3", "qwen2", "mistral"}


def test_register_adapter_is_data_driven():
    custom = register_adapter(ArchAdapter(model_type="_test_arch", blocks="model.layers"))
    try:
        assert get_adapter("_test_arch") is custom and custom.linears[0] == "self_attn.q_proj"
    finally:
        from fpq_core.models import adapters

        adapters._ADAPTERS.pop("_test_arch")


def test_block_linears_rejects_non_linear():
    model, _ = make_tiny_model("llama")
    block = model.model.layers[0]
    block.mlp.down_proj = nn.Identity()
    with pytest.raises(TypeError, match="down_proj is Identity"):
        get_adapter("llama").block_linears(block)


def test_tiny_model_with_embedded_tokenizer():
    model, tok = make_tiny_model("qwen3", with_tokenizer=True)
    assert model.config.vocab_size == len(tok) == 49152
    ids = tok("Hello world", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)
