"""Shared fixtures: the reference test vectors and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _testvectors_dir() -> Path | None:
    env = os.environ.get("FPQ_TESTVECTORS")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "testvectors", REPO / "shared" / "testvectors"]
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def testvectors() -> Path:
    """Folder of the reference's bit-exact vectors (../shared/testvectors).

    In CI (CI=true) a missing folder is a failure, never a silent skip."""
    d = _testvectors_dir()
    if d is None:
        msg = "reference test vectors not found: set FPQ_TESTVECTORS or place shared/ beside the repo"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def load_vectors(folder: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / f"{name}.safetensors"))
