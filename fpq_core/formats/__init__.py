"""fpq_core.formats: microscaling FP4 / INT numerics (pure torch, CPU and CUDA).

Public API
----------
``QuantSpec``                      frozen format description; presets ``mxfp4(scale_rule=, numerics=)``,
                                   ``nvfp4()``, ``int(bits, group_size, granularity)``, ``nvint4()``,
                                   ``mxint4()``, ``fp(group_size, scale_precision)``, ``from_name("nvfp4")``.
``quantize(x, spec, observer="minmax", global_scale=None, scales=None) -> QuantizedTensor``
``QuantizedTensor``                ``.dequantize()``, ``.codes``, ``.scales``, ``.scale_bytes``,
                                   ``.global_scale``, ``.pack()``, ``from_codes(...)``, ``from_packed(...)``
``compute_scales(x, spec, observer, global_scale) -> (scales (..., n_groups), global_scale)``
``quantize_with_scales(x, scales_per_element, spec) -> (dq, codes)``
``ActivationQuantizer(spec)``      per-token fake quant; NVFP4 global scale = running min of 2688/amax
                                   while ``observe``; ``freeze()``.
E2M1: ``e2m1_round``, ``e2m1_codes``, ``e2m1_encode``, ``e2m1_decode``, ``pack_fp4``, ``unpack_fp4``.
Scales: ``e8m0_encode/decode``, ``e4m3_encode/decode``.

Numerics modes: ``numerics="exact"`` (default; exact floor(log2), true divisions, float32 element
arithmetic) or ``"fp-quant"`` (the FP-Quant reference's floating-point chain in x's dtype, bit for
bit with ../shared/testvectors). Where we deliberately differ from the reference: an underflowed
NVFP4 group exports a valid e4m3 byte (clamped, 0x7E), never NaN (0x7F) as on torch <= 2.11.

Example
-------
>>> import torch
>>> from fpq_core.formats import QuantSpec, quantize
>>> w = torch.randn(64, 256) * 0.02
>>> qt = quantize(w, QuantSpec.nvfp4())
>>> qweight, scale_bytes = qt.pack()          # (64, 128) uint8, (64, 16) uint8
>>> err = (qt.dequantize() - w).pow(2).mean()
"""
from .activation import ActivationQuantizer
from .e2m1 import (
    E2M1_GRID,
    E2M1_MAX,
    canonical_zero,
    e2m1_codes,
    e2m1_decode,
    e2m1_encode,
    e2m1_index,
    e2m1_round,
    pack_fp4,
    unpack_fp4,
)
from .quantize import (
    QuantizedTensor,
    all_finite,
    compute_scales,
    decode_scale_bytes,
    encode_scale_bytes,
    expand_scales,
    finalize_scales,
    global_encode_scale,
    group_view,
    quantize,
    quantize_with_scales,
)
from .scales import E4M3_MAX, as_uint8, e4m3_cast, e4m3_decode, e4m3_encode, e8m0_decode, e8m0_encode
from .spec import QuantSpec

__all__ = [
    "ActivationQuantizer", "QuantSpec", "QuantizedTensor", "quantize", "compute_scales",
    "quantize_with_scales", "finalize_scales", "global_encode_scale", "encode_scale_bytes",
    "decode_scale_bytes", "expand_scales", "group_view", "all_finite",
    "E2M1_GRID", "E2M1_MAX", "e2m1_round", "e2m1_codes", "e2m1_encode", "e2m1_decode", "e2m1_index",
    "canonical_zero", "pack_fp4", "unpack_fp4",
    "E4M3_MAX", "e4m3_cast", "e4m3_encode", "e4m3_decode", "e8m0_encode", "e8m0_decode", "as_uint8",
]
