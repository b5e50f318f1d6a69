"""FP-Quant Studio: Streamlit entry point.

Sets up shared state and the page navigation, then runs the selected page. Pages live in
pages/ as `<n>_<Title>.py` and are discovered automatically (sorted by n), so new pages slot
in without touching this file. Pages are UI only: all numerics live in fpq_core.
"""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from fpq_core.app_support import device_info

PRODUCT = "FP-Quant Studio"
PAGES_DIR = Path(__file__).resolve().parent / "pages"


@st.cache_resource
def _device_info() -> dict[str, str]:
    return device_info()


def _page_title(path: Path) -> str:
    """'1_Formats.py' -> 'Formats', '3_Run_GPTQ.py' -> 'Run GPTQ'."""
    return re.sub(r"^\d+[_ -]*", "", path.stem).replace("_", " ") or path.stem


def discover_pages() -> list[Path]:
    """pages/*.py sorted by their numeric prefix, then name."""
    def key(p: Path):
        m = re.match(r"^(\d+)", p.stem)
        return (int(m.group(1)) if m else 10**6, p.stem)

    return sorted((p for p in PAGES_DIR.glob("*.py") if not p.stem.startswith("_")), key=key)


def home() -> None:
    st.title(PRODUCT)
    st.markdown(
        "Open-source toolkit and browser studio for **microscaling FP4 quantization** of LLMs: "
        "MXFP4 (E2M1 elements, E8M0 scales, groups of 32) and NVFP4 (E4M3 scales, groups of 16), "
        "with block rotations (Hadamard and friends), RTN / GPTQ / MR-GPTQ, evaluation and "
        "export to `fp_quant` checkpoints.")
    st.subheader("Pages")
    pages = discover_pages()
    if not pages:
        st.info("No pages yet.")
    for p in pages:
        st.page_link(str(p.relative_to(PAGES_DIR.parent)), label=_page_title(p))
    st.subheader("This machine")
    info = _device_info()
    cols = st.columns(3)
    cols[0].metric("GPU", info["gpu"].split(" (")[0])
    cols[1].metric("CPU cores", info["cpu_cores"])
    cols[2].metric("Memory", info["memory"])
    st.caption(f"{info['gpu']} · CPU {info['cpu']} · Python {info['python']} · torch {info['torch']}")


def main() -> None:
    st.set_page_config(page_title=PRODUCT, layout="wide")
    st.session_state.setdefault("device_info", _device_info())  # shared state for all pages
    pages = [st.Page(home, title="Home", default=True, url_path="home")]
    pages += [st.Page(str(p.relative_to(PAGES_DIR.parent)), title=_page_title(p)) for p in discover_pages()]
    st.navigation(pages).run()


main()
