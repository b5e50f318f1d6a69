"""AppTest smoke tests of the entry point and the format playground page."""
from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from ._apptest import metric as _metric  # noqa: E402
from ._apptest import run_page  # noqa: E402

TIMEOUT = 60


def _run(path: str) -> AppTest:
    return run_page(path, TIMEOUT)


def _small(at: AppTest) -> AppTest:
    """Shrink the sample so reruns stay fast."""
    at.select_slider(key="rows").set_value(16)
    at.select_slider(key="cols").set_value(1024)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_home_renders_with_links_and_device_info():
    at = _run("app.py")
    assert any("FP-Quant Studio" in t.value for t in at.title)
    assert _metric(at, "CPU cores")
    assert _metric(at, "GPU")
    md = " ".join(m.value for m in at.markdown)
    assert "MXFP4" in md and "NVFP4" in md


def test_home_navigates_to_formats():
    at = _run("app.py")
    at.switch_page("pages/1_Formats.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("FP4 format playground" in t.value for t in at.title)


def test_formats_page_default_metrics():
    at = _run("pages/1_Formats.py")
    rel = float(_metric(at, "Relative MSE"))
    top = float(_metric(at, "Top-element error"))
    assert 0 < rel < 0.1 and 0 <= top < 0.1
    assert _metric(at, "Bits / element") == "4.25"  # MXFP4: 4 + 8/32
    assert not at.error


@pytest.mark.parametrize("preset", ["NVFP4", "NVINT4", "MXINT4", "INT4", "FP4 (custom)"])
def test_formats_page_presets(preset):
    at = _small(_run("pages/1_Formats.py"))
    at.selectbox(key="preset").set_value(preset)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert float(_metric(at, "Relative MSE")) > 0


def test_formats_page_transform_distribution_and_widgets():
    at = _small(_run("pages/1_Formats.py"))
    base = float(_metric(at, "Relative MSE"))
    at.selectbox(key="transform").set_value("hadamard")
    at.run()
    assert not at.exception
    assert float(_metric(at, "Relative MSE")) != base
    at.selectbox(key="tsize").set_value(64)
    at.selectbox(key="dist").set_value("Laplace")
    at.selectbox(key="observer").set_value("mse")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="dist").set_value("Student-t with outliers")
    at.selectbox(key="preset").set_value("NVFP4")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="group_NVFP4").set_value(64)
    at.selectbox(key="precision_NVFP4").set_value("e8m0")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert float(_metric(at, "Relative MSE")) > 0


def test_formats_page_upload_prompt():
    at = _run("pages/1_Formats.py")
    at.selectbox(key="dist").set_value("Uploaded tensor (.npy / .safetensors)")
    at.run()
    assert not at.exception
    assert any("Upload" in i.value for i in at.info)
