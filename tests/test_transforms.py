"""Tests for fpq_core.transforms: reference vectors, algebraic properties, validation."""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpq_core.transforms import (
    TRANSFORMS,
    available_transforms,
    choose_transform_size,
    get_transform,
    sylvester_hadamard,
    valid_sizes,
)
from tests.conftest import load_vectors

VECTOR_CLASSES = ["identity", "hadamard", "dct", "dst", "gsr"]
VECTOR_SIZES = [16, 32, 64, 128]
ALL = list(TRANSFORMS)
ORTHOGONAL = [k for k in ALL if get_transform(k, 16).is_orthogonal]


@pytest.fixture(scope="module")
def tv(testvectors):
    return load_vectors(testvectors, "transforms")


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- reference vectors
@pytest.mark.parametrize("n", VECTOR_SIZES)
@pytest.mark.parametrize("name", VECTOR_CLASSES)
def test_vectors(tv, name, n):
    t = get_transform(name, n)
    blk = tv[f"{name}.n{n}.block"]
    x_ref, w_ref = tv[f"{name}.n{n}.x_fwd"], tv[f"{name}.n{n}.w_inv_t"]
    m = t.matrix(dtype=blk.dtype)
    x_out, w_out = t.apply(tv["x"]), t.apply_to_weight(tv["w"])
    assert x_out.dtype == torch.float32 and w_out.shape == w_ref.shape
    if name in ("identity", "hadamard"):  # exact under the vectors' convention
        assert torch.equal(m, blk)
        assert torch.equal(x_out, x_ref)
        assert torch.equal(w_out, w_ref)
    else:  # float32 BLAS products: relative tolerance
        assert torch.allclose(m, blk, rtol=0, atol=1e-12)
        assert _rel(x_out, x_ref) < 1e-6
        assert _rel(w_out, w_ref) < 1e-6


@pytest.mark.parametrize("n", VECTOR_SIZES)
def test_hadamard_bf16_weight_bit_exact(tv, n):
    w_in = tv[f"hadamard.n{n}.w_inv_t.bf16_in"]
    assert torch.equal(w_in, tv["w"].to(torch.bfloat16))
    out = get_transform("hadamard", n).apply_to_weight(w_in)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, tv[f"hadamard.n{n}.w_inv_t.bf16"])


@pytest.mark.parametrize("n", VECTOR_SIZES)
def test_hadamard_fast_path_close(tv, n):
    """float32 product (CUDA default, exact=False) agrees with the exact path to fp32 rounding."""
    fast = get_transform("hadamard", n, exact=False).apply(tv["x"])
    assert _rel(fast, tv[f"hadamard.n{n}.x_fwd"]) < 1e-6


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", ORTHOGONAL)
@settings(max_examples=8, deadline=None, database=None)
@given(k=st.integers(min_value=1, max_value=7))
def test_orthogonal(name, k):
    n = 1 << k
    m = get_transform(name, n).matrix(dtype=torch.float64)
    tol = 2e-7 if name == "gsr" else 1e-10  # gsr: +-1/fl32(sqrt(n)) entries
    assert torch.allclose(m @ m.T, torch.eye(n, dtype=torch.float64), atol=tol)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=8, deadline=None, database=None)
@given(k=st.integers(min_value=2, max_value=6), nblk=st.integers(min_value=1, max_value=4),
       rows=st.integers(min_value=1, max_value=5), seed=st.integers(0, 2**31 - 1))
def test_invariance_and_round_trip(name, k, nblk, rows, seed):
    """(x T)(W T^-T)^T == x W^T and inverse(apply(x)) == x, for every class."""
    n = 1 << k
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows, n * nblk, generator=g, dtype=torch.float64)  # (..., in)
    w = torch.randn(3, n * nblk, generator=g, dtype=torch.float64)        # (out, in)
    t = get_transform(name, n, seed=seed % 1000)
    if name == "identity_low_rank":  # make it non-trivial (B != 0)
        t.set_factors(t.lora_a, 0.3 * torch.randn(n, t.rank, generator=g, dtype=torch.float64))
    y = t.apply(x) @ t.apply_to_weight(w).T
    tol = 1e-6 if name == "gsr" else 1e-9  # gsr is orthogonal to float32 precision only
    ref = x @ w.T
    assert (y - ref).abs().max() <= tol * (x.abs() @ w.abs().T).max()
    assert torch.allclose(t.inverse(t.apply(x)), x, rtol=1e-7, atol=1e-7)
    # float32 too (compute in float32, looser tolerance)
    xf, wf = x.float(), w.float()
    yf = t.apply(xf) @ t.apply_to_weight(wf).T
    assert yf.dtype == torch.float32
    cond = torch.linalg.cond(t.matrix(dtype=torch.float64)).item()  # fast_food: up to ~1e6
    scale = (x.abs() @ w.abs().T).max()
    assert (yf.double() - ref).abs().max() <= 1e-6 * max(1.0, cond) * scale


@pytest.mark.parametrize("name", ALL)
def test_blockwise_equals_block_diagonal(name):
    """apply == x @ block_diag(M, ..., M) (built only here, at small size)."""
    n, nblk = 16, 3
    t = get_transform(name, n)
    x = torch.randn(4, 5, n * nblk, dtype=torch.float64)
    big = torch.block_diag(*[t.matrix(dtype=torch.float64)] * nblk)
    assert torch.allclose(t.apply(x), x @ big, atol=1e-12)
    wbig = torch.block_diag(*[t.weight_matrix(dtype=torch.float64)] * nblk)
    assert torch.allclose(t.apply_to_weight(x), x @ wbig, atol=1e-12)


def test_dct_dst_are_the_transforms():
    from scipy import fftpack

    x = torch.randn(3, 64, dtype=torch.float64)
    for name, fn in (("dct", fftpack.dct), ("dst", fftpack.dst)):
        ref = torch.from_numpy(fn(x.reshape(-1, 32).numpy(), type=2, norm="ortho")).reshape(3, 64)
        assert torch.allclose(get_transform(name, 32).apply(x), ref, atol=1e-12)


def test_gsr_sequency_and_sylvester():
    from scipy.linalg import hadamard

    assert torch.equal(sylvester_hadamard(64), torch.tensor(hadamard(64), dtype=torch.float64))
    m = get_transform("gsr", 32).matrix(dtype=torch.float64)
    changes = (torch.sign(m[1:]) != torch.sign(m[:-1])).sum(0)
    assert changes.tolist() == list(range(32))


def test_identity_low_rank_is_identity_at_init():
    t = get_transform("identity_low_rank", 32, rank=4, alpha=8)
    assert t.rank == 4 and t.alpha == 8.0
    assert torch.equal(t.matrix(dtype=torch.float64), torch.eye(32, dtype=torch.float64))
    assert not t.is_orthogonal and not t.exportable


def test_kronecker_factors():
    t = get_transform("kronecker", 128)
    assert (t.lsize, t.rsize) == (8, 16)
    assert (get_transform("kronecker", 64).lsize, get_transform("kronecker", 64).rsize) == (8, 8)
    m = t.matrix(dtype=torch.float64)
    assert torch.allclose(m, torch.kron(t.left, t.right))


def test_seeded_classes_deterministic():
    for name in ("fast_food", "full", "kronecker"):
        a = get_transform(name, 32, seed=1).matrix()
        assert torch.equal(a, get_transform(name, 32, seed=1).matrix())
        assert not torch.equal(a, get_transform(name, 32, seed=2).matrix())
        assert torch.equal(get_transform(name, 32).matrix(), get_transform(name, 32, seed=42).matrix())
    ff = get_transform("fast_food", 64)
    assert not ff.is_orthogonal
    m = ff.matrix(dtype=torch.float64)
    assert not torch.allclose(m @ m.T, torch.eye(64, dtype=torch.float64), atol=1e-3)


def test_flags_and_export_dtype():
    exportable = {k for k in ALL if get_transform(k, 16).exportable}
    assert exportable == {"identity", "hadamard"}
    t = get_transform("hadamard", 32, dtype=torch.bfloat16)
    assert t.matrix().dtype == torch.bfloat16 and t.matrix().shape == (32, 32)
    assert t.name == "hadamard" and t.size == 32
    assert set(ORTHOGONAL) == set(ALL) - {"fast_food", "identity_low_rank"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_dtype_and_shape_preserved(name, dtype):
    x = torch.randn(2, 3, 64).to(dtype)
    t = get_transform(name, 32)
    for out in (t.apply(x), t.apply_to_weight(x), t.inverse(x)):
        assert out.dtype == dtype and out.shape == x.shape


def test_hadamard_never_materialises_d_by_d():
    x = torch.randn(2, 1 << 16)
    t = get_transform("hadamard", 128)
    t0 = time.perf_counter()
    y = t.apply(x)
    assert time.perf_counter() - t0 < 5.0  # a (65536^2) matrix would not even fit in memory
    assert torch.allclose(t.apply(y), x, atol=1e-5)  # self-inverse
    for key in t._cache:  # only n x n matrices are cached
        assert tuple(t._cache[key].shape) == (128, 128)
    for name in ALL:  # every class stays blockwise
        tt = get_transform(name, 64)
        assert tt.apply(x[:, :4096]).shape == (2, 4096)
        assert all(tuple(v.shape) == (64, 64) for v in tt._cache.values())


# ----------------------------------------------------------------------------- sizes & validation
def test_valid_sizes_and_choose():
    assert valid_sizes(576) == [16, 32, 64]
    assert valid_sizes(1536) == [16, 32, 64, 128, 256, 512]
    assert valid_sizes(100) == []
    assert choose_transform_size(576, 128) == 64
    assert choose_transform_size(2048, 128) == 128
    assert choose_transform_size(576, 100) == 64
    assert choose_transform_size(96, 64) == 32
    with pytest.raises(ValueError):
        choose_transform_size(0, 128)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available: identity, hadamard"):
        get_transform("walsh", 16)
    assert "fast_food" in available_transforms()


@pytest.mark.parametrize("name", ["hadamard", "gsr", "fast_food"])
def test_non_pow2_size(name):
    with pytest.raises(ValueError, match="power of two.*16, 32, 64, 128"):
        get_transform(name, 24)


def test_non_pow2_ok_for_matrix_classes():
    for name in ("dct", "dst", "full", "kronecker", "identity_low_rank"):
        t = get_transform(name, 24)
        x = torch.randn(3, 48, dtype=torch.float64)
        assert torch.allclose(t.inverse(t.apply(x)), x, atol=1e-10)


def test_indivisible_dim_names_valid_sizes():
    t = get_transform("hadamard", 128)
    with pytest.raises(ValueError, match=r"576 is not divisible by transform size 128.*divide 576: 16, 32, 64 "):
        t.apply(torch.zeros(2, 576))
    with pytest.raises(ValueError, match="not divisible"):
        t.apply_to_weight(torch.zeros(4, 576))
    with pytest.raises(ValueError, match="no power of two"):
        get_transform("dct", 32).apply(torch.zeros(2, 100))


def test_non_floating_input():
    t = get_transform("hadamard", 16)
    with pytest.raises(TypeError, match="floating"):
        t.apply(torch.ones(2, 32, dtype=torch.int32))
    with pytest.raises(TypeError, match="floating"):
        get_transform("dct", 16).apply_to_weight(torch.ones(2, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Tensor"):
        t.apply([1.0] * 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive int"):
        get_transform("dct", 0)
    with pytest.raises(TypeError, match="unexpected argument"):
        get_transform("hadamard", 16, rank=3)
    with pytest.raises(ValueError, match="rank"):
        get_transform("identity_low_rank", 16, rank=32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name):
    x = torch.randn(4, 256)
    t = get_transform(name, 64)
    y = t.apply(x.cuda())
    assert y.is_cuda and y.dtype == torch.float32
    assert _rel(y.cpu(), t.apply(x)) < 1e-5 * (1e3 if name == "fast_food" else 1)
    assert _rel(t.apply_to_weight(x.cuda()).cpu(), t.apply_to_weight(x)) < 1e-2
