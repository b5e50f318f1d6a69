"""Run directories: what one quantization run did, as JSON the app and notebooks read.

Layout of ``RUN_DIR``::

    run.json          model source, QuantConfig, run options, status, timings
    layers.json       per-Linear report (block, name, shape, rel_error, rel_mse, seconds, scales)
    results.json      perplexity / lm-eval results (added as evaluations finish)
    environment.json  python, torch, transformers, device, CPU/GPU names
    state/            per-block quantized tensors (resume + later export: ``fpq export RUN_DIR``)

Every JSON file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

__all__ = ["RunDir", "atomic_write_json", "environment_info", "list_runs"]


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def environment_info() -> dict:
    import torch
    import transformers

    info = {
        "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    from fpq_core import __version__
    info["fpq_studio"] = __version__
    return info


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike, *, exist_ok: bool = False) -> "RunDir":
        p = Path(path)
        if p.exists() and any(p.iterdir()) and not exist_ok:
            raise FileExistsError(f"run directory {p} already exists and is not empty: choose another "
                                  "--run_dir, or pass --resume to continue that run")
        p.mkdir(parents=True, exist_ok=True)
        (p / "state").mkdir(exist_ok=True)
        return cls(p)

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def read(self, name: str, default=None):
        f = self.path / f"{name}.json"
        return json.loads(f.read_text()) if f.exists() else default

    def write(self, name: str, obj) -> None:
        atomic_write_json(obj, self.path / f"{name}.json")

    def update(self, name: str, **fields) -> dict:
        d = self.read(name, {}) or {}
        d.update(fields)
        self.write(name, d)
        return d

    def add_result(self, key: str, value) -> None:
        d = self.read("results", {}) or {}
        d[key] = value
        d.setdefault("_updated", {})[key] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.write("results", d)

    def summary(self) -> dict:
        run = self.read("run", {}) or {}
        res = self.read("results", {}) or {}
        return {"path": str(self.path), "name": self.path.name, **run, "results": res}


def list_runs(root: str | os.PathLike) -> list[dict]:
    root = Path(root)
    if not root.exists():
        return []
    out = [RunDir(p).summary() for p in sorted(root.iterdir()) if (p / "run.json").exists()]
    return out
