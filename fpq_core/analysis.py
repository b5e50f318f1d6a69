"""Error analysis of microscaling formats: pure functions over tensors.

Everything the app's format playground shows is computed here, so notebooks and the CLI can
reuse it. All arithmetic is float32. Quantization itself is delegated to ``fpq_core.formats``
(``QuantSpec``, ``quantize``) and rotations to ``fpq_core.transforms`` (``get_transform``).

Metrics follow the paper's relative definitions (§3, Fig. 3), measured in the original domain
(after undoing any block transform):
    rel_mse      = E_groups[ ||x_g - xhat_g||^2 / ||x_g||^2 ]
    top_rel_err  = E_groups[ (x_top - xhat_top)^2 / x_top^2 ],  x_top = abs-max element of x_g
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

DISTRIBUTIONS = ("gaussian", "laplace", "student_t", "student_t_outliers")
PRESETS = ("MXFP4", "NVFP4", "NVINT4", "MXINT4", "INT4", "FP4 (custom)")
SCALE_PRECISIONS = ("fp16", "e8m0", "e4m3")
GROUP_SIZES = (8, 16, 32, 64, 128, 256)

# E2M1 magnitudes (sign bit aside): 0, subnormal 0.5, then 1..6 with one mantissa bit.
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# ----------------------------------------------------------------------------- samples


def sample_distribution(
    name: str,
    shape: tuple[int, ...] = (64, 4096),
    seed: int = 0,
    *,
    df: int = 3,
    outlier_frac: float = 1e-3,
    outlier_scale: float = 10.0,
) -> torch.Tensor:
    """Draw a float32 sample with unit variance.

    gaussian: N(0, 1). laplace: Laplace(0, 1/sqrt(2)) (the paper's model of native tensors).
    student_t: Student-t with `df` (>2) degrees of freedom, scaled to unit variance.
    student_t_outliers: student_t with a fraction `outlier_frac` of elements multiplied by
    `outlier_scale` (App. E: outliers ~0.1% of elements), renormalised to unit sample std.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}: choose one of {DISTRIBUTIONS}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    g = torch.Generator().manual_seed(int(seed))
    shape = tuple(int(s) for s in shape)
    if name == "gaussian":
        return torch.randn(shape, generator=g, dtype=torch.float64).float()
    if name == "laplace":
        # inverse CDF: u ~ U(-1/2, 1/2), x = -b sign(u) log(1 - 2|u|), Var = 2 b^2 = 1
        u = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
        b = 1.0 / math.sqrt(2.0)
        x = -b * torch.sign(u) * torch.log1p(-2.0 * u.abs())
        return x.float()
    if df <= 2:
        raise ValueError(f"student_t needs df > 2 for a finite variance, got df={df}")
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    chi2 = torch.randn((df, *shape), generator=g, dtype=torch.float64).pow(2).sum(0)
    t = z / torch.sqrt(chi2 / df) * math.sqrt((df - 2) / df)  # Var(t_df) = df / (df - 2)
    if name == "student_t":
        return t.float()
    mask = torch.rand(shape, generator=g, dtype=torch.float64) < outlier_frac
    t = torch.where(mask, t * outlier_scale, t)
    return (t / t.std()).float()


# ----------------------------------------------------------------------------- specs


def make_spec(preset: str, group_size: int | None = None, scale_precision: str | None = None):
    """A QuantSpec from a preset name, optionally with another group size / scale precision.

    "FP4 (custom)" is plain FP4 (E2M1 elements) with the given group size and scale precision
    (defaults 32 / e4m3)."""
    from fpq_core.formats import QuantSpec

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {PRESETS}")
    if scale_precision is not None and scale_precision not in SCALE_PRECISIONS:
        raise ValueError(f"unknown scale precision {scale_precision!r}: choose one of {SCALE_PRECISIONS}")
    if preset == "FP4 (custom)":
        return QuantSpec(format="fp", bits=4, group_size=int(group_size or 32),
                         scale_precision=scale_precision or "e4m3")
    base = {
        "MXFP4": QuantSpec.mxfp4,
        "NVFP4": QuantSpec.nvfp4,
        "NVINT4": QuantSpec.nvint4,
        "MXINT4": QuantSpec.mxint4,
        "INT4": lambda: QuantSpec.int(bits=4, group_size=32),
    }[preset]()
    return with_overrides(base, group_size=group_size, scale_precision=scale_precision)


def with_overrides(spec, group_size: int | None = None, scale_precision: str | None = None):
    """`spec` with another group size and/or scale precision; other fields are kept."""
    changes = {}
    if group_size is not None and int(group_size) != spec.group_size:
        changes["group_size"] = int(group_size)
    if scale_precision is not None and scale_precision != spec.scale_precision:
        changes["scale_precision"] = scale_precision
    if not changes:
        return spec
    if dataclasses.is_dataclass(spec):
        return dataclasses.replace(spec, **changes)
    from fpq_core.formats import QuantSpec

    return QuantSpec(format=spec.format, bits=spec.bits,
                     group_size=changes.get("group_size", spec.group_size),
                     scale_precision=changes.get("scale_precision", spec.scale_precision))


def spec_summary(spec) -> dict[str, Any]:
    """Plain description of a spec: element format, group size, scale precision, bits/element."""
    scale_bits = {"e8m0": 8, "e4m3": 8}.get(spec.scale_precision, 16)
    return {
        "format": spec.format,
        "bits": spec.bits,
        "group_size": spec.group_size,
        "scale_precision": spec.scale_precision,
        "bits_per_element": getattr(spec, "bits_per_element", spec.bits + scale_bits / spec.group_size),
    }


def element_grid(spec=None) -> torch.Tensor:
    """Sorted representable element values (before scaling): E2M1 for fp4, the INT-b grid."""
    if spec is None or spec.format == "fp":
        return e2m1_grid()
    q = 2 ** (spec.bits - 1) - 1
    lo, hi = getattr(spec, "qmin", -q), getattr(spec, "qmax", q)
    return torch.arange(int(lo), int(hi) + 1, dtype=torch.float32)


def e2m1_grid() -> torch.Tensor:
    """The 15 distinct E2M1 values, sorted: -6 ... -0.5, 0, 0.5 ... 6."""
    m = torch.tensor(_E2M1_MAGNITUDES, dtype=torch.float32)
    return torch.cat([-m.flip(0)[:-1], m])


# ----------------------------------------------------------------------------- transforms


def transform_sizes(dim: int) -> list[int]:
    """Block-transform sizes usable on a last dimension `dim` (powers of two >= 8 dividing it)."""
    from fpq_core.transforms import valid_sizes

    return valid_sizes(int(dim), min_size=8)


# ----------------------------------------------------------------------------- errors


def to_rows(x: torch.Tensor, multiple: int = max(GROUP_SIZES)) -> tuple[torch.Tensor, str]:
    """Any tensor as a float32 (rows, K) matrix whose K is a multiple of `multiple`.

    Keeps the last dimension when it already fits; otherwise crops it, or, for tensors whose last
    dimension is shorter than `multiple`, flattens and crops. Returns (matrix, note)."""
    x = torch.as_tensor(x).detach().float()
    if x.numel() == 0:
        raise ValueError("the tensor is empty")
    if x.dim() == 0:
        x = x.reshape(1)
    x = x.reshape(-1, x.shape[-1])  # (rows, K)
    k = x.shape[-1]
    if k % multiple == 0:
        return x, ""
    if k >= multiple:
        keep = k - k % multiple
        return x[:, :keep].contiguous(), f"last dimension cropped from {k} to {keep}"
    flat = x.reshape(-1)
    keep = flat.numel() - flat.numel() % multiple
    if keep == 0:
        raise ValueError(f"the tensor has {flat.numel()} elements: need at least {multiple}")
    return flat[:keep].reshape(-1, multiple), f"flattened and cropped to {keep // multiple}x{multiple}"


def subsample_rows(x: torch.Tensor, max_elements: int) -> torch.Tensor:
    """The first rows of x (rows, K) holding at most `max_elements` elements (at least one row)."""
    keep = max(1, int(max_elements) // x.shape[-1])
    return x if x.shape[0] <= keep else x[:keep]


def quantize_roundtrip(
    x: torch.Tensor,
    spec,
    transform: str | None = None,
    transform_size: int | None = None,
    observer: str = "minmax",
):
    """Quantize x (..., K) (optionally block-transformed first) and map back.

    Returns (xhat in the original domain, QuantizedTensor of the transformed x)."""
    from fpq_core.formats import quantize

    x = x.float()
    if transform in (None, "", "identity", "none"):
        qt = quantize(x, spec, observer=observer)
        return qt.dequantize().float(), qt
    from fpq_core.transforms import get_transform

    t = get_transform(transform, size=int(transform_size or spec.group_size))
    qt = quantize(t.apply(x), spec, observer=observer)
    return t.inverse(qt.dequantize().float()), qt


def format_error(
    x: torch.Tensor,
    spec,
    transform: str | None = None,
    transform_size: int | None = None,
    observer: str = "minmax",
    per_group: bool = True,
) -> dict[str, Any]:
    """Quantization error of `spec` on x (..., K).

    rel_mse: mean over groups of ||x_g - xhat_g||^2 / ||x_g||^2 (per_group=True) or the global
    ratio ||x - xhat||^2 / ||x||^2; rel_mse_global is always included. top_rel_error: mean over
    groups of the abs-max element's squared relative error. All-zero groups are skipped.
    """
    _check_groups(x, spec)
    xhat, qt = quantize_roundtrip(x, spec, transform, transform_size, observer)
    return error_metrics(x, xhat, qt, spec.group_size, per_group)


def format_report(
    x: torch.Tensor,
    spec,
    transform: str | None = None,
    transform_size: int | None = None,
    observer: str = "minmax",
    bins: int = 121,
) -> dict[str, Any]:
    """Everything the format playground shows for one setting, as plain numbers and arrays:
    metrics (format_error), value histograms before/after, the scale histogram, spec summary."""
    _check_groups(x, spec)
    xhat, qt = quantize_roundtrip(x, spec, transform, transform_size, observer)
    return {
        "metrics": error_metrics(x, xhat, qt, spec.group_size),
        "values": value_histograms(x, xhat, bins),
        "scales": scale_histogram(qt, spec.scale_precision),
        "spec": spec_summary(spec),
    }


def _check_groups(x: torch.Tensor, spec) -> None:
    if x.shape[-1] % spec.group_size:
        raise ValueError(f"group size {spec.group_size} does not divide the last dimension "
                         f"{x.shape[-1]}: pick a group size that divides it")


def error_metrics(x: torch.Tensor, xhat: torch.Tensor, qt, g: int, per_group: bool = True) -> dict[str, Any]:
    """rel_mse, rel_mse_global, top_rel_error and scale stats of a reconstruction xhat of x."""
    x = x.float()
    xhat = xhat.float()
    xg = x.reshape(-1, g)  # (groups, G)
    eg = (x - xhat).reshape(-1, g)
    norm = xg.pow(2).sum(-1)
    live = norm > 0
    group_rel = eg.pow(2).sum(-1)[live] / norm[live]
    top = xg.abs().argmax(-1, keepdim=True)
    x_top = xg.gather(-1, top).squeeze(-1)
    e_top = eg.gather(-1, top).squeeze(-1)
    top_rel = (e_top[live] / x_top[live]).pow(2)
    rel_global = (eg.pow(2).sum() / norm.sum().clamp_min(torch.finfo(torch.float32).tiny)).item()
    return {
        "rel_mse": group_rel.mean().item() if per_group else rel_global,
        "rel_mse_global": rel_global,
        "top_rel_error": top_rel.mean().item(),
        "groups": int(xg.shape[0]),
        "zero_groups": int((~live).sum().item()),
        **scale_stats(qt),
    }


def scale_stats(qt) -> dict[str, Any]:
    """Summary of the group scales actually used."""
    s = qt.scales.float().reshape(-1)
    pos = s[s > 0]
    gs = getattr(qt, "global_scale", None)
    return {
        "scale_min": pos.min().item() if pos.numel() else 0.0,
        "scale_max": s.max().item() if s.numel() else 0.0,
        "scale_distinct": int(torch.unique(s).numel()),
        "global_scale": float(gs.reshape(-1)[0]) if gs is not None else None,
    }


def rel_mse_vs_group_size(
    x: torch.Tensor,
    spec,
    group_sizes=GROUP_SIZES,
    transform: str = "hadamard",
    observer: str = "minmax",
) -> list[dict[str, Any]]:
    """Rows (group_size, rotated, rel_mse, top_rel_error) for the rotation crossover plot.

    Each group size is evaluated without a transform and with `transform` of size = group size
    (the paper's Fig. 3 setting). Group sizes that do not divide K are skipped."""
    rows = []
    for gsz in group_sizes:
        if x.shape[-1] % gsz:
            continue
        sg = with_overrides(spec, group_size=gsz)
        for rotated in (False, True):
            r = format_error(x, sg, transform if rotated else None, gsz, observer)
            rows.append({"group_size": gsz, "rotated": rotated,
                         "transform": transform if rotated else "identity",
                         "rel_mse": r["rel_mse"], "top_rel_error": r["top_rel_error"]})
    return rows


def scale_precision_comparison(
    x: torch.Tensor,
    spec,
    precisions=SCALE_PRECISIONS,
    transform: str | None = None,
    transform_size: int | None = None,
    observer: str = "minmax",
) -> list[dict[str, Any]]:
    """Rows (scale_precision, rel_mse, top_rel_error): the cost of quantizing the scales (App. C)."""
    rows = []
    for p in precisions:
        r = format_error(x, with_overrides(spec, scale_precision=p), transform, transform_size, observer)
        rows.append({"scale_precision": p, "rel_mse": r["rel_mse"], "top_rel_error": r["top_rel_error"]})
    return rows


# ----------------------------------------------------------------------------- plot data


def scale_histogram(qt, scale_precision: str | None = None) -> dict[str, Any]:
    """Histogram data of the stored group scales.

    e8m0: counts per power-of-two exponent (byte - 127). e4m3: counts per distinct decoded E4M3
    value. Unquantized scales: counts per log2(scale), rounded to 1/8."""
    sb = getattr(qt, "scale_bytes", None)
    prec = scale_precision or getattr(getattr(qt, "spec", None), "scale_precision", None)
    s = qt.scales.float().reshape(-1)
    if sb is not None and prec == "e8m0":
        vals, label = sb.reshape(-1).to(torch.int32).float() - 127.0, "E8M0 exponent (log2 scale)"
    elif sb is not None and prec == "e4m3":
        vals, label = sb.reshape(-1).contiguous().view(torch.float8_e4m3fn).float(), "E4M3 scale value"
    else:
        pos = s[s > 0]
        vals, label = torch.round(torch.log2(pos) * 8) / 8, "log2(scale)"
    vals = vals[torch.isfinite(vals)]
    uniq, counts = torch.unique(vals, return_counts=True)
    return {"values": uniq.numpy(), "counts": counts.numpy(), "label": label}


def value_histograms(x: torch.Tensor, xhat: torch.Tensor, bins: int = 121) -> dict[str, np.ndarray]:
    """Counts of x and xhat over shared bins spanning x's range: (centers, before, after)."""
    x = x.float().reshape(-1)
    xhat = xhat.float().reshape(-1)
    lo = min(x.min().item(), xhat.min().item())
    hi = max(x.max().item(), xhat.max().item())
    if hi <= lo:
        hi = lo + 1.0
    edges = torch.linspace(lo, hi, bins + 1)
    before = torch.histc(x, bins=bins, min=lo, max=hi)
    after = torch.histc(xhat, bins=bins, min=lo, max=hi)
    return {"centers": ((edges[:-1] + edges[1:]) / 2).numpy(), "before": before.numpy(),
            "after": after.numpy(), "width": float((hi - lo) / bins)}
