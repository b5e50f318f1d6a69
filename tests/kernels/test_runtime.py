"""Fused activation path vs the engine's InputPath (rotation + ActivationQuantizer)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_fused_input_path_matches_engine_given_rotation(dev, name):
    from fpq_core.formats import ActivationQuantizer, QuantSpec, quantize
    from fpq_core.kernels.quant import rotate_quantize
    from fpq_core.kernels.runtime import FusedInputPath
    from fpq_core.transforms import get_transform
    spec = QuantSpec.from_name(name)
    t = get_transform("hadamard", size=32)
    aq = ActivationQuantizer(spec, global_scale=100.0 if name == "nvfp4" else None).freeze()
    path = FusedInputPath(t, aq)
    x = torch.randn(2, 5, 128).to(torch.bfloat16).to(dev)
    y = path(x)
    assert path(x) is y                                  # shared result for q/k/v
    rot = rotate_quantize(x, spec, t, "rotated")
    ref = quantize(rot, spec, global_scale=aq.global_scale).dequantize()
    assert torch.equal(y, ref)
