"""Dataset loaders for the offline lm-eval tasks in this folder (referenced from the YAMLs by ``!function``).

lm-eval imports this file by its path, so data files are located relative to it, wherever the package
is installed. Each loader returns a ``datasets.DatasetDict``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_DATA = _HERE.parent / "data_files"


def _find(name: str, env: str) -> Path:
    candidates = []
    if os.environ.get(env):
        candidates.append(Path(os.environ[env]))
    candidates.append(_DATA / name)
    # development checkout beside the shared folder
    candidates += [_HERE.parents[2] / "shared" / "data" / name, _HERE.parents[1] / "shared" / "data" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{name} not found (looked in: {', '.join(str(c) for c in candidates)}); set {env} to a local copy"
    )


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_gsm8k_local(**kwargs):
    """GSM8K test split (question, answer) from the embedded JSONL, as a DatasetDict with split 'test'."""
    import datasets

    rows = _read_jsonl(_find("gsm8k_test.jsonl", "FPQ_GSM8K_JSONL"))
    rows = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
