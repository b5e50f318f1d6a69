"""Published numbers of the MR-GPTQ paper (and a few perplexity anchors) as data, each with its source.

Typed from ``shared/reference/paper-results.md`` (Egiazarian et al., "Bridging the Gap Between
Promise and Performance for Microscaling FP4 Quantization", arXiv 2509.23202):
§1.1 = paper Table 1 (W4A4, emulated), §1.2 = paper Table 2 (W4A16), §4.2/§4.3 = third-party
WikiText perplexities (torchao, vLLM PR). The paper itself reports no perplexities.

Method keys (rtn, rtn_had, gptq, mr_gptq) come from :func:`classify`, which ``fpq_core.figures``
uses too (one rule for the tables and the figures).
"""
from __future__ import annotations

from typing import Any

PAPER = ("Egiazarian et al., Bridging the Gap Between Promise and Performance for Microscaling FP4 "
         "Quantization, arXiv 2509.23202")
TASKS = ("MMLU-CoT", "GSM8K", "HellaSwag", "WinoGrande")
SOURCE_T1 = "paper Table 1 (W4A4, emulated, Llama-3.1-8B-Instruct); paper-results.md §1.1"
SOURCE_T2 = "paper Table 2 (W4A16, Llama-3.1-8B-Instruct); paper-results.md §1.2"

# (format, a_bits, method): (MMLU-CoT, GSM8K, HellaSwag, WinoGrande, Avg, Recovery %)
_T1 = {
    ("nvfp", 4, "rtn"): (68.26, 78.39, 78.15, 74.11, 74.73, 94.67),
    ("nvfp", 4, "rtn_had"): (67.41, 78.01, 77.31, 73.48, 74.05, 93.82),
    ("nvfp", 4, "gptq"): (68.85, 81.25, 78.26, 74.51, 75.72, 95.92),  # GSM8K 82.60 in the paper: typo (§1.1 note)
    ("nvfp", 4, "mr_gptq"): (69.12, 80.80, 78.17, 75.24, 75.84, 96.08),
    ("mxfp", 4, "rtn"): (62.21, 67.85, 73.99, 73.24, 69.32, 87.83),
    ("mxfp", 4, "rtn_had"): (62.38, 72.48, 75.29, 71.67, 70.45, 89.26),
    ("mxfp", 4, "gptq"): (63.49, 68.46, 76.01, 74.51, 70.62, 89.47),
    ("mxfp", 4, "mr_gptq"): (67.19, 75.70, 76.91, 74.80, 73.65, 93.31),
}
_T2 = {
    ("nvfp", 16, "rtn"): (70.64, 82.26, 79.24, 77.35, 77.37, 98.02),
    ("nvfp", 16, "rtn_had"): (69.26, 80.82, 78.52, 77.03, 76.41, 96.80),
    ("nvfp", 16, "gptq"): (70.52, 82.49, 79.35, 76.95, 77.33, 97.96),
    ("mxfp", 16, "rtn"): (68.23, 80.36, 77.26, 75.93, 75.44, 95.58),
    ("mxfp", 16, "rtn_had"): (66.24, 77.56, 77.34, 74.11, 73.81, 93.51),
    ("mxfp", 16, "gptq"): (68.79, 81.43, 78.40, 76.88, 76.37, 96.76),
}
FP16_T1 = (72.76, 85.06, 80.01, 77.90, 78.93, 100.0)

# Third-party WikiText perplexities (not from the paper): (format, a_bits, method) -> rows.
PPL_ANCHORS: list[dict[str, Any]] = [
    {"format": "mxfp", "a_bits": 4, "method": "rtn", "model": "Llama-3.1-8B-Instruct", "ppl": 11.116,
     "baseline_ppl": 9.009, "source": "neuralmagic/vllm PR #167 (QuTLASS MXFP4); paper-results.md §4.3"},
    {"format": "mxfp", "a_bits": 4, "method": "rtn_had", "model": "Llama-3.1-8B-Instruct", "ppl": 11.0084,
     "baseline_ppl": 9.009, "source": "neuralmagic/vllm PR #167 (Had32 + MXFP4); paper-results.md §4.3"},
    {"format": "nvfp", "a_bits": 4, "method": "rtn", "model": "Llama-3.1-8B (base)", "ppl": 8.4459,
     "baseline_ppl": 7.3315, "source": "torchao docs/source/workflows/inference.md; paper-results.md §4.2"},
]


def _row(key, vals, source, a_bits) -> dict:
    fmt, ab, method = key
    return {"format": fmt, "a_bits": ab, "method": method, "model": "Llama-3.1-8B-Instruct",
            **dict(zip(TASKS, vals[:4])), "avg": vals[4], "recovery_pct": vals[5], "source": source}


def table_rows() -> list[dict]:
    """Every Table 1 and Table 2 row we carry (RTN, RTN+HT, GPTQ, MR-GPTQ), with its source."""
    return ([_row(k, v, SOURCE_T1, 4) for k, v in _T1.items()]
            + [_row(k, v, SOURCE_T2, 16) for k, v in _T2.items()])


def paper_row(fmt: str | None, a_bits: int | None, method: str | None) -> dict | None:
    """The paper's row for (format 'mxfp'/'nvfp', activation bits 4/16, method), or None."""
    key = (fmt, int(a_bits) if a_bits is not None else None, method)
    if key in _T1:
        return _row(key, _T1[key], SOURCE_T1, 4)
    if key in _T2:
        return _row(key, _T2[key], SOURCE_T2, 16)
    return None


def ppl_anchors(fmt: str | None, a_bits: int | None, method: str | None) -> list[dict]:
    """Third-party perplexity anchors for the same setting, with the increase over their baseline."""
    out = []
    for a in PPL_ANCHORS:
        if (a["format"], a["a_bits"], a["method"]) == (fmt, a_bits, method):
            out.append({**a, "ppl_increase_pct": 100 * (a["ppl"] / a["baseline_ppl"] - 1)})
    return out


def citation() -> str:
    return (f"{PAPER}. Numbers typed from shared/reference/paper-results.md: {SOURCE_T1}; {SOURCE_T2}; "
            "perplexity anchors from torchao and a vLLM PR (§4.2-4.3). The paper reports no perplexities.")


def classify(config: dict) -> tuple[str, str | None, int | None]:
    """(method, format, a_bits) of a QuantConfig dict, in the keys of the tables above: method in
    bf16 | rtn | rtn_had | gptq | mr_gptq | other (e.g. GPTQ + Hadamard with min-max scales)."""
    if config.get("w_bits", 16) >= 16 and config.get("a_bits", 16) >= 16:
        return "bf16", None, None
    had = config.get("transform_class", "identity") == "hadamard"
    other_t = config.get("transform_class", "identity") not in ("identity", "hadamard")
    if other_t:
        method = "other"
    elif not config.get("gptq"):
        method = "rtn_had" if had else "rtn"
    elif not had:
        method = "gptq" if config.get("quantization_order", "default") == "default" else "other"
    elif config.get("w_observer") == "mse" and config.get("quantization_order") == "activation":
        method = "mr_gptq"
    else:
        method = "other"
    return method, config.get("format"), int(config.get("a_bits", 16))


def compare_rows(runs: list[dict]) -> list[dict]:
    """One row per run (dicts with id, model, config, results): perplexity, its increase over the
    same model's bf16 baseline run, lm-eval mean accuracy and recovery vs that baseline, and the
    paper's recovery for the same (format, activations, method) with its source."""
    base = {}
    for r in runs:
        if classify(r.get("config") or {})[0] == "bf16":
            res = r.get("results") or {}
            base.setdefault(r.get("model"), res)
    out = []
    for r in runs:
        method, fmt, ab = classify(r.get("config") or {})
        res = r.get("results") or {}
        b = base.get(r.get("model"), {})
        ppl = (res.get("wikitext2_ppl") or {}).get("ppl")
        bppl = (b.get("wikitext2_ppl") or {}).get("ppl")
        acc = _mean_acc(res.get("lm_eval") or {})
        common = sorted(set(res.get("lm_eval") or {}) & set(b.get("lm_eval") or {}))
        racc = _mean_acc({k: res["lm_eval"][k] for k in common}) if common else None
        bacc = _mean_acc({k: b["lm_eval"][k] for k in common}) if common else None
        p = paper_row(fmt, ab, method)
        out.append({"run": r.get("id"), "model": r.get("model"), "method": method, "format": fmt, "a_bits": ab,
                    "ppl": ppl, "ppl_increase_pct": 100 * (ppl / bppl - 1) if ppl and bppl else None,
                    "acc_mean": acc, "recovery_pct": 100 * racc / bacc if racc is not None and bacc else None,
                    "paper_recovery_pct": p["recovery_pct"] if p else None,
                    "paper_source": p["source"] if p else None})
    return out


def _mean_acc(scores: dict) -> float | None:
    """Mean over tasks of the first accuracy-like metric (acc_norm, acc, exact_match)."""
    vals = []
    for s in scores.values():
        if not isinstance(s, dict):
            continue
        for k in ("acc_norm,none", "acc,none", "exact_match,strict-match", "acc_norm", "acc", "exact_match"):
            if isinstance(s.get(k), (int, float)):
                vals.append(float(s[k]))
                break
    return sum(vals) / len(vals) if vals else None
