"""FP-Quant Studio: Streamlit entry point.

Sets up shared state and the page navigation, then runs the selected page. Pages live in
pages/ as `<n>_<Title>.py` and are discovered automatically (sorted by n), so new pages slot
in without touching this file. Pages are UI only: all numerics live in fpq_core.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import streamlit as st

from fpq_core.app_support import device_info

PRODUCT = "FP-Quant Studio"
PAGES_DIR = Path(__file__).resolve().parent / "pages"
sys.path.insert(0, str(PAGES_DIR))
import _common as C  # noqa: E402  (shared UI helpers; pages/_common.py)
from fpq_core import jobs as J  # noqa: E402


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


def _pick_model() -> None:
    """Model source picker: embedded default, hub id, local folder (confined), tiny test model."""
    st.subheader("Model")
    kinds = ["Embedded SmolLM2-135M-Instruct", "Hugging Face hub id", "Local folder",
             "Advanced: tiny random test model"]
    current = C.model_source()
    idx = 3 if current.startswith("tiny") else 0 if current == "embedded" else 2 if current.startswith(("/", "~")) else 1
    kind = st.radio("Source", kinds, index=idx, horizontal=True, key="source_kind")
    text = ""
    if kind == kinds[1]:
        text = st.text_input("Hub id (owner/name)", value=current if idx == 1 else "", key="hub_id",
                             placeholder="HuggingFaceTB/SmolLM2-135M-Instruct")
    elif kind == kinds[2]:
        roots = ", ".join(str(r) for r in J.allowed_roots())
        text = st.text_input("Folder with config.json + *.safetensors", value=current if idx == 2 else "",
                             key="folder", help=f"Allowed roots: {roots} (add more with FPQ_ALLOWED_DIRS)")
    wanted = {kinds[0]: "embedded", kinds[3]: "tiny"}.get(kind, text.strip())
    st.caption("Remote code is never trusted (trust_remote_code=False): only architectures with a built-in "
               "adapter (llama, qwen3, qwen2, mistral) load.")
    if st.button("Use this model", key="use_model"):
        try:
            if not wanted:
                raise ValueError("enter a hub id or a folder first")
            C.resolved_source(wanted)
        except (ValueError, FileNotFoundError) as e:
            st.error(str(e))
        else:
            st.session_state["model_source"] = wanted
            st.rerun()


def _model_facts() -> None:

    src = C.model_source()
    try:
        model, _ = C.get_model(src)
    except Exception as e:  # noqa: BLE001 - show load errors (offline hub, bad folder) to the user
        st.error(f"could not load {src!r}: {e}")
        return
    s = _summary(C.resolved_source(src), model)
    st.markdown(f"**Current model:** `{src}` → {s['architecture']} ({s['model_type']})")
    cols = st.columns(4)
    cols[0].metric("Parameters", f"{s['parameters'] / 1e6:.1f} M")
    cols[1].metric("Decoder blocks", s["num_blocks"])
    cols[2].metric("Hidden size", s["hidden_size"])
    cols[3].metric("Quantizable Linears", len(s["layers"]))
    st.caption(f"intermediate {s['intermediate_size']} · heads {s['num_heads']} (kv {s['num_kv_heads']}) · "
               f"vocab {s['vocab_size']} · {s['dtype']} · Linear parameters {s['linear_parameters'] / 1e6:.1f} M")
    with st.expander(f"Layer list ({len(s['layers'])} Linears)"):
        st.dataframe(s["layers"], hide_index=True, width="stretch", height=300)


@st.cache_data(show_spinner=False)
def _summary(resolved: str, _model) -> dict:
    from fpq_core.layer_stats import model_summary

    return model_summary(_model)


def home() -> None:
    st.title(PRODUCT)
    st.markdown(
        "Open-source toolkit and browser studio for **microscaling FP4 quantization** of LLMs: "
        "MXFP4 (E2M1 elements, E8M0 scales, groups of 32) and NVFP4 (E4M3 scales, groups of 16), "
        "with block rotations (Hadamard and friends), RTN / GPTQ / MR-GPTQ, evaluation and "
        "export to `fp_quant` checkpoints.")
    _pick_model()
    _model_facts()
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
    st.caption(f"{info['gpu']} · CPU {info['cpu']} · Python {info['python']} · torch {info['torch']} · "
               f"data folder {J.studio_home()}")


def main() -> None:
    st.set_page_config(page_title=PRODUCT, layout="wide")
    st.session_state.setdefault("device_info", _device_info())  # shared state for all pages
    st.session_state.setdefault("model_source", C.default_source())
    pages = [st.Page(home, title="Home / model", default=True, url_path="home")]
    pages += [st.Page(str(p.relative_to(PAGES_DIR.parent)), title=_page_title(p)) for p in discover_pages()]
    st.navigation(pages).run()


main()
