"""GPTQ for microscaling formats: Hessian accumulation and the column sweep.

The algorithm follows the reference (IST-DASLab/FP-Quant ``src/quantization/gptq.py``, see
``../shared/reference/fp-quant-reference.md`` section 4):

* ``H = 2/N * sum_tokens x x^T`` in float32, accumulated as a running average, batch by batch;
* the group scales (and the NVFP4 global scale) are fixed **before** the sweep by the observer
  ("static groups"): GPTQ only chooses codes;
* optional static activation order: columns are visited by descending ``diag(H)`` while each
  column keeps the scale of its *original* group, so the hardware group layout is unchanged;
* dead columns get an identity row/column in ``H``; relative dampening ``rel_damp * mean(diag H)``;
* ``Hinv = chol(inverse(H))`` (upper), lazy updates in blocks of ``block_size`` columns.

Where we differ from the reference (deliberately):

* **Act-order dead columns.** The reference finds all-zero weight columns in the *unpermuted*
  weight but masks those indices in the *permuted* Hessian, so it masks the wrong columns. We
  find them in the weight's own order and mask the same columns (test: ``tests/test_gptq.py``).
* **Cholesky failure.** The reference silently falls back to an identity inverse. We retry with
  10x more dampening (up to 4 times) and report what happened in ``GPTQResult.damp_used``.
* Columns whose Hessian diagonal is exactly zero (inputs never active during calibration) also
  get a unit diagonal, so the Cholesky never sees a singular matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from fpq_core.formats import QuantizedTensor, QuantSpec, all_finite, compute_scales, quantize_with_scales

__all__ = ["HessianAccumulator", "GPTQResult", "gptq_quantize", "torch_sweep", "relative_error",
           "hessian_inverse_cholesky"]


class HessianAccumulator:
    """Streaming ``H = 2/N * sum x x^T`` over calibration batches (float32).

    ``add(x)`` takes ``(B, T, d)`` (B sequences, counted as B samples as in the reference) or
    ``(T, d)`` (one sample)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.H = torch.zeros(dim, dim, dtype=torch.float32, device=device)  # (d, d)
        self.num_samples = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"Hessian of dim {self.dim} got inputs with last dim {x.shape[-1]}")
        b = x.shape[0] if x.dim() == 3 else 1
        x = x.reshape(-1, self.dim).to(device=self.H.device, dtype=torch.float32)  # (tokens, d)
        if not all_finite(x):
            raise ValueError("non-finite calibration activations reached the Hessian (NaN/inf): "
                             "check the model's dtype (use float32 on CPU) and the inputs")
        n = self.num_samples
        self.H.mul_(n / (n + b))
        self.num_samples = n + b
        x = x * math.sqrt(2.0 / self.num_samples)
        self.H.addmm_(x.t(), x)

    def hessian(self) -> torch.Tensor:
        if self.num_samples == 0:
            raise RuntimeError("the Hessian saw no calibration data: run calibration batches first")
        return self.H


@dataclass
class GPTQResult:
    weight: torch.Tensor          # (out, in) dequantized weight, in W's dtype (rotated basis)
    qtensor: QuantizedTensor      # codes + scales (+ global scale) for export
    rel_error: float              # mean(dW H dW^T) / mean(W H W^T), H dampened
    perm: torch.Tensor | None     # column visiting order (act-order) or None
    damp_used: float              # relative dampening that made H positive definite


def _dead_columns(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Columns GPTQ must not update through: all-zero weight columns (as the reference) and
    columns whose inputs were never active (zero Hessian diagonal)."""
    return (W == 0).all(dim=0) | (torch.diag(H) == 0)


def hessian_inverse_cholesky(H: torch.Tensor, rel_damp: float, max_tries: int = 5):
    """Dampen ``H`` in place (``H_ii += rel_damp * mean(diag H)``) and return the upper Cholesky
    factor of its inverse, plus the dampening that worked."""
    base = torch.diag(H).mean()
    idx = torch.arange(H.shape[0], device=H.device)
    damp = rel_damp
    H_orig_diag = torch.diag(H).clone()
    for _ in range(max_tries):
        H[idx, idx] = H_orig_diag + damp * base
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0:
                return U, damp
        damp *= 10.0
    raise torch.linalg.LinAlgError(
        f"Hessian not positive definite even with rel_damp={damp / 10:g}: too little or degenerate "
        "calibration data; use more calibration sequences or a larger --rel_damp")


def relative_error(dq: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """``mean((dq-W) H (dq-W)^T) / (mean(W H W^T) + 1e-6)`` as the reference driver prints."""
    d = (dq.float() - W.float())
    num = ((d @ H) * d).mean()
    den = ((W.float() @ H) * W.float()).mean() + 1e-6
    return float(num / den)


def _column_groups(spec: QuantSpec, n_cols: int, n_scale_cols: int, device) -> torch.Tensor:
    """Index of the scale column for every weight column (original order)."""
    if n_scale_cols == 1:
        return torch.zeros(n_cols, dtype=torch.long, device=device)
    return torch.arange(n_cols, device=device) // (n_cols // n_scale_cols)


@torch.no_grad()
def torch_sweep(W32: torch.Tensor, U: torch.Tensor, scales: torch.Tensor, col_group: torch.Tensor,
                spec: QuantSpec, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The lazy-batch GPTQ column sweep. ``W32`` (out, in) is updated in place; ``U`` is the upper
    Cholesky factor of H^-1; ``scales`` (out, G) with ``col_group`` mapping each column to its
    scale column. Returns (Q fp32 (out, in), codes int16 (out, in))."""
    out_f, in_f = W32.shape
    Q = torch.zeros_like(W32)
    codes = torch.zeros(out_f, in_f, dtype=torch.int16, device=W32.device)
    S = scales[:, col_group]                                                    # (out, in) per column
    for c1 in range(0, in_f, block_size):
        c2 = min(c1 + block_size, in_f)
        W1 = W32[:, c1:c2].clone()                                              # (out, b)
        E1 = torch.zeros_like(W1)
        U1 = U[c1:c2, c1:c2]
        for i in range(c2 - c1):
            w = W1[:, i : i + 1]                                                # (out, 1)
            s = S[:, c1 + i : c1 + i + 1]                                       # (out, 1)
            q, code = quantize_with_scales(w, s, spec)
            Q[:, c1 + i] = q[:, 0]
            codes[:, c1 + i] = code[:, 0].to(torch.int16)
            err = (w[:, 0] - q[:, 0]) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W32[:, c2:] -= E1 @ U[c1:c2, c2:]
    return Q, codes


@torch.no_grad()
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    observer: str = "minmax",
    order: str = "default",
    rel_damp: float = 0.01,
    block_size: int = 128,
    global_scale: torch.Tensor | None = None,
    sweep: Callable | None = None,
) -> GPTQResult:
    """Quantize ``W`` (out, in) — already in the rotated basis — with GPTQ under Hessian ``H``.

    ``order``: ``"default"`` (natural) or ``"activation"`` (static act-order: visit columns by
    descending ``diag(H)``; every column keeps its original group's scale).
    ``global_scale``: NVFP4 weight encode scale; computed from ``W`` when None (and fused
    across q/k/v or gate/up by the caller when asked). ``sweep``: the column sweep
    ``(W32, U, scales, col_group, spec, block_size) -> (Q, codes)``; default :func:`torch_sweep`
    (the Triton kernel in ``fpq_core.kernels.gptq`` plugs in here)."""
    if W.dim() != 2:
        raise ValueError(f"GPTQ expects a 2-D weight (out, in), got shape {tuple(W.shape)}")
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight in_features {in_f}")
    if order not in ("default", "activation"):
        raise ValueError(f"unknown GPTQ order {order!r}: use 'default' or 'activation'")
    if not all_finite(W):
        raise ValueError("weight has NaN/inf entries: the checkpoint is corrupt or was cast badly")
    if block_size <= 0:
        raise ValueError("block_size must be positive (the reference uses 128)")

    W32 = W.float().clone()                                                     # (out, in)
    H = H.float().clone()                                                       # (in, in)
    scales, gs = compute_scales(W32, spec, observer=observer, global_scale=global_scale)
    scales = scales.reshape(out_f, -1)                                          # (out, G)
    col_group = _column_groups(spec, in_f, scales.shape[1], W.device)          # (in,)

    # Dead columns in the weight's own order (the reference looks at the wrong order here).
    dead = _dead_columns(W32, H)
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1

    perm = None
    if order == "activation":
        perm = torch.argsort(torch.diag(H), descending=True)
        W32 = W32[:, perm]
        H = H[perm][:, perm]
        col_group = col_group[perm]

    U, damp = hessian_inverse_cholesky(H, rel_damp)                             # (in, in) upper

    Q, codes = (sweep or torch_sweep)(W32, U, scales, col_group, spec, block_size)

    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes, H = Q[:, inv], codes[:, inv], H[inv][:, inv]
    code_dtype = torch.uint8 if spec.format == "fp" else torch.int8
    qt = QuantizedTensor.from_codes(codes.to(code_dtype), scales, spec, gs, dtype=W.dtype)
    rel = relative_error(Q, W.float(), H)
    return GPTQResult(weight=Q.to(W.dtype), qtensor=qt, rel_error=rel, perm=perm, damp_used=damp)
