"""Quantize: RTN, GPTQ or MR-GPTQ as a background job (separate process, survives refreshes and
closed tabs, one job per device, others queue), with live progress and per-layer errors.
UI only: the work runs in fpq_core.jobs' worker process."""
from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from fpq_core import jobs as J  # noqa: E402
from fpq_core.config import QuantConfig  # noqa: E402

METHODS = {"RTN": "rtn", "RTN + Hadamard": "rtn_had", "GPTQ": "gptq", "MR-GPTQ": "mr_gptq",
           "bf16 baseline (no quantization)": None}
FORMATS = {"MXFP4": "mxfp", "NVFP4": "nvfp", "INT4 (group 32, fp16 scales)": "int"}
TRANSFORMS = ("identity", "hadamard", "dct", "dst", "gsr", "fast_food")

st.title("Quantize")
reg = C.registry()
src = C.model_source()
st.caption(f"Model `{src}` (change it on the Home page). Jobs run in a separate worker process: refresh or "
           "close the tab freely. One job per device at a time; others queue.")

# ----------------------------------------------------------------------------- the form
with st.form("quantize_form"):
    c = st.columns(4)
    method_label = c[0].selectbox("Method", list(METHODS), key="q_method")
    fmt_label = c[1].selectbox("Format", list(FORMATS), key="q_format")
    a_bits = c[2].selectbox("Activations", [16, 4], format_func=lambda b: "W4A16 (weights only)" if b == 16 else "W4A4",
                            key="q_abits")
    device = c[3].selectbox("Device", C.devices(), key="q_device")
    with st.expander("Options (override the method's defaults)"):
        o = st.columns(4)
        transform = o[0].selectbox("Transform", ["(method default)", *TRANSFORMS], key="q_transform")
        tsize = o[1].selectbox("Transform size", ["(group size)", 16, 32, 64, 128], key="q_tsize")
        observer = o[2].selectbox("Weight observer", ["(method default)", "minmax", "mse", "mse_alt"], key="q_observer")
        order = o[3].selectbox("GPTQ order", ["(method default)", "default", "activation"], key="q_order")
        k = st.columns(4)
        n_seq = k[0].number_input("Calibration sequences", 1, 1024, 16, key="q_nseq")
        seq_len = k[1].number_input("Sequence length", 16, 4096, 256, step=16, key="q_len")
        dataset = k[2].selectbox("Calibration set", ["embedded", "c4", "fineweb-edu", "wikitext2"], key="q_data",
                                 help="'embedded' works offline (a C4 sample shipped with the package)")
        label = k[3].text_input("Label (optional)", key="q_label")
    submitted = st.form_submit_button("Start quantization job", type="primary")

if submitted:
    preset = METHODS[method_label]
    fmt = FORMATS[fmt_label]
    try:
        if preset is None:
            cfg = QuantConfig(format=fmt, w_bits=16, a_bits=16).normalized()
        else:
            kw = {}
            if fmt == "int":
                kw.update(w_group_size=32, a_group_size=32)
            if transform != "(method default)":
                kw["transform_class"] = transform
            if tsize != "(group size)":
                kw["hadamard_group_size"] = int(tsize)
            elif preset in ("rtn_had", "mr_gptq") or transform not in ("(method default)", "identity"):
                kw["hadamard_group_size"] = 16 if fmt == "nvfp" else 32
            if observer != "(method default)":
                kw["w_observer"] = observer
            if order != "(method default)":
                kw["quantization_order"] = order
            cfg = QuantConfig.preset(preset, fmt=fmt, w_bits=4, a_bits=int(a_bits), **kw)
        model_src = C.resolved_source(src)
        rid, jid = reg.submit_quantize(model_src, cfg.to_dict(), device=device, dataset=dataset,
                                       num_sequences=int(n_seq), sequence_length=int(seq_len),
                                       label=label or (src if src in ("embedded", "tiny") else ""))
    except (ValueError, KeyError) as e:
        st.error(str(e))
    else:
        st.session_state["last_job"] = jid
        st.session_state["last_run"] = rid
        st.success(f"queued job {jid} (run {rid})")


# ----------------------------------------------------------------------------- live status
def _layer_chart(layers: list[dict], title: str):
    fig = go.Figure()
    for proj in sorted({l["name"].rsplit(".", 1)[-1] for l in layers}):
        ls = [l for l in layers if l["name"].endswith(proj)]
        fig.add_scatter(x=[l["block"] for l in ls], y=[l["rel_error"] for l in ls], mode="lines+markers", name=proj)
    fig.update_layout(title=title, height=320, yaxis_type="log", xaxis_title="decoder block",
                      yaxis_title="relative error", margin=dict(l=10, r=10, t=40, b=10), xaxis_dtick=1 if len(layers) < 300 else None)
    return fig


@st.fragment(run_every=1.5)
def live() -> None:
    jobs = C.jobs_table(reg, kind="quantize", limit=30)
    active = [j for j in jobs if j.status in J.ACTIVE]
    st.subheader(f"Jobs ({len(active)} active)")
    st.caption(C.wait_note())
    for j in active:
        C.show_job(reg, j, "live")
    focus = st.session_state.get("last_run") or (active[0].run_id if active else (jobs[0].run_id if jobs else None))
    if focus:
        layers = reg.layers(focus)
        run = reg.run(focus) or {}
        if layers:
            st.plotly_chart(_layer_chart(layers, f"Per-layer error · run {focus} ({run.get('method')}, {run.get('status')})"),
                            config=C.PLOTLY_CONFIG, width="stretch", key=f"chart-{focus}-{len(layers)}")
            st.caption(f"{len(layers)} Linears quantized · per-layer report: {run.get('layers_path')}")
        elif run:
            st.info(f"run {focus}: {run.get('status')} — waiting for the first layer")
    if jobs:
        st.dataframe([C.job_row(j) for j in jobs], hide_index=True, width="stretch", height=220)


live()

# ----------------------------------------------------------------------------- runs
st.subheader("Runs")
runs = reg.runs()
if not runs:
    st.info("No runs yet: start one above (CLI runs under the data folder's runs/ are listed too).")
else:
    st.dataframe([{"run": r["id"], "method": r["method"], "model": Path(r["model"] or "").name or r["model"],
                   "status": r["status"], "source": r["source"], "label": r["label"],
                   "quantize_s": r["timings"].get("quantize_s"),
                   "ppl": (r["results"].get("wikitext2_ppl") or {}).get("ppl")} for r in runs],
                 hide_index=True, width="stretch", height=240)
    resumable = [r for r in runs if r["status"] in ("cancelled", "failed") and not J.is_baseline(r["config"])]
    if resumable:
        c = st.columns([3, 1])
        pick = c[0].selectbox("Resume a cancelled or failed run (finished blocks are kept)", resumable,
                              format_func=C.run_label, key="resume_pick")
        if c[1].button("Resume", key="resume_go"):
            try:
                jid = reg.resume(pick["id"], device=pick.get("device") or "cpu")
            except (ValueError, KeyError) as e:
                st.error(str(e))
            else:
                st.session_state["last_run"] = pick["id"]
                st.success(f"queued {jid}")
