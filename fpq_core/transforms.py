"""Block transforms ("rotations") applied before FP4 quantization.

Every transform acts on the **last dim** of a tensor in independent blocks of size ``n``:
the last dim ``d`` is viewed as ``(d // n, n)`` and each block row-vector is multiplied by the
same ``n x n`` block matrix ``M`` (``x_blk @ M``). No class ever builds the ``d x d``
block-diagonal matrix.

- activations: ``apply(x)``            -> ``x_blk @ M``
- weights:     ``apply_to_weight(W)``  -> ``W_blk @ inv(M)^T`` along input features, so that
  ``apply(x) @ apply_to_weight(W)^T == x @ W^T`` (for orthogonal ``M`` this is ``W_blk @ M``).
- ``inverse(y)`` -> ``y_blk @ inv(M)`` (undoes ``apply``).

Registry keys (see ``available_transforms()``): identity, hadamard, dct, dst, gsr, fast_food,
full, kronecker, identity_low_rank. Only identity and hadamard are ``exportable`` in the
fp_quant checkpoint format.

Numerics. Products run in float32 (float64 for float64 input) and are rounded once to the
input dtype. Hadamard on CPU is computed as ``round_to_dtype((x in float64) @ S_n * (1/sqrt(n)))``
with the +-1 Sylvester matrix ``S_n``: this is the convention of the reference test vectors and
matches them bit for bit (float32 and bfloat16). On CUDA (or with ``exact=False``) a float32 per-block
product is used instead (last-bit differences are possible, like the reference's CUDA kernel).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = [
    "BlockTransform",
    "IdentityTransform",
    "HadamardTransform",
    "DCTTransform",
    "DSTTransform",
    "GSRTransform",
    "FastFoodTransform",
    "FullTransform",
    "KroneckerTransform",
    "IdentityLowRankTransform",
    "TRANSFORMS",
    "available_transforms",
    "get_transform",
    "valid_sizes",
    "choose_transform_size",
    "sylvester_hadamard",
]

DEFAULT_SEED = 42
_POW2_HINT = "use 16, 32, 64, 128, ..."


# ----------------------------------------------------------------------------- size helpers
def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def valid_sizes(dim: int, min_size: int = 16) -> list[int]:
    """Powers of two ``>= min_size`` (16, 32, 64, ...) that divide ``dim``.

    >>> valid_sizes(576)   # SmolLM2 hidden size 576 = 2^6 * 9
    [16, 32, 64]
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    out, s = [], max(1, int(min_size))
    s = 1 << (s - 1).bit_length()  # round min_size up to a power of two
    while s <= dim:
        if dim % s == 0:
            out.append(s)
        s *= 2
    return out


def choose_transform_size(dim: int, preferred: int) -> int:
    """Largest power of two ``<= preferred`` that divides ``dim`` (e.g. (576, 128) -> 64)."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(preferred, int) or preferred < 1:
        raise ValueError(f"preferred transform size must be a positive int, got {preferred!r}")
    s = 1 << (preferred.bit_length() - 1)  # largest power of two <= preferred
    while dim % s:
        s //= 2
    return s


def _size_hint(dim: int) -> str:
    sizes = valid_sizes(dim)
    if sizes:
        return (f"sizes in {{16, 32, 64, 128, 256, ...}} that divide {dim}: "
                f"{', '.join(map(str, sizes))}")
    return f"no power of two >= 16 divides {dim}; pick a size that divides it"


# ----------------------------------------------------------------------------- block builders
def sylvester_hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unnormalised natural-order Sylvester Hadamard matrix (entries +-1), (n, n)."""
    if not _is_pow2(n):
        raise ValueError(f"Hadamard size must be a power of two ({_POW2_HINT}), got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(dtype)


def _sequency_sorted_hadamard(n: int) -> torch.Tensor:
    """Sylvester Hadamard with columns sorted by sequency (sign changes down a column)."""
    h = sylvester_hadamard(n)
    changes = (h[1:] != h[:-1]).sum(dim=0)  # (n,) each count 0..n-1 occurs once
    return h[:, torch.argsort(changes, stable=True)]


def _scipy_block(kind: str, n: int) -> torch.Tensor:
    """Orthonormal DCT-II / DST-II block: row i = transform of e_i, so x @ M = DCT-II(x)."""
    import numpy as np
    from scipy import fftpack

    fn = fftpack.dct if kind == "dct" else fftpack.dst
    return torch.from_numpy(fn(np.eye(n), type=2, norm="ortho")).to(torch.float64)


def _random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal (n, n) float64 matrix (QR of a Gaussian, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return q * d  # scale columns


def _closest_divisors(n: int) -> tuple[int, int]:
    """(a, b) with a * b == n, a <= b and a as close to sqrt(n) as possible."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


# ----------------------------------------------------------------------------- base class
class BlockTransform:
    """A transform of block size ``size`` acting on the last dim, blockwise.

    Subclasses set ``_block`` (float64 (n, n) matrix M on CPU) in ``__init__``.
    ``dtype`` / ``device`` are only the defaults of ``matrix()``; ``apply`` works for any
    floating dtype and device (matrices are cached per (dtype, device)).
    """

    name: str = "base"
    is_orthogonal: bool = True
    exportable: bool = False
    needs_pow2: bool = False

    def __init__(self, size: int, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{self.name}: transform size must be a positive int, got {size!r}")
        if self.needs_pow2 and not _is_pow2(size):
            raise ValueError(
                f"{self.name}: transform size must be a power of two ({_POW2_HINT}), got {size}")
        self.size = size
        self.dtype = dtype if dtype is not None else torch.float32
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._block: torch.Tensor | None = None  # (n, n) float64, CPU
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, size={self.size})"

    # -- matrices ------------------------------------------------------------------------
    def _block64(self) -> torch.Tensor:
        assert self._block is not None, "subclass must set _block"
        return self._block

    def _inv_block64(self) -> torch.Tensor:
        """inv(M) in float64 (numeric inverse: exact even where M is orthogonal only up to
        float32 rounding, e.g. gsr's +-1/fl32(sqrt(n)) entries)."""
        if "inv64" not in self._cache:
            self._cache["inv64"] = torch.linalg.inv(self._block64())
        return self._cache["inv64"]

    def _cast(self, key: str, make: Callable[[], torch.Tensor], dtype, device) -> torch.Tensor:
        k = (key, dtype, str(device))
        if k not in self._cache:
            self._cache[k] = make().to(device=device, dtype=dtype)
        return self._cache[k]

    def matrix(self, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """The (n, n) block matrix M (``x_blk @ M``), e.g. for export."""
        return self._block64().to(device=device or self.device, dtype=dtype or self.dtype)

    def weight_matrix(self, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """The (n, n) matrix inv(M)^T used on weights (== M for orthogonal M)."""
        m = self._block64() if self.is_orthogonal else self._inv_block64().T
        return m.to(device=device or self.device, dtype=dtype or self.dtype)

    # -- validation ----------------------------------------------------------------------
    def _check(self, x: torch.Tensor, what: str = "input") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: {what} must be a floating tensor "
                            f"(float32/bfloat16/float16/float64), got {x.dtype}; cast it first")
        if x.dim() == 0:
            raise ValueError(f"{self.name}: {what} must have at least one dim")
        d = x.shape[-1]
        if d % self.size:
            raise ValueError(
                f"{self.name}: last dim {d} is not divisible by transform size {self.size}; "
                f"{_size_hint(d)} (see choose_transform_size)")

    # -- blockwise product ---------------------------------------------------------------
    def _blockwise(self, x: torch.Tensor, key: str, make: Callable[[], torch.Tensor]):
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        m = self._cast(key, make, cdt, x.device)  # (n, n)
        xb = x.to(cdt).reshape(*x.shape[:-1], x.shape[-1] // self.size, self.size)
        return (xb @ m).reshape(x.shape).to(x.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Activation side: x (..., d) -> x_blk @ M, same shape and dtype."""
        self._check(x)
        return self._blockwise(x, "fwd", self._block64)

    def apply_to_weight(self, w: torch.Tensor) -> torch.Tensor:
        """Weight side: W (out, in) -> W_blk @ inv(M)^T along in-features (last dim)."""
        self._check(w, "weight")
        if self.is_orthogonal:
            return self._blockwise(w, "fwd", self._block64)
        return self._blockwise(w, "inv_t", lambda: self._inv_block64().T)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo ``apply``: y (..., d) -> y_blk @ inv(M)."""
        self._check(y)
        return self._blockwise(y, "inv", self._inv_block64)

    __call__ = apply


# ----------------------------------------------------------------------------- classes
class IdentityTransform(BlockTransform):
    """No-op (exports ``eye(n)``). ``apply`` returns its input (no copy)."""

    name = "identity"
    exportable = True

    def __init__(self, size: int, **kw):
        super().__init__(size, **kw)
        self._block = torch.eye(size, dtype=torch.float64)

    def apply(self, x):
        self._check(x)
        return x

    def apply_to_weight(self, w):
        self._check(w, "weight")
        return w

    def inverse(self, y):
        self._check(y)
        return y

    __call__ = apply


class HadamardTransform(BlockTransform):
    """Sylvester (natural-order) Walsh-Hadamard / sqrt(n); symmetric and self-inverse.

    ``exact`` (default: True on CPU, False on CUDA): compute
    ``round_to_dtype((x in float64) @ S_n * (1/sqrt(n)))`` per block (the reference-vector
    convention, bit-exact); otherwise a float32 per-block product with S_n/sqrt(n) (about 5x
    faster on CPU, last-bit differences like the reference's CUDA kernel). Never d x d.
    """

    name = "hadamard"
    exportable = True
    needs_pow2 = True

    def __init__(self, size: int, *, exact: bool | None = None, **kw):
        super().__init__(size, **kw)
        self.exact = exact
        self.scale = 1.0 / math.sqrt(size)  # python double, as the reference
        self._sign = sylvester_hadamard(size)  # (n, n) +-1, float64
        self._block = self._sign * self.scale

    def _hadamard(self, x: torch.Tensor) -> torch.Tensor:
        exact = self.exact if self.exact is not None else x.device.type == "cpu"
        n = self.size
        if exact or x.dtype == torch.float64:
            s = self._cast("sign", lambda: self._sign, torch.float64, x.device)
            xb = x.to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // n, n)
            return ((xb @ s) * self.scale).reshape(x.shape).to(x.dtype)
        return self._blockwise(x, "fwd", self._block64)  # float32 (S_n/sqrt(n)) product

    def apply(self, x):
        self._check(x)
        return self._hadamard(x)

    def apply_to_weight(self, w):
        self._check(w, "weight")
        return self._hadamard(w)

    def inverse(self, y):
        self._check(y)
        return self._hadamard(y)

    __call__ = apply


class DCTTransform(BlockTransform):
    """Orthonormal DCT-II per block (scipy.fftpack convention: x @ M = DCT-II(x))."""

    name = "dct"

    def __init__(self, size: int, **kw):
        super().__init__(size, **kw)
        self._block = _scipy_block("dct", size)


class DSTTransform(BlockTransform):
    """Orthonormal DST-II per block (scipy.fftpack convention: x @ M = DST-II(x))."""

    name = "dst"

    def __init__(self, size: int, **kw):
        super().__init__(size, **kw)
        self._block = _scipy_block("dst", size)


class GSRTransform(BlockTransform):
    """Grouped sequency-aligned rotation: Sylvester Hadamard, columns sorted by sequency,
    entries +-1/fl32(sqrt(n)) (float32 sqrt, like the reference). For n = 2^odd this is
    orthogonal only to ~1e-7 (M M^T = n/fl32(sqrt(n))^2 I); weights use M, as the reference."""

    name = "gsr"
    needs_pow2 = True

    def __init__(self, size: int, **kw):
        super().__init__(size, **kw)
        root = float(torch.tensor(float(size), dtype=torch.float32).sqrt())
        self._block = _sequency_sorted_hadamard(size) / root


class FastFoodTransform(BlockTransform):
    """Seeded FastFood block ``M = (sqrt(2)/sqrt(n)) * S @ H @ G @ P @ H @ B`` (x_blk @ M).

    B = diag(+-1), G = diag(N(0, 1)), P a random permutation matrix, H the unnormalised
    Sylvester Hadamard, S = diag(chi_n samples / |g_i|) (the reference's choice; small |g_i|
    make M badly conditioned, cond ~1e3-1e6, so float32 products lose that many ulps). Not
    orthogonal: weights use the explicit inverse-transpose, computed in float64.

    Unlike the reference (which draws from the global torch RNG, so every block and every
    insertion point gets new random matrices), all randomness here comes from a private
    generator seeded with ``seed`` (default 42): one block matrix per instance, used for all
    blocks, and two instances differ **only via the seed** (same seed -> same matrix).
    """

    name = "fast_food"
    is_orthogonal = False
    needs_pow2 = True

    def __init__(self, size: int, *, seed: int | None = None, **kw):
        super().__init__(size, **kw)
        self.seed = DEFAULT_SEED if seed is None else int(seed)
        n, g = size, _generator(self.seed)
        b = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
        gdiag = torch.randn(n, generator=g, dtype=torch.float64)
        perm = torch.randperm(n, generator=g)
        chi = torch.randn(n, n, generator=g, dtype=torch.float64).norm(dim=1)  # chi_n samples
        h = sylvester_hadamard(n)
        s = chi / gdiag.abs().clamp_min(1e-12)
        p = torch.eye(n, dtype=torch.float64)[perm]
        m = torch.diag(s) @ h @ torch.diag(gdiag) @ p @ h @ torch.diag(b)
        self._block = m * (math.sqrt(2.0) / math.sqrt(n))


class FullTransform(BlockTransform):
    """Dense n x n block at its initial value: a seeded random orthogonal matrix
    (the reference's learnable ``full`` transform with init="orthogonal", untrained)."""

    name = "full"

    def __init__(self, size: int, *, seed: int | None = None, **kw):
        super().__init__(size, **kw)
        self.seed = DEFAULT_SEED if seed is None else int(seed)
        self._block = _random_orthogonal(size, _generator(self.seed))


class KroneckerTransform(BlockTransform):
    """``L (x) R`` with n = a * b split into its two closest divisors (a <= b), each factor
    a seeded random orthogonal matrix (initial value of the reference's ``kronecker``)."""

    name = "kronecker"

    def __init__(self, size: int, *, seed: int | None = None, **kw):
        super().__init__(size, **kw)
        self.seed = DEFAULT_SEED if seed is None else int(seed)
        self.lsize, self.rsize = _closest_divisors(size)
        g = _generator(self.seed)
        self.left = _random_orthogonal(self.lsize, g)   # (a, a)
        self.right = _random_orthogonal(self.rsize, g)  # (b, b)
        self._block = torch.kron(self.left, self.right)  # (n, n), only n x n


class IdentityLowRankTransform(BlockTransform):
    """``M = I + (alpha/rank) * A^T @ B^T`` per block, i.e. the column-operator
    ``I + (alpha/r) B A`` (LoRA-like): A (rank, n) kaiming-uniform, B (n, rank) zeros, so
    M is the identity at init. ``set_factors(A, B)`` installs other values (inverse in
    float64). Not orthogonal in general."""

    name = "identity_low_rank"
    is_orthogonal = False

    def __init__(self, size: int, *, rank: int | None = None, alpha: float | None = None,
                 seed: int | None = None, **kw):
        super().__init__(size, **kw)
        rank = min(8, size) if rank is None else rank  # default rank 8 (or n if smaller)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= size:
            raise ValueError(f"identity_low_rank: rank must be an int in [1, {size}], got {rank!r}")
        self.rank = rank
        self.alpha = float(alpha) if alpha else float(rank)
        self.seed = DEFAULT_SEED if seed is None else int(seed)
        bound = 1.0 / math.sqrt(size)  # kaiming_uniform(a=sqrt(5)) on (rank, size)
        a = (torch.rand(rank, size, generator=_generator(self.seed), dtype=torch.float64)
             * 2 - 1) * bound
        self.set_factors(a, torch.zeros(size, rank, dtype=torch.float64))

    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """A: (rank, n), B: (n, rank)."""
        n, r = self.size, self.rank
        if tuple(a.shape) != (r, n) or tuple(b.shape) != (n, r):
            raise ValueError(f"identity_low_rank: expected A ({r}, {n}) and B ({n}, {r}), "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
        self.lora_a, self.lora_b = a.to(torch.float64).cpu(), b.to(torch.float64).cpu()
        eye = torch.eye(n, dtype=torch.float64)
        self._block = eye + (self.alpha / r) * (self.lora_a.T @ self.lora_b.T)
        self._cache.clear()


# ----------------------------------------------------------------------------- registry
TRANSFORMS: dict[str, type[BlockTransform]] = {
    "identity": IdentityTransform,
    "hadamard": HadamardTransform,
    "dct": DCTTransform,
    "dst": DSTTransform,
    "gsr": GSRTransform,
    "fast_food": FastFoodTransform,
    "full": FullTransform,
    "kronecker": KroneckerTransform,
    "identity_low_rank": IdentityLowRankTransform,
}

_SEEDED = {"fast_food", "full", "kronecker", "identity_low_rank"}
_EXTRA_KWARGS = {"hadamard": {"exact"}, "identity_low_rank": {"rank", "alpha"}}


def available_transforms() -> list[str]:
    return list(TRANSFORMS)


def get_transform(name: str, size: int = 128, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, seed: int | None = None,
                  **kwargs) -> BlockTransform:
    """Build a block transform by registry name, block size ``size`` (default 128).

    ``seed`` is used by the random classes (fast_food, full, kronecker, identity_low_rank;
    default 42) and ignored by deterministic ones. Extra keyword arguments: ``exact`` for
    hadamard, ``rank`` / ``alpha`` for identity_low_rank.
    """
    if not isinstance(name, str) or name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; available: {', '.join(TRANSFORMS)}")
    allowed = _EXTRA_KWARGS.get(name, set())
    bad = set(kwargs) - allowed
    if bad:
        raise TypeError(f"{name}: unexpected argument(s) {sorted(bad)}; "
                        f"accepted extras: {sorted(allowed) or 'none'}")
    if name in _SEEDED:
        kwargs["seed"] = seed
    return TRANSFORMS[name](size, dtype=dtype, device=device, **kwargs)
