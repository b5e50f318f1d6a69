"""Evaluation of (fake-)quantized models: WikiText-2 perplexity and lm-eval on the in-memory model.

Perplexity follows the reference protocol (fp-quant-reference.md section 5.3): the token stream is cut
into non-overlapping windows of ``sequence_length`` (remainder dropped), each window is scored with
next-token cross entropy (its first token is not predicted), the NLL is averaged over all predicted
tokens and ``ppl = exp(mean NLL)``.

lm-eval runs through ``lm_eval.models.huggingface.HFLM`` wrapped around the model object itself, so
fake-quantized modules are evaluated as they are. Offline tasks shipped with the package live in
``fpq_core/lm_eval_tasks/`` and are always on the include path (see ``fpq_core/lm_eval_tasks/README.md``
for running any standard task from local files).
"""
from __future__ import annotations

import difflib
import functools
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"

# The reference's "OpenLLM v1 subset" (--eval_openllm): task -> run settings.
OPENLLM_PRESET: dict[str, dict[str, Any]] = {
    "winogrande": {"num_fewshot": 5},
    "hellaswag": {"num_fewshot": 10},
    "gsm8k_llama": {"num_fewshot": None, "apply_chat_template": True, "fewshot_as_multiturn": True},
    "mmlu_cot_llama": {"num_fewshot": None, "apply_chat_template": True, "fewshot_as_multiturn": True},
}
PRESETS = {"openllm": OPENLLM_PRESET}


# --------------------------------------------------------------------------------------- perplexity
@dataclass(frozen=True)
class PerplexityResult:
    ppl: float          # exp(nll)
    nll: float          # token-weighted mean negative log-likelihood (nats)
    num_tokens: int     # predicted tokens = num_windows * (sequence_length - 1)
    num_windows: int
    seconds: float


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _windows(token_ids: torch.Tensor, sequence_length: int, num_windows: int | None) -> torch.Tensor:
    """Cut a 1-D token stream into (n, sequence_length) non-overlapping windows, remainder dropped."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
        raise ValueError("token_ids must be a 1-D LongTensor of token ids (flatten a (1, N) batch first)")
    if token_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token_ids must be integer token ids, got dtype {token_ids.dtype}")
    if sequence_length < 2:
        raise ValueError(f"sequence_length must be >= 2 (one predicted token at least), got {sequence_length}")
    total = token_ids.numel() // sequence_length
    if total == 0:
        raise ValueError(
            f"only {token_ids.numel()} tokens: fewer than one window of sequence_length={sequence_length}; "
            "use a shorter sequence_length or more text"
        )
    if num_windows is not None:
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1 or None (all windows), got {num_windows}")
        total = min(total, num_windows)
    return token_ids[: total * sequence_length].view(total, sequence_length).long()  # (n, L)


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    sequence_length: int = 2048,
    num_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of a causal LM over non-overlapping windows of ``token_ids`` (reference protocol).

    Runs in the model's own dtype on ``device`` (default: the model's device). ``progress(done, total)``
    is called after every batch of windows. Batching does not change the result: every window predicts
    the same number of tokens, so the token-weighted mean equals the reference's running mean.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows = _windows(token_ids, sequence_length, num_windows)  # (n, L)
    n = windows.shape[0]
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    nll_sum = 0.0
    count = 0
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = windows[start : start + batch_size].to(dev)  # (b, L)
                logits = model(input_ids=batch, use_cache=False).logits  # (b, L, V)
                # token t+1 is predicted from logits at t; CE in fp32 for a stable sum
                shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])  # (b*(L-1), V)
                targets = batch[:, 1:].reshape(-1)  # (b*(L-1),)
                nll_sum += F.cross_entropy(shift_logits, targets, reduction="sum").item()
                count += targets.numel()
                del logits, shift_logits
                if progress is not None:
                    progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    nll = nll_sum / count
    return PerplexityResult(
        ppl=math.exp(nll), nll=nll, num_tokens=count, num_windows=n, seconds=time.perf_counter() - t0
    )


def wikitext2_perplexity(
    model: torch.nn.Module,
    tokenizer,
    sequence_length: int = 2048,
    num_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """WikiText-2 (raw, test) perplexity: the embedded test split, tokenized once, then ``perplexity``."""
    from fpq_core.data import get_wikitext2_test

    ids = get_wikitext2_test(tokenizer)  # (N,)
    return perplexity(model, ids, sequence_length, num_windows, batch_size, device, progress)


# ------------------------------------------------------------------------------------------ lm-eval
@dataclass
class LmEvalResult:
    scores: dict[str, dict[str, float]]   # task -> {metric: value}; keys as lm-eval's "metric,filter"
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # lm-eval's results dict(s)


def _include_paths(include_path: str | Path | Sequence[str | Path] | None) -> tuple[str, ...]:
    paths = [str(LOCAL_TASKS_DIR)]
    if include_path is not None:
        extra = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
        for p in extra:
            if not Path(p).exists():
                raise FileNotFoundError(f"lm-eval include_path {p} does not exist")
            paths.append(str(Path(p).resolve()))
    return tuple(paths)


@functools.lru_cache(maxsize=8)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool = True):
    """lm-eval TaskManager; indexing lm-eval's ~15k built-in tasks takes 10-40 s, so it is cached."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths), include_defaults=include_defaults)


def get_task_manager(include_path=None, include_defaults: bool = True):
    """TaskManager over lm-eval's built-in tasks (optional), ours (fpq_core/lm_eval_tasks) and include_path."""
    return _task_manager(_include_paths(include_path), include_defaults)


def _manager_for(tasks: Sequence[str], include_path=None):
    """The cheapest TaskManager that knows every task: local-only (fast) when all are plain local tasks."""
    local = get_task_manager(include_path, include_defaults=False)
    if all(t in local.all_subtasks for t in tasks):
        return local
    return get_task_manager(include_path, include_defaults=True)


def check_tasks(tasks: Sequence[str], include_path=None) -> list[str]:
    """Raise ValueError naming every unknown task (with close matches) before any evaluation starts.

    The reference's --lm_eval_tasks silently ignored tasks outside its hard-coded four (its default list
    also names arc_challenge_llama and truthfulqa, which never ran). We refuse instead.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    tm = _manager_for(tasks, include_path)
    known = set(tm.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        lines = []
        for t in unknown:
            close = difflib.get_close_matches(t, tm.all_tasks, n=5, cutoff=0.6)
            lines.append(f"  {t!r}" + (f" - did you mean: {', '.join(close)}?" if close else ""))
        raise ValueError(
            "unknown lm-eval task(s):\n" + "\n".join(lines)
            + "\nlist tasks with `lm_eval ls tasks`; add your own YAML folder with include_path="
        )
    return tasks


def _scores(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval results -> {task: {metric: value}}; ',none' filter suffixes are dropped ('acc,none' -> 'acc')."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            name = key[: -len(",none")] if key.endswith(",none") else key
            row[name] = float(value)
        out[task] = row
    return out


def _make_lm(model, tokenizer, batch_size, max_length, device):
    from lm_eval.models.huggingface import HFLM

    dev = str(device) if device is not None else str(_model_device(model))
    if isinstance(batch_size, str) and batch_size.startswith("auto") and not dev.startswith("cuda"):
        # lm-eval's "auto" probes batch sizes until CUDA OOM; on CPU nothing raises and a 64 x 4096 probe
        # can exhaust host memory, so CPU runs use batch 1.
        batch_size = 1
    return HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size, device=dev)


def run_lm_eval(
    model: torch.nn.Module,
    tokenizer,
    tasks: str | Sequence[str],
    num_fewshot: int | None = None,
    batch_size: str | int = "auto",
    limit: int | float | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    include_path: str | Path | Sequence[str | Path] | None = None,
    device: str | torch.device | None = None,
    max_length: int = 4096,
    gen_kwargs: dict | None = None,
    log_samples: bool = False,
    random_seed: int = 0,
) -> LmEvalResult:
    """lm-eval on the in-memory model (HFLM(pretrained=model, max_length=4096)).

    ``tasks``: task/group names, or a preset name ("openllm" = the reference's OpenLLM v1 subset with its
    per-task shots and chat-template settings). Unknown names raise before any evaluation starts.
    ``num_fewshot=None`` keeps each task's default. ``include_path`` adds folders of task YAMLs (our
    ``fpq_core/lm_eval_tasks`` is always included). Returns scores per task plus lm-eval's raw results.
    """
    if isinstance(tasks, str) and tasks.lower() in PRESETS:
        return run_preset(model, tokenizer, tasks.lower(), batch_size=batch_size, limit=limit,
                          include_path=include_path, device=device, max_length=max_length)
    tasks = check_tasks(tasks, include_path)
    if isinstance(batch_size, str) and batch_size != "auto" and not batch_size.startswith("auto"):
        batch_size = int(batch_size)
    from lm_eval import evaluator

    lm = _make_lm(model, tokenizer, batch_size, max_length, device)
    was_training = model.training
    model.eval()
    try:
        results = evaluator.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            gen_kwargs=gen_kwargs,
            task_manager=_manager_for(tasks, include_path),
            log_samples=log_samples,
            random_seed=random_seed,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
    finally:
        model.train(was_training)
    return LmEvalResult(scores=_scores(results), raw=results)


def run_preset(
    model, tokenizer, preset: str = "openllm", *, batch_size="auto", limit=None, include_path=None,
    device=None, max_length: int = 4096,
) -> LmEvalResult:
    """Run a preset (task -> settings), grouping tasks that share settings into one lm-eval call."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[preset]
    check_tasks(list(spec), include_path)
    groups: dict[tuple, list[str]] = {}
    for task, cfg in spec.items():
        key = (cfg.get("num_fewshot"), cfg.get("apply_chat_template", False), cfg.get("fewshot_as_multiturn", False))
        groups.setdefault(key, []).append(task)
    scores, raw = {}, {}
    for (shots, chat, multiturn), names in groups.items():
        r = run_lm_eval(model, tokenizer, names, num_fewshot=shots, batch_size=batch_size, limit=limit,
                        apply_chat_template=chat, fewshot_as_multiturn=multiturn, include_path=include_path,
                        device=device, max_length=max_length)
        scores.update(r.scores)
        raw[",".join(names)] = r.raw
    return LmEvalResult(scores=scores, raw=raw)


# ------------------------------------------------------------------------------------------ vLLM
def vllm_eval_command(
    export_dir: str | Path,
    tasks: str | Sequence[str] = tuple(OPENLLM_PRESET),
    *,
    num_fewshot: int | None = None,
    batch_size: str | int = "auto",
    max_model_len: int = 4096,
    enforce_eager: bool = True,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    limit: int | float | None = None,
    extra_model_args: dict[str, Any] | None = None,
    output_path: str | Path | None = None,
    include_path: str | Path | None = None,
) -> str:
    """The lm-eval command line for an exported checkpoint served by vLLM (the reference README's advice).

    Note: the openllm preset mixes shot counts and chat settings, which one lm_eval call cannot express;
    call this once per setting group (see ``OPENLLM_PRESET``).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError("no tasks given")
    margs = {"pretrained": str(export_dir), "max_model_len": max_model_len, "enforce_eager": enforce_eager}
    margs.update(extra_model_args or {})
    model_args = ",".join(f"{k}={v}" for k, v in margs.items())
    parts = ["lm_eval", "--model", "vllm", "--model_args", model_args, "--tasks", ",".join(tasks),
             "--batch_size", str(batch_size)]
    if num_fewshot is not None:
        parts += ["--num_fewshot", str(num_fewshot)]
    if apply_chat_template:
        parts.append("--apply_chat_template")
    if fewshot_as_multiturn:
        parts.append("--fewshot_as_multiturn")
    if limit is not None:
        parts += ["--limit", str(limit)]
    if include_path is not None:
        parts += ["--include_path", str(include_path)]
    if output_path is not None:
        parts += ["--output_path", str(output_path)]
    return shlex.join(parts)
