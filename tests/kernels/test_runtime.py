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


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_fused_calibration_matches_engine(dev, name):
    """Calibration through the fused path (Hessian observer + NVFP4 global-scale tracking) gives
    the engine's global scale, Hessian and outputs, batch after batch."""
    from fpq_core.formats import ActivationQuantizer, QuantSpec
    from fpq_core.gptq import HessianAccumulator
    from fpq_core.kernels.runtime import FusedInputPath
    from fpq_core.nn import InputPath
    from fpq_core.transforms import get_transform
    spec = QuantSpec.from_name(name)
    t = get_transform("hadamard", size=32, exact=False)
    eng, fus = InputPath(t, ActivationQuantizer(spec)), FusedInputPath(t, ActivationQuantizer(spec))
    h_e, h_f = HessianAccumulator(128, device=dev), HessianAccumulator(128, device=dev)
    eng.observers.append(h_e.add)
    fus.observers.append(h_f.add)
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        x = (torch.randn(1, 7, 128, generator=g) * (1 + i)).to(torch.bfloat16).to(dev)
        y_e, y_f = eng(x), fus(x)
        assert torch.equal(y_e, y_f), i
        eng.clear_cache()
        fus.clear_cache()
    if spec.uses_global_scale:
        assert torch.equal(eng.act_quantizer.global_scale.cpu(), fus.act_quantizer.global_scale.cpu())
    torch.testing.assert_close(h_e.hessian(), h_f.hessian(), rtol=0, atol=0)
