"""GPTQ sweep kernel vs the engine's torch sweep: identical codes on random layers."""
from __future__ import annotations

import pytest
import torch

from .conftest import interp

pytestmark = pytest.mark.gpu


def _layer(out_f, in_f, dev, seed, n_tok=None):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    W[:, 3] = 0.0                                           # a dead column
    X = torch.randn(n_tok or 4 * in_f, in_f, generator=g) * torch.exp(torch.randn(in_f, generator=g))
    H = 2.0 / 4 * X.T @ X
    return W.to(dev), H.to(dev)


CASES = [("mxfp4", "default"), ("nvfp4", "activation"), ("int4", "default")]
SHAPES = [(48, 160)] if interp() else [(48, 160), (512, 1024), (1000, 4096)]


@pytest.mark.parametrize("name,order", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_sweep_matches_engine(dev, name, order, shape):
    from fpq_core.formats.spec import QuantSpec
    from fpq_core.gptq import gptq_quantize
    from fpq_core.kernels.gptq import gptq_quantize_fast
    spec = QuantSpec.from_name(name)
    W, H = _layer(*shape, dev, seed=shape[0])
    ref = gptq_quantize(W, H, spec, order=order)
    fast = gptq_quantize_fast(W, H, spec, order=order)
    agree = (ref.qtensor.codes == fast.qtensor.codes).float().mean().item()
    assert agree == 1.0, f"code agreement {agree:.6f}"
    assert torch.equal(ref.weight, fast.weight)
    assert torch.equal(ref.qtensor.scales, fast.qtensor.scales)
    assert abs(ref.rel_error - fast.rel_error) <= 1e-6 * max(1.0, abs(ref.rel_error))


def test_partial_last_block(dev):
    from fpq_core.formats.spec import QuantSpec
    from fpq_core.gptq import gptq_quantize
    from fpq_core.kernels.gptq import gptq_quantize_fast
    spec = QuantSpec.nvfp4()
    W, H = _layer(20, 96, dev, seed=7)
    ref = gptq_quantize(W, H, spec, block_size=64)
    fast = gptq_quantize_fast(W, H, spec, block_size=64)
    assert torch.equal(ref.qtensor.codes, fast.qtensor.codes)


def test_unsupported_spec_raises(dev):
    from fpq_core.formats.spec import QuantSpec
    from fpq_core.kernels.gptq import gptq_quantize_fast
    W, H = _layer(8, 32, dev, seed=1)
    with pytest.raises(ValueError, match="exact"):
        gptq_quantize_fast(W, H, QuantSpec.mxfp4(numerics="fp-quant"))
