"""Model glue: architecture adapters, loading (hub id, folder, GGUF, embedded default), tiny
random models for tests. Names are imported lazily so ``import fpq_core.models`` stays cheap."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ArchAdapter": "adapters",
    "get_adapter": "adapters",
    "register_adapter": "adapters",
    "supported_model_types": "adapters",
    "iter_blocks": "adapters",
    "block_linears": "adapters",
    "linear_groups": "adapters",
    "load_model": "loading",
    "load_config": "loading",
    "resolve_source": "loading",
    "embedded_model_path": "embedded",
    "embedded_tokenizer": "embedded",
    "embedded_gguf_path": "embedded",
    "cache_root": "embedded",
    "make_tiny_model": "tiny",
    "tiny_config": "tiny",
    "HubUnreachableError": "hub",
    "hub_reachable": "hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
