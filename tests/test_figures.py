"""fpq_core.figures: the pure plot-data helpers of the notebooks (fast, no model load)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpq_core import figures as F
from fpq_core.analysis import sample_distribution
from fpq_core.formats import QuantSpec


def test_paper_constants_match_reference_table():
    # paper-results.md §1.1 / §1.2 (Table 1 W4A4, Table 2 W4A16)
    assert F.PAPER_RECOVERY[("nvfp", 4, "mr_gptq")] == 96.08
    assert F.PAPER_RECOVERY[("mxfp", 4, "rtn")] == 87.83
    assert F.PAPER_RECOVERY[("mxfp", 16, "gptq")] == 96.76
    assert ("nvfp", 16, "mr_gptq") not in F.PAPER_RECOVERY
    assert len(F.PAPER_RECOVERY) == 14
    assert F.PAPER_SCALE_COST == {"e4m3": 0.10, "e8m0": 0.40}
    assert "paper-results.md" in F.PAPER_RECOVERY_SOURCE and "App. C" in F.PAPER_SCALE_COST_SOURCE


def test_crossover_rows_and_group_size():
    samples = {"lap": sample_distribution("laplace", (8, 1024), seed=0),
               "gau": sample_distribution("gaussian", (8, 1024), seed=1)}
    rows = F.crossover_rows(samples, ("e4m3",), (8, 16, 64, 256))
    assert len(rows) == 2 * 4 * 2
    assert {r["rotated"] for r in rows} == {False, True}
    xs, ys = F.series(rows, "group_size", "rel_mse", source="lap", scale_precision="e4m3", rotated=False)
    assert list(xs) == [8, 16, 64, 256] and np.all(np.diff(ys) > 0)  # error grows with G
    g = F.crossover_group_size(rows, "lap", "e4m3")
    assert g is not None and g > 8  # rotation hurts Laplace at G=8 (E4M3) and helps later
    # without rotation the top element keeps (nearly) E4M3 precision: far below the rotated one
    _, top_native = F.series(rows, "group_size", "top_rel_error", source="lap", scale_precision="e4m3", rotated=False)
    _, top_rot = F.series(rows, "group_size", "top_rel_error", source="lap", scale_precision="e4m3", rotated=True)
    assert np.all(top_native < top_rot)


def test_crossover_group_size_rules():
    rows = [{"source": "s", "scale_precision": "p", "group_size": g, "rotated": r, "rel_mse": v}
            for g, a, b in ((8, 1.0, 2.0), (16, 1.0, 0.5), (32, 1.0, 0.5)) for r, v in ((False, a), (True, b))]
    assert F.crossover_group_size(rows, "s", "p") == 16
    assert F.crossover_group_size(rows, "other", "p") is None


def test_scale_cost_rows():
    x = sample_distribution("laplace", (16, 512), seed=0)
    rows = F.scale_cost_rows({"lap": x}, (16, 32), ("e4m3", "e8m0"))
    assert len(rows) == 4
    by = {(r["group_size"], r["scale_precision"]): r for r in rows}
    for g in (16, 32):
        assert 0 <= by[(g, "e4m3")]["increase"] < by[(g, "e8m0")]["increase"]
    assert by[(16, "e8m0")]["paper_increase"] == 0.40 and by[(32, "e8m0")]["paper_increase"] is None
    mean = F.mean_scale_cost(rows, "lap")
    assert [m["n"] for m in mean] == [1, 1, 1, 1]


def test_stack_rows_and_kurtosis():
    a, b = torch.randn(4, 576), torch.randn(3, 1536)
    m = F.stack_rows([a, b], 256)
    assert m.shape == (4 * 2 + 3 * 6, 256)
    assert torch.equal(m[:2].reshape(-1), a[0, :512])
    assert F.kurtosis(sample_distribution("laplace", (64, 4096))) == pytest.approx(6.0, rel=0.1)
    assert F.kurtosis(sample_distribution("gaussian", (64, 4096))) == pytest.approx(3.0, rel=0.05)


def _tiny():
    from fpq_core.models import make_tiny_model

    return make_tiny_model("llama", seed=0, num_layers=2)[0]


def test_layer_error_table_on_tiny_model():
    model = _tiny()
    rows = F.layer_error_table(model, QuantSpec.nvfp4())
    assert len(rows) == 2 * 7
    assert [r["proj"] for r in rows[:7]] == list(F.PROJECTIONS)
    assert all(0 < r["rel_mse"] < 0.05 and r["global_scale"] > 0 for r in rows)
    # rel_mse is the pipeline's RTN error ||W - What||^2 / ||W||^2
    w = model.model.layers[1].mlp.down_proj.weight.detach()
    wq = __import__("fpq_core.formats", fromlist=["quantize"]).quantize(w, QuantSpec.nvfp4()).dequantize()
    want = ((w - wq).pow(2).sum() / w.pow(2).sum()).item()
    got = next(r for r in rows if r["block"] == 1 and r["proj"] == "down_proj")["rel_mse"]
    assert got == pytest.approx(want, rel=1e-6)
    rot = F.layer_error_table(model, QuantSpec.mxfp4(), "hadamard", blocks=[0], max_rows=8)
    assert len(rot) == 7 and rot[0]["shape"] == tuple(model.model.layers[0].self_attn.q_proj.weight.shape)
    bl, pr, m = F.error_matrix(rows)
    assert bl == [0, 1] and pr == list(F.PROJECTIONS) and m.shape == (2, 7) and not np.isnan(m).any()
    worst = F.worst_layers(rows, n=3)
    assert len(worst) == 3 and worst[0]["rel_mse"] == max(r["rel_mse"] for r in rows)
    ratios = F.error_ratio_rows(rows, rows)
    assert all(r["ratio"] == 1.0 for r in ratios)


def test_layer_error_rejects_bad_group():
    with pytest.raises(ValueError, match="does not divide"):
        F.layer_error(torch.randn(4, 40), QuantSpec.mxfp4())


def test_scale_distribution_on_tiny_model():
    model = _tiny()
    mx = F.scale_distribution(model, QuantSpec.mxfp4())
    assert "E8M0" in mx["label"] and np.all(mx["values"] == np.round(mx["values"]))
    assert mx["counts"].sum() == sum(l.weight.numel() // 32 for b in model.model.layers
                                     for l in (b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj,
                                               b.self_attn.o_proj, b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj))
    nv = F.scale_distribution(model, QuantSpec.nvfp4(), blocks=[0])
    assert "E4M3" in nv["label"] and len(nv["global_scales"]) == 7 and np.all(nv["global_scales"] > 0)
    assert np.all(nv["values"] <= 448)


def test_linear_weights_from_safetensors_folder(tmp_path):
    from safetensors.torch import save_file

    t = {f"model.layers.{b}.{n}.weight": torch.randn(8, 16) for b in range(2)
         for n in ("self_attn.q_proj", "mlp.down_proj")}
    t["model.layers.0.input_layernorm.weight"] = torch.ones(16)
    t["model.embed_tokens.weight"] = torch.randn(10, 16)
    save_file(t, str(tmp_path / "model.safetensors"))
    got = list(F.linear_weights(tmp_path))
    assert [(b, n) for b, n, _ in got] == [(0, "self_attn.q_proj"), (0, "mlp.down_proj"),
                                           (1, "self_attn.q_proj"), (1, "mlp.down_proj")]
    assert got[0][2].dtype == torch.float32
    assert [n for _, n, _ in F.linear_weights(tmp_path, blocks=[1], projections=["down_proj"])] == ["mlp.down_proj"]
    assert F.num_blocks(tmp_path) == 2
    with pytest.raises(ValueError, match="safetensors"):
        list(F.linear_weights(tmp_path / "nope"))


def test_classify_config():
    from fpq_core.config import QuantConfig

    assert F.classify_config(QuantConfig(w_bits=16, a_bits=16).to_dict())[0] == "bf16"
    for m in F.METHODS:
        for fmt in F.FORMATS:
            for ab in (4, 16):
                assert F.classify_config(QuantConfig.preset(m, fmt=fmt, a_bits=ab).to_dict()) == (m, fmt, ab)
    other = QuantConfig.preset("gptq", fmt="mxfp", transform_class="hadamard", hadamard_group_size=32)
    assert F.classify_config(other.to_dict())[0] == "other"
    # the cases where the figures once had a looser rule than fpq_core.paper: now one rule
    from fpq_core import paper as P
    act_order = QuantConfig.preset("gptq", fmt="mxfp", quantization_order="activation")
    not_hadamard = QuantConfig.preset("rtn", fmt="nvfp", transform_class="dct", hadamard_group_size=16)
    for cfg in (act_order, not_hadamard, other):
        assert F.classify_config(cfg.to_dict()) == P.classify(cfg.to_dict())
        assert F.classify_config(cfg.to_dict())[0] == "other"


def _fake_runs(tmp_path):
    from fpq_core.config import QuantConfig
    from fpq_core.runs import RunDir

    ppl = {"rtn": 30.0, "rtn_had": 25.0, "gptq": 24.0, "mr_gptq": 20.0}
    for name, m, fmt, ab in F.grid_cells(acts=(4,)):
        rd = RunDir.create(tmp_path / name)
        cfg = QuantConfig(w_bits=16, a_bits=16) if m == "bf16" else QuantConfig.preset(m, fmt=fmt, a_bits=ab)
        rd.write("run", {"config": cfg.to_dict(), "status": "done"})
        rd.write("layers", [{"rel_error": 0.01}, {"rel_error": 0.03}])
        rd.add_result("wikitext2_ppl", {"ppl": 10.0 if m == "bf16" else ppl[m]})


def test_grid_from_runs_and_comparison(tmp_path):
    from fpq_core.runs import list_runs

    _fake_runs(tmp_path)
    rows = F.grid_rows_from_runs(list_runs(tmp_path))
    assert len(rows) == 9 and {r["method"] for r in rows} == {"bf16", *F.METHODS}
    assert all(r["mean_rel_error"] == pytest.approx(0.02) for r in rows)
    table = F.compare_with_paper(rows)
    assert len(table) == 16
    mx = [r for r in table if r["format"] == "MXFP4" and r["acts"] == "W4A4"]
    assert [r["our_rank"] for r in mx] == [4, 3, 2, 1] and [r["paper_rank"] for r in mx] == [4, 3, 2, 1]
    assert mx[0]["ppl_increase_pct"] == pytest.approx(200.0)
    assert all(r["ppl"] is None and r["our_rank"] is None for r in table if r["acts"] == "W4A16")
    # MXFP4 agrees on all 6 pairs; NVFP4 paper order mr_gptq > gptq > rtn > rtn_had: 5 of 6
    assert F.rank_agreement(table) == pytest.approx(11 / 12)
    assert "MR-GPTQ" in F.format_rows(table)
    json.dumps(table)  # plain data


def test_write_grid_runs_tiny(tmp_path):
    from fpq_core.evaluate import perplexity
    from fpq_core.models import make_tiny_model
    from fpq_core.runs import list_runs

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (1, 16), generator=gen)]
    ids = torch.randint(0, 256, (64,), generator=gen)
    cells = [c for c in F.grid_cells(formats=("nvfp",), acts=(16,), methods=("rtn", "gptq"))]
    make = lambda: make_tiny_model("llama", seed=0, num_layers=1)[0]  # noqa: E731
    F.write_grid_runs(make, batches, lambda m: perplexity(m, ids, 32, 2).ppl, tmp_path, cells=cells)
    rows = F.grid_rows_from_runs(list_runs(tmp_path))
    assert sorted(r["run"] for r in rows) == ["bf16", "nvfp_w4a16_gptq", "nvfp_w4a16_rtn"]
    assert all(r["ppl"] > 1 and r["status"] == "done" for r in rows)
    assert next(r for r in rows if r["run"] == "nvfp_w4a16_rtn")["mean_rel_error"] > 0
    # finished cells are kept (no recomputation)
    F.write_grid_runs(lambda: pytest.fail("should not rebuild"), batches, None, tmp_path, cells=cells)


def test_save_figure_and_format_rows(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    paths = F.save_figure(fig, tmp_path / "out", "fig_a")
    plt.close(fig)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 500 for p in paths)
    with pytest.raises(ValueError, match="figure name"):
        F.save_figure(fig, tmp_path, "../x")
    assert F.format_rows([]) == "(no rows)"
    txt = F.format_rows([{"a": 1.23456, "b": None, "c": float("nan")}])
    assert "1.235" in txt and "-" in txt and "nan" in txt
