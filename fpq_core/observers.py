"""Scale observers: pluggable scale selection for fpq_core.formats.

An observer is called as ``observer(xg, spec, global_scale) -> (scales, global_scale)`` where
``xg`` is the grouped input (..., n_groups, G) in the scale-selection dtype (x's dtype for
numerics="fp-quant", float64 for "exact"), ``global_scale`` the fp32 (1,) encode scale for e4m3
formats (None otherwise) and ``scales`` the float scales actually used (after the scale-format
cast). Subclass :class:`Observer` and implement ``raw_scales`` to get the format cast for free.

Registered: "minmax", "mse" (the reference's shrink search), "mse_alt" (alternating
optimisation of the NVFP4 global scale and the e4m3 group scales; MX: E8M0 exponent search).
"""
from __future__ import annotations

import torch

from fpq_core.formats.e2m1 import e2m1_round
from fpq_core.formats.quantize import base_scales, finalize_scales
from fpq_core.formats.scales import E4M3_MAX, e4m3_decode, e4m3_encode, e8m0_decode, e8m0_encode
from fpq_core.formats.spec import QuantSpec


def fake_quant_grouped(xg: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """fl(Q(fl(xg/s))*s) with per-group scales s (..., n_groups) broadcast over the group dim."""
    s = s.unsqueeze(-1)
    q = xg / s
    if spec.format == "fp":
        q = e2m1_round(q)
    else:
        q = torch.round(q).clamp(spec.qmin, spec.qmax)
    return q * s


class Observer:
    """Base observer: ``raw_scales`` (unquantized float scales) + the spec's scale-format cast."""

    name = "observer"

    def raw_scales(self, xg: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, xg, spec, global_scale=None):
        return finalize_scales(self.raw_scales(xg, spec), spec, global_scale)


class MinMaxObserver(Observer):
    """s0 = 2*amax/(qmax - qmin): amax/6 for FP4, 2*amax/15 for INT4."""

    name = "minmax"

    def raw_scales(self, xg, spec):
        return base_scales(xg, spec)


class MSEObserver(Observer):
    """The reference's search: c_i = f_i*s0 with f_i = 1 - i*max_shrink/iters (i < iters),
    error sum |x - xhat|^norm in x's dtype on the float (unquantized) scales, first strictly
    smaller error wins; the E8M0/E4M3 cast comes afterwards (the search does not see it)."""

    name = "mse"

    def __init__(self, iters: int = 100, max_shrink: float = 0.8, norm: float = 2.4):
        self.iters, self.max_shrink, self.norm = iters, max_shrink, norm

    def raw_scales(self, xg, spec):
        s0 = base_scales(xg, spec)
        best_s = s0.clone()
        best_err = torch.full_like(s0, float("inf"))
        for i in range(self.iters):
            c = s0 * (1 - i * self.max_shrink / self.iters)
            err = (xg - fake_quant_grouped(xg, c, spec)).abs().pow(self.norm).sum(-1)
            better = err < best_err  # NaN errors (all-zero groups, c = 0) never win
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, c, best_s)
        return best_s


def _sq_err(xg: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-group squared error sum, accumulated in float32 (float64 stays)."""
    acc = torch.float64 if xg.dtype == torch.float64 else torch.float32
    return (xg.to(acc) - fake_quant_grouped(xg, s, spec).to(acc)).square().sum(-1)


class AlternatingMSEObserver(Observer):
    """MSE-optimised scales on the grid the kernel really uses.

    e4m3 (NVFP4/NVINT4), alternating a few rounds:
      (a) G fixed: per group, pick the e4m3 byte among ``byte_window`` neighbours of the minmax
          byte that minimises sum (x - xhat)^2 with s = e/G (the objective sees the e4m3 cast);
      (b) codes and bytes fixed: xhat = (q*e) / G, so the best G is the 1-D least-squares
          solution G = <qe, qe> / <x, qe>; we also try a small grid G*2^(k/``g_steps``).
      The best (G, scales) seen is kept, starting from minmax, so it is never worse than minmax.
    e8m0 (MX): per group, exponent E in {E-1, E, E+1} around the minmax one (global stays constant).
    fp16 scales: shrink search f in [min_shrink, 1] with the squared error.
    """

    name = "mse_alt"

    def __init__(self, rounds: int = 2, byte_window: tuple[int, int] = (-5, 1), g_grid: int = 3,
                 g_steps: int = 12, min_shrink: float = 0.5, shrink_iters: int = 51):
        self.rounds, self.byte_window, self.g_grid, self.g_steps = rounds, byte_window, g_grid, g_steps
        self.min_shrink, self.shrink_iters = min_shrink, shrink_iters

    # e4m3 helpers --------------------------------------------------------------
    @staticmethod
    def _scale_from_e(e: torch.Tensor, g: torch.Tensor, spec, dtype) -> torch.Tensor:
        if spec.numerics == "fp-quant":
            s = (e * torch.reciprocal(g)).to(dtype)
        else:
            s = (e.double() / g.double()).to(dtype)
        return torch.where(s == 0, torch.ones_like(s), s)

    def _best_bytes(self, xg, s0, g, spec):
        """(a): per-group best e4m3 value for fixed G -> (e (fp32), scales, total error)."""
        b0 = e4m3_encode((s0.double() * g.double()).float()).to(torch.int16)
        best_err = best_e = None
        for d in range(self.byte_window[0], self.byte_window[1] + 1):
            e = e4m3_decode((b0 + d).clamp(0, 126).to(torch.uint8))
            s = self._scale_from_e(e, g, spec, xg.dtype)
            err = _sq_err(xg, s, spec)
            if best_err is None:
                best_err, best_e = err, e
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_e = torch.where(better, e, best_e)
        return best_e, self._scale_from_e(best_e, g, spec, xg.dtype), best_err.sum().item()

    def _e4m3(self, xg, spec, g0):
        s0 = base_scales(xg, spec)
        s_mm, _ = finalize_scales(s0, spec, g0)
        best = (_sq_err(xg, s_mm, spec).sum().item(), g0, s_mm)  # minmax baseline
        g = g0
        for r in range(self.rounds):
            cands = [g]
            if r == 0:
                cands += [g * 2.0 ** (k / self.g_steps) for k in range(-self.g_grid, self.g_grid + 1) if k]
            results = []
            for gc in cands:
                e, s, err = self._best_bytes(xg, s0, gc, spec)
                results.append((err, gc, s, e))
            err, g, s, e = min(results, key=lambda t: t[0])
            if err < best[0]:
                best = (err, g, s)
            # (b) least-squares G for the fixed codes and bytes
            acc = torch.float64
            q = (fake_quant_grouped(xg, s, spec).to(acc) / s.unsqueeze(-1).to(acc))
            qe = q * e.to(acc).unsqueeze(-1)
            num, den = qe.square().sum(), (xg.to(acc) * qe).sum()
            if den <= 0 or not torch.isfinite(num / den):
                break
            g_ls = (num / den).float().reshape(1)
            e2, s2, err2 = self._best_bytes(xg, s0, g_ls, spec)
            if err2 < best[0]:
                best = (err2, g_ls, s2)
            g = best[1]
        return best[2], best[1]

    def _e8m0(self, xg, spec):
        s_mm, g = finalize_scales(base_scales(xg, spec), spec)
        b0 = e8m0_encode(s_mm.float() * g).to(torch.int16)
        best_s, best_err = s_mm, _sq_err(xg, s_mm, spec)
        for d in (-1, 1):
            b = (b0 + d).clamp(0, 254).to(torch.uint8)
            s = (e8m0_decode(b) / g).to(s_mm.dtype)
            err = _sq_err(xg, s, spec)
            better = err < best_err
            best_err, best_s = torch.where(better, err, best_err), torch.where(better, s, best_s)
        return best_s, g

    def _fp16(self, xg, spec):
        s0 = base_scales(xg, spec)
        best_s, best_err = s0, _sq_err(xg, s0, spec)
        for i in range(1, self.shrink_iters):
            c = s0 * (1 - i * (1 - self.min_shrink) / (self.shrink_iters - 1))
            err = _sq_err(xg, c, spec)
            better = err < best_err
            best_err, best_s = torch.where(better, err, best_err), torch.where(better, c, best_s)
        return finalize_scales(best_s, spec)

    def __call__(self, xg, spec, global_scale=None):
        if spec.scale_precision == "e4m3":
            if global_scale is None:
                raise ValueError("mse_alt with e4m3 scales needs the initial global scale")
            return self._e4m3(xg, spec, global_scale)
        if spec.scale_precision == "e8m0":
            return self._e8m0(xg, spec)
        return self._fp16(xg, spec)


_REGISTRY: dict[str, object] = {}


def register_observer(name: str, observer, overwrite: bool = False) -> None:
    """Register an observer object (callable (xg, spec, global_scale) -> (scales, global_scale))."""
    if not callable(observer):
        raise TypeError(f"observer {name!r} must be callable, got {type(observer).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"observer {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = observer


def get_observer(name: str):
    """Registered observer by name ("minmax", "mse", "mse_alt", ...)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown observer {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def available_observers() -> list[str]:
    return sorted(_REGISTRY)


register_observer("minmax", MinMaxObserver())
register_observer("mse", MSEObserver())
register_observer("mse_alt", AlternatingMSEObserver())
