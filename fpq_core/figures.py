"""Plot data for the paper-figure notebooks (and the app's Layer explorer): pure functions.

Every function returns plain rows (lists of dicts) or numpy arrays; nothing here draws, except
``save_figure``, which writes an already-drawn matplotlib figure to PNG and SVG. Quantization is
delegated to ``fpq_core.formats`` and ``fpq_core.analysis``; all arithmetic is float32, no grads.

Sections: paper constants (typed from ../shared/reference/paper-results.md, each with its
source), weights of a model, format error analysis (rotation crossover, scale cost), per-layer
error maps, scale distributions, Table-1 grids read from run directories.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------- paper constants

PAPER = "Egiazarian et al., arXiv 2509.23202"
METHODS = ("rtn", "rtn_had", "gptq", "mr_gptq")
METHOD_LABELS = {"bf16": "BF16", "rtn": "RTN", "rtn_had": "RTN+HT", "gptq": "GPTQ", "mr_gptq": "MR-GPTQ"}
FORMATS = ("mxfp", "nvfp")
FORMAT_LABELS = {"mxfp": "MXFP4", "nvfp": "NVFP4"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Average recovery % vs FP16 on MMLU-CoT, GSM8K, HellaSwag, WinoGrande, Llama-3.1-8B-Instruct,
# emulated quantization. Keys: (format, a_bits, method).
# Source: paper-results.md §1.1 (paper Table 1, W4A4) and §1.2 (paper Table 2, W4A16; the paper
# has no MR-GPTQ row for W4A16, and its "RTN+Had" is our rtn_had).
PAPER_RECOVERY: dict[tuple[str, int, str], float] = {
    ("nvfp", 4, "rtn"): 94.67, ("nvfp", 4, "rtn_had"): 93.82,
    ("nvfp", 4, "gptq"): 95.92, ("nvfp", 4, "mr_gptq"): 96.08,
    ("mxfp", 4, "rtn"): 87.83, ("mxfp", 4, "rtn_had"): 89.26,
    ("mxfp", 4, "gptq"): 89.47, ("mxfp", 4, "mr_gptq"): 93.31,
    ("nvfp", 16, "rtn"): 98.02, ("nvfp", 16, "rtn_had"): 96.80, ("nvfp", 16, "gptq"): 97.96,
    ("mxfp", 16, "rtn"): 95.58, ("mxfp", 16, "rtn_had"): 93.51, ("mxfp", 16, "gptq"): 96.76,
}
PAPER_RECOVERY_SOURCE = ("paper Table 1 (W4A4) and Table 2 (W4A16), Llama-3.1-8B-Instruct, mean recovery % "
                         "on MMLU-CoT/GSM8K/HellaSwag/WinoGrande; via shared/reference/paper-results.md §1.1-1.2")

# Relative-MSE increase of quantized scales over unquantized ones on weights, G = 16, block 15 of
# Llama-3.1-8B-Instruct, averaged over the layers (App. C; E8M0 with the 4/3 multiplier, which is
# our "fpquant" x3 rule). Source: paper-results.md §1.6 "App. C".
PAPER_SCALE_COST = {"e4m3": 0.10, "e8m0": 0.40}
PAPER_SCALE_COST_SOURCE = ("paper App. C: Llama-3.1-8B-Instruct block 15 weights, G=16, about +10% (E4M3) "
                           "and +40% (E8M0) relative MSE over unquantized scales; via paper-results.md §1.6")

# ----------------------------------------------------------------------------- small helpers


def save_figure(fig, out_dir: str | os.PathLike, name: str, dpi: int = 110) -> list[Path]:
    """Write a matplotlib figure as OUT_DIR/name.png and .svg; returns the two paths."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"figure name {name!r} must use letters, digits, '_', '-', '.' only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def format_rows(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.4g}") -> str:
    """A plain-text table of rows (dicts) for printing in notebooks and the CLI."""
    if not rows:
        return "(no rows)"
    cols = columns or list(rows[0])

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else floatfmt.format(v)
        return str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(b) for b in body])


def short_name(name: str) -> str:
    """'self_attn.q_proj' -> 'q_proj'."""
    return name.rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------- weights

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)\.weight$")


def linear_weights(source, blocks: Iterable[int] | None = None,
                   projections: Iterable[str] | None = None) -> Iterator[tuple[int, str, torch.Tensor]]:
    """Yield (block, linear name, float32 weight (out, in)) of the decoder blocks' Linears.

    ``source``: a loaded model (uses its adapter), or "embedded" / a folder of *.safetensors
    (reads only the requested tensors: no model is built, ~1 s for SmolLM2). ``blocks``: block
    indices to keep (default all); ``projections``: short names to keep (e.g. "q_proj")."""
    keep_b = None if blocks is None else {int(b) for b in blocks}
    keep_p = None if projections is None else set(projections)
    if isinstance(source, torch.nn.Module):
        from fpq_core.models import get_adapter

        ad = get_adapter(source)
        for bi, block in enumerate(ad.get_blocks(source)):
            if keep_b is not None and bi not in keep_b:
                continue
            for name, lin in ad.block_linears(block).items():
                if keep_p is None or short_name(name) in keep_p:
                    yield bi, name, lin.weight.detach().float()
        return
    yield from _safetensors_linears(_weights_folder(source), keep_b, keep_p)


def _weights_folder(source) -> Path:
    if source in (None, "embedded"):
        from fpq_core.models import embedded_model_path

        return Path(embedded_model_path())
    p = Path(source)
    if not p.is_dir() or not list(p.glob("*.safetensors")):
        raise ValueError(f"{source!r} is not a model, 'embedded', or a folder with *.safetensors files")
    return p


def _safetensors_linears(folder: Path, keep_b, keep_p):
    from safetensors import safe_open

    found = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                m = _LAYER_KEY.search(key)
                if not m or "norm" in m.group(2) or "embed" in m.group(2):
                    continue
                bi, name = int(m.group(1)), m.group(2)
                if short_name(name) not in PROJECTIONS:
                    continue
                if (keep_b is None or bi in keep_b) and (keep_p is None or short_name(name) in keep_p):
                    found.append((bi, PROJECTIONS.index(short_name(name)), name, f, key))
    for bi, _, name, f, key in sorted(found):
        with safe_open(str(f), "pt") as st:
            yield bi, name, st.get_tensor(key).float()


def stack_rows(tensors: Iterable[torch.Tensor], width: int) -> torch.Tensor:
    """Concatenate tensors of different shapes as one float32 (rows, width) matrix: each is cropped
    to a multiple of ``width`` along its last dim (analysis.to_rows), then cut into rows of
    ``width``; groups of any size dividing ``width`` stay inside one original row."""
    from fpq_core.analysis import to_rows

    parts = [to_rows(t, multiple=int(width))[0].reshape(-1, int(width)) for t in tensors]
    if not parts:
        raise ValueError("stack_rows needs at least one tensor")
    return torch.cat(parts, 0)


def kurtosis(x: torch.Tensor) -> float:
    """Excess-free (Pearson) kurtosis E[(x-mu)^4]/Var^2: 3 for a Normal, 6 for a Laplace."""
    x = x.detach().double().reshape(-1)
    d = x - x.mean()
    return float(d.pow(4).mean() / d.pow(2).mean().pow(2))


def num_blocks(source) -> int:
    """Number of decoder blocks of a model or a safetensors folder ("embedded")."""
    if isinstance(source, torch.nn.Module):
        from fpq_core.models import get_adapter

        return len(get_adapter(source).get_blocks(source))
    from safetensors import safe_open

    n = -1
    for f in _weights_folder(source).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                m = _LAYER_KEY.search(key)
                if m:
                    n = max(n, int(m.group(1)))
    return n + 1


# ----------------------------------------------------------------------------- format error analysis


def fp4_spec(group_size: int, scale_precision: str):
    """Plain FP4 (E2M1) with the given group size and scale precision (fp16 | e8m0 | e4m3)."""
    from fpq_core.formats import QuantSpec

    return QuantSpec(format="fp", bits=4, group_size=int(group_size), scale_precision=scale_precision)


def crossover_rows(samples: Mapping[str, torch.Tensor], scale_precisions=("e4m3", "e8m0"),
                   group_sizes=(8, 16, 32, 64, 128, 256), transform: str = "hadamard") -> list[dict]:
    """Relative MSE and top-element error vs group size, native and rotated (transform of the
    group size), for each named sample (..., K) and scale precision (paper §3, Fig. 3).

    Rows: source, scale_precision, group_size, rotated, rel_mse, top_rel_error. Samples whose
    last dimension is not a multiple of max(group_sizes) are cropped (analysis.to_rows)."""
    from fpq_core.analysis import rel_mse_vs_group_size, to_rows

    rows = []
    for src, x in samples.items():
        xm, _ = to_rows(x, multiple=max(group_sizes))  # (rows, K)
        for prec in scale_precisions:
            spec = fp4_spec(min(group_sizes), prec)
            for r in rel_mse_vs_group_size(xm, spec, group_sizes, transform):
                rows.append({"source": src, "scale_precision": prec, **r})
    return rows


def crossover_group_size(rows: list[dict], source: str, scale_precision: str,
                         metric: str = "rel_mse") -> int | None:
    """Smallest group size from which the rotated error stays below the native one (None if never)."""
    pairs = {}
    for r in rows:
        if r["source"] == source and r["scale_precision"] == scale_precision:
            pairs.setdefault(r["group_size"], {})[r["rotated"]] = r[metric]
    sizes = sorted(g for g, p in pairs.items() if len(p) == 2)
    best = None
    for g in reversed(sizes):
        if pairs[g][True] < pairs[g][False]:
            best = g
        else:
            break
    return best


def series(rows: list[dict], x: str, y: str, **match) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) of the rows matching every key=value in ``match``, sorted by x."""
    sel = sorted((r[x], r[y]) for r in rows if all(r.get(k) == v for k, v in match.items()))
    return np.array([a for a, _ in sel]), np.array([b for _, b in sel])


def scale_cost_rows(samples: Mapping[str, torch.Tensor], group_sizes=(16, 32),
                    precisions=("e4m3", "e8m0"), transform: str | None = None) -> list[dict]:
    """Relative-MSE increase of quantized scales over unquantized (fp16) scales (paper App. C).

    Rows: source, group_size, scale_precision, rel_mse, rel_mse_fp16, increase (fraction: 0.40 =
    +40%), paper_increase (App. C value at G=16, else None)."""
    from fpq_core.analysis import format_error, to_rows

    rows = []
    for src, x in samples.items():
        xm, _ = to_rows(x, multiple=max(group_sizes))
        for g in group_sizes:
            size = g if transform else None
            base = format_error(xm, fp4_spec(g, "fp16"), transform, size)["rel_mse"]
            for p in precisions:
                e = format_error(xm, fp4_spec(g, p), transform, size)["rel_mse"]
                rows.append({"source": src, "group_size": g, "scale_precision": p, "rel_mse": e,
                             "rel_mse_fp16": base, "increase": e / base - 1.0,
                             "paper_increase": PAPER_SCALE_COST.get(p) if g == 16 else None})
    return rows


def mean_scale_cost(rows: list[dict], source_prefix: str = "") -> list[dict]:
    """Average ``increase`` over the sources starting with ``source_prefix``, per (G, precision)."""
    acc: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        if r["source"].startswith(source_prefix):
            acc.setdefault((r["group_size"], r["scale_precision"]), []).append(r["increase"])
    return [{"group_size": g, "scale_precision": p, "increase": float(np.mean(v)), "n": len(v),
             "paper_increase": PAPER_SCALE_COST.get(p) if g == 16 else None}
            for (g, p), v in sorted(acc.items())]


# ----------------------------------------------------------------------------- per-layer errors


def _roundtrip(w: torch.Tensor, spec, transform: str | None, transform_size: int | None, observer: str):
    """w (out, in) -> (w_hat in the original basis, QuantizedTensor in the transformed basis).

    The weight is transformed like an activation (``apply``) and mapped back with ``inverse``;
    for orthogonal transforms (hadamard, dct, ...) this equals the pipeline's ``apply_to_weight``."""
    from fpq_core.formats import quantize

    if transform in (None, "", "none", "identity"):
        qt = quantize(w, spec, observer=observer)
        return qt.dequantize().float(), qt
    from fpq_core.transforms import get_transform

    kw = {"exact": False} if transform == "hadamard" else {}  # float32 product: ~5x faster on CPU
    t = get_transform(transform, size=int(transform_size or spec.group_size), **kw)
    qt = quantize(t.apply(w), spec, observer=observer)
    return t.inverse(qt.dequantize().float()), qt


@torch.no_grad()
def layer_error(w: torch.Tensor, spec, transform: str | None = None, transform_size: int | None = None,
                observer: str = "minmax") -> dict[str, Any]:
    """RTN error of one weight (out, in): rel_mse = ||W - What||^2 / ||W||^2 (the pipeline's RTN
    rel_error), rel_mse_group (mean over groups), top_rel_error, and the scales used."""
    from fpq_core.analysis import error_metrics

    w = w.detach().float()
    if w.shape[-1] % spec.group_size:
        raise ValueError(f"group size {spec.group_size} does not divide in_features {w.shape[-1]}")
    w_hat, qt = _roundtrip(w, spec, transform, transform_size, observer)
    m = error_metrics(w, w_hat, qt, spec.group_size)
    return {"rel_mse": m["rel_mse_global"], "rel_mse_group": m["rel_mse"], "top_rel_error": m["top_rel_error"],
            "scale_min": m["scale_min"], "scale_max": m["scale_max"], "global_scale": m["global_scale"]}


@torch.no_grad()
def layer_error_table(model, spec, transform: str | None = None, transform_size: int | None = None,
                      observer: str = "minmax", blocks: Iterable[int] | None = None,
                      max_rows: int | None = None) -> list[dict]:
    """Per-Linear RTN error of a model (or "embedded" / a safetensors folder): one row per layer
    with block, name, proj (short name), shape and the fields of :func:`layer_error`.

    ``max_rows``: measure on the first ``max_rows`` output rows of each weight only (an estimate;
    groups run along the input dim, so every group is whole). ~1 s per SmolLM2 MLP weight
    on a busy 2-core CPU without it."""
    rows = []
    for bi, name, w in linear_weights(model, blocks):
        shape = tuple(w.shape)
        if max_rows is not None:
            w = w[: int(max_rows)]
        rows.append({"block": bi, "name": name, "proj": short_name(name), "shape": shape,
                     **layer_error(w, spec, transform, transform_size, observer)})
    return rows


def error_matrix(rows: list[dict], key: str = "rel_mse") -> tuple[list[int], list[str], np.ndarray]:
    """(blocks, projections, matrix (blocks, projections)) of ``key`` for a heatmap; NaN if missing."""
    blocks = sorted({r["block"] for r in rows})
    projs = [p for p in PROJECTIONS if any(r["proj"] == p for r in rows)]
    projs += sorted({r["proj"] for r in rows} - set(projs))
    m = np.full((len(blocks), len(projs)), np.nan)
    for r in rows:
        m[blocks.index(r["block"]), projs.index(r["proj"])] = r[key]
    return blocks, projs, m


def worst_layers(rows: list[dict], key: str = "rel_mse", n: int = 10) -> list[dict]:
    """The ``n`` rows with the largest ``key``, largest first."""
    return sorted(rows, key=lambda r: r[key], reverse=True)[: int(n)]


def error_ratio_rows(a: list[dict], b: list[dict], key: str = "rel_mse") -> list[dict]:
    """Per layer: b[key] / a[key] (e.g. rotated / native); rows matched by (block, name)."""
    idx = {(r["block"], r["name"]): r[key] for r in a}
    return [{"block": r["block"], "name": r["name"], "proj": r["proj"], "ratio": r[key] / idx[(r["block"], r["name"])]}
            for r in b if idx.get((r["block"], r["name"]))]


# ----------------------------------------------------------------------------- scale distributions


@torch.no_grad()
def scale_distribution(model, spec, transform: str | None = None, transform_size: int | None = None,
                       blocks: Iterable[int] | None = None, max_rows: int | None = None) -> dict[str, Any]:
    """Stored group scales over all Linears: histogram (values, counts, label) merged over layers
    (E8M0 exponents, E4M3 values, or log2 of unquantized scales) and the per-layer global scales."""
    from fpq_core.analysis import scale_histogram

    counts: dict[float, int] = {}
    globals_, names, label = [], [], ""
    for bi, name, w in linear_weights(model, blocks):
        if max_rows is not None:
            w = w[: int(max_rows)]  # global scales then come from these rows only
        _, qt = _roundtrip(w, spec, transform, transform_size, "minmax")
        h = scale_histogram(qt, spec.scale_precision)
        label = h["label"]
        for v, c in zip(h["values"].tolist(), h["counts"].tolist()):
            counts[v] = counts.get(v, 0) + int(c)
        gs = getattr(qt, "global_scale", None)
        globals_.append(float(gs.reshape(-1)[0]) if gs is not None else float("nan"))
        names.append(f"{bi}.{short_name(name)}")
    vals = sorted(counts)
    return {"values": np.array(vals), "counts": np.array([counts[v] for v in vals]), "label": label,
            "global_scales": np.array(globals_), "layers": names}


# ----------------------------------------------------------------------------- Table-1 grid


def classify_config(config: Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    """(method, format, a_bits) of a QuantConfig dict -- one rule for the whole product: this is
    :func:`fpq_core.paper.classify` (a Table-1 method only for the paper's exact recipes; e.g. a
    non-Hadamard rotation, GPTQ with activation order but no rotation, or GPTQ + Hadamard with
    min-max scales are "other" and stay out of the Table-1 grid)."""
    from fpq_core.paper import classify

    return classify(dict(config))


def grid_rows_from_runs(runs: list[dict]) -> list[dict]:
    """Rows (run, method, format, a_bits, ppl, mean_rel_error) from ``runs.list_runs`` summaries;
    runs without a perplexity result are kept with ppl None."""
    rows = []
    for r in runs:
        cfg = r.get("config") or {}
        method, fmt, ab = classify_config(cfg)
        ppl = ((r.get("results") or {}).get("wikitext2_ppl") or {}).get("ppl")
        layers = r.get("layers")
        if layers is None and r.get("path"):
            from fpq_core.runs import RunDir

            layers = RunDir(r["path"]).read("layers", []) or []
        errs = [l["rel_error"] for l in layers or [] if l.get("rel_error") is not None]
        rows.append({"run": r.get("name"), "method": method, "format": fmt, "a_bits": ab, "ppl": ppl,
                     "mean_rel_error": float(np.mean(errs)) if errs else None, "status": r.get("status")})
    return rows


def compare_with_paper(rows: list[dict]) -> list[dict]:
    """One row per (format, acts, method): our perplexity, its increase over the bf16 run (%),
    our rank within the (format, acts) group (1 = best), the paper's recovery % and rank."""
    base = next((r["ppl"] for r in rows if r["method"] == "bf16" and r["ppl"] is not None), None)
    out = []
    for fmt in FORMATS:
        for ab in (4, 16):
            group = [next((r for r in rows if (r["method"], r["format"], r["a_bits"]) == (m, fmt, ab)
                           and r["ppl"] is not None), None) for m in METHODS]
            ours = [g["ppl"] if g else None for g in group]
            paper = [PAPER_RECOVERY.get((fmt, ab, m)) for m in METHODS]
            our_rank = _ranks(ours, lower_is_better=True)
            paper_rank = _ranks(paper, lower_is_better=False)
            for i, m in enumerate(METHODS):
                out.append({"format": FORMAT_LABELS[fmt], "acts": f"W4A{ab}", "method": METHOD_LABELS[m],
                            "ppl": ours[i],
                            "ppl_increase_pct": (100 * (ours[i] / base - 1)) if (ours[i] and base) else None,
                            "mean_rel_error": group[i]["mean_rel_error"] if group[i] else None,
                            "our_rank": our_rank[i], "paper_recovery_pct": paper[i], "paper_rank": paper_rank[i]})
    return out


def _ranks(vals: list, lower_is_better: bool) -> list[int | None]:
    idx = sorted((i for i, v in enumerate(vals) if v is not None), key=lambda i: vals[i],
                 reverse=not lower_is_better)
    ranks: list[int | None] = [None] * len(vals)
    for r, i in enumerate(idx, 1):
        ranks[i] = r
    return ranks


def rank_agreement(table: list[dict]) -> float | None:
    """Fraction of method pairs (within each format/acts group) ordered the same way by our
    perplexity and by the paper's recovery; None if no pair has both."""
    agree = total = 0
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        groups.setdefault((r["format"], r["acts"]), []).append(r)
    for g in groups.values():
        both = [r for r in g if r["ppl"] is not None and r["paper_recovery_pct"] is not None]
        for i in range(len(both)):
            for j in range(i + 1, len(both)):
                a, b = both[i], both[j]
                if a["ppl"] == b["ppl"] or a["paper_recovery_pct"] == b["paper_recovery_pct"]:
                    continue
                total += 1
                agree += (a["ppl"] < b["ppl"]) == (a["paper_recovery_pct"] > b["paper_recovery_pct"])
    return agree / total if total else None


def grid_cells(formats=FORMATS, acts=(4, 16), methods=METHODS) -> list[tuple[str, str | None, str | None, int | None]]:
    """(run name, method, format, a_bits) of the Table-1 grid, baseline first; names match
    benchmarks/table1_smollm2.py (e.g. 'mxfp_w4a4_mr_gptq')."""
    return [("bf16", "bf16", None, None)] + [(f"{f}_w4a{a}_{m}", m, f, a) for f in formats for a in acts
                                            for m in methods]


def write_grid_runs(make_model, batches, evaluate, root: str | os.PathLike, cells=None,
                    hadamard_group_size: int | None = None) -> list[Path]:
    """Run a (small) Table-1 grid in process and write CLI-compatible run directories.

    ``make_model()`` -> a fresh model per cell; ``batches``: calibration token ids;
    ``evaluate(model)`` -> perplexity (float). Each cell writes run.json (model, method, config,
    status), layers.json and results.json {"wikitext2_ppl": {"ppl": ...}} under root/<cell>.
    ``hadamard_group_size`` overrides the preset's rotation size (None: the format's group size).
    Existing finished cells are kept."""
    from fpq_core.config import QuantConfig
    from fpq_core.pipeline import quantize_model
    from fpq_core.runs import RunDir

    paths = []
    for name, method, fmt, ab in cells or grid_cells():
        rd = RunDir(Path(root) / name)
        if (rd.read("results") or {}).get("wikitext2_ppl"):
            paths.append(rd.path)
            continue
        rd = RunDir.create(rd.path, exist_ok=True)
        if method == "bf16":
            cfg = QuantConfig(w_bits=16, a_bits=16).normalized()
        else:
            rotated = method in ("rtn_had", "mr_gptq")
            kw = {"hadamard_group_size": hadamard_group_size} if (rotated and hadamard_group_size) else {}
            cfg = QuantConfig.preset(method, fmt=fmt, w_bits=4, a_bits=ab, **kw)
        model = make_model()
        rd.write("run", {"model": "in-process", "method": cfg.method_name, "config": cfg.to_dict(),
                         "status": "running"})
        layers = []
        if method != "bf16":
            res = quantize_model(model, cfg, batches)
            layers = [l.to_dict() for l in res.layers]
        rd.write("layers", layers)
        rd.add_result("wikitext2_ppl", {"ppl": float(evaluate(model))})
        rd.update("run", status="done")
        paths.append(rd.path)
    return paths
