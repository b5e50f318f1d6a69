"""Per-layer statistics of the Layer explorer (tiny random model; numbers checked against formats)."""
from __future__ import annotations

import math

import pytest
import torch

from fpq_core import layer_stats as L
from fpq_core import paper as P
from fpq_core.formats import quantize
from fpq_core.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama")[0]


def test_kurtosis_known_values():
    g = torch.Generator().manual_seed(0)
    assert L.kurtosis(torch.randn(200_000, generator=g)) == pytest.approx(3.0, abs=0.1)
    u = torch.rand(200_000, generator=g, dtype=torch.float64) - 0.5
    lap = -torch.sign(u) * torch.log1p(-2 * u.abs())
    assert L.kurtosis(lap) == pytest.approx(6.0, abs=0.3)
    assert L.kurtosis(torch.randn(4, 1000, generator=g), dim=1).shape == (4,)


def test_sample_rows_keeps_absmax_row():
    w = torch.randn(100, 64)
    w[37, 5] = 100.0
    s = L.sample_rows(w, 10 * 64)
    assert s.shape[0] <= 11 and s.abs().max() == 100.0
    assert L.sample_rows(w, None) is w


def test_layer_error_rows_match_formats(model):
    s = L.LayerSettings("MXFP4")
    rows = L.layer_error_rows(model, s, max_elements=None)
    assert len(rows) == 14 and {r["proj"] for r in rows} == set(L.PROJECTIONS)
    lin = model.model.layers[1].mlp.down_proj.weight.float()
    qt = quantize(lin, s.spec(), observer="minmax")
    want = float((lin - qt.dequantize()).pow(2).sum() / lin.pow(2).sum())
    got = next(r for r in rows if r["block"] == 1 and r["proj"] == "down_proj")["rel_mse"]
    assert got == pytest.approx(want, rel=1e-5)
    blocks, projs, m = L.error_matrix(rows)
    assert blocks == [0, 1] and m.shape == (2, 7) and not any(math.isnan(v) for v in m.ravel())
    assert L.worst_layers(rows, n=3)[0]["rel_mse"] == max(r["rel_mse"] for r in rows)


def test_settings_diff_and_nvfp4_better_than_mxfp4(model):
    a = L.layer_error_rows(model, L.LayerSettings("MXFP4"))
    b = L.layer_error_rows(model, L.LayerSettings("NVFP4"))
    d = L.diff_rows(a, b)
    assert len(d) == 14 and all(r["ratio"] < 1 for r in d)        # g16 + e4m3 beats g32 + e8m0
    had = L.layer_error_rows(model, L.LayerSettings("MXFP4", transform="hadamard", transform_size=32))
    assert all(r["rel_mse"] > 0 for r in had)
    with pytest.raises(ValueError, match="group size"):
        L.layer_error_rows(model, L.LayerSettings("MXFP4", group_size=256))


def test_weight_activation_and_scale_stats(model):
    w = L.weight_stats(model, "hadamard", 32, 32)
    assert len(w) == 14 and all(r["kurtosis"] > 1 and r["kurtosis_rotated"] > 1 for r in w)
    batches = [torch.randint(0, 256, (1, 32)) for _ in range(2)]
    a = L.activation_stats(model, batches, "hadamard", 32, 32, max_tokens=48)
    assert len(a) == 14 and all(r["tokens"] == 48 for r in a)
    with pytest.raises(ValueError):
        L.activation_stats(model, [], "hadamard", 32, 32)
    sd = L.scale_distribution(model, L.LayerSettings("MXFP4"))
    assert sd["label"].startswith("E8M0") and sum(sd["counts"]) > 0 and len(sd["layers"]) == 14
    nv = L.scale_distribution(model, L.LayerSettings("NVFP4"))
    assert nv["label"].startswith("E4M3") and all(g > 0 for g in nv["global_scales"])
    s = L.model_summary(model)
    assert s["num_blocks"] == 2 and len(s["layers"]) == 14 and s["parameters"] > s["linear_parameters"]


def test_paper_rows_and_classify():
    assert P.paper_row("mxfp", 4, "mr_gptq")["recovery_pct"] == 93.31
    assert P.paper_row("nvfp", 4, "gptq")["GSM8K"] == 81.25                  # typo-corrected (§1.1 note)
    assert P.paper_row("mxfp", 16, "mr_gptq") is None
    assert all(r["source"] for r in P.table_rows())
    from fpq_core.config import QuantConfig

    for name in ("rtn", "rtn_had", "gptq", "mr_gptq"):
        assert P.classify(QuantConfig.preset(name, fmt="nvfp").to_dict()) == (name, "nvfp", 4)
    assert P.classify({"w_bits": 16, "a_bits": 16})[0] == "bf16"
    runs = [{"id": "b", "model": "m", "config": {"w_bits": 16, "a_bits": 16},
             "results": {"wikitext2_ppl": {"ppl": 10.0}, "lm_eval": {"t": {"acc": 0.5}}}},
            {"id": "q", "model": "m", "config": QuantConfig.preset("rtn", fmt="mxfp").to_dict(),
             "results": {"wikitext2_ppl": {"ppl": 12.0}, "lm_eval": {"t": {"acc": 0.45}}}}]
    rows = {r["run"]: r for r in P.compare_rows(runs)}
    assert rows["q"]["ppl_increase_pct"] == pytest.approx(20.0)
    assert rows["q"]["recovery_pct"] == pytest.approx(90.0)
    assert rows["q"]["paper_recovery_pct"] == 87.83
