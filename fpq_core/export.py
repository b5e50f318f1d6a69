"""Checkpoint export of a quantized in-memory model, with reload-and-verify.

Kinds
-----
``realquant`` / ``pseudoquant``: the FP-Quant checkpoint contract (reference §6), byte layout as
vLLM's and transformers' ``fp_quant`` loaders read it: per quantized Linear
``{name}.qweight`` (uint8 (out, in/2), low nibble = even column), ``{name}.scales`` (uint8
(out, in/G), row-major, unswizzled), ``{name}.forward_hadamard_matrix`` /
``backward_hadamard_matrix`` ((hgs, hgs), model dtype), ``{name}.weight_global_scale`` and
``{name}.act_global_scale`` (float32 (1,); MX 3.0/3.0, NV encode scales G_w / G_a).
``pseudoquant`` writes ``{name}.dqweight`` (model dtype (out, in), rotated basis) instead of
qweight/scales. ``quantization_config`` has exactly the eight keys of §6.2.

``w4a16`` (ours, beyond the reference, which cannot export weight-only runs): the realquant
tensors without ``act_global_scale``; ``quantization_config.quant_method = "fpq_w4a16"`` (a name
no foreign loader knows, so nobody silently quantizes activations), with keys ``weight_dtype``
(mxfp4|nvfp4), ``activation_dtype`` ("bf16": activations are NOT quantized), ``group_size``,
``hadamard_group_size``, ``mx_scale_rule`` (fpquant = x3 | ocp), ``global_scale_convention``
("encode": x̂ = q·scale/G), ``scale_layout`` ("row-major"), ``modules_to_not_convert``.
Loadable by :func:`fpq_core.runtime.load_quantized`.

``compressed-tensors``: ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized`` as the installed
``compressed-tensors`` package defines them: ``weight_packed`` (uint8), ``weight_scale``
(float8_e4m3fn NV / uint8 E8M0 exponent MX), ``weight_global_scale`` (NV, float32 (1,)),
``input_global_scale`` (NV W4A4). compressed-tensors divides by ``weight_global_scale``
(``scale / global_scale``), i.e. it stores the **encode** scale like FP-Quant (only ModelOpt's
``weight_scale_2`` is the reciprocal; CT's own converter inverts it), so G is written as is.
Refused: rotated runs (compressed-tensors 0.20 can describe online Hadamard transforms only
through its own transform factories, which vLLM does not combine with FP4 here) and MXFP4 with
the FP-Quant x3 rule (CT's MXFP4 has no global scale: weights would load 3x too large; quantize
with ``mx_scale_rule="ocp"``).

Every export is written into a temp folder beside ``save_path``, reloaded and verified there,
and renamed into place only when everything checks out.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from fpq_core.formats.e2m1 import pack_fp4
from fpq_core.formats.scales import E4M3_MAX, e4m3_encode, e8m0_encode

__all__ = ["KINDS", "ExportReport", "ExportError", "export_model", "export_run_archive",
           "iter_archive_bytes", "fp_quant_config", "shard_name", "plan_shards"]

KINDS = ("realquant", "pseudoquant", "w4a16", "compressed-tensors")
INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """The model/config cannot be exported in the requested kind (the message says why and what to do)."""


@dataclass
class ExportReport:
    path: str
    kind: str
    files: list[str] = field(default_factory=list)
    n_tensors: int = 0
    n_quantized_layers: int = 0
    total_bytes: int = 0
    verified: bool | None = None
    verification: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


# ----------------------------------------------------------------------------- helpers
def shard_name(i: int, n: int) -> str:
    """``model-{i}-of-{N}.safetensors``, i zero-padded to the number of digits of N (reference §6.1)."""
    return f"model-{i:0{len(str(n))}d}-of-{n}.safetensors"


def plan_shards(tensors: dict[str, torch.Tensor], max_shard_size: int) -> list[list[str]]:
    """Greedy by bytes, in insertion order; a tensor larger than the limit gets its own shard."""
    shards: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    return [s for s in shards if s]


def fp_quant_config(fmt: str, hadamard_group_size: int, pseudo: bool) -> dict:
    """The eight keys of reference §6.2, nothing else."""
    return {
        "forward_dtype": fmt,
        "backward_dtype": "bf16",
        "forward_method": "abs_max",
        "hadamard_group_size": int(hadamard_group_size),
        "modules_to_not_convert": ["lm_head"],
        "quant_method": "fp_quant",
        "store_master_weights": False,
        "pseudoquantization": bool(pseudo),
    }


def _run_config(model):
    from fpq_core.config import QuantConfig

    d = getattr(model.config, "fpq_quantization", None)
    if not d:
        raise ExportError("model.config.fpq_quantization is missing: quantize the model with "
                          "fpq_core.pipeline.quantize_model before exporting")
    return QuantConfig.from_dict(dict(d)).normalized()


def _quant_linears(model) -> dict[str, nn.Module]:
    from fpq_core.nn import QuantLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _fmt(cfg) -> str:
    return "nvfp4" if cfg.format == "nvfp" else "mxfp4"


def check_exportable(cfg, kind: str) -> list[str]:
    """Raise ExportError naming why and the alternative; return notes for allowed-with-caveat cases."""
    notes: list[str] = []
    if kind not in KINDS:
        raise ExportError(f"unknown export kind {kind!r}; choose one of {', '.join(KINDS)}")
    if cfg.format not in ("nvfp", "mxfp"):
        raise ExportError(f"export supports only --format nvfp/mxfp (FP4 with E4M3/E8M0 scales), this run used "
                          f"{cfg.format!r}: evaluate it in memory (fpq_core.evaluate) instead")
    if cfg.w_bits != 4:
        raise ExportError(f"export needs 4-bit weights (w_bits=4), this run has w_bits={cfg.w_bits}")
    if kind in ("realquant", "pseudoquant") and cfg.a_bits != 4:
        raise ExportError(f"kind={kind!r} (fp_quant checkpoint) requires W4A4 (a_bits=4; CLI: --w_bits 4 --a_bits 4), this run has "
                          f"a_bits={cfg.a_bits}: use kind='w4a16' (weight-only FP4) or 'compressed-tensors'")
    if kind == "w4a16" and cfg.a_bits != 16:
        notes.append(f"w4a16 export of an A{cfg.a_bits} run: activations will NOT be quantized by loaders")
    if cfg.transform_class not in ("identity", "hadamard"):
        raise ExportError(f"transform {cfg.transform_class!r} is not exportable: checkpoints carry only Hadamard "
                          "or identity matrices (reference §3.2); re-run with transform_class='hadamard' or "
                          "'identity', or evaluate in memory")
    if cfg.format == "mxfp" and kind in ("realquant", "pseudoquant") and cfg.mx_scale_rule != "fpquant":
        raise ExportError("fp_quant consumers (QuTLASS, vLLM) quantize MXFP4 activations with the FP-Quant x3 rule; "
                          f"this run used mx_scale_rule={cfg.mx_scale_rule!r}: re-quantize with mx_scale_rule='fpquant' "
                          "or export kind='compressed-tensors' / 'w4a16'")
    if kind == "compressed-tensors":
        if cfg.transform_class != "identity":
            raise ExportError("kind='compressed-tensors' cannot carry our online Hadamard rotation (its weights are "
                              "expected unrotated unless a transform_config of its own factories is given): export "
                              "rotated runs as kind='realquant'/'pseudoquant'/'w4a16', or quantize without a transform")
        if cfg.format == "mxfp" and cfg.mx_scale_rule == "fpquant":
            raise ExportError("compressed-tensors MXFP4 has no global scale, but the FP-Quant x3 rule dequantizes as "
                              "q*2^E/3 (weights would load 3x too large): quantize with mx_scale_rule='ocp' for "
                              "compressed-tensors, or export kind='realquant'")
    return notes


def _hgs(cfg, layers) -> int:
    """Hadamard block size written to the checkpoint. For identity runs, the configured size if it
    divides every in_features, else the largest power of two <= it that does (>= the group size)."""
    hgs = int(cfg.hadamard_group_size)
    if cfg.transform_class != "identity":
        return hgs
    ks = {ql.in_features for ql in layers.values()}
    group = cfg.w_group_size
    while hgs > group and any(k % hgs for k in ks):
        hgs //= 2
    return hgs


def _scale_bytes(qt, spec, global_scale: float) -> torch.Tensor:
    b = getattr(qt, "scale_bytes", None)
    if b is not None:
        return b.to(torch.uint8)
    s = qt.scales.float()
    if spec.scale_precision == "e4m3":
        return e4m3_encode(s * global_scale)
    return e8m0_encode(s * global_scale)


def _sanitize_scales(sb: torch.Tensor, codes: torch.Tensor, spec, global_scale: float, name: str) -> torch.Tensor:
    """Never write NaN scale bytes. The reference can write e4m3 0x7F for all-zero (underflowed)
    NVFP4 groups (its s_q = 1 is cast as 1*G without clamping); we write e4m3(min(G, 448)), the
    in-memory s_q = 1 clamped, which is valid and harmless because every code of the group is 0."""
    nan = ((sb & 0x7F) == 0x7F) if spec.scale_precision == "e4m3" else (sb == 0xFF)
    if not bool(nan.any()):
        return sb
    out, k = codes.shape
    zero_group = ((codes & 0x7) == 0).reshape(out, sb.shape[1], -1).all(-1)
    if bool((nan & ~zero_group).any()):
        raise ExportError(f"{name}: NaN scale bytes in groups with non-zero codes: the quantized model is corrupt")
    if spec.scale_precision == "e4m3":
        fill = e4m3_encode(torch.tensor([min(global_scale, E4M3_MAX)]))[0]
    else:
        fill = torch.tensor(127, dtype=torch.uint8)
    return torch.where(nan, fill, sb)


def _global(t, what: str, name: str) -> torch.Tensor:
    if t is None:
        raise ExportError(f"{name}: {what} is missing (was the NVFP4 run calibrated?)")
    t = torch.as_tensor(t).detach().float().reshape(-1)[:1].cpu().clone()
    if not torch.isfinite(t).all() or float(t[0]) <= 0:
        raise ExportError(f"{name}: {what} = {t.tolist()} is not a finite positive number")
    return t


# ----------------------------------------------------------------------------- tensors
def _layer_tensors(name, ql, cfg, kind, dtype, hgs) -> dict[str, torch.Tensor]:
    spec = cfg.weight_spec()
    qt = ql.qtensor
    if qt is None:
        raise ExportError(f"{name} has no quantized tensor (weights not quantized): run quantize_model first")
    p = name + "."
    out: dict[str, torch.Tensor] = {}
    aq = ql.input_path.act_quantizer
    if spec.scale_precision == "e4m3":
        wg = _global(qt.global_scale, "weight global scale", name)
    else:
        wg = torch.tensor([spec.mx_global_scale], dtype=torch.float32)
    codes = qt.codes.to(torch.uint8).cpu()
    sb = _sanitize_scales(_scale_bytes(qt, spec, float(wg[0])).cpu(), codes, spec, float(wg[0]), name)
    t = ql.input_path.transform
    if kind == "compressed-tensors":
        out[p + "weight_packed"] = pack_fp4(codes, zero_as_negative=False)
        if spec.scale_precision == "e4m3":
            out[p + "weight_scale"] = sb.view(torch.float8_e4m3fn)
            out[p + "weight_global_scale"] = wg
            if cfg.a_bits == 4:
                out[p + "input_global_scale"] = _global(getattr(aq, "global_scale", None), "activation global scale", name)
        else:
            out[p + "weight_scale"] = sb
    else:
        if kind == "pseudoquant":
            out[p + "dqweight"] = ql.weight.detach().to(dtype).cpu().contiguous()
        else:
            out[p + "qweight"] = pack_fp4(codes)          # zeros stored as 0x8, as the reference packer
            out[p + "scales"] = sb
        m = t.matrix(dtype=dtype, device="cpu") if t is not None else torch.eye(hgs, dtype=dtype)
        if t is not None and getattr(t, "size", hgs) != hgs:
            raise ExportError(f"{name}: transform size {t.size} != hadamard_group_size {hgs}")
        out[p + "forward_hadamard_matrix"] = m.contiguous()
        out[p + "backward_hadamard_matrix"] = m.clone()
        out[p + "weight_global_scale"] = wg
        if kind != "w4a16":
            if spec.scale_precision == "e4m3":
                out[p + "act_global_scale"] = _global(getattr(aq, "global_scale", None), "activation global scale", name)
            else:
                out[p + "act_global_scale"] = torch.tensor([spec.mx_global_scale], dtype=torch.float32)
    if ql.bias is not None:
        out[p + "bias"] = ql.bias.detach().to(dtype).cpu()
    return out


def build_state(model, cfg, kind: str, dtype: torch.dtype, hgs: int) -> dict[str, torch.Tensor]:
    layers = _quant_linears(model)
    if not layers:
        raise ExportError("the model has no QuantLinear layers: quantize it with fpq_core.pipeline first")
    tensors: dict[str, torch.Tensor] = {}
    prefixes = tuple(n + "." for n in layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for k, v in model.state_dict().items():
        if k.startswith(prefixes):
            continue
        if tied and k == "lm_head.weight":
            continue
        tensors[k] = v.detach().to(dtype).cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
    for name, ql in layers.items():
        tensors.update(_layer_tensors(name, ql, cfg, kind, dtype, hgs))
    return {k: tensors[k] for k in sorted(tensors)}


# ----------------------------------------------------------------------------- config
def _config_dict(model, cfg, kind: str, dtype: torch.dtype, hgs: int) -> dict:
    d = model.config.to_dict()
    d.pop("fpq_quantization", None)
    d.pop("quantization_config", None)
    dname = str(dtype).replace("torch.", "")
    for key in ("dtype", "torch_dtype"):
        if key in d:
            d[key] = dname
    if "dtype" not in d and "torch_dtype" not in d:
        d["dtype"] = dname
    if not d.get("architectures"):
        d["architectures"] = [type(model).__name__]
    fmt = _fmt(cfg)
    if kind in ("realquant", "pseudoquant"):
        d["quantization_config"] = fp_quant_config(fmt, hgs, kind == "pseudoquant")
    elif kind == "w4a16":
        d["quantization_config"] = {
            "quant_method": "fpq_w4a16",
            "weight_dtype": fmt,
            "activation_dtype": "bf16",
            "group_size": int(cfg.w_group_size),
            "hadamard_group_size": int(hgs),
            "mx_scale_rule": cfg.mx_scale_rule if fmt == "mxfp4" else None,
            "global_scale_convention": "encode",
            "scale_layout": "row-major",
            "modules_to_not_convert": ["lm_head"],
            "format_version": FORMAT_VERSION,
        }
    d["fpq_studio"] = {"kind": kind, "format_version": FORMAT_VERSION, "quant_config": _jsonable(cfg.to_dict())}
    return d


def _jsonable(d: dict) -> dict:
    d = dict(d)
    d.pop("notes", None)
    return json.loads(json.dumps(d, default=str))


def ct_quantization_config(cfg):
    """A compressed_tensors QuantizationConfig for this run (preset NVFP4 / NVFP4A16 / MXFP4 / MXFP4A16)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    fmt = _fmt(cfg)
    preset = {("nvfp4", 4): "NVFP4", ("nvfp4", 16): "NVFP4A16",
              ("mxfp4", 4): "MXFP4", ("mxfp4", 16): "MXFP4A16"}[(fmt, cfg.a_bits)]
    scheme: QuantizationScheme = preset_name_to_scheme(preset, ["Linear"])
    ct_format = f"{fmt}-pack-quantized"
    scheme.format = ct_format
    return QuantizationConfig(config_groups={"group_0": scheme}, format=ct_format,
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=["lm_head"])


# ----------------------------------------------------------------------------- writing
def _save_shard(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def _write_folder(folder: Path, model, tokenizer, cfg, kind, tensors, dtype, hgs, max_shard_size) -> list[str]:
    shards = plan_shards(tensors, max_shard_size)
    n = len(shards)
    weight_map: dict[str, str] = {}
    files = []
    for i, keys in enumerate(shards, start=1):
        fname = shard_name(i, n)
        _save_shard({k: tensors[k] for k in keys}, folder / fname)
        weight_map.update({k: fname for k in keys})
        files.append(fname)
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    files.append(INDEX_NAME)
    cfg_dict = _config_dict(model, cfg, kind, dtype, hgs)
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True))
    if kind == "compressed-tensors":
        from compressed_tensors.compressors import ModelCompressor

        ModelCompressor(quantization_config=ct_quantization_config(cfg)).update_config(str(folder))
    files.append("config.json")
    _write_generation_config(model, folder)
    files.append("generation_config.json")
    if tokenizer is not None:
        files += [str(p) for p in tokenizer.save_pretrained(str(folder))]
    return files


def _write_generation_config(model, folder: Path) -> None:
    from transformers import GenerationConfig

    gc = getattr(model, "generation_config", None)
    if gc is None:
        gc = GenerationConfig.from_model_config(model.config)
    gc.save_pretrained(str(folder))


# ----------------------------------------------------------------------------- verification
def verify_export(folder: Path, model, cfg, kind: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Reload every shard: keys, dtypes, shapes and bytes equal what was written; the
    dequantized weights equal the in-memory QuantLinear weights. Raises ExportError on mismatch."""
    from fpq_core.runtime import dequantize_packed, read_checkpoint_info, read_tensors

    problems: list[str] = []
    loaded = read_tensors(folder)
    if set(loaded) != set(tensors):
        problems.append(f"key sets differ: missing {sorted(set(tensors) - set(loaded))[:3]}, "
                        f"extra {sorted(set(loaded) - set(tensors))[:3]}")
    for k, t in tensors.items():
        lt = loaded.get(k)
        if lt is None:
            continue
        if lt.dtype != t.dtype or tuple(lt.shape) != tuple(t.shape):
            problems.append(f"{k}: wrote {t.dtype}{tuple(t.shape)}, read {lt.dtype}{tuple(lt.shape)}")
        elif not torch.equal(lt.view(torch.uint8) if lt.element_size() == 1 else lt,
                             t.view(torch.uint8) if t.element_size() == 1 else t):
            problems.append(f"{k}: bytes differ after reload")
    info = read_checkpoint_info(folder)
    spec = cfg.weight_spec()
    max_diff = 0.0
    layers = _quant_linears(model)
    for name, ql in layers.items():
        p = name + "."
        ref = ql.weight.detach().float().cpu()
        if kind == "pseudoquant":
            w = loaded[p + "dqweight"].float()
            ref = ql.weight.detach().to(loaded[p + "dqweight"].dtype).float().cpu()
        elif kind == "compressed-tensors":
            sc = loaded[p + "weight_scale"]
            w = dequantize_packed(loaded[p + "weight_packed"], sc.view(torch.uint8), spec,
                                  loaded.get(p + "weight_global_scale"))
        else:
            w = dequantize_packed(loaded[p + "qweight"], loaded[p + "scales"], spec, loaded[p + "weight_global_scale"])
        if w.shape != ref.shape:
            problems.append(f"{name}: dequantized shape {tuple(w.shape)} != {tuple(ref.shape)}")
            continue
        d = float((w - ref).abs().max()) if w.numel() else 0.0
        max_diff = max(max_diff, d)
        scale = float(ref.abs().max()) or 1.0
        if d > 1e-6 * scale:
            problems.append(f"{name}: dequantized weight differs from the in-memory weight by {d:.3g}")
    result = {"n_tensors": len(loaded), "n_layers": len(layers), "max_weight_abs_diff": max_diff,
              "kind_read_back": info.kind, "problems": problems}
    if kind == "compressed-tensors":
        result["compressed_tensors"] = verify_with_compressed_tensors(folder, loaded, layers)
        problems += result["compressed_tensors"]["problems"]
    if problems:
        raise ExportError("export verification failed: " + "; ".join(problems[:5]))
    return result


def verify_with_compressed_tensors(folder: Path, loaded: dict, layers: dict) -> dict:
    """Decompress every layer with the compressed-tensors package's own compressor (format and
    scheme parsed from our config.json) and compare to the in-memory weights. CT unpacks into
    bfloat16, so the tolerance is one bf16 rounding: |ct - ref| <= 2^-8 |ref|."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    qconf = QuantizationConfig.model_validate({k: v for k, v in qc.items()
                                              if k in QuantizationConfig.model_fields})
    scheme = qconf.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qconf.format)
    problems, max_rel = [], 0.0
    for name, ql in layers.items():
        p = name + "."
        sd = {k[len(p):]: v for k, v in loaded.items() if k.startswith(p)}
        out = compressor.decompress(sd, scheme)
        w = out["weight"].float()
        ref = ql.weight.detach().float().cpu()
        err = (w - ref).abs()
        tol = ref.abs() * 2.0 ** -8 + 1e-30
        rel = float((err / ref.abs().clamp_min(1e-30))[ref != 0].max()) if bool((ref != 0).any()) else 0.0
        max_rel = max(max_rel, rel)
        if bool((err > tol).any()):
            problems.append(f"{name}: compressed-tensors decompression differs (max rel {rel:.3g})")
    return {"format": qconf.format, "compressor": compressor.__name__, "max_rel_diff": max_rel,
            "tolerance": "|ct - ours| <= 2^-8 |ours| (CT dequantizes into bfloat16)", "problems": problems}


# ----------------------------------------------------------------------------- entry point
def export_model(model, tokenizer, save_path: str | os.PathLike, kind: str = "realquant",
                 max_shard_size: int = 5 * 1024**3, overwrite: bool = False, verify: bool = True,
                 dtype: torch.dtype | None = None) -> ExportReport:
    """Write ``model`` (quantized in memory by fpq_core.pipeline) as a checkpoint folder.

    ``dtype``: dtype of the non-quantized tensors, dqweight and Hadamard matrices (default: the
    model's dtype, the reference's "model dtype"; vLLM/transformers expect torch.bfloat16).
    Atomic: nothing appears at ``save_path`` unless the whole export (and its verification)
    succeeded; an existing ``save_path`` is replaced only with ``overwrite=True``."""
    t0 = time.perf_counter()
    save_path = Path(save_path)
    if kind not in KINDS:
        raise ExportError(f"unknown export kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not isinstance(max_shard_size, int) or max_shard_size <= 0:
        raise ExportError(f"max_shard_size must be a positive number of bytes, got {max_shard_size!r}")
    if save_path.exists() and not overwrite:
        raise FileExistsError(f"{save_path} already exists: pass overwrite=True to replace it")
    if save_path.exists() and not save_path.is_dir():
        raise ExportError(f"{save_path} exists and is not a folder")
    cfg = _run_config(model)
    notes = check_exportable(cfg, kind)
    layers = _quant_linears(model)
    hgs = _hgs(cfg, layers)
    if cfg.transform_class == "identity" and hgs != cfg.hadamard_group_size and kind != "compressed-tensors":
        notes.append(f"identity transform: hadamard_group_size {cfg.hadamard_group_size} does not divide every "
                     f"in_features, wrote {hgs} (eye({hgs}) matrices)")
    bad = [n for n, ql in layers.items() if ql.in_features % hgs]
    if bad and kind != "compressed-tensors":
        raise ExportError(f"hadamard_group_size {hgs} does not divide in_features of {bad[:3]}")
    dtype = dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tensors = build_state(model, cfg, kind, dtype, hgs)

    save_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{save_path.name}.tmp-", dir=save_path.parent))
    report = ExportReport(path=str(save_path), kind=kind, notes=notes)
    try:
        report.files = _write_folder(tmp, model, tokenizer, cfg, kind, tensors, dtype, hgs, max_shard_size)
        report.files = [os.path.relpath(f, tmp) if os.path.isabs(f) else f for f in report.files]
        if verify:
            report.verification = verify_export(tmp, model, cfg, kind, tensors)
            report.verified = True
        _replace_dir(tmp, save_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.n_tensors = len(tensors)
    report.n_quantized_layers = len(layers)
    report.total_bytes = sum(f.stat().st_size for f in save_path.rglob("*") if f.is_file())
    report.seconds = time.perf_counter() - t0
    return report


def _replace_dir(tmp: Path, dest: Path, overwrite: bool) -> None:
    if dest.exists():
        if not overwrite:
            raise FileExistsError(f"{dest} appeared during export: pass overwrite=True to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)            # two renames: dest is missing only for an instant
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


# ----------------------------------------------------------------------------- archive
def export_run_archive(save_path: str | os.PathLike, zip_path: str | os.PathLike | None = None) -> Path:
    """Zip the export folder (safetensors stored, text deflated) -> path of the .zip (atomic)."""
    folder = Path(save_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not an export folder")
    zip_path = Path(zip_path) if zip_path else folder.with_name(folder.name + ".zip")
    tmp = zip_path.with_name(zip_path.name + f".tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    comp = zipfile.ZIP_STORED if f.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                    zf.write(f, arcname=f"{folder.name}/{f.relative_to(folder)}", compress_type=comp)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


def iter_archive_bytes(save_path: str | os.PathLike, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Stream the zip of an export folder in chunks (for a download button); the zip is built in a
    temp file and removed afterwards."""
    with tempfile.TemporaryDirectory() as d:
        z = export_run_archive(save_path, Path(d) / (Path(save_path).name + ".zip"))
        with open(z, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk
