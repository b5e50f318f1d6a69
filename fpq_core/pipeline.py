"""Block-by-block quantization of a decoder-only model (RTN, GPTQ, MR-GPTQ).

For each decoder block, as the reference (``../shared/reference/fp-quant-reference.md`` §4.1):

1. capture the block's inputs (block 0: from the embeddings; later: the previous block's
   quantized outputs);
2. wrap the block's Linears in :class:`~fpq_core.nn.QuantLinear` (online input transform and
   activation quantizer, one shared per input group: q/k/v, o, gate/up, down);
3. one calibration pass over the block: Hessians for GPTQ and the NVFP4 activation global scales
   (running minimum of the encode scale), with activation quantization on;
4. rotate the weights (``W·T^{-T}``), fix the NVFP4 weight global scales (optionally fused over
   q/k/v and gate/up), quantize with RTN or GPTQ;
5. run the quantized block to produce the next block's inputs;
6. report every Linear through ``on_layer`` and checkpoint the block (``state_dir``) so an
   interrupted run resumes from the last finished block.

RTN without activation global scales (e.g. MXFP4, W4A16) needs no data at all, as in the
reference: the weights are quantized in one sweep.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fpq_core.config import QuantConfig
from fpq_core.formats import ActivationQuantizer, QuantizedTensor, all_finite, compute_scales, quantize
from fpq_core.gptq import HessianAccumulator, gptq_quantize
from fpq_core.models.adapters import get_adapter
from fpq_core.nn import InputPath, QuantLinear
from fpq_core.transforms import get_transform, valid_sizes

__all__ = ["RunOptions", "LayerReport", "QuantizeResult", "quantize_model", "validate_model_for_config",
           "QuantizationCancelled"]


class QuantizationCancelled(RuntimeError):
    """Raised when ``should_stop()`` returns True; finished blocks stay in ``state_dir``."""


@dataclass
class RunOptions:
    device: str | None = None                 # None: cuda if available else cpu
    cpu_offload_modules: bool = False         # keep the model on CPU, move one block at a time
    cpu_offload_activations: bool = False     # keep captured block inputs on CPU
    amp: bool = False                         # autocast the block forwards
    state_dir: str | None = None              # resume folder (atomic per-block checkpoints)
    fast_kernels: bool | None = None          # Triton kernels (None: on when CUDA + triton are there)

    def resolved_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LayerReport:
    block: int
    name: str                 # e.g. "self_attn.q_proj"
    shape: tuple[int, int]
    method: str               # "rtn" | "gptq"
    rel_error: float          # GPTQ: Hessian-weighted (reference); RTN: ||dW||^2 / ||W||^2
    rel_mse: float            # ||dW||^2 / ||W||^2 (rotated basis) for every method
    seconds: float
    weight_global_scale: float | None = None
    act_global_scale: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class QuantizeResult:
    config: QuantConfig
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_block: int = 0
    peak_gpu_memory_bytes: int | None = None

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "layers": [l.to_dict() for l in self.layers],
                "seconds": self.seconds, "resumed_from_block": self.resumed_from_block,
                "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes}


# ----------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class _Backend:
    gptq: Callable = gptq_quantize
    hessian: type = HessianAccumulator
    input_path: type = InputPath
    name: str = "torch"


def _backend(device: torch.device, options: "RunOptions") -> _Backend:
    """Triton kernels on CUDA (same results as the torch code: tests/kernels), torch elsewhere."""
    want = options.fast_kernels if options.fast_kernels is not None else device.type == "cuda"
    if not want:
        return _Backend()
    from fpq_core.kernels import kernels_unavailable_reason
    why = kernels_unavailable_reason()
    if why is not None:
        if options.fast_kernels:
            raise RuntimeError(f"fast_kernels=True cannot be used: {why}. Leave fast_kernels unset "
                               "(or False) to run the torch path")
        return _Backend()
    from fpq_core.kernels.gptq import gptq_quantize_auto
    from fpq_core.kernels.hessian import TritonHessianAccumulator
    from fpq_core.kernels.runtime import FusedInputPath
    return _Backend(gptq_quantize_auto, TritonHessianAccumulator, FusedInputPath, "triton")


# ----------------------------------------------------------------------------- validation
def validate_model_for_config(model: nn.Module, config: QuantConfig) -> None:
    """Fail early (before any long work) on anything that would fail later."""
    adapter = get_adapter(model)
    wspec, aspec = config.weight_spec(), config.act_spec()
    for bi, block in enumerate(adapter.get_blocks(model)):
        for name, lin in adapter.block_linears(block).items():
            k = lin.in_features
            if config.transform_class != "identity" and k % config.hadamard_group_size:
                raise ValueError(
                    f"--hadamard_group_size {config.hadamard_group_size} does not divide the input size "
                    f"{k} of layers.{bi}.{name}; sizes that divide every layer: {_common_sizes(model, adapter)}")
            for spec, what in ((wspec, "weight"), (aspec, "activation")):
                if spec is not None and spec.granularity == "group" and k % spec.group_size:
                    raise ValueError(f"{what} group size {spec.group_size} does not divide in_features {k} "
                                     f"of layers.{bi}.{name}")
            if not all_finite(lin.weight):
                raise ValueError(f"layers.{bi}.{name}.weight has NaN/inf values: the checkpoint is corrupt "
                                 "or was loaded in a dtype that overflowed; reload it in float32/bfloat16")
    if config.transform_class != "identity":
        get_transform(config.transform_class, size=config.hadamard_group_size)   # name / pow2 checks


def _common_sizes(model, adapter) -> list[int]:
    dims = {lin.in_features for b in adapter.get_blocks(model) for lin in adapter.block_linears(b).values()}
    common = None
    for d in dims:
        s = set(valid_sizes(d))
        common = s if common is None else common & s
    return sorted(common or [])


# ----------------------------------------------------------------------------- block inputs
class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model, adapter, batches, device, offload_to_cpu: bool):
    """Run the model up to the first decoder block; return per-sample (hidden, kwargs)."""
    first = adapter.get_blocks(model)[0]
    store: list = []

    def hook(_mod, args, kwargs):
        kw = dict(kwargs)
        hs = args[0] if args else kw.pop("hidden_states")
        if len(args) > 1:
            raise RuntimeError("decoder block called with extra positional args; adapter needs updating")
        store.append((hs.to("cpu" if offload_to_cpu else device), kw))
        raise _StopForward

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        h.remove()
    return store


def _run_block(block, inputs, device, amp: bool, collect: bool, offload_to_cpu: bool):
    outs = []
    for hs, kw in inputs:
        with torch.autocast(device_type=device.type, enabled=amp):
            out = block(hs.to(device), **kw)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if collect:
            outs.append((out.to("cpu" if offload_to_cpu else device), kw))
    return outs


def _propagate(block, qlinears, inputs, device, options: "RunOptions"):
    """Run the (quantized) block on its inputs: the next block's inputs."""
    outs = _run_block(block, inputs, device, options.amp, collect=True, offload_to_cpu=options.cpu_offload_activations)
    for p in _input_paths(qlinears):
        p.clear_cache()
    return outs


# ----------------------------------------------------------------------------- wrapping
def wrap_block(block, adapter, config: QuantConfig, block_index: int, path_cls: type = InputPath
               ) -> dict[str, QuantLinear]:
    """Replace the block's Linears by QuantLinears; one InputPath per input group."""
    aspec = config.act_spec()
    linears = adapter.block_linears(block)
    qlinears: dict[str, QuantLinear] = {}
    for group in adapter.linear_groups():
        k = linears[group[0]].in_features
        t = None
        if config.transform_class != "identity":
            seed = config.seed + 1000 * block_index + len(qlinears)
            t = get_transform(config.transform_class, size=config.hadamard_group_size, seed=seed)
        aq = ActivationQuantizer(aspec) if aspec is not None else None
        path = path_cls(t, aq)
        for name in group:
            lin = linears[name]
            if isinstance(lin, QuantLinear):
                raise RuntimeError(f"layers.{block_index}.{name} is already quantized: load a fresh model")
            if lin.in_features != k:
                raise RuntimeError(f"adapter groups {group} read inputs of different sizes")
            ql = QuantLinear(lin, path, name=f"layers.{block_index}.{name}")
            _set_submodule(block, name, ql)
            qlinears[name] = ql
    return qlinears


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _input_paths(qlinears: dict[str, QuantLinear]) -> list[InputPath]:
    seen, paths = set(), []
    for ql in qlinears.values():
        if id(ql.input_path) not in seen:
            seen.add(id(ql.input_path))
            paths.append(ql.input_path)
    return paths


# ----------------------------------------------------------------------------- resume state
def _config_hash(config: QuantConfig) -> str:
    d = config.to_dict()
    d.pop("notes", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    # clone: Linears of a group share scale tensors (act scale; fused weight global scale), and
    # safetensors refuses tensors that share memory
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _block_state(qlinears: dict[str, QuantLinear]) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for name, ql in qlinears.items():
        t[f"{name}.weight"] = ql.weight.data
        if ql.qtensor is not None:
            t[f"{name}.codes"] = ql.qtensor.codes
            t[f"{name}.scales"] = ql.qtensor.scales
            if ql.qtensor.global_scale is not None:
                t[f"{name}.global_scale"] = ql.qtensor.global_scale
        aq = ql.input_path.act_quantizer
        if aq is not None and aq.global_scale is not None:
            t[f"{name}.act_global_scale"] = torch.as_tensor(aq.global_scale).reshape(1).float()
    return t


def _load_block_state(qlinears, tensors, config: QuantConfig) -> None:
    wspec = config.weight_spec()
    for name, ql in qlinears.items():
        qt = None
        if f"{name}.codes" in tensors:
            qt = QuantizedTensor.from_codes(tensors[f"{name}.codes"], tensors[f"{name}.scales"], wspec,
                                            tensors.get(f"{name}.global_scale"), dtype=ql.weight.dtype)
        ql.set_quantized(tensors[f"{name}.weight"].to(ql.weight.device), qt)
        aq = ql.input_path.act_quantizer
        if aq is not None and f"{name}.act_global_scale" in tensors:
            aq.global_scale = tensors[f"{name}.act_global_scale"]
        if aq is not None:
            aq.freeze()


# ----------------------------------------------------------------------------- main entry
# no_grad: a model's own parameters usually require grad (from_pretrained leaves them so); without
# it every block output would keep its whole autograd graph -- all calibration activations of the
# block -- alive, and the fused kernels (which skip grad inputs) would go unused.
@torch.no_grad()
def quantize_model(
    model: nn.Module,
    config: QuantConfig,
    batches: list[torch.Tensor] | None = None,
    options: RunOptions | None = None,
    on_layer: Callable[[LayerReport], None] | None = None,
    on_block: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` in place; returns the per-layer report.

    ``batches``: calibration token ids, each (1, L) (needed for GPTQ and for NVFP4
    activation scales; ignored otherwise). ``on_layer`` receives each Linear's report as soon as
    it is quantized; ``on_block(i, n)`` after each block; ``should_stop()`` is polled between
    blocks and raises :class:`QuantizationCancelled` (resume later from ``options.state_dir``)."""
    config = config.normalized()
    options = options or RunOptions()
    device = options.resolved_device()
    adapter = get_adapter(model)
    validate_model_for_config(model, config)
    backend = _backend(device, options)
    wspec, aspec = config.weight_spec(), config.act_spec()
    need_data = config.gptq or (aspec is not None and aspec.uses_global_scale)
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    result = QuantizeResult(config=config)
    blocks = adapter.get_blocks(model)
    n_blocks = len(blocks)

    state_dir = Path(options.state_dir) if options.state_dir else None
    start_block = 0
    chash = _config_hash(config)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        prog_path = state_dir / "progress.json"
        if prog_path.exists():
            prog = json.loads(prog_path.read_text())
            if prog.get("config_hash") != chash:
                raise ValueError(f"{state_dir} holds a run with another configuration; use a new --state_dir "
                                 "or delete it")
            start_block = int(prog["next_block"])
            result.layers = [LayerReport(**{**l, "shape": tuple(l["shape"])}) for l in prog.get("layers", [])]
    result.resumed_from_block = start_block
    if need_data and not batches and start_block < n_blocks:
        raise ValueError("this configuration needs calibration data (GPTQ or NVFP4 activation scales): pass batches")

    if options.cpu_offload_modules:
        model.to("cpu")
        for path in (adapter.embedding, adapter.final_norm, adapter.lm_head, adapter.rotary_emb):
            if path:
                model.get_submodule(path).to(device)
    else:
        model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # Resuming recomputes the inputs of the first unfinished block by running the finished
    # (quantized) blocks forward: cheap next to GPTQ, and no activations are written to disk.
    inputs = None
    if need_data and start_block < n_blocks:
        inputs = capture_block_inputs(model, adapter, batches, device, options.cpu_offload_activations)

    for bi, block in enumerate(blocks):
        block.to(device)
        qlinears = wrap_block(block, adapter, config, bi, backend.input_path)
        if bi < start_block:
            from safetensors.torch import load_file
            _load_block_state(qlinears, load_file(str(state_dir / f"block_{bi:04d}.safetensors")), config)
            if inputs is not None:
                inputs = _propagate(block, qlinears, inputs, device, options)
            if options.cpu_offload_modules:
                block.to("cpu")
            continue
        if should_stop is not None and should_stop():
            raise QuantizationCancelled(f"cancelled before block {bi}; resume from {state_dir}")
        reports = _quantize_block(bi, block, qlinears, inputs, config, device, options, backend)
        for r in reports:
            result.layers.append(r)
            if on_layer is not None:
                on_layer(r)
        if inputs is not None and bi < n_blocks - 1:
            inputs = _propagate(block, qlinears, inputs, device, options)
        for p in _input_paths(qlinears):
            p.clear_cache()
        if options.cpu_offload_modules:
            block.to("cpu")
        if state_dir is not None:
            _atomic_save_tensors(_block_state(qlinears), state_dir / f"block_{bi:04d}.safetensors")
            _atomic_write_json({"config_hash": chash, "next_block": bi + 1,
                                "layers": [l.to_dict() for l in result.layers]}, state_dir / "progress.json")
        if on_block is not None:
            on_block(bi, n_blocks)

    if options.cpu_offload_modules:
        model.to("cpu")
    result.seconds = time.perf_counter() - t_start
    if device.type == "cuda":
        result.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    model.config.fpq_quantization = config.to_dict()   # so evaluate/export know what was done
    return result


def _quantize_block(bi, block, qlinears, inputs, config: QuantConfig, device, options,
                    backend: _Backend = _Backend()) -> list[LayerReport]:
    wspec = config.weight_spec()
    paths = _input_paths(qlinears)
    hessians: dict[str, HessianAccumulator] = {}
    if inputs is not None:
        handles = []
        if config.gptq and wspec is not None:
            for path in paths:
                names = [n for n, q in qlinears.items() if q.input_path is path]
                acc = backend.hessian(qlinears[names[0]].in_features, device=device)
                path.observers.append(acc.add)
                handles.append(path)
                for n in names:
                    hessians[n] = acc            # q/k/v (and gate/up) share one Hessian
        for p in paths:
            if p.act_quantizer is not None:
                p.act_quantizer.observe = True
        _run_block(block, inputs, device, options.amp, collect=False, offload_to_cpu=False)
        for p in handles:
            p.observers.clear()
    for p in paths:
        p.clear_cache()
        if p.act_quantizer is not None:
            p.act_quantizer.freeze()

    reports: list[LayerReport] = []
    if wspec is None:
        for name, ql in qlinears.items():       # W16: only rotate (activations may still be quantized)
            ql.set_quantized(ql.rotated_weight(), None)
        return reports

    w_rot = {n: ql.rotated_weight() for n, ql in qlinears.items()}
    gscales: dict[str, torch.Tensor | None] = {n: None for n in qlinears}
    if wspec.uses_global_scale:
        for n in qlinears:
            gscales[n] = compute_scales(w_rot[n].float() if config.gptq else w_rot[n], wspec,
                                        observer="minmax")[1]
        if config.fuse_global_scale:
            for group in _fusion_groups(qlinears):
                g = torch.min(torch.stack([gscales[n].reshape(()) for n in group])).reshape(1)
                for n in group:
                    gscales[n] = g
    for name, ql in qlinears.items():
        t0 = time.perf_counter()
        W = w_rot[name]
        if config.gptq:
            H = hessians[name].hessian()
            r = backend.gptq(W, H, wspec, observer=config.w_observer, order=config.quantization_order,
                              rel_damp=config.rel_damp, block_size=config.gptq_block_size,
                              global_scale=gscales[name])
            dq, qt, rel = r.weight, r.qtensor, r.rel_error
        else:
            qt = quantize(W, wspec, observer=config.w_observer, global_scale=gscales[name])
            dq = qt.dequantize()
            rel = None
        Wf, dqf = W.float(), dq.float()
        rel_mse = float(((dqf - Wf) ** 2).sum() / (Wf ** 2).sum().clamp_min(1e-30))
        # The export payload (one byte per weight + group scales) lives on the CPU, where the
        # export reads it: kept on a GPU it would grow to ~60% of the model's bf16 size by the
        # last block. The forward uses dq.
        ql.set_quantized(dq, qt.to("cpu") if W.is_cuda else qt)
        aq = ql.input_path.act_quantizer
        reports.append(LayerReport(
            block=bi, name=name, shape=tuple(W.shape), method="gptq" if config.gptq else "rtn",
            rel_error=rel if rel is not None else rel_mse, rel_mse=rel_mse,
            seconds=time.perf_counter() - t0,
            weight_global_scale=None if qt.global_scale is None else float(qt.global_scale.reshape(-1)[0]),
            act_global_scale=None if aq is None or aq.global_scale is None else float(torch.as_tensor(aq.global_scale).reshape(-1)[0]),
        ))
    return reports


def _fusion_groups(qlinears: dict[str, QuantLinear]) -> list[list[str]]:
    """Linears sharing an input share a fused weight global scale (q/k/v, gate/up): vLLM loads
    them merged with one scalar scale."""
    groups: dict[int, list[str]] = {}
    for n, ql in qlinears.items():
        groups.setdefault(id(ql.input_path), []).append(n)
    return [g for g in groups.values() if len(g) > 1]
