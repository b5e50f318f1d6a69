"""E2M1 rounding and packing: reference vectors + properties."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpq_core.formats import (E2M1_GRID, canonical_zero, e2m1_codes, e2m1_decode, e2m1_encode, e2m1_round,
                              pack_fp4, unpack_fp4)
from tests.formats._vectors import assert_bits_equal, cases, vectors


@pytest.mark.parametrize("case", cases("fp4_rounding", 1))
def test_fp4_rounding_vectors(testvectors, case):
    """Every tensor group of fp4_rounding.safetensors, bit for bit."""
    v = vectors("fp4_rounding")
    if case == "values":
        for dt in ("f32", "bf16"):
            assert_bits_equal(e2m1_round(v[f"values.{dt}"]), v[f"rounded.{dt}"], f"cast_to_fp4 {dt}")
    elif case == "rounded":
        assert {"rounded.f32", "rounded.bf16"} <= set(v)
    elif case == "nan_in":
        assert_bits_equal(e2m1_round(v["nan_in.f32"]), v["nan_out.f32"], "NaN")
    elif case == "nan_out":
        assert torch.isnan(v["nan_out.f32"]).all()
    elif case.startswith("pack_"):
        vals, packed = v[f"{case}.values"], v[f"{case}.packed"]
        assert_bits_equal(pack_fp4(vals), packed, case)
        if case != "pack_raw":  # grid values: codes of the rounded values pack the same
            assert_bits_equal(pack_fp4(e2m1_codes(e2m1_round(vals))), packed, case + " via codes")
            assert torch.equal(e2m1_decode(unpack_fp4(packed)), vals)  # -0 == +0
    else:
        pytest.fail(f"unhandled fp4_rounding entry {case!r}: extend this test")


def test_ties_and_signs():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, float("inf"), -float("inf"), 100.0])
    assert e2m1_round(x).tolist() == [0, 1, 1, 2, 2, 4, 4, 6, 6, -6, 6]
    z = e2m1_round(torch.tensor([-0.0, -0.1, 0.1]))
    assert torch.signbit(z).tolist() == [False, True, False]
    assert e2m1_codes(z).tolist() == [0x0, 0x8, 0x0]
    assert e2m1_encode(torch.tensor([0.0, -0.0, 0.1, -0.1])).tolist() == [0x8, 0x8, 0x0, 0x8]
    assert pack_fp4(torch.tensor([0.5, -1.0])).tolist() == [0xA1]


def test_pack_errors():
    with pytest.raises(ValueError, match="even last dim"):
        pack_fp4(torch.zeros(3))
    with pytest.raises(ValueError, match="0..15"):
        pack_fp4(torch.tensor([16, 0], dtype=torch.uint8))
    with pytest.raises(TypeError):
        unpack_fp4(torch.zeros(2))
    with pytest.raises(TypeError):
        e2m1_round(torch.zeros(2, dtype=torch.int32))


codes_st = st.lists(st.integers(0, 15), min_size=1, max_size=64).map(
    lambda c: torch.tensor(c + c[:1] if len(c) % 2 else c, dtype=torch.uint8))
floats_st = st.floats(-20, 20, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(codes_st)
def test_pack_unpack_round_trip(codes):
    assert torch.equal(unpack_fp4(pack_fp4(codes, zero_as_negative=False)), codes)
    canon = unpack_fp4(pack_fp4(codes))
    assert torch.equal(canon, canonical_zero(codes))
    assert torch.equal(e2m1_decode(canon), e2m1_decode(codes))  # numerically identical
    assert torch.equal(pack_fp4(e2m1_decode(codes)), pack_fp4(codes))  # float packer == code packer


@settings(max_examples=60, deadline=None)
@given(st.lists(floats_st, min_size=1, max_size=32))
def test_rounding_properties(vals):
    x = torch.tensor(vals, dtype=torch.float32)
    r = e2m1_round(x)
    grid = torch.tensor(E2M1_GRID)
    assert torch.isin(r.abs(), grid).all()                       # on the grid
    assert torch.equal(e2m1_round(r), r)                         # idempotent
    # nearest: no grid value strictly closer (|x| > 6 saturates to 6)
    m = x.abs().clamp(max=6.0)
    dist = (grid[None, :] - m[:, None]).abs().min(dim=1).values
    assert torch.all((r.abs() - m).abs() <= dist)
    # sign kept (non-zero results)
    nz = r != 0
    assert torch.equal(torch.sign(r[nz]), torch.sign(x[nz]))
    # codes decode back bit for bit
    assert torch.equal(e2m1_decode(e2m1_codes(r)).view(torch.int32), r.view(torch.int32))


@settings(max_examples=50, deadline=None)
@given(floats_st, floats_st)
def test_rounding_monotone(a, b):
    lo, hi = sorted((a, b))
    r = e2m1_round(torch.tensor([lo, hi]))
    assert r[0] <= r[1]


def test_grid_is_fixed_points_bf16():
    g = torch.tensor(E2M1_GRID + tuple(-v for v in E2M1_GRID[1:]), dtype=torch.bfloat16)
    assert torch.equal(e2m1_round(g), g)
