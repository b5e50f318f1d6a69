"""Scale codecs: E8M0 (power-of-two exponent byte) and E4M3 (torch.float8_e4m3fn)."""
from __future__ import annotations

import torch

E4M3_MAX = 448.0
E8M0_BIAS = 127
E8M0_NAN = 0xFF


def e8m0_encode(s: torch.Tensor) -> torch.Tensor:
    """Positive float scales -> E8M0 bytes (uint8), via torch's float8_e8m0fnu cast.

    The cast rounds to the nearest power of two (so fl32(2^E/3)*3 ~ 2^E gives byte E+127).
    Zero/negative inputs and values below 2^-127 give byte 0 (2^-127); NaN gives 0xFF."""
    s32 = s.float()
    s32 = torch.where(s32 > 0, s32, torch.full_like(s32, 2.0**-127))
    s32 = torch.where(torch.isnan(s), s.float(), s32.clamp(max=2.0**127))
    return s32.to(torch.float8_e8m0fnu).view(torch.uint8)


def e8m0_from_exponent(e: torch.Tensor) -> torch.Tensor:
    """Unbiased integer exponent E (clamped to [-127, 127]) -> E8M0 byte E + 127."""
    return (e.to(torch.int32).clamp(-127, 127) + E8M0_BIAS).to(torch.uint8)


def e8m0_decode(b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """E8M0 bytes -> 2^(b-127) (0xFF -> NaN)."""
    if b.dtype != torch.uint8:
        raise TypeError(f"e8m0_decode expects uint8 bytes, got {b.dtype}")
    return b.view(torch.float8_e8m0fnu).to(torch.float32).to(dtype)


def e4m3_cast(s: torch.Tensor) -> torch.Tensor:
    """Round float values to E4M3 (RNE) after clamping to +-448, returned as float32.

    We always clamp before the cast: torch <= 2.11 turns values >= 465 into NaN (0x7F), while
    torch 2.13 saturates to 448 (0x7E). Clamping gives the 2.13 answer on every torch version,
    so we never emit NaN bytes (the reference on old torch does: here we deliberately differ)."""
    return s.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def e4m3_encode(s: torch.Tensor) -> torch.Tensor:
    """Float values -> E4M3 bytes (uint8), clamped to +-448 first (never a NaN byte for finite input)."""
    return s.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """E4M3 bytes (uint8) -> float values."""
    if b.dtype != torch.uint8:
        raise TypeError(f"e4m3_decode expects uint8 bytes, got {b.dtype}")
    return b.view(torch.float8_e4m3fn).to(torch.float32).to(dtype)


def as_uint8(t: torch.Tensor) -> torch.Tensor:
    """View a float8 tensor (e4m3fn / e8m0fnu) as its raw uint8 bytes."""
    if t.dtype == torch.uint8:
        return t
    if t.element_size() != 1:
        raise TypeError(f"as_uint8 needs a 1-byte dtype (float8_*), got {t.dtype}")
    return t.view(torch.uint8)


def scale_bits(precision: str) -> int:
    """Storage bits of one group scale for a scale precision name."""
    return {"fp16": 16, "e8m0": 8, "e4m3": 8}[precision]
