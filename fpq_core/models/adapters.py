"""Architecture adapters: names of modules only, never copies of Hugging Face forward code.

An adapter says where the decoder blocks live, which Linears of a block are quantized (in
order), which of them read the same input (and so share an activation quantizer, an input
rotation, and, with ``fuse_global_scale``, one weight global scale), and where the embedding,
final norm and lm_head are. The pipeline wraps the named ``nn.Linear`` modules and leaves the
Hugging Face forward untouched, so new transformers releases keep working.

Adding an architecture whose layout matches Llama is one line in ``_LLAMA_LIKE``; a different
layout is one more ``ArchAdapter(...)`` passed to ``register_adapter``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from torch import nn

# Llama-style block: attention then gated MLP, 7 Linears.
_LLAMA_GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),  # read the attention-norm output
    ("self_attn.o_proj",),  # reads the attention output
    ("mlp.gate_proj", "mlp.up_proj"),  # read the MLP-norm output
    ("mlp.down_proj",),  # reads act(gate) * up
)


@dataclass(frozen=True)
class ArchAdapter:
    """Module names for one ``config.model_type``. Paths are relative to the *ForCausalLM model."""

    model_type: str
    groups: tuple[tuple[str, ...], ...] = _LLAMA_GROUPS  # Linears sharing an input, in forward order
    blocks: str = "model.layers"
    embedding: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary_emb: str | None = "model.rotary_emb"  # shared RoPE module (None if per-block)
    modules_to_not_convert: tuple[str, ...] = ("lm_head",)

    @property
    def linears(self) -> tuple[str, ...]:
        """The quantized Linears of one block, in forward order (q, k, v, o, gate, up, down)."""
        return tuple(name for group in self.groups for name in group)

    def linear_groups(self) -> list[tuple[str, ...]]:
        """Groups of Linears that read the same input tensor."""
        return list(self.groups)

    def group_of(self, linear: str) -> tuple[str, ...]:
        """The group (tuple of names) that ``linear`` belongs to."""
        for group in self.groups:
            if linear in group:
                return group
        raise KeyError(f"{linear!r} is not a quantized Linear of {self.model_type}; known: {self.linears}")

    def get_blocks(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(model, self.blocks)

    def iter_blocks(self, model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
        """Yield ``(index, block)`` for every decoder block."""
        yield from enumerate(self.get_blocks(model))

    def block_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """``{"self_attn.q_proj": Linear, ...}`` for one block, in forward order.

        Modules already wrapped (anything with an ``in_features``) are returned as they are."""
        out = {}
        for name in self.linears:
            mod = get_submodule(block, name)
            if not (isinstance(mod, nn.Linear) or hasattr(mod, "in_features")):
                raise TypeError(f"{self.model_type}: block.{name} is {type(mod).__name__}, expected nn.Linear")
            out[name] = mod
        return out

    def full_name(self, block_index: int, linear: str) -> str:
        """Name in ``model.named_modules()``, e.g. ``model.layers.3.self_attn.q_proj``."""
        return f"{self.blocks}.{block_index}.{linear}"


_ADAPTERS: dict[str, ArchAdapter] = {}

# model_type values with the Llama module layout (qwen2 has q/k/v biases, qwen3 per-head q/k
# norms, mistral a sliding window: none of that changes the Linears or their names).
_LLAMA_LIKE = ("llama", "qwen3", "qwen2", "mistral")


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    """Add (or replace) the adapter for ``adapter.model_type``."""
    _ADAPTERS[adapter.model_type] = adapter
    return adapter


for _t in _LLAMA_LIKE:
    register_adapter(ArchAdapter(model_type=_t))


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def _model_type(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        return obj.get("model_type", "")
    config = getattr(obj, "config", obj)  # a model has .config, a config is itself
    return getattr(config, "model_type", "") or ""


def get_adapter(model_or_config: Any) -> ArchAdapter:
    """Adapter for a model, a config (object or dict) or a ``model_type`` string.

    Raises ValueError naming the supported model types for anything else."""
    model_type = _model_type(model_or_config)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"model type {model_type or '<unknown>'!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())}. Add an ArchAdapter in fpq_core/models/adapters.py "
            "if its decoder blocks use the same Linear names."
        )
    return _ADAPTERS[model_type]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error that names the adapter path that failed."""
    try:
        return root.get_submodule(path)
    except AttributeError as e:
        raise AttributeError(f"{type(root).__name__} has no submodule {path!r} ({e})") from None


# Convenience functions for callers that hold a model but not its adapter.
def iter_blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """Yield ``(index, block)`` for the decoder blocks of a supported model."""
    return get_adapter(model).iter_blocks(model)


def block_linears(block: nn.Module, adapter: ArchAdapter | str = "llama") -> dict[str, nn.Linear]:
    """The 7 quantized Linears of ``block`` (name -> module), in forward order."""
    return get_adapter(adapter).block_linears(block) if isinstance(adapter, str) else adapter.block_linears(block)


def linear_groups(adapter: ArchAdapter | str = "llama") -> list[tuple[str, ...]]:
    """Groups of Linear names that share an input (and an activation quantizer / global scale)."""
    return get_adapter(adapter).linear_groups() if isinstance(adapter, str) else adapter.linear_groups()
