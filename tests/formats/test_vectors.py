"""numerics="fp-quant" against every RTN / activation vector of the reference, bit for bit.

MSE cases on 128-row inputs run on the first 8 rows by default (the search is per group; the
NVFP4 global scale is taken from the full tensor and checked against the stored one). Set
FPQ_FULL_VECTORS=1 (or run -m slow) for every row."""
import os

import pytest
import torch

from fpq_core.formats import ActivationQuantizer, QuantSpec, group_view, quantize
from fpq_core.formats.quantize import global_encode_scale
from fpq_core.observers import get_observer
from tests.formats._vectors import assert_bits_equal, cases, manifest, vectors

FULL = os.environ.get("FPQ_FULL_VECTORS") == "1"
SUBSET_ROWS = 8
FP_FILES = {"mxfp4_rtn": QuantSpec.mxfp4, "nvfp4_rtn": QuantSpec.nvfp4}
FP_FIELDS = {"dq", "scales", "qweight", "scale_bytes", "global_scale", "mse_raw_scales"}


def _fields(file, case):
    return {k[len(case) + 1:] for k in vectors(file) if k.startswith(case + ".")}


def _check_fp_case(file, case, full):
    v = vectors(file)
    name, dt, obs = case.split(".")
    unknown = _fields(file, case) - FP_FIELDS
    assert not unknown, f"unhandled vector fields {unknown}: extend this test"
    x = vectors("inputs")[f"{name}.{dt}"]
    spec = FP_FILES[file](numerics="fp-quant")
    g = None
    if spec.uses_global_scale:
        g = global_encode_scale(x, spec)
        assert_bits_equal(g, v[f"{case}.global_scale"], "global_scale")
    rows = x.shape[0] if (full or obs == "minmax") else SUBSET_ROWS
    x = x[:rows]
    qt = quantize(x, spec, observer=obs, global_scale=g)
    qweight, scale_bytes = qt.pack()
    assert_bits_equal(qweight, v[f"{case}.qweight"][:rows], "qweight")
    assert_bits_equal(scale_bytes, v[f"{case}.scale_bytes"][:rows], "scale_bytes")
    assert_bits_equal(qt.global_scale, v[f"{case}.global_scale"], "global_scale")
    assert_bits_equal(qt.scales, v[f"{case}.scales"][:rows], "scales")
    assert_bits_equal(qt.dequantize(), v[f"{case}.dq"][:rows], "dq")
    assert not torch.isnan(qt.scales).any()
    if spec.scale_precision == "e4m3":
        assert not (scale_bytes == 0x7F).any(), "NaN e4m3 byte"
    if obs == "mse":
        raw = get_observer("mse").raw_scales(group_view(x, spec), spec)
        raw = torch.where(raw == 0, torch.ones_like(raw), raw)
        assert_bits_equal(raw, v[f"{case}.mse_raw_scales"][:rows], "mse_raw_scales")


@pytest.mark.parametrize("case", cases("mxfp4_rtn", 3))
def test_mxfp4_rtn(testvectors, case):
    _check_fp_case("mxfp4_rtn", case, FULL)


@pytest.mark.parametrize("case", cases("nvfp4_rtn", 3))
def test_nvfp4_rtn(testvectors, case):
    _check_fp_case("nvfp4_rtn", case, FULL)


@pytest.mark.slow
@pytest.mark.parametrize("file", list(FP_FILES))
def test_fp_rtn_mse_all_rows(testvectors, file, request):
    mark = request.config.getoption("-m") or ""
    if not (FULL or ("slow" in mark and "not slow" not in mark)):
        pytest.skip("full-row MSE vectors take minutes: run with -m slow or FPQ_FULL_VECTORS=1")
    for case in cases(file, 3):
        if case.endswith(".mse"):
            _check_fp_case(file, case, full=True)


@pytest.mark.parametrize("case", cases("int4_rtn", 3))
def test_int4_rtn(testvectors, case):
    v = vectors("int4_rtn")
    name, dt, g = case.split(".")
    assert _fields("int4_rtn", case) <= {"dq", "scales", "codes"}
    x = vectors("inputs")[f"{name}.{dt}"][:32]
    qt = quantize(x, QuantSpec.int(4, int(g[1:]), numerics="fp-quant"))
    assert_bits_equal(qt.codes, v[f"{case}.codes"], "codes")
    assert_bits_equal(qt.scales, v[f"{case}.scales"], "scales")
    assert_bits_equal(qt.dequantize(), v[f"{case}.dq"], "dq")
    assert qt.scale_bytes is None and qt.global_scale is None


@pytest.mark.parametrize("dt", cases("act_nvfp4", 1))
def test_act_nvfp4(testvectors, dt):
    v = vectors("act_nvfp4")
    calls = sorted({k.split(".")[1] for k in v if k.startswith(dt + ".")})
    assert calls == [f"call{i}" for i in range(len(calls))]
    aq = ActivationQuantizer(QuantSpec.nvfp4(numerics="fp-quant"))
    for c in calls:
        pre = f"{dt}.{c}"
        if manifest()["files"]["act_nvfp4"][f"{pre}.x"]["params"]["stage"] != "calib":
            aq.freeze()  # calibration calls (running min of 2688/amax), then frozen ones
        assert {k[len(pre) + 1:] for k in v if k.startswith(pre + ".")} <= {"x", "dq", "scales", "global_scale"}
        y = aq(v[f"{pre}.x"])
        assert_bits_equal(y, v[f"{pre}.dq"], f"{pre} dq")
        assert_bits_equal(aq.last.scales, v[f"{pre}.scales"], f"{pre} scales")
        assert_bits_equal(aq.global_scale, v[f"{pre}.global_scale"], f"{pre} global_scale")
    assert not aq.observe
