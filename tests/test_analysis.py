"""Tests of fpq_core.analysis (format-error numerics) and fpq_core.app_support (safe uploads)."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from fpq_core import analysis as A
from fpq_core.app_support import UploadError, read_upload

SHAPE = (128, 4096)  # 512k elements: stable means with a fixed seed


@pytest.fixture(scope="module")
def laplace():
    return A.sample_distribution("laplace", SHAPE, seed=0)


@pytest.fixture(scope="module")
def gaussian():
    return A.sample_distribution("gaussian", SHAPE, seed=0)


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", A.DISTRIBUTIONS)
def test_samples_unit_variance_and_deterministic(name):
    x = A.sample_distribution(name, (64, 4096), seed=3)
    assert x.dtype == torch.float32 and x.shape == (64, 4096)
    assert abs(x.var().item() - 1.0) < 0.1
    assert torch.equal(x, A.sample_distribution(name, (64, 4096), seed=3))
    assert not torch.equal(x, A.sample_distribution(name, (64, 4096), seed=4))


def test_sample_tails_are_ordered():
    kurt = {n: (lambda x: (x.pow(4).mean() / x.var() ** 2).item())(A.sample_distribution(n, SHAPE, 0))
            for n in ("gaussian", "laplace", "student_t_outliers")}
    assert abs(kurt["gaussian"] - 3) < 0.1 and abs(kurt["laplace"] - 6) < 0.5
    assert kurt["student_t_outliers"] > kurt["laplace"]


def test_sample_rejects_unknown():
    with pytest.raises(ValueError, match="unknown distribution"):
        A.sample_distribution("cauchy", (4, 4))


def test_e2m1_grid():
    g = A.e2m1_grid()
    assert g.tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert A.element_grid(A.make_spec("NVINT4")).tolist() == list(range(-7, 8))


def test_grid_values_are_exact_under_quantization():
    """A group holding the grid itself (abs-max 6) is reproduced by NVFP4 without error."""
    x = A.e2m1_grid()[1:].repeat(64, 2)[:, :16].contiguous()  # (64, 16), contains +-6
    r = A.format_error(x, A.make_spec("NVFP4"))
    assert r["rel_mse"] < 1e-6


# ----------------------------------------------------------------------------- specs


def test_make_spec_presets_and_overrides():
    for p in A.PRESETS:
        s = A.make_spec(p)
        assert s.bits == 4 and s.group_size in A.GROUP_SIZES
    assert A.make_spec("MXFP4").scale_precision == "e8m0" and A.make_spec("MXFP4").group_size == 32
    assert A.make_spec("NVFP4").scale_precision == "e4m3" and A.make_spec("NVFP4").group_size == 16
    s = A.make_spec("NVFP4", group_size=64, scale_precision="e8m0")
    assert (s.group_size, s.scale_precision, s.format) == (64, "e8m0", "fp")
    assert A.spec_summary(A.make_spec("MXFP4"))["bits_per_element"] == 4.25
    with pytest.raises(ValueError, match="unknown preset"):
        A.make_spec("FP3")


# ----------------------------------------------------------------------------- errors


def test_format_error_fields_and_identity_transform(gaussian):
    x = gaussian[:32]
    spec = A.make_spec("NVFP4")
    r = A.format_error(x, spec)
    for k in ("rel_mse", "rel_mse_global", "top_rel_error", "scale_min", "scale_max", "groups"):
        assert k in r
    assert r["groups"] == x.numel() // 16
    assert 0 < r["rel_mse"] < 0.05
    assert r == A.format_error(x, spec, transform="identity")


def test_format_error_zero_groups_are_skipped():
    x = torch.zeros(4, 64)
    x[0, :16] = torch.linspace(-1, 1, 16)
    r = A.format_error(x, A.make_spec("NVFP4"))
    assert r["zero_groups"] == 15 and np.isfinite(r["rel_mse"]) and np.isfinite(r["top_rel_error"])


def test_format_error_rejects_bad_group(gaussian):
    with pytest.raises(ValueError, match="group size"):
        A.format_error(gaussian[:2, :40], A.make_spec("NVFP4", group_size=32))


def test_roundtrip_is_in_original_domain(gaussian):
    x = gaussian[:16]
    xhat, _ = A.quantize_roundtrip(x, A.make_spec("MXFP4"), "hadamard", 32)
    assert xhat.shape == x.shape
    assert ((x - xhat).pow(2).sum() / x.pow(2).sum()).item() < 0.05


def test_nvfp4_rotation_hurts_laplace_at_group_16(laplace):
    """Paper §3 / Fig. 3: for NVFP4 (G=16) a Hadamard raises the relative MSE of Laplace data."""
    spec = A.make_spec("NVFP4")
    plain = A.format_error(laplace, spec)["rel_mse"]
    rotated = A.format_error(laplace, spec, "hadamard", 16)["rel_mse"]
    assert rotated > plain * 1.02


def test_rotation_crossover_e4m3_scales(laplace):
    """With E4M3-like scales, rotation hurts at small groups and helps at large ones."""
    rows = A.rel_mse_vs_group_size(laplace, A.make_spec("NVFP4"), (16, 128, 256))
    by = {(r["group_size"], r["rotated"]): r["rel_mse"] for r in rows}
    assert by[(16, True)] > by[(16, False)]
    assert by[(128, True)] < by[(128, False)] * 0.95
    assert by[(256, True)] < by[(256, False)] * 0.95
    # rotation spreads the top element's error: without it the top element keeps more precision
    top = {(r["group_size"], r["rotated"]): r["top_rel_error"] for r in rows}
    assert top[(16, True)] > top[(16, False)]


def test_mxfp4_rotation_helps_laplace_at_group_32(laplace):
    """MXFP4 (E8M0 scales): Hadamard of the group size lowers the error (WUSH Table 1 trend)."""
    spec = A.make_spec("MXFP4")
    assert A.format_error(laplace, spec, "hadamard", 32)["rel_mse"] < A.format_error(laplace, spec)["rel_mse"]


def test_e8m0_scales_cost_more_than_e4m3(gaussian):
    """App. C: E8M0 scales raise the MSE more than E4M3 scales (both versus unquantized)."""
    rows = A.scale_precision_comparison(gaussian, A.make_spec("FP4 (custom)", group_size=16))
    mse = {r["scale_precision"]: r["rel_mse"] for r in rows}
    assert mse["e8m0"] > mse["e4m3"] * 1.1
    assert mse["e4m3"] > mse["fp16"] * 0.99


def test_rel_mse_grows_with_group_size(gaussian):
    """Without rotation the relative MSE grows with the group size (fewer, coarser scales)."""
    rows = A.rel_mse_vs_group_size(gaussian[:64], A.make_spec("NVFP4"), (16, 64, 256))
    plain = [r["rel_mse"] for r in rows if not r["rotated"]]
    assert plain == sorted(plain)


# ----------------------------------------------------------------------------- plot data


def test_report_histograms(gaussian):
    r = A.format_report(gaussian[:16], A.make_spec("MXFP4"))
    v = r["values"]
    assert v["before"].sum() == v["after"].sum() == 16 * 4096
    s = r["scales"]
    assert s["label"].startswith("E8M0") and s["counts"].sum() == 16 * 4096 // 32
    assert np.all(s["values"] == np.round(s["values"]))  # integer exponents
    s4 = A.format_report(gaussian[:16], A.make_spec("NVFP4"))["scales"]
    assert s4["label"].startswith("E4M3") and s4["counts"].sum() == 16 * 4096 // 16
    s16 = A.format_report(gaussian[:16], A.make_spec("INT4"))["scales"]
    assert s16["label"] == "log2(scale)"


def test_to_rows():
    x, note = A.to_rows(torch.randn(3, 300))
    assert x.shape == (3, 256) and "cropped" in note
    x, note = A.to_rows(torch.randn(10, 100))
    assert x.shape == (3, 256) and "flattened" in note
    x, note = A.to_rows(torch.randn(2, 512))
    assert x.shape == (2, 512) and note == ""
    with pytest.raises(ValueError):
        A.to_rows(torch.randn(10))


def test_transform_sizes():
    assert A.transform_sizes(4096)[:3] == [8, 16, 32]
    assert 4096 in A.transform_sizes(4096)


# ----------------------------------------------------------------------------- uploads


def _npy(arr) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def test_upload_npy_and_safetensors():
    from safetensors.torch import save

    got = read_upload("w.npy", _npy(np.arange(12, dtype=np.int16).reshape(3, 4)))
    assert got.tensors["array"].dtype == torch.float32 and got.tensors["array"].shape == (3, 4)
    data = save({"a": torch.randn(4, 8, dtype=torch.bfloat16), "b": torch.randn(2)})
    got = read_upload("m.SAFETENSORS", data)
    assert sorted(got.names()) == ["a", "b"] and got.tensors["a"].dtype == torch.float32


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin", "w.pkl", "w.ckpt", "w.npz", "w"])
def test_upload_rejects_pickle_formats(name):
    payload = pickle.dumps({"w": torch.randn(2, 2)})
    with pytest.raises(UploadError, match="not supported"):
        read_upload(name, payload)


def test_upload_rejects_object_npy_and_garbage():
    with pytest.raises(UploadError, match="pickle"):
        read_upload("o.npy", _npy(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(UploadError, match="pickled data is refused"):  # a raw pickle renamed .npy
        read_upload("o.npy", pickle.dumps([1, 2]))
    with pytest.raises(UploadError, match="not a valid"):
        read_upload("o.npy", b"definitely not numpy")
    with pytest.raises(UploadError, match="not a valid"):
        read_upload("o.safetensors", b"\x00" * 64)
    with pytest.raises(UploadError, match="NaN"):
        read_upload("n.npy", _npy(np.array([1.0, np.nan])))


def test_upload_rejects_oversize():
    with pytest.raises(UploadError, match="limit"):
        read_upload("big.npy", _npy(np.zeros(1000, dtype=np.float32)), max_bytes=1000)
