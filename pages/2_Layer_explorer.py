"""Layer explorer: RTN error of every Linear of the current model, per-layer statistics, scales,
and two settings side by side. UI only: every number comes from fpq_core.layer_stats."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from fpq_core import analysis as A  # noqa: E402
from fpq_core import layer_stats as L  # noqa: E402
from fpq_core.transforms import available_transforms  # noqa: E402

OBSERVERS = ("minmax", "mse", "mse_alt")
GROUPS = (8, 16, 32, 64, 128, 256)


# ----------------------------------------------------------------------------- cached numerics
# The model argument is underscored (not hashed): the resolved source string keys the cache.


@st.cache_data(max_entries=32, show_spinner=False)
def error_rows(src: str, settings: L.LayerSettings, max_elements: int | None) -> list[dict]:
    model, _ = C.get_model(src)
    return L.layer_error_rows(model, settings, max_elements)


@st.cache_data(max_entries=8, show_spinner=False)
def weight_rows(src: str, transform: str, tsize: int, group: int) -> list[dict]:
    return L.weight_stats(C.get_model(src)[0], transform, tsize, group)


@st.cache_data(max_entries=8, show_spinner=False)
def act_rows(src: str, transform: str, tsize: int, group: int, n_seq: int, seq_len: int) -> list[dict]:
    from fpq_core.data import get_calibration_data

    model, tok = C.get_model(src)
    batches = get_calibration_data("embedded", tok, num_sequences=n_seq, sequence_length=seq_len, seed=0)
    return L.activation_stats(model, batches, transform, tsize, group)


@st.cache_data(max_entries=16, show_spinner=False)
def scale_dist(src: str, settings: L.LayerSettings, max_elements: int | None) -> dict:
    return L.scale_distribution(C.get_model(src)[0], settings, max_elements)


@st.cache_data(show_spinner=False)
def dims(src: str) -> tuple[int, int]:
    """(gcd of all in_features, number of Linears) of the model."""
    s = L.model_summary(C.get_model(src)[0])
    g = 0
    for l in s["layers"]:
        g = math.gcd(g, l["in"])
    return g, len(s["layers"])


# ----------------------------------------------------------------------------- widgets


def settings_widgets(prefix: str, gcd: int, defaults: dict) -> L.LayerSettings:
    c = st.columns(6)
    preset = c[0].selectbox("Format", A.PRESETS[:-1], index=A.PRESETS.index(defaults.get("preset", "MXFP4")),
                            key=f"{prefix}_preset")
    spec0 = A.make_spec(preset)
    groups = [g for g in GROUPS if gcd % g == 0]
    group = c[1].selectbox("Group size", groups, index=groups.index(spec0.group_size) if spec0.group_size in groups else 0,
                           key=f"{prefix}_group_{preset}")
    precs = list(A.SCALE_PRECISIONS)
    prec = c[2].selectbox("Scale precision", precs, index=precs.index(spec0.scale_precision),
                          key=f"{prefix}_prec_{preset}")
    transforms = ["identity"] + [t for t in available_transforms() if t in ("hadamard", "dct", "dst", "gsr", "fast_food")]
    transform = c[3].selectbox("Transform", transforms, index=transforms.index(defaults.get("transform", "identity")),
                               key=f"{prefix}_transform")
    sizes = A.transform_sizes(gcd)
    tdefault = group if group in sizes else sizes[0]
    tsize = c[4].selectbox("Transform size", sizes, index=sizes.index(tdefault), key=f"{prefix}_tsize_{group}",
                           disabled=transform == "identity")
    observer = c[5].selectbox("Observer", OBSERVERS, key=f"{prefix}_observer")
    return L.LayerSettings(preset, group, prec, transform, None if transform == "identity" else tsize, observer)


def heatmap(rows: list[dict], key: str, title: str, log: bool = True, diverging: bool = False):
    blocks, projs, m = L.error_matrix(rows, key)
    z = np.log10(np.where(m > 0, m, np.nan)) if log else m
    fig = go.Figure(go.Heatmap(
        z=z.T, x=blocks, y=projs, customdata=m.T,
        colorscale="RdBu_r" if diverging else "Viridis", zmid=0 if diverging else None,
        hovertemplate="block %{x} · %{y}<br>" + key + " %{customdata:.4g}<extra></extra>",
        colorbar={"title": f"log10 {key}" if log else key}))
    fig.update_layout(title=title, height=330, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="decoder block", yaxis_title="projection", xaxis_dtick=1 if len(blocks) <= 12 else None)
    return fig


# ----------------------------------------------------------------------------- page

st.title("Layer explorer")
src = C.model_source()
try:
    gcd, n_lin = dims(src)
except Exception as e:  # noqa: BLE001
    st.error(f"could not load the model {src!r}: {e}. Pick another one on the Home page.")
    st.stop()
st.caption(f"Model `{src}` · {n_lin} Linears · RTN (round-to-nearest) error of the weights, "
           "rel_mse = ||W - Ŵ||² / ||W||², measured after undoing the rotation.")

st.markdown("**Setting A**")
sa = settings_widgets("a", gcd, {"preset": "MXFP4"})
exact = st.toggle("Exact (every row; slower). Default: an evenly spaced row sample of each Linear "
                  f"(≤ {L.DEFAULT_MAX_ELEMENTS:,} elements, abs-max row kept)", key="exact")
max_el = None if exact else L.DEFAULT_MAX_ELEMENTS
try:
    with st.spinner(f"Quantizing {n_lin} Linears ({sa.label()})..."):
        rows_a = error_rows(src, sa, max_el)
except ValueError as e:
    st.error(str(e))
    st.stop()

errs = np.array([r["rel_mse"] for r in rows_a])
c = st.columns(4)
c[0].metric("Mean rel. MSE", f"{errs.mean():.3e}")
c[1].metric("Worst rel. MSE", f"{errs.max():.3e}")
c[2].metric("Best rel. MSE", f"{errs.min():.3e}")
c[3].metric("Linears", len(rows_a))
st.plotly_chart(heatmap(rows_a, "rel_mse", f"RTN relative error · {sa.label()}"), config=C.PLOTLY_CONFIG,
                width="stretch")

tab_worst, tab_stats, tab_scales, tab_ab = st.tabs(
    ["Worst layers", "Weight & activation statistics", "Scale distributions", "A vs B"])


def kurtosis_chart(rows, name, name_rotated, title):
    """Kurtosis per Linear before/after the rotation, and the table under it."""
    fig = go.Figure()
    x = [f"{r['block']}.{r['proj']}" for r in rows]
    fig.add_scatter(x=x, y=[r["kurtosis"] for r in rows], name=name, mode="markers")
    fig.add_scatter(x=x, y=[r["kurtosis_rotated"] for r in rows], name=name_rotated, mode="markers")
    fig.update_layout(height=300, yaxis_type="log", yaxis_title="kurtosis", margin=dict(l=10, r=10, t=30, b=10),
                      title=title)
    st.plotly_chart(fig, config=C.PLOTLY_CONFIG, width="stretch")
    st.dataframe(rows, hide_index=True, width="stretch", height=240)

with tab_worst:
    n = st.slider("How many", 5, 30, 10, key="n_worst")
    st.dataframe([{k: r[k] for k in ("block", "name", "shape", "rel_mse", "rel_mse_group", "top_rel_error",
                                     "scale_min", "scale_max")} for r in L.worst_layers(rows_a, n=n)],
                 hide_index=True, width="stretch")

with tab_stats:
    tr = sa.transform if sa.transform != "identity" else "hadamard"
    ts = sa.transform_size or (sa.group_size if sa.group_size in A.transform_sizes(gcd) else A.transform_sizes(gcd)[0])
    st.caption(f"Kurtosis (3 = Gaussian, 6 = Laplace) before and after a {tr} rotation of size {ts}, of whole "
               f"tensors and of groups of {sa.group_size} (what one scale sees).")
    w = None
    if st.button("Compute weight statistics", key="w_go") or st.session_state.get("w_done"):
        st.session_state["w_done"] = True
        w = weight_rows(src, tr, ts, sa.group_size)
    if w is not None:
        kurtosis_chart(w, "weights", f"weights after {tr}{ts}", "Weight kurtosis per Linear")
    cc = st.columns(3)
    n_seq = cc[0].number_input("Calibration sequences", 1, 16, 2, key="act_nseq")
    seq_len = cc[1].number_input("Sequence length", 16, 1024, 128, step=16, key="act_len")
    if cc[2].button("Collect activation statistics", key="act_go") or st.session_state.get("act_done"):
        st.session_state["act_done"] = True
        with st.spinner("Running calibration batches through the model..."):
            a = act_rows(src, tr, ts, sa.group_size, int(n_seq), int(seq_len))
        kurtosis_chart(a, "activations", f"after {tr}{ts}", "Input-activation kurtosis per Linear")

with tab_scales:
    if st.button("Compute scale distributions", key="s_go") or st.session_state.get("s_done"):
        st.session_state["s_done"] = True
        sd = scale_dist(src, sa, max_el)
        c1, c2 = st.columns(2)
        fig = go.Figure(go.Bar(x=sd["values"], y=sd["counts"]))
        fig.update_layout(height=300, title=f"Group scales over all Linears: {sd['label']}", xaxis_title=sd["label"],
                          yaxis_title="groups", margin=dict(l=10, r=10, t=40, b=10))
        c1.plotly_chart(fig, config=C.PLOTLY_CONFIG, width="stretch")
        gs = np.array(sd["global_scales"], dtype=float)
        if np.isfinite(gs).any():
            fig = go.Figure(go.Scatter(x=sd["layers"], y=gs, mode="markers"))
            fig.update_layout(height=300, title="Per-tensor global scale", yaxis_type="log",
                              margin=dict(l=10, r=10, t=40, b=10))
            c2.plotly_chart(fig, config=C.PLOTLY_CONFIG, width="stretch")
        else:
            c2.info("This format has no per-tensor global scale (NVFP4 has one).")

with tab_ab:
    st.markdown("**Setting B** (compared with A, layer by layer)")
    sb = settings_widgets("b", gcd, {"preset": "MXFP4", "transform": "hadamard"})
    if st.button("Compare A and B", key="ab_go") or st.session_state.get("ab_done"):
        st.session_state["ab_done"] = True
        try:
            rows_b = error_rows(src, sb, max_el)
        except ValueError as e:
            st.error(str(e))
            st.stop()
        d = L.diff_rows(rows_a, rows_b)
        ratio = np.array([r["ratio"] for r in d])
        c = st.columns(3)
        c[0].metric("Mean rel. MSE, A", f"{np.mean([r['a'] for r in d]):.3e}")
        c[1].metric("Mean rel. MSE, B", f"{np.mean([r['b'] for r in d]):.3e}")
        c[2].metric("Layers where B is better", f"{int((ratio < 1).sum())} / {len(d)}")
        for r in d:
            r["log2_ratio"] = float(np.log2(r["ratio"])) if r["ratio"] > 0 else float("nan")
        st.plotly_chart(heatmap(d, "log2_ratio", f"log2(B / A): {sb.label()} vs {sa.label()} (blue: B better)",
                                log=False, diverging=True), config=C.PLOTLY_CONFIG, width="stretch")
        st.dataframe(d, hide_index=True, width="stretch", height=240)
