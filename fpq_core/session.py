"""Rebuild the quantized in-memory model of a finished run directory (for export, eval, the app)."""
from __future__ import annotations

import torch

from fpq_core.config import QuantConfig
from fpq_core.runs import RunDir

__all__ = ["load_run_model"]


def load_run_model(run: RunDir | str, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load the run's base model and restore every quantized block from ``RUN_DIR/state``.

    Returns ``(model, tokenizer, config)``. Nothing is re-quantized: the stored codes, scales
    and activation global scales are loaded as they were written."""
    from fpq_core.models.loading import load_model
    from fpq_core.pipeline import RunOptions, quantize_model

    run = run if isinstance(run, RunDir) else RunDir(run)
    meta = run.read("run")
    if meta is None:
        raise FileNotFoundError(f"{run.path} is not a run directory (run.json missing)")
    progress = run.state_dir / "progress.json"
    if not progress.exists():
        raise FileNotFoundError(f"{run.path} has no quantized state (state/progress.json missing): "
                                "the run did not finish any block")
    config = QuantConfig.from_dict({k: v for k, v in meta["config"].items()})
    if dtype is None:
        dtype = getattr(torch, meta.get("dtype", "float32"))
    model, tok = load_model(meta["model"], dtype=dtype, device=device)
    n_blocks = len(model.model.layers)
    import json
    done = json.loads(progress.read_text()).get("next_block", 0)
    if done < n_blocks:
        raise ValueError(f"{run.path} finished {done} of {n_blocks} blocks: resume it first "
                         f"(fpq quantize ... --run_dir {run.path} --resume)")
    quantize_model(model, config, None, options=RunOptions(device=device, state_dir=str(run.state_dir)))
    return model, tok, config
