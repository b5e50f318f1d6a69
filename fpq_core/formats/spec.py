"""QuantSpec: a frozen description of one quantization format."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .scales import scale_bits

FORMATS = ("fp", "int")
GRANULARITIES = ("tensor", "channel", "group")
SCALE_PRECISIONS = ("fp16", "e8m0", "e4m3")
SCALE_RULES = ("fpquant", "ocp")
NUMERICS = ("exact", "fp-quant")
INT_GRIDS = ("full", "symmetric")


def _choose(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class QuantSpec:
    """One quantization format.

    format: "fp" (FP4 E2M1 grid, bits must be 4) or "int" (symmetric INT-b, bits 2..8).
    granularity: "group" (groups of ``group_size`` along the last dim), "channel" (one scale per
        row, i.e. per everything but the last dim) or "tensor" (one scale).
    scale_precision: "fp16" (unquantized float scales, kept in the compute dtype), "e8m0"
        (power-of-two byte, MX) or "e4m3" (float8 byte plus an fp32 per-tensor encode scale, NV).
    scale_rule: for fp + e8m0 only. "fpquant" = the reference's x3 rule (E = floor(log2 amax),
        scale 2^E/3, global scale 3.0, never clips); "ocp" = OCP MX (scale 2^(floor(log2 amax)-2),
        global 1.0, clips at 6).
    numerics: "exact" (exact floor(log2), true divisions, float32 arithmetic) or "fp-quant"
        (the reference's floating-point chain in x's dtype, bit for bit with the test vectors).
    int_grid: for int only. "full" = [-2^(b-1), 2^(b-1)-1] with s = 2*amax/(2^b-1) (reference);
        "symmetric" = [-(2^(b-1)-1), 2^(b-1)-1] with s = amax/(2^(b-1)-1) (paper's NVINT4/MXINT4).
    """

    format: str = "fp"
    bits: int = 4
    granularity: str = "group"
    group_size: int | None = 32
    scale_precision: str = "fp16"
    scale_rule: str = "fpquant"
    numerics: str = "exact"
    int_grid: str = "full"

    def __post_init__(self):
        _choose(self.format, FORMATS, "format")
        _choose(self.granularity, GRANULARITIES, "granularity")
        _choose(self.scale_precision, SCALE_PRECISIONS, "scale_precision")
        _choose(self.scale_rule, SCALE_RULES, "scale_rule")
        _choose(self.numerics, NUMERICS, "numerics")
        _choose(self.int_grid, INT_GRIDS, "int_grid")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if self.format == "fp" and self.bits != 4:
            raise ValueError(f"format 'fp' supports only bits=4 (FP4 E2M1), got bits={self.bits}; use format='int' for other widths")
        if self.format == "int" and not 2 <= self.bits <= 8:
            raise ValueError(f"format 'int' supports bits 2..8, got bits={self.bits}")
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("granularity 'group' needs a group_size (e.g. 32 or 16)")
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool):
                raise TypeError(f"group_size must be an int, got {self.group_size!r}")
            if self.group_size <= 0:
                raise ValueError(f"group_size must be > 0, got {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(
                f"group_size={self.group_size} given with granularity {self.granularity!r}; "
                "pass group_size=None or granularity='group'")
        if self.scale_rule == "ocp" and not (self.format == "fp" and self.scale_precision == "e8m0"):
            raise ValueError("scale_rule 'ocp' applies only to format 'fp' with scale_precision 'e8m0' (MX)")

    # ---------------- presets ----------------
    @classmethod
    def mxfp4(cls, scale_rule: str = "fpquant", numerics: str = "exact") -> "QuantSpec":
        """MXFP4: FP4, group 32, E8M0 scales; "fpquant" x3 rule (global 3.0) or "ocp"."""
        return cls("fp", 4, "group", 32, "e8m0", scale_rule, numerics)

    @classmethod
    def nvfp4(cls, numerics: str = "exact") -> "QuantSpec":
        """NVFP4: FP4, group 16, E4M3 scales, fp32 encode global scale 2688/amax."""
        return cls("fp", 4, "group", 16, "e4m3", numerics=numerics)

    @classmethod
    def int(cls, bits: int = 4, group_size: int | None = 32, granularity: str = "group",
            numerics: str = "exact", scale_precision: str = "fp16", int_grid: str = "full") -> "QuantSpec":
        """Symmetric INT-b with unquantized (fp16) scales, the reference's [-2^(b-1), 2^(b-1)-1] grid."""
        if granularity != "group":
            group_size = None
        return cls("int", bits, granularity, group_size, scale_precision, numerics=numerics, int_grid=int_grid)

    @classmethod
    def nvint4(cls, numerics: str = "exact") -> "QuantSpec":
        """NVINT4 (paper App. D): INT4 on the symmetric grid [-7, 7], E4M3 scales, group 16,
        fp32 encode global scale 448*7/amax. We choose the symmetric grid (not [-8, 7]) so that
        s = amax/7 maps the group max exactly onto 7 and nothing is clipped."""
        return cls("int", 4, "group", 16, "e4m3", numerics=numerics, int_grid="symmetric")

    @classmethod
    def mxint4(cls, numerics: str = "exact") -> "QuantSpec":
        """MXINT4: INT4 on [-7, 7], E8M0 scales, group 32; scale = smallest power of two >= amax/7
        (never clips)."""
        return cls("int", 4, "group", 32, "e8m0", numerics=numerics, int_grid="symmetric")

    @classmethod
    def fp(cls, group_size: int = 32, scale_precision: str = "fp16", numerics: str = "exact",
           scale_rule: str = "fpquant") -> "QuantSpec":
        """FP4 with a custom group size and scale precision."""
        return cls("fp", 4, "group", group_size, scale_precision, scale_rule, numerics)

    @classmethod
    def from_name(cls, name: str, numerics: str = "exact") -> "QuantSpec":
        """Parse a short name: mxfp4, mxfp4-ocp, nvfp4, nvint4, mxint4, int<b>[-g<G>|-channel|-tensor]
        (default group 32), fp4-g<G>[-fp16|-e8m0|-e4m3]."""
        n = name.strip().lower()
        fixed = {"mxfp4": lambda: cls.mxfp4(numerics=numerics),
                 "mxfp4-ocp": lambda: cls.mxfp4("ocp", numerics),
                 "nvfp4": lambda: cls.nvfp4(numerics),
                 "nvint4": lambda: cls.nvint4(numerics),
                 "mxint4": lambda: cls.mxint4(numerics)}
        if n in fixed:
            return fixed[n]()
        m = re.fullmatch(r"int(\d+)(?:-(?:g(\d+)|(channel|tensor)))?", n)
        if m:
            bits = int(m.group(1))
            if m.group(3):
                return cls.int(bits, None, m.group(3), numerics)
            return cls.int(bits, int(m.group(2) or 32), "group", numerics)
        m = re.fullmatch(r"fp4(?:-g(\d+))?(?:-(fp16|e8m0|e4m3))?", n)
        if m:
            return cls.fp(int(m.group(1) or 32), m.group(2) or "fp16", numerics)
        raise ValueError(
            f"unknown format name {name!r}; try mxfp4, mxfp4-ocp, nvfp4, nvint4, mxint4, int4, int8-channel, "
            "int4-g128, fp4-g64-e4m3")

    def with_(self, **changes) -> "QuantSpec":
        """Copy with some fields changed (validated)."""
        return replace(self, **changes)

    # ---------------- derived properties ----------------
    @property
    def uses_global_scale(self) -> bool:
        """True when a per-tensor fp32 encode scale is computed from the data (E4M3 scales)."""
        return self.scale_precision == "e4m3"

    @property
    def is_mx(self) -> bool:
        return self.scale_precision == "e8m0"

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element including group scales (4.25 MXFP4, 4.5 NVFP4);
        for channel/tensor granularity only the element bits (the scale cost depends on K)."""
        if self.granularity != "group":
            return float(self.bits)
        return self.bits + scale_bits(self.scale_precision) / self.group_size

    @property
    def qmin(self) -> float:
        if self.format == "fp":
            return -6.0
        if self.int_grid == "symmetric":
            return float(-(2 ** (self.bits - 1) - 1))
        return float(-(2 ** (self.bits - 1)))

    @property
    def qmax(self) -> float:
        return 6.0 if self.format == "fp" else float(2 ** (self.bits - 1) - 1)

    @property
    def scale_denominator(self) -> float:
        """q_max - q_min: the base scale is 2*amax / this (12 for FP4, 15 for INT4, 14 for sym INT4)."""
        return self.qmax - self.qmin

    @property
    def mx_global_scale(self) -> float:
        """Constant global scale of E8M0 formats: 3.0 for the fpquant FP rule, else 1.0."""
        return 3.0 if (self.format == "fp" and self.scale_rule == "fpquant") else 1.0

    @property
    def name(self) -> str:
        if self == QuantSpec.mxfp4(numerics=self.numerics):
            return "mxfp4"
        if self == QuantSpec.mxfp4("ocp", self.numerics):
            return "mxfp4-ocp"
        for preset in ("nvfp4", "nvint4", "mxint4"):
            if self == getattr(QuantSpec, preset)(self.numerics):
                return preset
        g = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        base = f"fp4-{g}" if self.format == "fp" else f"int{self.bits}-{g}"
        extra = "" if self.scale_precision == "fp16" else f"-{self.scale_precision}"
        if self.format == "int" and self.int_grid == "symmetric":
            extra += "-sym"
        return base + extra
