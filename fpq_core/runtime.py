"""Load our FP4 checkpoints back into an emulated (fake-quant) model, on CPU or any CUDA GPU.

``load_quantized(path)`` reads ``config.json`` and its ``quantization_config``:

- ``quant_method == "fp_quant"`` (reference §6: realquant ``qweight``/``scales`` or pseudoquant
  ``dqweight``, written by us or by the FP-Quant harness),
- ``quant_method == "fpq_w4a16"`` (our weight-only format, see ``fpq_core/export.py``),
- ``quant_method == "compressed-tensors"`` with ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized``,

builds the Hugging Face skeleton from the config on the ``meta`` device (no weights downloaded,
no random init), loads the non-quantized tensors, and replaces every quantized Linear by our
:class:`~fpq_core.nn.QuantLinear`:

- weight = E2M1(codes) x decoded group scale / global scale, in the **rotated basis**
  (MX: ``2^(b-127) / 3.0``, i.e. ``q * 2^E / 3``; NV: ``q * e4m3(b) / G_w``);
- online input rotation ``x_blk @ forward_hadamard_matrix`` (blocks of ``hadamard_group_size``);
- activation fake-quant: MXFP4 abs-max x3 rule, NVFP4 with the saved ``act_global_scale``.

Everything is read and checked before the model is built: a truncated shard, a missing key or
an unknown format raises :class:`CheckpointError` and nothing half-loaded is returned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fpq_core.formats.e2m1 import unpack_fp4

__all__ = ["CheckpointError", "CheckpointInfo", "load_quantized", "read_checkpoint_info",
           "dequantize_packed", "read_tensors"]

INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1
CT_FORMATS = {"nvfp4-pack-quantized": "nvfp4", "mxfp4-pack-quantized": "mxfp4"}


class CheckpointError(ValueError):
    """The checkpoint folder is unreadable, incomplete, or in a format we do not know."""


# ----------------------------------------------------------------------------- codec
def dequantize_packed(qweight: torch.Tensor, scale_bytes: torch.Tensor, spec,
                      global_scale: float | torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """Packed FP4 + scale bytes -> dequantized weight (out, in) in ``dtype``.

    ``spec``: the weight QuantSpec (or "mxfp4" / "nvfp4"). MX: x̂ = q·2^(b-127)/3 for the FP-Quant
    x3 rule (global 3.0), q·2^(b-127) for OCP; NV: x̂ = q·e4m3(b)/G_w with the encode scale G_w.
    Decoding goes through :meth:`QuantizedTensor.from_packed` so the float scales are computed
    exactly as the in-memory quantizer computes them (both numerics modes)."""
    from fpq_core.formats import QuantizedTensor, QuantSpec

    if isinstance(spec, str):
        spec = {"mxfp4": QuantSpec.mxfp4(), "nvfp4": QuantSpec.nvfp4()}.get(spec)
        if spec is None:
            raise CheckpointError("unknown FP4 scale format; expected 'mxfp4' or 'nvfp4'")
    if qweight.dtype != torch.uint8 or scale_bytes.dtype != torch.uint8:
        raise CheckpointError(f"packed weight and scales must be uint8, got {qweight.dtype} / {scale_bytes.dtype}")
    out, k = qweight.shape[0], qweight.shape[1] * 2
    if scale_bytes.ndim != 2 or scale_bytes.shape != (out, k // spec.group_size):
        raise CheckpointError(f"scales shape {tuple(scale_bytes.shape)} does not fit weight shape {(out, k)} "
                              f"with group size {spec.group_size}")
    if spec.scale_precision == "e4m3" and global_scale is None:
        raise CheckpointError("NVFP4 weights need a weight_global_scale")
    gs = None if global_scale is None else torch.as_tensor(global_scale, dtype=torch.float32).reshape(-1)[:1]
    qt = QuantizedTensor.from_packed(qweight, scale_bytes, spec, gs, dtype=torch.float32)
    return qt.dequantize().to(dtype)


# ----------------------------------------------------------------------------- reading
def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (index + shards, or a single model.safetensors).

    Raises CheckpointError for a missing/corrupt index, a missing or truncated shard, or keys
    the index names but the shard lacks."""
    from safetensors import safe_open

    folder = Path(path)
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path} is not a valid safetensors index ({e})") from None
        files: dict[str, list[str]] = {}
        for key, fname in weight_map.items():
            files.setdefault(fname, []).append(key)
    elif (folder / "model.safetensors").is_file():
        files = {"model.safetensors": None}
    else:
        raise CheckpointError(f"{folder} has neither {INDEX_NAME} nor model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for fname, keys in files.items():
        fpath = folder / fname
        if not fpath.is_file():
            raise CheckpointError(f"shard {fname} named in the index is missing from {folder}")
        try:
            with safe_open(str(fpath), framework="pt") as f:
                present = set(f.keys())
                want = present if keys is None else keys
                missing = [k for k in want if k not in present]
                if missing:
                    raise CheckpointError(f"shard {fname} lacks {len(missing)} keys named in the index, "
                                          f"e.g. {missing[:3]}")
                for k in want:
                    tensors[k] = f.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"shard {fname} is corrupt or truncated ({type(e).__name__}: {e}); "
                                  "re-export or re-download it") from None
    return tensors


@dataclass
class CheckpointInfo:
    kind: str                     # realquant | pseudoquant | w4a16 | compressed-tensors
    fmt: str                      # mxfp4 | nvfp4
    hadamard_group_size: int | None
    act_quant: bool               # activations fake-quantized at runtime
    mx_scale_rule: str            # fpquant (x3) | ocp
    config: dict                  # whole config.json
    quant_config: dict | None     # our QuantConfig dict when exported by us


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a model folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise CheckpointError(f"{cfg_path} has no quantization_config: not a quantized checkpoint "
                              "(load it with transformers instead)")
    ours = cfg.get("fpq_studio") or {}
    method = qc.get("quant_method")
    mx_rule = (ours.get("quant_config") or {}).get("mx_scale_rule", "fpquant")
    if method == "fp_quant":
        fmt = qc.get("forward_dtype")
        if fmt not in ("mxfp4", "nvfp4"):
            raise CheckpointError(f"fp_quant forward_dtype {fmt!r} is not supported; expected mxfp4 or nvfp4")
        if qc.get("forward_method", "abs_max") != "abs_max":
            raise CheckpointError(f"fp_quant forward_method {qc.get('forward_method')!r} is not supported "
                                  "(only abs_max checkpoints are post-training quantized)")
        kind = "pseudoquant" if qc.get("pseudoquantization") else "realquant"
        return CheckpointInfo(kind, fmt, int(qc["hadamard_group_size"]), True, "fpquant", cfg,
                              ours.get("quant_config"))
    if method == "fpq_w4a16":
        fmt = qc.get("weight_dtype")
        if fmt not in ("mxfp4", "nvfp4"):
            raise CheckpointError(f"fpq_w4a16 weight_dtype {fmt!r} is not supported; expected mxfp4 or nvfp4")
        return CheckpointInfo("w4a16", fmt, int(qc["hadamard_group_size"]), False,
                              qc.get("mx_scale_rule", mx_rule), cfg, ours.get("quant_config"))
    if method == "compressed-tensors":
        fmt = CT_FORMATS.get(qc.get("format"))
        if fmt is None:
            raise CheckpointError(f"compressed-tensors format {qc.get('format')!r} is not supported; "
                                  f"expected one of {sorted(CT_FORMATS)}")
        if qc.get("transform_config"):
            raise CheckpointError("compressed-tensors checkpoints with a transform_config are not supported")
        groups = list((qc.get("config_groups") or {}).values())
        act = any(isinstance(g, dict) and g.get("input_activations") for g in groups)
        return CheckpointInfo("compressed-tensors", fmt, None, act, "ocp" if fmt == "mxfp4" else "fpquant",
                              cfg, ours.get("quant_config"))
    raise CheckpointError(f"unknown quant_method {method!r} in {cfg_path}; supported: fp_quant, fpq_w4a16, "
                          "compressed-tensors (nvfp4/mxfp4-pack-quantized)")


# ----------------------------------------------------------------------------- transforms
class MatrixTransform:
    """A block transform given by an explicit (n, n) matrix (``x_blk @ M``), for checkpoints
    whose forward matrix is neither identity nor our Hadamard."""

    name = "matrix"
    exportable = True

    def __init__(self, m: torch.Tensor):
        self.size = m.shape[0]
        self._m = m.to(torch.float32)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        n = self.size
        if x.shape[-1] % n:
            raise ValueError(f"input size {x.shape[-1]} is not divisible by the checkpoint's hadamard size {n}")
        m = self._m.to(x.device)
        xb = x.to(torch.float32).reshape(*x.shape[:-1], x.shape[-1] // n, n)
        return (xb @ m).reshape(x.shape).to(x.dtype)

    __call__ = apply


def transform_from_matrix(m: torch.Tensor):
    """Identity -> None (no rotation); our Hadamard (exactly, in the stored dtype) -> the library
    HadamardTransform (same numerics as the in-memory model); anything else -> MatrixTransform."""
    from fpq_core.transforms import get_transform

    n = m.shape[0]
    if m.ndim != 2 or m.shape[1] != n:
        raise CheckpointError(f"forward_hadamard_matrix must be square, got {tuple(m.shape)}")
    if torch.equal(m, torch.eye(n, dtype=m.dtype)):
        return None
    if n & (n - 1) == 0:
        h = get_transform("hadamard", size=n)
        if torch.equal(h.matrix(dtype=m.dtype, device="cpu"), m.cpu()):
            return h
    return MatrixTransform(m)


# ----------------------------------------------------------------------------- specs
def _specs(info: CheckpointInfo):
    from fpq_core.formats import QuantSpec

    numerics = (info.quant_config or {}).get("numerics", "exact")
    if info.fmt == "mxfp4":
        spec = QuantSpec.mxfp4(scale_rule=info.mx_scale_rule, numerics=numerics)
    else:
        spec = QuantSpec.nvfp4(numerics=numerics)
    return spec, (spec if info.act_quant else None)


# ----------------------------------------------------------------------------- per-layer parsing
@dataclass
class _Layer:
    name: str
    weight: torch.Tensor                # dequantized, rotated basis (out, in), float32
    bias: torch.Tensor | None
    matrix: torch.Tensor | None
    act_global_scale: torch.Tensor | None
    qtensor: object | None              # QuantizedTensor (None for pseudoquant)


def _need(tensors, key, what):
    if key not in tensors:
        raise CheckpointError(f"missing key {key!r} ({what}); the checkpoint is incomplete")
    return tensors[key]


def _check_global(name, t, what):
    if t is not None and (t.numel() != 1 or not torch.isfinite(t).all() or float(t.reshape(-1)[0]) <= 0):
        raise CheckpointError(f"{name}.{what} must be one finite positive number, got {t.tolist()}")


def _packed(name, packed, sb, spec, wg):
    from fpq_core.formats import QuantizedTensor

    if spec.is_mx and wg is not None and float(wg.reshape(-1)[0]) != spec.mx_global_scale:
        raise CheckpointError(f"{name}: MXFP4 weight_global_scale {float(wg.reshape(-1)[0])} != "
                              f"{spec.mx_global_scale} expected for the {spec.scale_rule} scale rule")
    w = dequantize_packed(packed, sb, spec, wg)
    gs = None if wg is None else wg.float().reshape(1)
    qt = QuantizedTensor.from_packed(packed, sb, spec, gs, dtype=torch.float32)
    return w, qt


def _parse_layer(name: str, tensors: dict, info: CheckpointInfo, spec) -> _Layer:
    p = name + "."
    bias = tensors.get(p + "bias")
    if info.kind == "compressed-tensors":
        packed = _need(tensors, p + "weight_packed", "packed FP4 weight")
        sc = _need(tensors, p + "weight_scale", "group scales")
        sc = sc.view(torch.uint8) if sc.dtype != torch.uint8 else sc
        g = tensors.get(p + "weight_global_scale")
        if spec.uses_global_scale:
            g = _need(tensors, p + "weight_global_scale", "NVFP4 weight global scale").float()
        else:
            g = None
        ag = tensors.get(p + "input_global_scale")
        if info.act_quant and spec.uses_global_scale:
            ag = _need(tensors, p + "input_global_scale", "NVFP4 activation global scale").float()
        _check_global(name, g, "weight_global_scale")
        _check_global(name, ag, "input_global_scale")
        w, qt = _packed(name, packed, sc, spec, g)
        return _Layer(name, w, bias, None, ag, qt)
    m = _need(tensors, p + "forward_hadamard_matrix", "input rotation")
    wg = _need(tensors, p + "weight_global_scale", "weight global scale").float()
    ag = None
    if info.act_quant:
        ag = _need(tensors, p + "act_global_scale", "activation global scale").float()
    _check_global(name, wg, "weight_global_scale")
    _check_global(name, ag, "act_global_scale")
    if info.kind == "pseudoquant":
        w, qt = _need(tensors, p + "dqweight", "fake-quantized weight").float(), None
    else:
        w, qt = _packed(name, _need(tensors, p + "qweight", "packed FP4 weight"),
                        _need(tensors, p + "scales", "group scale bytes"), spec, wg)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0 or w.shape[1] % m.shape[0]:
        raise CheckpointError(f"{name}: forward_hadamard_matrix {tuple(m.shape)} does not fit in_features {w.shape[1]}")
    return _Layer(name, w, bias, m, ag, qt)


def _quantized_names(tensors: dict, kind: str) -> list[str]:
    marker = {"realquant": ".qweight", "pseudoquant": ".dqweight", "w4a16": ".qweight",
              "compressed-tensors": ".weight_packed"}[kind]
    return sorted(k[: -len(marker)] for k in tensors if k.endswith(marker))


# ----------------------------------------------------------------------------- building
def _skeleton(config_dict: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = {k: v for k, v in config_dict.items() if k not in ("quantization_config", "fpq_studio")}
    model_type = d.pop("model_type", None)
    if not model_type:
        raise CheckpointError("config.json has no model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **d)
    except Exception as e:
        raise CheckpointError(f"cannot build a {model_type!r} config from config.json ({e})") from None
    # The same attention kernel as from_pretrained picks (sdpa), so the reloaded model computes
    # what the in-memory one did: on a GPU in bf16, eager vs sdpa rounding differences are
    # amplified by W4A4 activation quantization (measured: benchmarks/diagnose_gpu_consistency.py).
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return model


def _rebuild_buffers(model: nn.Module, device) -> None:
    """Non-persistent buffers (RoPE inv_freq) were created on meta: rebuild those modules."""
    for name, mod in list(model.named_modules()):
        metas = [b for b_name, b in mod.named_buffers(recurse=False) if b.is_meta]
        if not metas:
            continue
        if "rotary" in type(mod).__name__.lower():
            with torch.device(device):
                new = type(mod)(config=model.config)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
        else:
            raise CheckpointError(f"module {name} ({type(mod).__name__}) has buffers not in the checkpoint")


def load_quantized(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """-> (model, tokenizer or None): an emulated quantized model in eval mode.

    ``dtype``: compute dtype of the non-quantized tensors and dequantized weights (default: the
    checkpoint's dtype; use torch.float32 on CPU, where bf16 matmuls are slow)."""
    from fpq_core.formats import ActivationQuantizer, QuantizedTensor  # noqa: F401  (contract)
    from fpq_core.models.adapters import get_adapter
    from fpq_core.nn import InputPath, QuantLinear

    folder = Path(path)
    info = read_checkpoint_info(folder)
    tensors = read_tensors(folder)
    names = _quantized_names(tensors, info.kind)
    if not names:
        raise CheckpointError(f"{folder}: no quantized layers found for a {info.kind} checkpoint")
    wspec, aspec = _specs(info)
    layers = {n: _parse_layer(n, tensors, info, wspec) for n in names}   # all checks before building
    device = torch.device(device)

    model = _skeleton(info.config)
    adapter = get_adapter(model)
    if dtype is None:
        dtype = next((t.dtype for k, t in tensors.items() if k.endswith("norm.weight")), torch.float32)
    quant_prefixes = tuple(n + "." for n in names)
    plain = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
             for k, v in tensors.items() if not k.startswith(quant_prefixes)}

    expected_linears = {adapter.full_name(i, lin) for i, _ in adapter.iter_blocks(model) for lin in adapter.linears}
    missing_layers = sorted(expected_linears - set(names))
    extra_layers = sorted(set(names) - expected_linears)
    if missing_layers or extra_layers:
        raise CheckpointError(f"quantized layers do not match the architecture: missing {missing_layers[:3]}, "
                              f"unexpected {extra_layers[:3]}")

    # replace Linears (still meta) by QuantLinears with real weights; one InputPath per input group
    for bi, block in adapter.iter_blocks(model):
        for group in adapter.linear_groups():
            first = layers[adapter.full_name(bi, group[0])]
            t = transform_from_matrix(first.matrix.cpu()) if first.matrix is not None else None
            if isinstance(t, MatrixTransform):
                t._m = t._m.to(device)
            aq = None
            if aspec is not None:
                g = None
                if aspec.uses_global_scale:
                    if first.act_global_scale is None:
                        raise CheckpointError(f"{first.name}: NVFP4 activations need act_global_scale")
                    g = first.act_global_scale.float().reshape(1)
                aq = ActivationQuantizer(aspec, global_scale=g)     # fixed (calibrated) scale
                aq.freeze()
            path = InputPath(t, aq)
            for lin_name in group:
                full = adapter.full_name(bi, lin_name)
                L = layers[full]
                old = block.get_submodule(lin_name)
                if (old.out_features, old.in_features) != tuple(L.weight.shape):
                    raise CheckpointError(f"{full}: checkpoint weight {tuple(L.weight.shape)} does not match the "
                                          f"config's ({old.out_features}, {old.in_features})")
                if L.act_global_scale is not None and first.act_global_scale is not None and \
                        not torch.equal(L.act_global_scale, first.act_global_scale):
                    raise CheckpointError(f"{full}: act_global_scale differs from {first.name} although they "
                                          "read the same input")
                stub = nn.Linear(old.in_features, old.out_features, bias=L.bias is not None, device="meta")
                stub.weight = nn.Parameter(L.weight.to(device=device, dtype=dtype), requires_grad=False)
                if L.bias is not None:
                    stub.bias = nn.Parameter(L.bias.to(device=device, dtype=dtype), requires_grad=False)
                ql = QuantLinear(stub, path, name=f"layers.{bi}.{lin_name}")
                ql.set_quantized(stub.weight.data, L.qtensor)
                parent_name, _, child = lin_name.rpartition(".")
                setattr(block.get_submodule(parent_name) if parent_name else block, child, ql)

    missing, unexpected = _load_plain(model, plain)
    if getattr(model.config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
        model.tie_weights()
    if missing or unexpected:
        raise CheckpointError(f"checkpoint tensors do not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    _rebuild_buffers(model, device)
    leftovers = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftovers:
        raise CheckpointError(f"tensors never loaded: {leftovers[:5]}")
    if info.quant_config is not None:
        model.config.fpq_quantization = info.quant_config
    model.requires_grad_(False)
    model.eval()
    return model, _load_tokenizer(folder)


def _load_plain(model: nn.Module, plain: dict) -> tuple[list[str], list[str]]:
    own = dict(model.named_parameters())
    own_buffers = {n: b for n, b in model.named_buffers()}
    quant_names = {n for n, m in model.named_modules() if type(m).__name__ == "QuantLinear"}

    def _is_quant(k):
        return any(k.startswith(q + ".") for q in quant_names)

    wanted = {k for k in own if not _is_quant(k)}
    wanted |= {k for k in own_buffers if not _is_quant(k) and _persistent(model, k)}
    unexpected = sorted(set(plain) - wanted)
    missing = sorted(wanted - set(plain))
    for k, v in plain.items():
        if k in unexpected:
            continue
        mod_name, _, attr = k.rpartition(".")
        mod = model.get_submodule(mod_name)
        old = getattr(mod, attr)
        if tuple(old.shape) != tuple(v.shape):
            raise CheckpointError(f"{k}: checkpoint shape {tuple(v.shape)} != config shape {tuple(old.shape)}")
        if attr in mod._parameters:
            mod._parameters[attr] = nn.Parameter(v, requires_grad=False)
        else:
            mod._buffers[attr] = v
    return missing, unexpected


def _persistent(model, key) -> bool:
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name)
    return attr not in getattr(mod, "_non_persistent_buffers_set", set())


def _load_tokenizer(folder: Path):
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"tokenizer files in {folder} cannot be loaded ({e})") from None

