"""The quantisation configs (one per scheme, torchao-style: NVFP4Config, FP8Config, Int8Config) and the
module filter they share."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Backend = Literal["emulated", "transformer_engine", "none"]
BACKENDS = ("emulated", "transformer_engine", "none")
Output = Literal["float32", "bfloat16", "auto"]
OUTPUT_CHOICES = ("float32", "bfloat16", "auto")


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
    `output` (backend `emulated`): `float32` = the exact block product in float32 (default),
    `bfloat16` = a bf16 GEMM emitting bf16 as Blackwell's NVFP4 GEMM does (EmulatedLinear),
    `auto` = bfloat16 where the model runs in bf16 on a GPU or on a CPU with bf16 matrix
    instructions, float32 elsewhere (`emulation_output`).
    FP8 is its own config, `FP8Config`."""

    skip: tuple[str, ...] = ()
    min_dim: int = 0
    backend: Backend = "emulated"
    lowrank: int = 0
    output: Output = "float32"
    fmt = "nvfp4"  # the format (a class constant, not a field)

    def __post_init__(self):
        if self.output not in OUTPUT_CHOICES:
            raise ValueError(f"unknown emulation output {self.output!r}: use {', '.join(OUTPUT_CHOICES)}")
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
    output = "float32"  # the exact block product (a class constant, not a field)

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


def emulation_output(setting: str, dtype: str, device: str) -> str:
    """What an emulated layer's `output` setting resolves to for a model in `dtype` ("bfloat16" /
    "float32") on `device` ("cpu", "cuda", ...): `auto` is bfloat16 when the model runs in bf16 on
    a GPU, or on a CPU with bf16 matrix instructions that torch may use (`cpu_has_bf16_matmul`,
    which honours ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA, like `model.dtype: auto`); float32
    elsewhere (a float32 model, or bf16 on a CPU without bf16 kernels, where a bf16 GEMM is slow)."""
    if setting != "auto":
        return setting
    if dtype != "bfloat16":
        return "float32"
    if device.split(":")[0] != "cpu":
        return "bfloat16"
    from ..cpu import cpu_has_bf16_matmul

    return "bfloat16" if cpu_has_bf16_matmul() else "float32"


def resolve_output(cfg: QuantConfig, model: nn.Module) -> str:
    """`cfg.output` resolved for `model` (its first parameter's dtype and device)."""
    setting = getattr(cfg, "output", "float32")
    if setting != "auto":
        return setting
    p = next(iter(model.parameters()), None)
    if p is None:
        return "float32"
    return emulation_output(setting, str(p.dtype).removeprefix("torch."), p.device.type)


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
