"""quantize(): scales, element rounding, QuantizedTensor.

Two numerics modes (``QuantSpec.numerics``):

* ``"fp-quant"``: the reference's floating-point chain, in x's dtype (bf16 in -> bf16 arithmetic):
  s0 = fl(fl(2*amax)/(qmax-qmin)); MX: E = floor(torch.log2(max(fl(6*s0), 2^-126))) (float log2,
  one too large just below a power of two), s = fl(2^(E-2)/0.75); NV: G = fl32(2688*fl32(1/amax)),
  e = e4m3(clamp(fl32(s0*G))), s = fl(fl32(e*fl32(1/G))), 0 -> 1; element code = Q(fl(x/s)),
  dq = fl(code*s).  Divisions by constants use a 0-dim tensor on x's device so that CUDA does a
  true division as the CPU does (CUDA turns ``tensor / python_scalar`` into a multiply).
* ``"exact"``: scale selection in float64 with exact floor(log2) (frexp) and true divisions
  (G = fl32(2688/amax), s = fl32(e/G)); element arithmetic in float32; dq cast to x's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .e2m1 import e2m1_decode, e2m1_round_and_codes, pack_fp4
from .scales import E4M3_MAX, e4m3_cast, e4m3_decode, e4m3_encode, e8m0_decode, e8m0_encode
from .spec import QuantSpec

_MIN_NORMAL = 2.0**-126


# ----------------------------------------------------------------------------- helpers
def _div(t: torch.Tensor, c: float) -> torch.Tensor:
    """t / c as a true division in t's dtype on every device (CUDA multiplies by 1/c for scalars)."""
    return t / torch.tensor(c, dtype=t.dtype, device=t.device)


def compute_dtype(x: torch.Tensor, spec: QuantSpec) -> torch.dtype:
    """Dtype of the element arithmetic: x's dtype (fp-quant) or float32 (exact; float64 stays)."""
    if spec.numerics == "fp-quant":
        return x.dtype
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _divisors(k: int) -> list[int]:
    return [d for d in range(1, k + 1) if k % d == 0]


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` has no NaN/inf: one reduction (``max |x|`` propagates NaN and inf), about
    3x cheaper on CPU than ``isfinite(x).all()``."""
    return x.numel() == 0 or bool(torch.isfinite(x.detach().abs().amax()))


def check_input(x: torch.Tensor, spec: QuantSpec) -> None:
    """Raise a clear error for inputs quantize() cannot handle."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}; cast with x.float()")
    if x.ndim == 0:
        raise ValueError("cannot quantize a 0-dim tensor; reshape it to (1,) or (1, K)")
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}; e.g. QuantSpec.nvfp4()")
    if not all_finite(x):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(
            f"input has {bad} NaN/inf values; fix the tensor first (e.g. torch.nan_to_num(x) or find the "
            "overflowing layer) before quantizing")
    if spec.granularity == "group" and x.shape[-1] % spec.group_size:
        k = x.shape[-1]
        raise ValueError(
            f"last dim {k} is not divisible by group_size {spec.group_size}; group sizes that divide it: "
            f"{_divisors(k)} (or pad the last dim to a multiple of {spec.group_size})")


def group_view(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(..., K) -> (..., n_groups, G); channel: (..., 1, K); tensor: (1, ..., 1, numel)."""
    if spec.granularity == "group":
        return x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size)
    if spec.granularity == "channel":
        return x.unsqueeze(-2)
    return x.reshape((1,) * x.ndim + (x.numel(),))


def expand_scales(scales: torch.Tensor, shape: torch.Size | tuple, spec: QuantSpec) -> torch.Tensor:
    """Per-group scales (..., n_groups) -> per-element scales of ``shape``."""
    shape = tuple(shape)
    if spec.granularity == "group":
        return scales.repeat_interleave(spec.group_size, dim=-1).reshape(shape)
    if spec.granularity == "channel":
        return scales.expand(shape)
    return scales.reshape((1,) * len(shape)).expand(shape)


# ----------------------------------------------------------------------------- scales
def base_scales(xg: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """minmax scale s0 = fl(fl(2*amax) / (qmax - qmin)) per group, in xg's dtype."""
    amax = xg.abs().amax(dim=-1)
    return _div(2 * amax, spec.scale_denominator)


def global_encode_scale(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-tensor fp32 encode scale G = 448*qmax_eff/amax (2688/amax for NVFP4), shape (1,).

    fp-quant: fl32(2688 * fl32(1/fl32(amax))) as the reference (not always fl32(2688/amax));
    exact: fl32(2688/amax). An all-zero tensor gets G = 1 (any finite value works there)."""
    num = E4M3_MAX * spec.scale_denominator / 2
    amax = x.detach().abs().amax().float().reshape(1)
    if spec.numerics == "fp-quant":
        g = torch.reciprocal(amax) * torch.tensor(num, dtype=torch.float32, device=x.device)
    else:
        g = (torch.tensor(num, dtype=torch.float64, device=x.device) / amax.double()).float()
    return torch.where(amax > 0, g, torch.ones_like(g))


def _floor_log2_exact(a: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(a)) for positive finite a (via frexp: a = m*2^e, m in [0.5, 1))."""
    _, e = torch.frexp(a)
    return (e - 1).to(a.dtype)


def _ceil_log2_exact(a: torch.Tensor) -> torch.Tensor:
    m, e = torch.frexp(a)
    return torch.where(m == 0.5, e - 1, e).to(a.dtype)


def _mx_scales(s0: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """E8M0 float scales from raw scales s0 (in s0's dtype for fp-quant, float32 for exact)."""
    fpq = spec.numerics == "fp-quant"
    if spec.format == "int":  # smallest power of two >= s0: never clips
        if fpq:
            e = torch.ceil(torch.log2(s0.clamp(min=_MIN_NORMAL)))
        else:
            e = _ceil_log2_exact(s0.double().clamp(min=_MIN_NORMAL))
        e = e.clamp(-127, 127)
        return torch.pow(torch.tensor(2.0, dtype=e.dtype, device=e.device), e).to(_out_dtype(s0, spec))
    if fpq:
        a = (s0 * 6).clamp(min=_MIN_NORMAL)       # fl(6*s0), guard zeros with 2^-126
        e = torch.floor(torch.log2(a))            # float log2: the reference's quirk
    else:
        # 6*s0 in float64 is exact for float32 s0; rounding back to float32 recovers amax exactly
        # for minmax scales (s0 = amax/6 computed in float64), then frexp gives exact floor(log2).
        a = (s0.double() * 6).float().double().clamp(min=_MIN_NORMAL)
        e = _floor_log2_exact(a)
    two = torch.tensor(2.0, dtype=e.dtype, device=e.device)
    if spec.scale_rule == "ocp":
        return torch.pow(two, (e - 2).clamp(-127, 127)).to(_out_dtype(s0, spec))
    e = e.clamp(-127, 127)
    if fpq:
        return _div(torch.pow(two, e - 2), 0.75)  # fl(2^(E-2)/0.75): 2^E*0.333984375 in bf16
    return (torch.pow(two, e) / 3).float()


def _out_dtype(s0: torch.Tensor, spec: QuantSpec) -> torch.dtype:
    return s0.dtype if spec.numerics == "fp-quant" else torch.float32


def e4m3_round_exact(t: torch.Tensor) -> torch.Tensor:
    """Single correctly rounded (RNE) e4m3 value of non-negative float64 t (clamped to 448).

    torch casts float64 -> float8 through float32 (double rounding); this fixes the rare cases."""
    t = t.clamp(0, E4M3_MAX)
    b = e4m3_encode(t).to(torch.int16)
    cand = torch.stack([b - 1, b, b + 1], dim=-1).clamp(0, 126)          # positive, monotone bytes
    vals = e4m3_decode(cand.to(torch.uint8)).double()
    dist = (vals - t.unsqueeze(-1)).abs()
    best = dist.min(dim=-1, keepdim=True).values
    # among the nearest, prefer the even byte (ties to even mantissa)
    score = torch.where(dist == best, (cand % 2).double(), torch.full_like(dist, 9.0))
    idx = score.argmin(dim=-1, keepdim=True)
    return vals.gather(-1, idx).squeeze(-1)


def _nv_scales(s0: torch.Tensor, spec: QuantSpec, g: torch.Tensor) -> torch.Tensor:
    """E4M3 float scales s = e4m3(clamp(s0*G))/G (0 -> 1)."""
    if spec.numerics == "fp-quant":
        e = e4m3_cast(s0 * g)                             # fl32(s0*G), clamp, RNE to e4m3
        s = (e * torch.reciprocal(g)).to(s0.dtype)        # multiply by fl32(1/G), as the reference
    else:
        e = e4m3_round_exact(s0.double() * g.double())
        s = (e / g.double()).float()
    return torch.where(s == 0, torch.ones_like(s), s)


def finalize_scales(s0: torch.Tensor, spec: QuantSpec, global_scale: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw float scales s0 (..., n_groups) -> (scales actually used, global scale).

    The scale-format cast of every observer: fp16 -> s0 (0 -> 1); e8m0 -> power-of-two rule
    (global = 3.0 for the fpquant FP rule, else 1.0); e4m3 -> e4m3(s0*G)/G with G computed by the
    caller (required)."""
    if spec.scale_precision == "fp16":
        s = s0 if spec.numerics == "fp-quant" else s0.float()
        return torch.where(s == 0, torch.ones_like(s), s), None
    if spec.scale_precision == "e8m0":
        g = torch.tensor([spec.mx_global_scale], dtype=torch.float32, device=s0.device)
        return _mx_scales(s0, spec), g
    if global_scale is None:
        raise ValueError("e4m3 scales need a global scale; compute it with global_encode_scale(x, spec)")
    g = _as_global(global_scale, s0.device)
    return _nv_scales(s0, spec, g), g


def _as_global(g, device) -> torch.Tensor:
    g = torch.as_tensor(g, dtype=torch.float32, device=device).reshape(1)
    if not torch.isfinite(g).all() or (g <= 0).any():
        raise ValueError(f"global scale must be finite and > 0, got {g.tolist()}")
    return g


def encode_scale_bytes(scales: torch.Tensor, spec: QuantSpec, global_scale: torch.Tensor | None
                       ) -> torch.Tensor | None:
    """Export bytes of float scales: e8m0(fl32(s*3)) / e4m3(clamp(fl32(s*G))); None for fp16.

    Underflowed NVFP4 groups (s = 1) give e4m3(G): we clamp before the cast, so G > 448 gives
    0x7E (448) as torch 2.13 does; the reference on torch <= 2.11 writes 0x7F (NaN) there —
    here we deliberately differ and never emit NaN bytes."""
    if spec.scale_precision == "fp16":
        return None
    g = _as_global(global_scale, scales.device)
    if spec.scale_precision == "e8m0":
        return e8m0_encode(scales.float() * g)
    return e4m3_encode(scales.float() * g)


def decode_scale_bytes(scale_bytes: torch.Tensor, spec: QuantSpec, global_scale=None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`encode_scale_bytes`: bytes -> float scales (e8m0: 2^(b-127)/g; e4m3: e/G)."""
    if spec.scale_precision == "fp16":
        raise ValueError("fp16 scales have no byte encoding; pass the float scales instead")
    if spec.scale_precision == "e8m0":
        s = e8m0_decode(scale_bytes)
        if spec.mx_global_scale == 3.0:
            s = _div(s / 4, 0.75) if spec.numerics == "fp-quant" else s / 3
        return s.to(dtype)
    g = _as_global(global_scale, scale_bytes.device)
    e = e4m3_decode(scale_bytes)
    s = e * torch.reciprocal(g) if spec.numerics == "fp-quant" else e / g
    return torch.where(s == 0, torch.ones_like(s), s).to(dtype)


def _resolve_observer(observer):
    from fpq_core.observers import get_observer  # same numerics layer; imported lazily

    return get_observer(observer) if isinstance(observer, str) else observer


def compute_scales(x: torch.Tensor, spec: QuantSpec, observer="minmax", global_scale=None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Group scales for x: (scales (..., n_groups), global_scale (1,) fp32 or None).

    ``observer`` is a registered name ("minmax", "mse", "mse_alt") or an observer object.
    For e4m3 scales G is computed from x (fp32 encode scale 2688/amax) unless given."""
    check_input(x, spec)
    # scale selection runs in x's dtype (fp-quant) or float64 (exact)
    xg = group_view(x.detach(), spec)
    xg = xg.to(x.dtype if spec.numerics == "fp-quant" else torch.float64)
    if spec.uses_global_scale:
        global_scale = global_encode_scale(x, spec) if global_scale is None else _as_global(global_scale, x.device)
    return _resolve_observer(observer)(xg, spec, global_scale)


def quantize_with_scales(x: torch.Tensor, scales_per_element: torch.Tensor, spec: QuantSpec
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Element rule with given per-element float scales -> (dq in x's dtype, codes).

    fp: code = E2M1(fl(x/s)) (uint8 codes, true sign: +0 -> 0x0, -0 -> 0x8), dq = fl(code*s)
    (zeros as +0.0, as the reference's straight-through form).  int: code = clamp(round_half_even(fl(x/s)), qmin, qmax) (int8), dq = fl(code*s)."""
    cd = compute_dtype(x, spec)
    xc = x.to(cd)
    s = scales_per_element.to(cd)
    q = xc / s
    if spec.format == "fp":
        vals, codes = e2m1_round_and_codes(q)
    else:
        vals = torch.round(q).clamp(spec.qmin, spec.qmax)
        codes = vals.to(torch.int8)
    # + 0.0 turns -0.0 into +0.0: the reference's straight-through x + (q*s - x) never gives -0.0
    return (vals * s + 0.0).to(x.dtype), codes


def dequantize_codes(codes: torch.Tensor, scales_per_element: torch.Tensor, spec: QuantSpec,
                     dtype: torch.dtype) -> torch.Tensor:
    """codes * s in the scales' dtype, cast to ``dtype``."""
    s = scales_per_element
    vals = e2m1_decode(codes, s.dtype) if spec.format == "fp" else codes.to(s.dtype)
    return (vals * s + 0.0).to(dtype)  # zeros as +0.0, see quantize_with_scales


# ----------------------------------------------------------------------------- QuantizedTensor
@dataclass
class QuantizedTensor:
    """Codes + scales of one quantized tensor.

    codes: uint8 E2M1 codes (fp; sign bit is the rounded value's sign, so +0 -> 0x0) or int8
        integers (int), shape of x.
    scales: float group scales actually used (after the scale-format cast), (..., n_groups).
    scale_bytes: uint8 e8m0/e4m3 bytes (..., n_groups) or None (fp16 scales).
    global_scale: float32 (1,) (NV encode scale 2688/amax; MX constant 3.0 or 1.0) or None.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    scale_bytes: torch.Tensor | None
    global_scale: torch.Tensor | None
    spec: QuantSpec
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def to(self, device) -> "QuantizedTensor":
        """The same codes and scales on another device (a new object; this one is unchanged)."""
        mv = lambda t: None if t is None else t.to(device)   # noqa: E731
        return QuantizedTensor(mv(self.codes), mv(self.scales), mv(self.scale_bytes), mv(self.global_scale),
                               self.spec, self.dtype)

    def dequantize(self) -> torch.Tensor:
        """Fake-quantized tensor, same shape and dtype as the input."""
        s = expand_scales(self.scales, self.codes.shape, self.spec)
        return dequantize_codes(self.codes, s, self.spec, self.dtype)

    def pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (qweight uint8 (..., K/2), scale bytes uint8 (..., K/G)); fp4 with e8m0/e4m3 only.

        Zero codes of either sign are stored as 0x8, as the reference packer does."""
        if self.spec.format != "fp":
            raise ValueError(f"pack() supports FP4 only, not {self.spec.name}; use .codes and .scales")
        if self.scale_bytes is None:
            raise ValueError("pack() needs e8m0/e4m3 scales; fp16 scales have no byte form (use .scales)")
        return pack_fp4(self.codes), self.scale_bytes

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, spec: QuantSpec,
                   global_scale=None, dtype: torch.dtype | None = None) -> "QuantizedTensor":
        """Build from codes and float group scales (e.g. after GPTQ); recomputes the scale bytes."""
        g = None
        if spec.scale_precision == "e4m3":
            if global_scale is None:
                raise ValueError("e4m3 scales need the global_scale used to compute them")
            g = _as_global(global_scale, scales.device)
        elif spec.scale_precision == "e8m0":
            g = torch.tensor([spec.mx_global_scale], dtype=torch.float32, device=scales.device)
        return cls(codes, scales, encode_scale_bytes(scales, spec, g), g, spec, dtype or scales.dtype)

    @classmethod
    def from_packed(cls, qweight: torch.Tensor, scale_bytes: torch.Tensor, spec: QuantSpec,
                    global_scale=None, dtype: torch.dtype = torch.float32) -> "QuantizedTensor":
        """Build from exported bytes (inverse of :meth:`pack`); zero codes come back as 0x8."""
        from .e2m1 import unpack_fp4

        cd = dtype if spec.numerics == "fp-quant" else torch.float32
        scales = decode_scale_bytes(scale_bytes, spec, global_scale, cd)
        g = None if spec.scale_precision == "fp16" else (
            _as_global(global_scale, scales.device) if spec.scale_precision == "e4m3"
            else torch.tensor([spec.mx_global_scale], dtype=torch.float32, device=scales.device))
        return cls(unpack_fp4(qweight), scales, scale_bytes, g, spec, dtype)


def quantize(x: torch.Tensor, spec: QuantSpec, observer="minmax", global_scale=None, scales=None
             ) -> QuantizedTensor:
    """Quantize x (..., K) with ``spec``; see the module docstring for the arithmetic.

    observer: "minmax" | "mse" | "mse_alt" | observer object.  global_scale: fixed fp32 encode
    scale for e4m3 formats (default: computed from x).  scales: given float group scales
    (..., n_groups) to use as they are (skips the observer)."""
    check_input(x, spec)
    if scales is None:
        scales, g = compute_scales(x, spec, observer, global_scale)
    else:
        if spec.uses_global_scale:
            g = global_encode_scale(x, spec) if global_scale is None else _as_global(global_scale, x.device)
        elif spec.scale_precision == "e8m0":
            g = torch.tensor([spec.mx_global_scale], dtype=torch.float32, device=x.device)
        else:
            g = None
        scales = scales.to(compute_dtype(x, spec))
    s_el = expand_scales(scales, x.shape, spec)
    _, codes = quantize_with_scales(x, s_el, spec)
    return QuantizedTensor(codes, scales, encode_scale_bytes(scales, spec, g), g, spec, x.dtype)
