"""``QuantConfig``: every option of the reference ``model_quant.py`` with the same meaning.

Post-parse rules of the reference (section 7): ``nvfp`` forces group sizes 16/16 and e4m3 scales,
``mxfp`` forces 32/32 and e8m0; 16 bits means "not quantized" for that operand. We apply them in
:meth:`QuantConfig.normalized` and record what was overridden in ``notes`` instead of printing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fpq_core.formats import QuantSpec

FORMATS = ("int", "fp", "nvfp", "mxfp")
GRANULARITIES = ("tensor", "channel", "group")
SCALE_PRECISIONS = ("fp16", "e8m0", "e4m3")
ORDERS = ("default", "activation")
DTYPES = ("auto", "float16", "float32", "bfloat16")


@dataclass
class QuantConfig:
    format: str = "int"
    w_bits: int = 16
    a_bits: int = 16
    w_granularity: str = "group"
    a_granularity: str = "group"
    w_group_size: int | None = None
    a_group_size: int | None = None
    scale_precision: str = "fp16"
    w_observer: str = "minmax"
    a_observer: str = "minmax"
    gptq: bool = False
    quantization_order: str = "default"
    rel_damp: float = 0.01
    transform_class: str = "identity"
    hadamard_group_size: int = 128
    fuse_global_scale: bool = False
    gptq_block_size: int = 128
    mx_scale_rule: str = "fpquant"          # "fpquant" (x3, checkpoint meaning) | "ocp"
    numerics: str = "exact"                 # "exact" | "fp-quant"
    seed: int = 42
    notes: list[str] = field(default_factory=list, compare=False)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, fmt: str = "mxfp", w_bits: int = 4, a_bits: int = 4, **kw) -> "QuantConfig":
        """Named methods of the paper's Table 1: rtn, rtn_had, gptq, mr_gptq.

        ``mr_gptq`` = GPTQ + Hadamard of the format's group size + MSE observer + static
        activation order (paper section 4; reference section 4.4)."""
        group = 16 if fmt == "nvfp" else 32
        base = dict(format=fmt, w_bits=w_bits, a_bits=a_bits)
        table = {
            "rtn": dict(),
            "rtn_had": dict(transform_class="hadamard", hadamard_group_size=group),
            "gptq": dict(gptq=True),
            "mr_gptq": dict(gptq=True, transform_class="hadamard", hadamard_group_size=group,
                            w_observer="mse", quantization_order="activation"),
        }
        if name not in table:
            raise ValueError(f"unknown method preset {name!r}: choose one of {sorted(table)}")
        return cls(**{**base, **table[name], **kw}).normalized()

    # ------------------------------------------------------------------ validation
    def normalized(self) -> "QuantConfig":
        """Validate and apply the reference's post-parse rules; returns a new config."""
        c = dataclasses.replace(self, notes=list(self.notes))
        _choice("format", c.format, FORMATS)
        _choice("w_granularity", c.w_granularity, GRANULARITIES)
        _choice("a_granularity", c.a_granularity, GRANULARITIES)
        _choice("scale_precision", c.scale_precision, SCALE_PRECISIONS)
        _choice("quantization_order", c.quantization_order, ORDERS)
        for nm in ("w_bits", "a_bits"):
            b = getattr(c, nm)
            if not (2 <= b <= 8 or b == 16):
                raise ValueError(f"--{nm} {b} is not supported: use 2..8 (int), 4 (fp/nvfp/mxfp) or 16 (no quantization)")
        if c.format in ("fp", "nvfp", "mxfp"):
            for nm in ("w_bits", "a_bits"):
                if getattr(c, nm) not in (4, 16):
                    raise ValueError(f"--format {c.format} supports only 4-bit (or 16 = off) for --{nm}, got {getattr(c, nm)}")
        if c.format == "nvfp":
            for nm, val in (("w_group_size", 16), ("a_group_size", 16), ("scale_precision", "e4m3")):
                if getattr(c, nm) not in (None, val):
                    c.notes.append(f"nvfp forces --{nm} {val} (was {getattr(c, nm)})")
                setattr(c, nm, val)
        elif c.format == "mxfp":
            for nm, val in (("w_group_size", 32), ("a_group_size", 32), ("scale_precision", "e8m0")):
                if getattr(c, nm) not in (None, val):
                    c.notes.append(f"mxfp forces --{nm} {val} (was {getattr(c, nm)})")
                setattr(c, nm, val)
        if c.w_bits < 16 and c.w_granularity == "group" and not c.w_group_size:
            raise ValueError("--w_granularity group needs --w_group_size (e.g. 32), or use --format nvfp/mxfp")
        if c.a_bits < 16 and c.a_granularity == "group" and not c.a_group_size:
            raise ValueError("--a_granularity group needs --a_group_size (e.g. 32), or use --format nvfp/mxfp")
        if c.a_observer != "minmax":
            raise ValueError("--a_observer supports only 'minmax' (activations are quantized on the fly)")
        if c.rel_damp < 0:
            raise ValueError("--rel_damp must be >= 0 (default 0.01)")
        if c.hadamard_group_size <= 0:
            raise ValueError("--hadamard_group_size must be a positive power of two")
        if c.fuse_global_scale and c.scale_precision != "e4m3":
            c.notes.append("--fuse_global_scale only matters for e4m3 (NVFP) global scales")
        return c

    @property
    def quantize_weights(self) -> bool:
        return self.w_bits < 16

    @property
    def quantize_activations(self) -> bool:
        return self.a_bits < 16

    def _spec(self, bits: int, granularity: str, group_size: int | None) -> QuantSpec:
        fmt = "int" if self.format == "int" else "fp"
        kw = dict(format=fmt, bits=bits, granularity=granularity,
                  group_size=group_size if granularity == "group" else None,
                  scale_precision=self.scale_precision, numerics=self.numerics)
        if self.scale_precision == "e8m0":
            kw["scale_rule"] = self.mx_scale_rule
        return QuantSpec(**kw)

    def weight_spec(self) -> QuantSpec | None:
        return self._spec(self.w_bits, self.w_granularity, self.w_group_size) if self.quantize_weights else None

    def act_spec(self) -> QuantSpec | None:
        return self._spec(self.a_bits, self.a_granularity, self.a_group_size) if self.quantize_activations else None

    @property
    def method_name(self) -> str:
        m = "GPTQ" if self.gptq else "RTN"
        if self.gptq and self.transform_class == "hadamard" and self.w_observer == "mse" and self.quantization_order == "activation":
            m = "MR-GPTQ"
        elif self.transform_class != "identity":
            m += f"+{self.transform_class}{self.hadamard_group_size}"
        return f"{self.format.upper()} W{self.w_bits}A{self.a_bits} {m}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown QuantConfig keys {sorted(unknown)}")
        return cls(**d)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"--{name} {value!r} is not valid: choose one of {', '.join(map(str, choices))}")
