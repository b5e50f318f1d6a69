"""Observers: registry, reference MSE (vectors are in tests/formats/test_vectors.py), mse_alt."""
import pytest
import torch

from fpq_core.formats import QuantSpec, quantize
from fpq_core import observers
from fpq_core.observers import Observer, available_observers, get_observer, register_observer
from tests.formats._vectors import vectors

ROWS = 16  # keep the default run fast


def _rel(x, qt):
    return float(((qt.dequantize().double() - x.double()) ** 2).sum() / (x.double() ** 2).sum())


def test_registry():
    assert {"minmax", "mse", "mse_alt"} <= set(available_observers())
    with pytest.raises(ValueError, match="unknown observer 'x'.*minmax"):
        get_observer("x")
    with pytest.raises(ValueError, match="already registered"):
        register_observer("minmax", get_observer("minmax"))

    class Half(Observer):
        def raw_scales(self, xg, spec):
            return xg.abs().amax(-1) / spec.qmax / 2

    register_observer("half_test", Half(), overwrite=True)
    try:
        x = torch.randn(2, 32)
        assert quantize(x, QuantSpec.int(4, 32), observer="half_test").scales.shape == (2, 1)
    finally:
        observers._REGISTRY.pop("half_test", None)
    assert quantize(x, QuantSpec.int(4, 32), observer=Half()).scales.shape == (2, 1)


@pytest.mark.parametrize("name", ["laplace", "student_t3"])
@pytest.mark.parametrize("numerics", ["exact", "fp-quant"])
def test_mse_alt_beats_minmax_and_mse_nvfp4(testvectors, name, numerics):
    x = vectors("inputs")[f"{name}.f32"][:ROWS]
    spec = QuantSpec.nvfp4(numerics=numerics)
    err = {obs: _rel(x, quantize(x, spec, observer=obs)) for obs in ("minmax", "mse", "mse_alt")}
    assert err["mse_alt"] < err["minmax"], err
    assert err["mse_alt"] < err["mse"], err


@pytest.mark.parametrize("make", [QuantSpec.mxfp4, QuantSpec.int, QuantSpec.nvint4, QuantSpec.mxint4])
def test_mse_alt_never_worse_than_minmax(testvectors, make):
    x = vectors("inputs")["student_t3.f32"][:ROWS]
    spec = make(numerics="exact")
    assert _rel(x, quantize(x, spec, "mse_alt")) <= _rel(x, quantize(x, spec, "minmax"))


def test_mse_only_shrinks():
    x = torch.randn(8, 64)
    spec = QuantSpec.int(4, 32)
    assert (quantize(x, spec, "mse").scales <= quantize(x, spec, "minmax").scales).all()
