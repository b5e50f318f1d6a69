"""Shared Streamlit helpers of the studio pages (UI only; numbers come from fpq_core).

Not a page: app.py's page discovery skips files starting with "_". Pages import it with
``sys.path.insert(0, <pages dir>)`` so it works under ``streamlit run`` and AppTest alike.
"""
from __future__ import annotations

import os
import time

import streamlit as st

from fpq_core import jobs as J

PLOTLY_CONFIG = {"displayModeBar": False}
SOURCE_LABELS = {"embedded": "Embedded SmolLM2-135M-Instruct", "tiny": "Advanced: tiny random test model"}


def default_source() -> str:
    """The model source before the user picks one: $FPQ_APP_MODEL (e.g. 'tiny') or 'embedded'."""
    return os.environ.get("FPQ_APP_MODEL", "embedded").strip() or "embedded"


def model_source() -> str:
    """The model source chosen on the Home page (shared across pages via session state)."""
    return st.session_state.get("model_source") or default_source()


@st.cache_resource(show_spinner="Resolving the model source...")
def _resolved(source: str, home: str) -> str:
    return J.resolve_model_source(source)


def resolved_source(source: str | None = None) -> str:
    return _resolved(source or model_source(), str(J.studio_home()))


@st.cache_resource(show_spinner="Loading the model (first time only)...", max_entries=2)
def _load(resolved: str):
    """(model, tokenizer), float32 on CPU. Cached and NEVER mutated: quantization runs on a fresh
    copy in the job process."""
    from fpq_core.models.loading import load_model

    return load_model(resolved)


def get_model(source: str | None = None):
    return _load(resolved_source(source))


@st.cache_resource
def _registry(home: str) -> J.Registry:
    return J.Registry(home)


def registry() -> J.Registry:
    return _registry(str(J.studio_home()))


def devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def run_label(r: dict) -> str:
    lab = f" · {r['label']}" if r.get("label") else ""
    return f"{r['id']} · {r.get('method') or '?'} · {r.get('status')}{lab}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def job_row(j: J.Job) -> dict:
    return {"job": j.id, "kind": j.kind, "run": j.run_id, "device": j.device, "status": j.status,
            "progress": round(100 * j.progress), "message": (j.message or "")[-120:],
            "time": fmt_seconds(j.seconds), "error": j.error or ""}


def jobs_table(reg: J.Registry, kind: str | None = None, limit: int = 20) -> list[J.Job]:
    reg.reap()
    js = [j for j in reg.jobs(limit=limit) if kind is None or j.kind == kind]
    return js


def show_job(reg: J.Registry, j: J.Job, key: str) -> None:
    """Progress, status and a cancel button for one job."""
    cols = st.columns([4, 1])
    text = f"{j.kind} `{j.id}` on {j.device}: **{j.status}** — {j.message or ''}"
    if j.status in J.ACTIVE:
        cols[0].progress(min(max(j.progress, 0.0), 1.0), text=text)
        if cols[1].button("Cancel", key=f"cancel-{key}-{j.id}"):
            reg.cancel(j.id)
            st.toast(f"cancel requested for {j.id}")
    elif j.status == "failed":
        cols[0].error(f"{text}\n\n{j.error}")
    else:
        cols[0].write(text + f" ({fmt_seconds(j.seconds)})")


def wait_note() -> str:
    return time.strftime("updated %H:%M:%S")
