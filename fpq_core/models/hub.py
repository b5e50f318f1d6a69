"""Is the Hugging Face hub reachable? One fast probe, shared by model and data loading.

Without a network, `from_pretrained` / `load_dataset` retry for ~30 s before failing with a
generic message. We probe once (DNS + TCP connect, 3 s timeout), remember the answer for the
process, and turn an unreachable hub into `HubUnreachableError` that names offline alternatives.
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class HubUnreachableError(OSError):
    """The Hugging Face hub cannot be reached (no network, or offline mode)."""


def offline_mode() -> bool:
    """True when the user asked for offline mode through the usual HF environment variables."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint (HF_ENDPOINT or huggingface.co) succeeds.

    The result is cached per process; offline mode always answers False."""
    if offline_mode():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return _probe(url.hostname or "huggingface.co", port, timeout)
