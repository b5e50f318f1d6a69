"""Per-layer statistics for the studio's Layer explorer: pure functions over a model's Linears.

Nothing here draws or touches Streamlit. Quantization goes through ``fpq_core.analysis``
(``make_spec``, ``quantize_roundtrip``, ``error_metrics``, ``scale_histogram``), rotations through
``fpq_core.transforms``; all arithmetic is float32 without grads.

Speed: the RTN error of a layer is measured on an evenly spaced subsample of its rows (always
including the row holding the abs-max, so NVFP4's tensor-wide global scale is unchanged) of at
most ``max_elements`` elements; ``max_elements=None`` measures every row. On SmolLM2-135M
(210 Linears) the sampled heatmap takes seconds, the exact one minutes on 2 CPU cores.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LayerSettings", "iter_linears", "model_summary", "sample_rows", "layer_error_rows", "error_matrix",
           "worst_layers", "diff_rows", "kurtosis", "weight_stats", "activation_stats", "scale_distribution",
           "PROJECTIONS", "DEFAULT_MAX_ELEMENTS"]

# heatmap helpers shared with the notebooks (one implementation)
from fpq_core.figures import PROJECTIONS, error_matrix, worst_layers  # noqa: E402,F401
DEFAULT_MAX_ELEMENTS = 1 << 15


@dataclass(frozen=True)
class LayerSettings:
    """One quantization setting of the explorer (hashable, so it can key a cache)."""

    preset: str = "MXFP4"                 # fpq_core.analysis.PRESETS
    group_size: int | None = None         # None: the preset's
    scale_precision: str | None = None    # None: the preset's
    transform: str = "identity"
    transform_size: int | None = None     # None: the group size
    observer: str = "minmax"

    def spec(self):
        from fpq_core.analysis import make_spec

        return make_spec(self.preset, self.group_size, self.scale_precision)

    def label(self) -> str:
        s = self.spec()
        t = "" if self.transform in ("identity", "none", None) else f" + {self.transform}{self.transform_size or s.group_size}"
        return f"{self.preset} g{s.group_size} {s.scale_precision}{t} ({self.observer})"

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- model walking


def iter_linears(model) -> Iterator[tuple[int, str, torch.nn.Linear]]:
    """(block index, Linear name inside the block, module) for every decoder-block Linear."""
    from fpq_core.models.adapters import get_adapter

    adapter = get_adapter(model)
    for bi, block in enumerate(adapter.get_blocks(model)):
        for name, lin in adapter.block_linears(block).items():
            yield bi, name, lin


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def model_summary(model) -> dict[str, Any]:
    """Architecture facts for the Home page: type, sizes, parameter count, the Linear list."""
    cfg = model.config
    layers = [{"block": bi, "name": name, "out": lin.out_features, "in": lin.in_features,
               "params": lin.weight.numel()} for bi, name, lin in iter_linears(model)]
    return {
        "model_type": getattr(cfg, "model_type", "?"),
        "architecture": type(model).__name__,
        "hidden_size": getattr(cfg, "hidden_size", None),
        "intermediate_size": getattr(cfg, "intermediate_size", None),
        "num_blocks": getattr(cfg, "num_hidden_layers", None),
        "num_heads": getattr(cfg, "num_attention_heads", None),
        "num_kv_heads": getattr(cfg, "num_key_value_heads", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "linear_parameters": int(sum(l["params"] for l in layers)),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "layers": layers,
    }


def sample_rows(w: torch.Tensor, max_elements: int | None) -> torch.Tensor:
    """At most ``max_elements`` evenly spaced rows of w (out, in), always with the abs-max row."""
    if max_elements is None or w.numel() <= max_elements:
        return w
    keep = max(1, int(max_elements) // w.shape[1])
    idx = torch.linspace(0, w.shape[0] - 1, keep).round().long()
    top = int(w.abs().amax(dim=1).argmax())
    idx = torch.unique(torch.cat([idx, torch.tensor([top])]))
    return w.index_select(0, idx)


# ----------------------------------------------------------------------------- RTN errors


@torch.no_grad()
def layer_error_rows(model, settings: LayerSettings, max_elements: int | None = DEFAULT_MAX_ELEMENTS) -> list[dict]:
    """RTN error of every decoder Linear under ``settings``: one row per layer with block, name,
    proj, shape, rel_mse (||W - What||^2 / ||W||^2), rel_mse_group, top_rel_error, scale range."""
    from fpq_core.analysis import error_metrics, quantize_roundtrip

    spec = settings.spec()
    rows = []
    for bi, name, lin in iter_linears(model):
        w = sample_rows(lin.weight.detach().float(), max_elements)  # (rows, in)
        if w.shape[1] % spec.group_size:
            raise ValueError(f"group size {spec.group_size} does not divide in_features {w.shape[1]} of "
                             f"block {bi} {name}: pick a smaller group size")
        w_hat, qt = quantize_roundtrip(w, spec, _transform(settings), _tsize(settings, spec), settings.observer)
        m = error_metrics(w, w_hat, qt, spec.group_size)
        rows.append({"block": bi, "name": name, "proj": _short(name), "shape": [lin.out_features, lin.in_features],
                     "rel_mse": m["rel_mse_global"], "rel_mse_group": m["rel_mse"],
                     "top_rel_error": m["top_rel_error"], "scale_min": m["scale_min"],
                     "scale_max": m["scale_max"], "global_scale": m["global_scale"],
                     "sampled_rows": int(w.shape[0])})
    return rows


def _transform(s: LayerSettings) -> str | None:
    return None if s.transform in (None, "", "none", "identity") else s.transform


def _tsize(s: LayerSettings, spec) -> int | None:
    return None if _transform(s) is None else int(s.transform_size or spec.group_size)


def diff_rows(a: Sequence[dict], b: Sequence[dict], key: str = "rel_mse") -> list[dict]:
    """Per layer of two settings: a, b, b - a and b / a of ``key`` (rows matched by block, name)."""
    idx = {(r["block"], r["name"]): r[key] for r in a}
    out = []
    for r in b:
        va = idx.get((r["block"], r["name"]))
        if va is None:
            continue
        vb = r[key]
        out.append({"block": r["block"], "name": r["name"], "proj": r["proj"], "a": va, "b": vb,
                    "diff": vb - va, "ratio": vb / va if va else float("nan")})
    return out


# ----------------------------------------------------------------------------- distributions


def kurtosis(x: torch.Tensor, dim: int | None = None) -> torch.Tensor | float:
    """Pearson kurtosis E[(x-mu)^4] / Var^2 (3 for a Gaussian, 6 for Laplace) over all elements
    (``dim=None``, returns a float) or along ``dim``."""
    x = x.detach().double()
    if dim is None:
        x = x.reshape(-1)
        d = x - x.mean()
        var = d.pow(2).mean()
        return float(d.pow(4).mean() / var.pow(2)) if var > 0 else float("nan")
    d = x - x.mean(dim=dim, keepdim=True)
    var = d.pow(2).mean(dim=dim)
    return (d.pow(4).mean(dim=dim) / var.pow(2)).float()


def _rotate(x: torch.Tensor, transform: str | None, size: int | None) -> torch.Tensor:
    if transform in (None, "", "none", "identity"):
        return x
    from fpq_core.transforms import get_transform

    return get_transform(transform, size=int(size)).apply(x.float())


def _group_kurtosis(x: torch.Tensor, g: int) -> float:
    """Mean kurtosis of the groups of g consecutive elements along the last dim (what the
    microscaling scale sees), zero groups skipped."""
    k = kurtosis(x.reshape(-1, g), dim=1)
    k = k[torch.isfinite(k)]
    return float(k.mean()) if k.numel() else float("nan")


@torch.no_grad()
def weight_stats(model, transform: str = "hadamard", transform_size: int = 32, group_size: int = 32,
                 max_elements: int | None = 1 << 16) -> list[dict]:
    """Per Linear: std, abs-max / std, tensor kurtosis and mean group kurtosis before and after
    the block rotation (along in_features, as the pipeline rotates)."""
    rows = []
    for bi, name, lin in iter_linears(model):
        w = sample_rows(lin.weight.detach().float(), max_elements)  # (rows, in)
        wr = _rotate(w, transform, transform_size)
        std = float(w.std())
        rows.append({"block": bi, "name": name, "proj": _short(name), "std": std,
                     "absmax_over_std": float(w.abs().max()) / std if std else float("nan"),
                     "kurtosis": kurtosis(w), "kurtosis_rotated": kurtosis(wr),
                     "group_kurtosis": _group_kurtosis(w, group_size),
                     "group_kurtosis_rotated": _group_kurtosis(wr, group_size)})
    return rows


@torch.no_grad()
def activation_stats(model, batches: Sequence[torch.Tensor], transform: str = "hadamard", transform_size: int = 32,
                     group_size: int = 32, max_tokens: int = 512) -> list[dict]:
    """Input statistics of every decoder Linear over a few calibration batches (token ids (1, L)):
    std, abs-max / std, kurtosis and mean group kurtosis before and after the block rotation.
    Only the first ``max_tokens`` tokens per Linear are kept (stats, not tensors, leave here)."""
    if not batches:
        raise ValueError("activation_stats needs at least one calibration batch of token ids")
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []

    def hook_for(key):
        def hook(_mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            have = sum(t.shape[0] for t in seen.setdefault(key, []))
            if have < max_tokens:
                seen[key].append(x[: max_tokens - have].clone())
        return hook

    names = []
    for bi, name, lin in iter_linears(model):
        names.append((bi, name))
        handles.append(lin.register_forward_pre_hook(hook_for((bi, name))))
    device = next(model.parameters()).device
    try:
        for b in batches:
            model(input_ids=b.to(device))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for bi, name in names:
        x = torch.cat(seen.get((bi, name)) or [torch.zeros(1, 1)])
        xr = _rotate(x, transform, transform_size) if x.shape[-1] % max(1, transform_size) == 0 else x
        std = float(x.std())
        g = group_size if x.shape[-1] % group_size == 0 else x.shape[-1]
        rows.append({"block": bi, "name": name, "proj": _short(name), "tokens": int(x.shape[0]), "std": std,
                     "absmax_over_std": float(x.abs().max()) / std if std else float("nan"),
                     "kurtosis": kurtosis(x), "kurtosis_rotated": kurtosis(xr),
                     "group_kurtosis": _group_kurtosis(x, g), "group_kurtosis_rotated": _group_kurtosis(xr, g)})
    return rows


@torch.no_grad()
def scale_distribution(model, settings: LayerSettings, max_elements: int | None = DEFAULT_MAX_ELEMENTS) -> dict:
    """Stored group scales over all Linears under ``settings``: merged histogram (E8M0 exponents,
    E4M3 values, or log2 of unquantized scales), and the per-layer global scales (NVFP4)."""
    from fpq_core.analysis import quantize_roundtrip, scale_histogram

    spec = settings.spec()
    counts: dict[float, int] = {}
    label, globals_, names = "", [], []
    for bi, name, lin in iter_linears(model):
        w = sample_rows(lin.weight.detach().float(), max_elements)
        _, qt = quantize_roundtrip(w, spec, _transform(settings), _tsize(settings, spec), settings.observer)
        h = scale_histogram(qt, spec.scale_precision)
        label = h["label"]
        for v, c in zip(h["values"].tolist(), h["counts"].tolist()):
            counts[v] = counts.get(v, 0) + int(c)
        gs = getattr(qt, "global_scale", None)
        globals_.append(float(gs.reshape(-1)[0]) if gs is not None else math.nan)
        names.append(f"{bi}.{_short(name)}")
    vals = sorted(counts)
    return {"values": vals, "counts": [counts[v] for v in vals], "label": label,
            "global_scales": globals_, "layers": names}
