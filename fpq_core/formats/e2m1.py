"""FP4 E2M1 element format: rounding, 4-bit codes, packing.

Grid magnitudes (index 0..7): 0, 0.5, 1, 1.5, 2, 3, 4, 6.  A code is ``sign << 3 | index``.

Rounding (:func:`e2m1_round`) is round-to-nearest with ties to the even grid index and
saturation at 6 (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4, >5 (incl. +inf)->6),
exactly as the FP-Quant reference ``cast_to_fp4``: the result is ``magnitude * sign(x)``, so a
negative input that rounds to zero gives -0.0, an input of -0.0 gives +0.0 and NaN stays NaN.
"""
from __future__ import annotations

import torch

E2M1_MAX = 6.0
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# code -> value, codes 8..15 are the negatives (8 = -0.0)
_CODE_VALUES = E2M1_GRID + tuple(-v for v in E2M1_GRID)


def _check_float(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got {x.dtype}")


_BOUNDS: dict = {}


def _bounds(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Decision boundaries for bucketize: index = #(b < |x|).  Ties go to the even index, so the
    boundaries that round up on a tie (0.75, 1.75, 3.5) are replaced by their predecessor in dtype."""
    key = (dtype, device)
    if key not in _BOUNDS:
        t = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=dtype, device=device)
        down = torch.nextafter(t, torch.zeros_like(t))
        up_on_tie = torch.tensor([False, True, False, True, False, True, False], device=device)
        _BOUNDS[key] = torch.where(up_on_tie, down, t)
    return _BOUNDS[key]


def e2m1_index(x: torch.Tensor) -> torch.Tensor:
    """Magnitude index 0..7 of the nearest grid value of |x| (ties to even index), uint8.

    (NaN gives an unspecified index; callers that care handle NaN themselves.)"""
    _check_float(x, "e2m1_index")
    return torch.bucketize(x.abs(), _bounds(x.dtype, x.device), out_int32=True).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """4-bit codes (any integer dtype, values 0..15) -> float values (code 8 -> -0.0)."""
    if codes.is_floating_point():
        raise TypeError("e2m1_decode expects integer codes 0..15, got a float tensor")
    lut = torch.tensor(_CODE_VALUES, dtype=dtype, device=codes.device)
    return lut[codes.long() & 0xF]


def e2m1_round(x: torch.Tensor) -> torch.Tensor:
    """Round to the E2M1 grid (RNE, saturating at +-6), in x's dtype; sign as the reference."""
    return e2m1_round_and_codes(x)[0]


def e2m1_round_and_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e2m1_round(x), e2m1_codes(e2m1_round(x)))`` with one grid search instead of two
    (the GPTQ sweep calls this once per column)."""
    _check_float(x, "e2m1_round")
    idx = e2m1_index(x)
    mag = e2m1_decode(idx, dtype=x.dtype)
    # magnitude * sign(x): -0.0 -> +0.0, negative rounding to zero -> -0.0, NaN -> NaN
    out = torch.where(torch.isnan(x), x, mag * torch.sign(x))
    return out, (torch.signbit(out).to(torch.uint8) << 3) | idx


def e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """Codes of values already on the grid (e.g. the output of :func:`e2m1_round`), uint8.

    The sign bit is the value's sign bit, so +0.0 -> 0x0 and -0.0 -> 0x8 and
    ``e2m1_decode(e2m1_codes(v))`` reproduces v bit for bit (NaN is not encodable).
    Off-grid values are rounded to the nearest grid magnitude first."""
    _check_float(values, "e2m1_codes")
    sign = torch.signbit(values).to(torch.uint8) << 3
    return sign | e2m1_index(values)


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Codes exactly as the reference packer ``pack_fp4_to_uint8`` assigns them, uint8.

    Nearest magnitude (ties to even index); the sign bit is set for ``x <= 0``, i.e. for every
    negative value **and for zero of either sign**: 0.0 and -0.0 both give 0x8 (the reference's
    negative-zero quirk), while a tiny positive value in (0, 0.25] gives 0x0."""
    _check_float(x, "e2m1_encode")
    sign = (x <= 0).to(torch.uint8) << 3
    return sign | e2m1_index(x)


def canonical_zero(codes: torch.Tensor) -> torch.Tensor:
    """Map both zero codes (0x0, 0x8) to 0x8, as the reference packer stores zeros."""
    codes = codes.to(torch.uint8)
    return torch.where((codes & 0x7) == 0, torch.full_like(codes, 0x8), codes)


def pack_fp4(x: torch.Tensor, zero_as_negative: bool = True) -> torch.Tensor:
    """Pack FP4 along the last dim, two per byte: element 2j -> low nibble, 2j+1 -> high nibble.

    ``x`` is either uint8 codes (0..15) or float values. Float values go through the reference
    packer's own rounding (:func:`e2m1_encode`). A **zero of either sign is stored as 0x8**
    (negative zero), as the reference packer does; pass ``zero_as_negative=False`` with uint8
    codes for a lossless nibble packing.  Example: [0.5, -1.0] -> 0xA1.  Shape (..., K) ->
    (..., K/2); K must be even."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pack_fp4 expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dim, got shape {tuple(x.shape)}; pad K to a multiple of 2")
    if x.is_floating_point():
        codes = e2m1_encode(x)
    else:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 15):
            raise ValueError("pack_fp4: integer codes must lie in 0..15")
        codes = x.to(torch.uint8)
        if zero_as_negative:
            codes = canonical_zero(codes)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: uint8 (..., K/2) -> uint8 codes (..., K)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_fp4 expects uint8, got {packed.dtype}")
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)
