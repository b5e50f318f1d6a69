"""AppTest of every studio page on the tiny random model (FPQ_APP_MODEL=tiny, FPQ_HOME in a tmp dir),
including real background jobs: quantize (RTN + a bf16 baseline), evaluate (perplexity), export."""
from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from fpq_core import jobs as J  # noqa: E402

from ._apptest import metric as _metric  # noqa: E402
from ._apptest import ok as _ok  # noqa: E402
from ._apptest import run_page  # noqa: E402

TIMEOUT = 120
JOB_TIMEOUT = 240


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    home = tmp_path_factory.mktemp("fpq_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPQ_HOME", str(home))
        mp.setenv("FPQ_APP_MODEL", "tiny")
        mp.delenv("FPQ_ALLOWED_DIRS", raising=False)
        yield J.Registry(home)


def _run(path: str) -> AppTest:
    return run_page(path, TIMEOUT)


def _submit(at: AppTest) -> AppTest:
    """Click the page's (single) form submit button."""
    at.button[0].click()
    at.run()
    return _ok(at)


def test_home_shows_tiny_model_and_refuses_traversal(studio):
    at = _run("app.py")
    assert _metric(at, "Decoder blocks") == "2"
    assert _metric(at, "Quantizable Linears") == "14"
    assert _metric(at, "CPU cores")
    at.radio(key="source_kind").set_value("Local folder")
    at.run()
    at.text_input(key="folder").set_value(f"{studio.home}/../../etc")
    at.button(key="use_model").click()
    at.run()
    _ok(at)
    assert any("'..'" in e.value for e in at.error)
    at.text_input(key="folder").set_value("/etc")
    at.button(key="use_model").click()
    at.run()
    assert any("outside the allowed folders" in e.value for e in _ok(at).error)


def test_layer_explorer_heatmap_stats_and_ab(studio):
    at = _run("pages/2_Layer_explorer.py")
    assert _metric(at, "Linears") == "14"
    at.button(key="ab_go").click()
    at.run()
    mx = float(_metric(at, "Mean rel. MSE"))
    assert 0 < mx < 0.1
    at.selectbox(key="a_preset").set_value("NVFP4")
    at.run()
    assert float(_metric(_ok(at), "Mean rel. MSE")) < mx          # NVFP4 (g16, e4m3) beats MXFP4
    assert "Layers where B is better" in [m.label for m in at.metric]
    for key in ("w_go", "act_go", "s_go"):
        at.button(key=key).click()
        at.run()
        _ok(at)
    assert len(at.dataframe) >= 4                                  # worst, weights, activations, diff
    assert at.get("plotly_chart")
    at.selectbox(key="b_transform").set_value("dct")
    at.run()
    _ok(at)


def test_quantize_page_runs_jobs(studio):
    at = _run("pages/3_Quantize.py")
    assert any("No runs yet" in i.value for i in at.info)
    at.selectbox(key="q_method").set_value("bf16 baseline (no quantization)")
    _submit(at)
    at.selectbox(key="q_method").set_value("RTN")
    at.selectbox(key="q_format").set_value("NVFP4")
    at.number_input(key="q_nseq").set_value(2)
    at.number_input(key="q_len").set_value(64)
    _submit(at)
    assert len(at.success) == 1
    jobs = studio.jobs()
    assert len(jobs) == 2
    for j in jobs:
        done = studio.wait(j.id, timeout=JOB_TIMEOUT)
        assert done.status == "done", (done.error, done.message)
    at.run()
    _ok(at)
    assert at.get("plotly_chart")                                   # per-layer errors of the run
    runs = studio.runs()
    assert sorted(r["status"] for r in runs) == ["done", "done"]
    q = next(r for r in runs if not J.is_baseline(r["config"]))
    assert len(studio.layers(q["id"])) == 14


def test_evaluate_page_perplexity_and_paper(studio):
    at = _run("pages/4_Evaluate_compare.py")
    runs = [r for r in studio.runs() if r["status"] == "done"]
    assert len(runs) == 2, "needs the runs of test_quantize_page_runs_jobs"
    at.multiselect(key="e_runs").set_value(runs)
    at.number_input(key="e_windows").set_value(2)
    at.number_input(key="e_len").set_value(64)
    _submit(at)
    assert len(at.success) == 2
    for j in studio.jobs():
        if j.kind == "evaluate":
            done = studio.wait(j.id, timeout=JOB_TIMEOUT)
            assert done.status == "done", done.error
    at = _run("pages/4_Evaluate_compare.py")
    table = next(d.value for d in at.dataframe if "ppl" in d.value.columns)
    assert table["ppl"].notna().all()
    q = table[table["method"] == "rtn"].iloc[0]
    assert q["recovery % (paper, Llama-3.1-8B-I)"] == pytest.approx(98.02)   # NVFP4 W4A16 RTN, Table 2
    assert any("2509.23202" in c.value for c in at.caption)


def test_export_page_exports_verifies_and_offers_download(studio):
    at = _run("pages/5_Export.py")
    at.selectbox(key="x_kind").set_value("w4a16")                  # the run is W4A16
    _submit(at)
    jid = next(j.id for j in studio.jobs() if j.kind == "export")
    done = studio.wait(jid, timeout=JOB_TIMEOUT)
    assert done.status == "done", done.error
    at = _run("pages/5_Export.py")
    assert _metric(at, "Verified") == "yes"
    assert at.get("download_button")
    # writing to a folder outside the allowed roots is refused
    at.radio(key="x_where").set_value("a folder of mine")
    at.text_input(key="x_dest").set_value("/etc/fpq-export")
    _submit(at)
    assert any("outside the allowed folders" in e.value for e in at.error)
