"""Non-numeric helpers for the Streamlit app: safe tensor uploads and device information.

Uploads are read without pickle: only `.npy` (numpy, allow_pickle=False) and `.safetensors`
are accepted, with a size limit. Anything else is refused with a message that says what to do.
"""
from __future__ import annotations

import io
import os
import platform
from dataclasses import dataclass

import numpy as np
import torch

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
ALLOWED_SUFFIXES = (".npy", ".safetensors")


class UploadError(ValueError):
    """An uploaded file that cannot be used (wrong type, too large, unreadable)."""


@dataclass(frozen=True)
class LoadedTensors:
    """Float32 tensors read from an upload, by name (`.npy` files give one tensor, "array")."""

    tensors: dict[str, torch.Tensor]
    source: str

    def names(self) -> list[str]:
        return list(self.tensors)


def read_upload(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> LoadedTensors:
    """Read tensors from an uploaded file's name and bytes, safely.

    Only floating/integer numeric arrays are kept, converted to float32. Raises UploadError with
    a message naming the problem and the fix."""
    suffix = os.path.splitext(name or "")[1].lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise UploadError(
            f"'{name}' is not supported: upload a .npy (numpy.save) or .safetensors file. "
            "Pickle-based files (.pt, .pth, .bin, .pkl, .ckpt) are refused because loading "
            "them can run arbitrary code; convert them with safetensors.torch.save_file.")
    size = len(data)
    if size > max_bytes:
        raise UploadError(f"'{name}' is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB "
                          "limit: upload a slice of the tensor (e.g. a few rows)")
    if size == 0:
        raise UploadError(f"'{name}' is empty")
    if suffix == ".npy":
        return LoadedTensors({"array": _from_npy(name, data)}, name)
    return LoadedTensors(_from_safetensors(name, data), name)


def _from_npy(name: str, data: bytes) -> torch.Tensor:
    if not data.startswith(b"\x93NUMPY"):
        raise UploadError(f"'{name}' is not a valid .npy file (no NUMPY header; pickled data is "
                          "refused): write it with numpy.save")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # object arrays need pickle
        raise UploadError(f"'{name}' holds Python objects (needs pickle), refused: save a plain "
                          f"numeric array instead ({e})") from e
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UploadError(f"'{name}' is not a valid .npy file: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise UploadError(f"'{name}' is not a single numpy array: use numpy.save, not savez")
    if arr.dtype.kind not in "fiu":
        raise UploadError(f"'{name}' has dtype {arr.dtype}: only numeric (float/int) arrays are supported")
    return _numeric(name, torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))


def _from_safetensors(name: str, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        raw = load(data)
    except Exception as e:  # noqa: BLE001
        raise UploadError(f"'{name}' is not a valid .safetensors file: {e}") from e
    out = {}
    for key, t in raw.items():
        if t.dtype != torch.bool and not t.dtype.is_complex:
            out[key] = _numeric(f"{name}:{key}", t.float())
    if not out:
        raise UploadError(f"'{name}' holds no numeric tensors")
    return out


def _numeric(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.numel() == 0:
        raise UploadError(f"'{name}' is empty")
    if not torch.isfinite(t).all():
        raise UploadError(f"'{name}' contains NaN or inf values: clean them before uploading")
    return t


def device_info() -> dict[str, str]:
    """Human-readable facts about the machine the app runs on (for the home page)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": str(os.cpu_count() or "?"),
    }
    try:
        import psutil

        info["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except Exception:  # noqa: BLE001 - optional
        info["memory"] = "unknown"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{p.name} ({p.total_memory / 2**30:.1f} GiB) x{torch.cuda.device_count()}"
    else:
        info["gpu"] = "none (CPU only: computations run in float32 on the CPU)"
    return info
