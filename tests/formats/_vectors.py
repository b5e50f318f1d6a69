"""Helpers for the reference vectors: manifest cases, cached loading, bitwise comparison."""
from __future__ import annotations

import functools
import json

import torch

from tests.conftest import _testvectors_dir, load_vectors


@functools.lru_cache(maxsize=None)
def manifest() -> dict:
    d = _testvectors_dir()
    return json.loads((d / "manifest.json").read_text()) if d else {}


def cases(file: str, depth: int) -> list[str]:
    """Distinct tensor-name prefixes of a vector file (first ``depth`` dot-parts), from the manifest.

    Without the vectors a single placeholder case is returned: the test then requests the
    ``testvectors`` fixture, which skips (or fails in CI)."""
    entries = manifest().get("files", {}).get(file)
    if not entries:
        return ["<vectors missing>"]
    return sorted({".".join(k.split(".")[:depth]) for k in entries if k != "__file__"})


@functools.lru_cache(maxsize=None)
def vectors(name: str) -> dict:
    return load_vectors(_testvectors_dir(), name)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bit pattern of a tensor (so -0.0 != +0.0 and NaN payloads count)."""
    if t.is_floating_point():
        return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.uint8}[t.element_size()])
    return t


def n_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return int((bits(a) != bits(b)).sum())


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    n = n_diff(a, b)
    assert n == 0, f"{what}: {n} of {a.numel()} elements differ bitwise"
