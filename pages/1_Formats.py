"""FP4 format playground: how MXFP4 / NVFP4 / INT4 variants quantize a tensor.

UI only: every number comes from fpq_core.analysis (cached with st.cache_data).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from fpq_core import analysis as A
from fpq_core.app_support import MAX_UPLOAD_BYTES, UploadError, read_upload
from fpq_core.transforms import available_transforms

DIST_LABELS = {
    "Gaussian": "gaussian",
    "Laplace": "laplace",
    "Student-t (3 dof)": "student_t",
    "Student-t with outliers": "student_t_outliers",
    "Uploaded tensor (.npy / .safetensors)": "upload",
}
OBSERVERS = ("minmax", "mse", "mse_alt")
MAX_ELEMENTS = 1 << 21  # cap on analysed elements so the page stays interactive
PLOTLY_CONFIG = {"displayModeBar": False}
QUICK_ELEMENTS = 1 << 16  # sample used by the comparison charts unless "exact" is ticked


# ----------------------------------------------------------------------------- cached numerics


@st.cache_data(max_entries=16, show_spinner=False)
def load_data(dist: str, rows: int, cols: int, seed: int, upload_name: str | None,
              upload_bytes: bytes | None, tensor_name: str | None) -> tuple[np.ndarray, str]:
    if dist != "upload":
        return A.sample_distribution(dist, (rows, cols), seed).numpy(), ""
    loaded = read_upload(upload_name, upload_bytes, MAX_UPLOAD_BYTES)
    x, note = A.to_rows(loaded.tensors[tensor_name or loaded.names()[0]])
    if x.numel() > MAX_ELEMENTS:
        keep = max(1, MAX_ELEMENTS // x.shape[1])
        note = (note + "; " if note else "") + f"first {keep} of {x.shape[0]} rows analysed"
        x = x[:keep]
    return x.numpy(), note


@st.cache_data(max_entries=64, show_spinner=False)
def report(data_key: tuple, preset: str, group: int, precision: str, transform: str,
           tsize: int | None, observer: str) -> dict:
    x = torch.from_numpy(load_data(*data_key)[0])
    spec = A.make_spec(preset, group, precision)
    return A.format_report(x, spec, transform, tsize, observer)


@st.cache_data(max_entries=32, show_spinner=False)
def crossover(data_key: tuple, preset: str, precision: str, transform: str, observer: str,
              max_elements: int) -> list[dict]:
    x = A.subsample_rows(torch.from_numpy(load_data(*data_key)[0]), max_elements)
    spec = A.make_spec(preset, None, precision)
    return A.rel_mse_vs_group_size(x, spec, A.GROUP_SIZES, transform, observer)


@st.cache_data(max_entries=32, show_spinner=False)
def scale_costs(data_key: tuple, preset: str, group: int, transform: str, tsize: int | None,
                observer: str, max_elements: int) -> list[dict]:
    x = A.subsample_rows(torch.from_numpy(load_data(*data_key)[0]), max_elements)
    spec = A.make_spec(preset, group, None)
    return A.scale_precision_comparison(x, spec, A.SCALE_PRECISIONS, transform, tsize, observer)


@st.cache_data(show_spinner=False)
def preset_defaults(preset: str) -> dict:
    return A.spec_summary(A.make_spec(preset))


@st.cache_data(show_spinner=False)
def element_grid(preset: str) -> list[float]:
    return A.element_grid(A.make_spec(preset)).tolist()


def _run(fn, *args):
    """Call a cached computation; show a clear error and stop the page on bad input."""
    try:
        with st.spinner("Quantizing…"):
            return fn(*args)
    except (ValueError, TypeError, NotImplementedError, UploadError) as e:
        st.error(f"{type(e).__name__}: {e}")
        st.stop()


# ----------------------------------------------------------------------------- widgets

st.title("FP4 format playground")
st.caption("Quantize a sample with MXFP4, NVFP4 and relatives, optionally after a block "
           "rotation, and see where the error comes from (paper §3: Laplace vs Normal, the "
           "rotation crossover, top-element error, E8M0 vs E4M3 scale cost).")

sb = st.sidebar
sb.header("Data")
dist_label = sb.selectbox("Distribution", list(DIST_LABELS), key="dist")
dist = DIST_LABELS[dist_label]
upload_name = upload_bytes = tensor_name = None
rows, cols, seed = 64, 4096, 0
if dist == "upload":
    f = sb.file_uploader("Tensor file", type=["npy", "safetensors"], key="upload",
                         help="numpy.save arrays or safetensors files; pickle files are refused")
    if f is None:
        st.info("Upload a .npy or .safetensors file in the sidebar to analyse it.")
        st.stop()
    upload_name, upload_bytes = f.name, f.getvalue()
    try:
        names = read_upload(upload_name, upload_bytes, MAX_UPLOAD_BYTES).names()
    except UploadError as e:
        st.error(str(e))
        st.stop()
    tensor_name = sb.selectbox("Tensor", names, key="tensor_name") if len(names) > 1 else names[0]
else:
    rows = sb.select_slider("Rows", [8, 16, 32, 64, 128, 256, 512], value=64, key="rows")
    cols = sb.select_slider("Columns (K)", [256, 512, 1024, 2048, 4096, 8192], value=4096, key="cols")
    seed = int(sb.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed"))

sb.header("Format")
preset = sb.selectbox("Preset", A.PRESETS, key="preset")
defaults = preset_defaults(preset)
group = sb.selectbox("Group size", A.GROUP_SIZES, index=A.GROUP_SIZES.index(defaults["group_size"]),
                     key=f"group_{preset}")
precision = sb.selectbox("Scale precision", A.SCALE_PRECISIONS,
                         index=A.SCALE_PRECISIONS.index(defaults["scale_precision"]),
                         key=f"precision_{preset}")
observer = sb.selectbox("Observer (scale search)", OBSERVERS, key="observer",
                        help="mse / mse_alt search the scales per group: much slower than minmax")
exact = sb.checkbox("Exact comparison charts (slow)", value=False, key="exact",
                    help=f"Off: the crossover and scale-cost charts use min-max scales on the first "
                         f"{QUICK_ELEMENTS} elements. On: the selected observer on the whole sample.")
cmp_observer, cmp_elements = (observer, MAX_ELEMENTS) if exact else ("minmax", QUICK_ELEMENTS)

data_key = (dist, rows, cols, seed, upload_name, upload_bytes, tensor_name)
x_np, note = _run(load_data, *data_key)
K = x_np.shape[1]

sb.header("Rotation")
transform = sb.selectbox("Transform", available_transforms(), key="transform")
sizes = A.transform_sizes(K)
size_choice = sb.selectbox("Transform size", ["= group size", *sizes], key="tsize",
                           disabled=transform == "identity")
tsize = None if size_choice == "= group size" else int(size_choice)

# ----------------------------------------------------------------------------- results

if note:
    st.caption(f"Data: {note}.")
r = _run(report, data_key, preset, group, precision, transform, tsize, observer)
m, spec = r["metrics"], r["spec"]

c = st.columns(5)
c[0].metric("Relative MSE", f"{m['rel_mse']:.3e}", help="mean over groups of ||x−x̂||²/||x||²")
c[1].metric("Top-element error", f"{m['top_rel_error']:.3e}",
            help="mean over groups of (x_top−x̂_top)²/x_top², x_top = abs-max element")
c[2].metric("Bits / element", f"{spec['bits_per_element']:.3g}")
c[3].metric("Distinct scales", f"{m['scale_distinct']}")
c[4].metric("Global scale", "none" if m["global_scale"] is None else f"{m['global_scale']:.3e}")
st.caption(f"{preset}: {spec['format']}{spec['bits']}, group {spec['group_size']}, "
           f"{spec['scale_precision']} scales, observer {observer}, transform {transform}"
           f"{'' if transform == 'identity' else f' (size {tsize or group})'} · data {x_np.shape[0]}×{K}, "
           f"{m['groups']} groups ({m['zero_groups']} all-zero) · global rel. MSE {m['rel_mse_global']:.3e}")

left, right = st.columns(2)
with left:
    grid = element_grid(preset)
    st.subheader("Element grid" if spec["format"] != "fp" else "E2M1 grid")
    fig = go.Figure(go.Scatter(x=grid, y=[0] * len(grid), mode="markers+text", text=[f"{v:g}" for v in grid],
                               textposition=["top center", "bottom center"] * (len(grid) // 2 + 1),
                               marker=dict(size=10)))
    fig.update_layout(height=220, yaxis=dict(visible=False), xaxis_title="representable value (× group scale)",
                      margin=dict(l=10, r=10, t=10, b=40))
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG)

    st.subheader("Group scales")
    s = r["scales"]
    fig = go.Figure(go.Bar(x=s["values"], y=s["counts"]))
    fig.update_layout(height=300, xaxis_title=s["label"], yaxis_title="groups", margin=dict(l=10, r=10, t=10, b=40))
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG)

with right:
    st.subheader("Values before / after quantization")
    v = r["values"]
    log_y = st.checkbox("log counts", value=True, key="logy")
    fig = go.Figure([
        go.Bar(x=v["centers"], y=v["before"], name="original", width=v["width"], opacity=0.55),
        go.Bar(x=v["centers"], y=v["after"], name="dequantized", width=v["width"], opacity=0.55),
    ])
    fig.update_layout(barmode="overlay", height=560, xaxis_title="value", yaxis_title="count",
                      yaxis_type="log" if log_y else "linear", margin=dict(l=10, r=10, t=40, b=40),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG)

st.subheader("Rotation crossover: relative MSE against group size")
rot = transform if transform != "identity" else "hadamard"
st.caption(f"Each group size G without a transform and with a {rot} of size G, same scale precision "
           f"({precision}), {cmp_observer} scales"
           f"{'' if exact else f', first {QUICK_ELEMENTS} elements'}. The paper predicts that for "
           "E4M3-like scales rotation hurts at small G and helps at large G (Laplace-like data); "
           "with E8M0 scales it helps throughout.")
rows_x = _run(crossover, data_key, preset, precision, rot, cmp_observer, cmp_elements)
a, b = st.columns(2)
for col, metric, title in ((a, "rel_mse", "relative MSE"), (b, "top_rel_error", "top-element error")):
    fig = go.Figure()
    for rotated, name in ((False, "identity"), (True, rot)):
        pts = [row for row in rows_x if row["rotated"] == rotated]
        fig.add_trace(go.Scatter(x=[p["group_size"] for p in pts], y=[p[metric] for p in pts],
                                 mode="lines+markers", name=name))
    fig.update_layout(height=340, xaxis=dict(type="log", title="group size", tickvals=list(A.GROUP_SIZES)),
                      yaxis=dict(type="log", title=title), margin=dict(l=10, r=10, t=40, b=40),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    col.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG)

st.subheader("Scale precision cost")
st.caption(f"Same format, group {group} and transform, only the scale format changes "
           "(paper App. C: E4M3 ≈ +10%, E8M0 ≈ +40% over unquantized scales on real weights).")
costs = _run(scale_costs, data_key, preset, group, transform, tsize, cmp_observer, cmp_elements)
fig = go.Figure(go.Bar(x=[c_["scale_precision"] for c_ in costs], y=[c_["rel_mse"] for c_ in costs],
                       text=[f"{c_['rel_mse']:.3e}" for c_ in costs], textposition="outside"))
fig.update_layout(height=300, yaxis_title="relative MSE", xaxis_title="scale precision",
                  margin=dict(l=10, r=10, t=10, b=40))
st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG)
