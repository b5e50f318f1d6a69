"""Tiny random models for tests: real Hugging Face classes, built from a config, seeded.

``make_tiny_model("qwen3")`` builds a 2-block Qwen3ForCausalLM with hidden size 64 in well under
a second. Weights are drawn from a private ``torch.Generator``, so the same seed gives the same
model whatever the global RNG state or transformers' own init does.
"""
from __future__ import annotations

import torch
from torch import nn

TINY_ARCHS = ("llama", "qwen3", "qwen2", "mistral")
EMBEDDED_VOCAB = 49152  # SmolLM2 tokenizer


def tiny_config(
    arch: str,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 256,
    max_position_embeddings: int = 512,
):
    """A transformers config of ``arch`` with tiny sizes (head_dim = hidden_size // num_heads)."""
    from transformers import AutoConfig

    if arch not in TINY_ARCHS:
        raise ValueError(f"make_tiny_model: arch {arch!r} not in {TINY_ARCHS}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    kw = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    if arch == "qwen3":
        kw["head_dim"] = hidden_size // num_heads
    if arch == "mistral":
        kw["sliding_window"] = max_position_embeddings
    cfg = AutoConfig.for_model(arch, **kw)
    cfg._attn_implementation = "eager"  # deterministic, no SDPA backend differences
    return cfg


@torch.no_grad()
def _init_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:  # Linear / Embedding weights
            p.copy_(torch.randn(p.shape, generator=g) * std)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * std)
        else:  # RMSNorm weights: around 1, not exactly 1, so norms matter in tests
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def make_tiny_model(
    arch: str = "llama",
    seed: int = 0,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 256,
    with_tokenizer: bool = False,
    dtype: torch.dtype = torch.float32,
):
    """-> (model, tokenizer or None): a seeded random ``arch`` model in eval mode, no grads.

    ``with_tokenizer=True`` returns the embedded SmolLM2 tokenizer and forces
    ``vocab_size=49152`` (~3M embedding parameters at hidden 64; still fast)."""
    from transformers import AutoModelForCausalLM

    tokenizer = None
    if with_tokenizer:
        from .embedded import embedded_tokenizer

        tokenizer = embedded_tokenizer()
        vocab_size = EMBEDDED_VOCAB
    cfg = tiny_config(
        arch,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        vocab_size=vocab_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    _init_weights(model, seed)
    model.to(dtype)
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer
