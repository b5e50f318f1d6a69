"""GPTQ against the reference vectors (../shared/testvectors/gptq.safetensors)."""
from __future__ import annotations

import pytest
import torch

from fpq_core.formats import QuantSpec, quantize
from fpq_core.gptq import HessianAccumulator, gptq_quantize, relative_error
from tests.conftest import load_vectors

CONFIGS = [(t, f, o, order) for t in ("identity", "hadamard") for f in ("mxfp4", "nvfp4")
           for (o, order) in (("minmax", "default"), ("mse", "activation"))]


def _spec(fmt: str) -> QuantSpec:
    return QuantSpec.mxfp4(numerics="fp-quant") if fmt == "mxfp4" else QuantSpec.nvfp4(numerics="fp-quant")


@pytest.fixture(scope="module")
def gv(testvectors):
    return load_vectors(testvectors, "gptq")


@pytest.mark.parametrize("transform,fmt,observer,order", CONFIGS)
def test_gptq_matches_reference(gv, transform, fmt, observer, order):
    key = f"{transform}.{fmt}.{observer}.{order}"
    W = gv["W"] if transform == "identity" else gv["W_rot.hadamard"]
    H = gv[f"H.{transform}"]
    r = gptq_quantize(W, H, _spec(fmt), observer=observer, order=order, rel_damp=0.01, block_size=128)
    qweight, scale_bytes = r.qtensor.pack()
    assert torch.equal(r.qtensor.global_scale, gv[f"{key}.global_scale"])
    assert torch.equal(r.qtensor.scales, gv[f"{key}.scales"])
    assert torch.equal(scale_bytes, gv[f"{key}.scale_bytes"])
    assert torch.equal(qweight, gv[f"{key}.qweight"]), f"{(qweight != gv[f'{key}.qweight']).sum()} bytes differ"
    assert torch.equal(r.weight, gv[f"{key}.dq"])
    if order == "activation":
        assert torch.equal(r.perm, gv[f"{key}.perm"])
    ref = float(gv[f"{key}.rel_err"])
    assert r.rel_error == pytest.approx(ref, rel=1e-5)


def test_gptq_beats_rtn_on_hessian_weighted_error(gv):
    """GPTQ's point: lower output (Hessian-weighted) error than RTN with the same scales."""
    for transform in ("identity", "hadamard"):
        W = gv["W"] if transform == "identity" else gv["W_rot.hadamard"]
        H = gv[f"H.{transform}"]
        for fmt in ("mxfp4", "nvfp4"):
            spec = _spec(fmt)
            g = gptq_quantize(W, H, spec)
            rtn = quantize(W, spec).dequantize()
            Hd = H.clone()
            Hd.diagonal().add_(0.01 * H.diagonal().mean())
            e_rtn = relative_error(rtn, W, Hd)
            assert g.rel_error < 0.8 * e_rtn, (transform, fmt, g.rel_error, e_rtn)


def test_deadcol_default_order_matches_reference(gv):
    key = "deadcol.identity.mxfp4.minmax.default"
    r = gptq_quantize(gv["deadcol.W"], gv["H.identity"], _spec("mxfp4"))
    assert torch.equal(r.qtensor.pack()[0], gv[f"{key}.qweight"])
    assert torch.equal(r.weight, gv[f"{key}.dq"])


def test_deadcol_activation_order_bug_is_fixed(gv):
    """The reference masks the wrong Hessian rows under act-order (dead columns looked up in the
    unpermuted weight, masked in the permuted Hessian), so its dead columns pick up GPTQ updates.
    We mask the right ones: all-zero weight columns stay exactly zero."""
    key = "deadcol.identity.mxfp4.minmax.activation"
    W = gv["deadcol.W"]
    dead = (W == 0).all(dim=0).nonzero().flatten()
    assert dead.tolist() == [5, 131]
    ref_dq = gv[f"{key}.dq"]
    assert ref_dq[:, dead].abs().sum() > 0, "the vectors are expected to show the reference bug"
    r = gptq_quantize(W, gv["H.identity"], _spec("mxfp4"), order="activation")
    assert torch.all(r.weight[:, dead] == 0)
    # dead columns are masked before sorting (diag 1), so they are visited last
    assert sorted(r.perm.tolist()) == list(range(256)) and set(r.perm[-2:].tolist()) == {5, 131}
    # ... and the fix does not cost accuracy on the live columns
    Hd = gv["H.identity"].clone()
    Hd.diagonal().add_(0.01 * Hd.diagonal().mean())
    assert r.rel_error <= relative_error(ref_dq, W, Hd) * 1.05


def test_hessian_accumulator_matches_stored_hessian(gv):
    X = gv["X"].float()                                    # (16*128, 256)
    acc = HessianAccumulator(256)
    for seq in X.reshape(16, 128, 256):
        acc.add(seq.unsqueeze(0))                          # one sequence per update, as the reference
    torch.testing.assert_close(acc.hessian(), gv["H.identity"], rtol=1e-5, atol=1e-6)


def test_hessian_streaming_batches_equal_single_pass():
    torch.manual_seed(0)
    x = torch.randn(6, 32, 48)
    a, b = HessianAccumulator(48), HessianAccumulator(48)
    a.add(x)
    for i in range(6):
        b.add(x[i : i + 1])
    torch.testing.assert_close(a.hessian(), b.hessian(), rtol=1e-5, atol=1e-5)
    ref = 2.0 / 6 * x.reshape(-1, 48).T @ x.reshape(-1, 48)
    torch.testing.assert_close(a.hessian(), ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    spec = QuantSpec.mxfp4()
    W = torch.randn(8, 64)
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq_quantize(W, torch.eye(32), spec)
    with pytest.raises(ValueError, match="order"):
        gptq_quantize(W, torch.eye(64), spec, order="random")
    Wn = W.clone()
    Wn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(Wn, torch.eye(64), spec)
    with pytest.raises(RuntimeError, match="no calibration"):
        HessianAccumulator(4).hessian()
    with pytest.raises(ValueError, match="non-finite"):
        HessianAccumulator(2).add(torch.tensor([[float("inf"), 0.0]]))


def test_int_and_exact_numerics_run():
    torch.manual_seed(1)
    W = torch.randn(16, 128) * 0.02
    X = torch.randn(512, 128)
    H = 2 / 4 * X.T @ X
    for spec in (QuantSpec.int(bits=4, group_size=32), QuantSpec.nvfp4(), QuantSpec.mxfp4(), QuantSpec.nvint4()):
        r = gptq_quantize(W, H, spec, order="activation")
        assert r.weight.shape == W.shape and torch.isfinite(r.weight).all()
        torch.testing.assert_close(r.qtensor.dequantize(), r.weight)
