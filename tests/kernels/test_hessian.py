"""Hessian accumulation kernel vs the engine's HessianAccumulator (fp32) and a float64 reference."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("d,tokens", [(96, 50), (128, 64)])
def test_accumulate_matches_engine(dev, d, tokens):
    from fpq_core.gptq import HessianAccumulator
    from fpq_core.kernels.hessian import TritonHessianAccumulator, accumulate
    g = torch.Generator().manual_seed(d)
    batches = [torch.randn(2, tokens, d, generator=g).to(torch.bfloat16).to(dev) for _ in range(3)]
    ref, fast = HessianAccumulator(d, dev), TritonHessianAccumulator(d, dev)
    H64 = torch.zeros(d, d, dtype=torch.float64)
    n = 0
    for x in batches:
        ref.add(x)
        fast.add(x)
        X = x.reshape(-1, d).double().cpu()
        H64 = H64 * n / (n + 2) + 2.0 / (n + 2) * X.T @ X
        n += 2
    assert fast.num_samples == ref.num_samples == 6
    Hf = fast.hessian()
    assert torch.equal(Hf, Hf.T)
    rel = ((Hf.double().cpu() - H64).norm() / H64.norm()).item()
    rel_ref = ((ref.hessian().double().cpu() - H64).norm() / H64.norm()).item()
    assert rel < 1e-6 and rel_ref < 1e-6, (rel, rel_ref)
    with pytest.raises(ValueError):
        accumulate(Hf, torch.randn(3, d + 1, device=dev), 0, 1)
