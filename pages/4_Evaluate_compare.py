"""Evaluate & compare: WikiText-2 perplexity and lm-eval tasks for runs (as background jobs), a
table and charts comparing runs, and the paper's published numbers beside ours where the setting
matches. UI only: numbers come from fpq_core.jobs (results.json) and fpq_core.paper."""
from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from fpq_core import jobs as J  # noqa: E402
from fpq_core import paper as P  # noqa: E402

st.title("Evaluate & compare")
reg = C.registry()
runs = reg.runs()
done = [r for r in runs if r["status"] == "done"]
st.caption("Evaluations run as background jobs on the chosen device (one job per device; others queue). "
           "Start a bf16 baseline run of the same model on the Quantize page to get recoveries.")

# ----------------------------------------------------------------------------- start evaluations
with st.form("eval_form"):
    picked = st.multiselect("Runs to evaluate", done, format_func=C.run_label, key="e_runs",
                            default=done[:1] if done else [])
    c = st.columns(4)
    windows = c[0].number_input("Perplexity windows (0 = skip)", 0, 1000, 10, key="e_windows")
    seq_len = c[1].number_input("Window length (tokens)", 32, 4096, 512, step=32, key="e_len")
    device = c[2].selectbox("Device", C.devices(), key="e_device")
    limit = c[3].number_input("lm-eval limit per task (0 = all)", 0, 100000, 50, key="e_limit")
    tasks = st.text_input("lm-eval tasks (comma separated, optional; e.g. winogrande, hellaswag)", key="e_tasks",
                          help="Tasks need their datasets offline or the hub reachable; unknown names are an error.")
    go_eval = st.form_submit_button("Start evaluation", type="primary")

if go_eval:
    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    if not picked:
        st.error("pick at least one finished run")
    elif not windows and not task_list:
        st.error("choose perplexity windows or lm-eval tasks")
    else:
        for r in picked:
            jid = reg.submit("evaluate", r["id"], {"ppl_windows": int(windows), "sequence_length": int(seq_len),
                                                  "tasks": task_list, "limit": int(limit) or None}, device=device)
            st.success(f"queued {jid} for run {r['id']}")


@st.fragment(run_every=2.0)
def live() -> None:
    jobs = C.jobs_table(reg, kind="evaluate", limit=20)
    active = [j for j in jobs if j.status in J.ACTIVE]
    for j in active:
        C.show_job(reg, j, "eval")
    if jobs:
        with st.expander(f"Evaluation jobs ({len(active)} active)", expanded=bool(active)):
            st.dataframe([C.job_row(j) for j in jobs], hide_index=True, width="stretch")
    if st.session_state.get("_eval_active") and not active:
        st.session_state["_eval_active"] = False
        st.rerun()  # refresh the comparison once evaluations finish
    st.session_state["_eval_active"] = bool(active)


live()

# ----------------------------------------------------------------------------- comparison
st.subheader("Comparison")
rows = P.compare_rows(done)
if not rows:
    st.info("No finished runs yet.")
else:
    label = {r["id"]: (r.get("label") or r["method"] or r["id"]) for r in done}
    table = [{"run": r["run"], "name": label.get(r["run"]), "method": r["method"], "format": r["format"],
              "acts": f"A{r['a_bits']}" if r["a_bits"] else "-", "ppl": r["ppl"],
              "ppl +% vs bf16": r["ppl_increase_pct"], "lm-eval mean acc": r["acc_mean"],
              "recovery % (ours)": r["recovery_pct"], "recovery % (paper, Llama-3.1-8B-I)": r["paper_recovery_pct"]}
             for r in rows]
    st.dataframe(table, hide_index=True, width="stretch")
    with_ppl = [r for r in rows if r["ppl"]]
    c1, c2 = st.columns(2)
    if with_ppl:
        fig = go.Figure(go.Bar(x=[f"{label.get(r['run'])}<br>{r['run'][-8:]}" for r in with_ppl],
                               y=[r["ppl"] for r in with_ppl], text=[f"{r['ppl']:.2f}" for r in with_ppl]))
        fig.update_layout(title="WikiText-2 perplexity (lower is better)", height=340,
                          margin=dict(l=10, r=10, t=40, b=10))
        c1.plotly_chart(fig, config=C.PLOTLY_CONFIG, width="stretch")
    else:
        c1.info("No perplexity yet: start an evaluation above.")
    matched = [r for r in rows if r["paper_recovery_pct"] is not None]
    if matched:
        fig = go.Figure()
        xs = [f"{r['format']} A{r['a_bits']} {r['method']}<br>{r['run'][-8:]}" for r in matched]
        fig.add_bar(x=xs, y=[r["paper_recovery_pct"] for r in matched], name="paper (Llama-3.1-8B-Instruct)")
        fig.add_bar(x=xs, y=[r["recovery_pct"] for r in matched], name="ours (lm-eval vs our bf16 run)")
        fig.update_layout(title="Accuracy recovery %", barmode="group", height=340, yaxis_range=[50, 101],
                          margin=dict(l=10, r=10, t=40, b=10))
        c2.plotly_chart(fig, config=C.PLOTLY_CONFIG, width="stretch")

# ----------------------------------------------------------------------------- the paper's numbers
st.subheader("The paper's published numbers for the settings above")
keys = sorted({(r["format"], r["a_bits"], r["method"]) for r in rows if r["method"] not in ("bf16", "other")},
              key=str)
paper_rows = [p for k in keys if (p := P.paper_row(*k))]
anchors = [a for k in keys for a in P.ppl_anchors(*k)]
if paper_rows:
    st.dataframe([{k: p[k] for k in ("format", "a_bits", "method", "model", *P.TASKS, "avg", "recovery_pct", "source")}
                  for p in paper_rows], hide_index=True, width="stretch")
else:
    st.info("None of the runs matches a setting of the paper's Tables 1-2 (RTN, RTN+HT, GPTQ, MR-GPTQ in MXFP4/NVFP4).")
if anchors:
    st.markdown("Third-party WikiText perplexity anchors (not from the paper):")
    st.dataframe(anchors, hide_index=True, width="stretch")
with st.expander("All rows we carry from the paper"):
    st.dataframe(P.table_rows(), hide_index=True, width="stretch")
st.caption("Sources: " + P.citation() + " Our numbers come from a much smaller model and fewer tasks: compare "
           "rankings, not absolute values.")
