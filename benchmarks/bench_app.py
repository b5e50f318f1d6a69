"""Studio speed with the embedded SmolLM2-135M: each page's first render once the model is cached
(AppTest timing), and the full layer-error heatmap (210 Linears, RTN; sampled and exact).

    python3 benchmarks/bench_app.py [--model embedded] [--skip-exact]

Prints a table and writes benchmarks/results/app_speed.json. Targets: < 2 s per page and
< 20 s for the heatmap on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = ["app.py", "pages/1_Formats.py", "pages/2_Layer_explorer.py", "pages/3_Quantize.py",
         "pages/4_Evaluate_compare.py", "pages/5_Export.py"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--skip-exact", action="store_true", help="skip the exact (all rows) heatmap")
    a = ap.parse_args()
    os.environ.setdefault("FPQ_HOME", tempfile.mkdtemp(prefix="fpq-bench-"))
    os.environ["FPQ_APP_MODEL"] = a.model
    import torch
    from streamlit.testing.v1 import AppTest

    from fpq_core import jobs as J
    from fpq_core import layer_stats as L
    from fpq_core.models.loading import load_model

    out = {"model": a.model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_avg_start": os.getloadavg(), "pages": {}, "heatmap": {}}
    t0 = time.perf_counter()
    model, _ = load_model(J.resolve_model_source(a.model))
    out["model_load_s"] = time.perf_counter() - t0

    for label, max_el in [("sampled", L.DEFAULT_MAX_ELEMENTS)] + ([] if a.skip_exact else [("exact", None)]):
        for s in (L.LayerSettings("MXFP4"), L.LayerSettings("NVFP4"),
                  L.LayerSettings("MXFP4", transform="hadamard", transform_size=32)):
            t0 = time.perf_counter()
            rows = L.layer_error_rows(model, s, max_el)
            out["heatmap"][f"{label}: {s.label()}"] = {"seconds": time.perf_counter() - t0, "linears": len(rows)}

    # warm: the first AppTest run loads the model into st.cache_resource and fills st.cache_data
    for p in PAGES:
        at = AppTest.from_file(str(REPO / p), default_timeout=900)
        t0 = time.perf_counter()
        at.run()
        warm = time.perf_counter() - t0
        at2 = AppTest.from_file(str(REPO / p), default_timeout=900)
        t0 = time.perf_counter()
        at2.run()
        out["pages"][p] = {"first_render_s": warm, "cached_render_s": time.perf_counter() - t0,
                           "exception": [e.value for e in at2.exception]}
    out["load_avg_end"] = os.getloadavg()

    print(f"model {a.model}: load {out['model_load_s']:.1f} s; load average {out['load_avg_start'][0]:.1f}")
    print(f"{'page':34s} {'first (cold caches) s':>22s} {'model cached s':>15s}")
    for p, r in out["pages"].items():
        print(f"{p:34s} {r['first_render_s']:22.2f} {r['cached_render_s']:15.2f}")
    print(f"{'heatmap (210 Linears, RTN)':60s} {'s':>8s}")
    for k, r in out["heatmap"].items():
        print(f"{k:60s} {r['seconds']:8.1f}")
    dest = REPO / "benchmarks" / "results" / "app_speed.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
