"""Export & download: write a finished run as a checkpoint (realquant, pseudoquant, w4a16,
compressed-tensors) in a background job, show the reload verification, download it as a zip or
write it to a folder inside the allowed roots. UI only: the work is fpq_core.export in the worker."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from fpq_core import jobs as J  # noqa: E402

KINDS = {"realquant": "realquant (fp_quant, packed FP4 + scales; transformers / vLLM)",
         "pseudoquant": "pseudoquant (fp_quant, dequantized weights)",
         "w4a16": "w4a16 (weight-only packed)",
         "compressed-tensors": "compressed-tensors (llm-compressor / vLLM)"}
MAX_DOWNLOAD_BYTES = 2 * 1024**3

st.title("Export & download")
reg = C.registry()
runs = [r for r in reg.runs() if r["status"] == "done" and not J.is_baseline(r["config"])]
if not runs:
    st.info("No finished quantization run yet: start one on the Quantize page.")
    st.stop()

with st.form("export_form"):
    run = st.selectbox("Run", runs, format_func=C.run_label, key="x_run")
    c = st.columns([2, 3])
    kind = c[0].selectbox("Format", list(KINDS), format_func=KINDS.get, key="x_kind",
                          help="realquant / pseudoquant need a W4A4 run; W4A16 runs export as w4a16 or compressed-tensors")
    where = c[1].radio("Destination", ["inside the run folder (then download)", "a folder of mine"], key="x_where",
                       horizontal=True)
    dest = st.text_input("Folder (allowed roots: " + ", ".join(map(str, J.allowed_roots())) + ")", key="x_dest",
                         help="Only folders inside the allowed roots; add more with FPQ_ALLOWED_DIRS. '..' is refused.")
    overwrite = st.checkbox("Replace an existing export there", value=True, key="x_overwrite")
    go_export = st.form_submit_button("Export", type="primary")

if go_export:
    params = {"kind": kind, "overwrite": bool(overwrite), "archive": True}
    try:
        if where.startswith("a folder"):
            parent = J.confine_path(Path(dest).parent if dest.strip() else "")
            params["dest"] = str(parent / Path(dest.strip()).name)
        jid = reg.submit("export", run["id"], params, device="cpu")
    except (ValueError, KeyError) as e:
        st.error(str(e))
    else:
        st.session_state["export_job"] = jid
        st.success(f"queued export job {jid}")


@st.fragment(run_every=1.5)
def live() -> None:
    jobs = C.jobs_table(reg, kind="export", limit=10)
    for j in jobs:
        if j.status in J.ACTIVE:
            C.show_job(reg, j, "export")
    jid = st.session_state.get("export_job") or next((j.id for j in jobs if j.status == "done"), None)
    j = reg.job(jid) if jid else None
    if j is None:
        return
    if j.status in J.ACTIVE:
        st.session_state["_export_wait"] = True
        return
    if st.session_state.pop("_export_wait", False):
        st.rerun()  # full rerun once, so the download button is outside the fragment's refresh
    if j.status == "failed":
        st.error(f"export {j.id} failed: {j.error}")


live()

done = [j for j in reg.jobs(limit=50) if j.kind == "export" and j.status == "done" and j.result]
if done:
    st.subheader("Exports")
    pick = st.selectbox("Export", done, key="x_pick",
                        format_func=lambda j: f"{j.id} · {j.params.get('kind')} · run {j.run_id}")
    info = pick.result.get("export", {})
    c = st.columns(4)
    c[0].metric("Verified", "yes" if info.get("verified") else "no")
    c[1].metric("Quantized layers", info.get("n_quantized_layers"))
    c[2].metric("Tensors", info.get("n_tensors"))
    c[3].metric("Size", f"{(info.get('total_bytes') or 0) / 2**20:.1f} MiB")
    st.caption(f"Written to `{pick.result.get('path')}` in {C.fmt_seconds(info.get('seconds'))}")
    for n in info.get("notes") or []:
        st.info(n)
    with st.expander("Verification (reload and compare)", expanded=True):
        st.json(info.get("verification") or {})
    with st.expander("Files"):
        st.write(info.get("files"))
    zp = Path(pick.result.get("zip") or "")
    if zp.is_file() and zp.stat().st_size <= MAX_DOWNLOAD_BYTES:
        st.download_button(f"Download {zp.name} ({zp.stat().st_size / 2**20:.1f} MiB)", data=zp.read_bytes(),
                           file_name=zp.name, mime="application/zip", key="x_download", type="primary")
    elif zp.is_file():
        st.warning(f"{zp} is over {MAX_DOWNLOAD_BYTES / 2**30:.0f} GiB: copy it from the folder instead.")
