"""The quantisation configs (one per scheme, torchao-style: NVFP4Config, FP8Config, Int8Config) and the
module filter they share."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Backend = Literal["emulated", "transformer_engine", "none"]
BACKENDS = ("emulated", "transformer_engine", "none")


def _check_filter(cfg) -> None:
    object.__setattr__(cfg, "skip", tuple(cfg.skip))
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown quantisation backend {cfg.backend!r}: use {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class NVFP4Config:
    """NVFP4 W4A4 of the selected Linear layers (and 1×1 convolutions, treated as Linear).

    A Linear is selected iff no `skip` pattern is a substring of its qualified name,
    max(in, out) > `min_dim`, and in_features % 16 == 0 (NVFP4 blocks run along the input
    dimension).

    backend: `emulated` (exact NVFP4 numerics as block products, any device), `transformer_engine`
    (TE's NVFP4BlockScaling kernels, Blackwell), `none` (nothing is quantised: ablations).
    `lowrank` = r > 0 (backend `emulated` only) keeps a rank-r bfloat16 branch W ≈ L₁L₂ from the
    SVD of each weight and quantises the residual W − L₁L₂ to NVFP4 (SVDQuant); 0 = plain NVFP4.
    FP8 is its own config, `FP8Config`."""

    skip: tuple[str, ...] = ()
    min_dim: int = 0
    backend: Backend = "emulated"
    lowrank: int = 0
    fmt = "nvfp4"  # the format (a class constant, not a field)

    def __post_init__(self):
        if isinstance(self.lowrank, bool) or not isinstance(self.lowrank, numbers.Integral) or self.lowrank < 0:
            raise ValueError(f"lowrank must be a non-negative integer rank, got {self.lowrank!r}")
        object.__setattr__(self, "lowrank", int(self.lowrank))
        if self.lowrank and self.backend != "emulated":
            raise ValueError(f"lowrank > 0 needs backend 'emulated' (backend {self.backend!r} has no low-rank branch)")
        if self.backend == "fp8":
            raise ValueError(
                "NVFP4Config has no backend 'fp8': FP8 is FP8Config(backend='emulated' or 'transformer_engine')"
            )
        _check_filter(self)


@dataclass(frozen=True)
class FP8Config:
    """FP8 E4M3 W8A8 with per-tensor current scaling (scale = amax / 448 of each tensor, the
    activations' on every call), of the layers the same filter as NVFP4Config's selects.

    backend: `emulated` (the E4M3 block product, any device), `transformer_engine` (TE's
    Float8CurrentScaling kernels: FP8 tensor cores on Ada/Hopper/Blackwell), `none`."""

    skip: tuple[str, ...] = ()
    min_dim: int = 0
    backend: Backend = "emulated"
    fmt = "fp8"
    lowrank = 0  # no low-rank branch beside FP8 weights (a class constant, not a field)

    def __post_init__(self):
        _check_filter(self)


@dataclass(frozen=True)
class Int8Config:
    """Int8 W8A8 of the layers the same filter as NVFP4Config's selects: int8 weights with one
    scale per output channel, activations quantised per tensor on every call, on the CPU's
    integer GEMM kernels (torch's quantized::linear_dynamic: oneDNN on AVX-512 VNNI / AMX-INT8,
    fbgemm on AVX2; solrl/quant/int8.py). CPU only.

    backend: `cpu` (those kernels), `none` (nothing is quantised)."""

    skip: tuple[str, ...] = ()
    min_dim: int = 0
    backend: Literal["cpu", "none"] = "cpu"
    fmt = "int8"
    lowrank = 0  # no low-rank branch beside int8 weights (a class constant, not a field)

    def __post_init__(self):
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.backend not in ("cpu", "none"):
            raise ValueError(f"unknown int8 backend {self.backend!r}: use cpu or none")


QuantConfig = NVFP4Config | FP8Config | Int8Config


def is_pointwise_conv(mod: nn.Module) -> bool:
    """A 1×1 convolution (stride 1, no padding, no groups) is a Linear over channels: diffusers'
    SANA builds its FFN from these where the official SANA LinearFFN has Linear layers."""
    return (
        type(mod) is nn.Conv2d
        and mod.kernel_size == (1, 1)
        and mod.stride == (1, 1)
        and mod.padding == (0, 0)
        and mod.dilation == (1, 1)
        and mod.groups == 1
    )


def _dims(mod: nn.Module) -> tuple[int, int] | None:
    if type(mod) is nn.Linear:
        return mod.in_features, mod.out_features
    if is_pointwise_conv(mod):
        return mod.in_channels, mod.out_channels
    return None


def select_linears(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """Qualified names of the Linear (and 1×1 convolution) layers `cfg` quantises, in module order."""
    out = []
    for name, mod in model.named_modules():
        dims = _dims(mod)
        if dims is None:
            continue
        if any(p in name for p in cfg.skip):
            continue
        if max(dims) <= cfg.min_dim or dims[0] % 16:
            continue
        out.append(name)
    return out


@dataclass
class QuantReport:
    backend: str
    modules: list[str] = field(default_factory=list)
    weights: int = 0  # quantised weight elements
    packed_bytes: int = 0  # bytes of codes + block scales + per-tensor scales (+ low-rank factors), as stored
    dense_bytes: int = 0  # the same weights in their original dtype

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.packed_bytes / max(1, self.weights)

    def summary(self) -> str:
        return (
            f"{self.backend}: {len(self.modules)} Linear layers, {self.weights:,} weights, "
            f"{self.packed_bytes:,} B packed ({self.bits_per_weight:.3f} bits/weight) vs {self.dense_bytes:,} B dense"
        )
