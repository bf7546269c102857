"""The quantisation config and the module filter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Backend = Literal["emulated", "transformer_engine", "fp8", "none"]


@dataclass(frozen=True)
class NVFP4Config:
    """Which Linear layers to quantise and how.

    A Linear is selected iff no `skip` pattern is a substring of its qualified name,
    max(in, out) > `min_dim`, and in_features % 16 == 0 (NVFP4 blocks run along the input
    dimension)."""

    skip: tuple[str, ...] = ()
    min_dim: int = 0
    backend: Backend = "emulated"

    def __post_init__(self):
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.backend not in ("emulated", "transformer_engine", "fp8", "none"):
            raise ValueError(f"unknown quantisation backend {self.backend!r}: use emulated, transformer_engine, fp8 or none")


def select_linears(model: nn.Module, cfg: NVFP4Config) -> list[str]:
    """Qualified names of the Linear layers `cfg` quantises, in module order."""
    out = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:
            continue
        if any(p in name for p in cfg.skip):
            continue
        if max(mod.in_features, mod.out_features) <= cfg.min_dim or mod.in_features % 16:
            continue
        out.append(name)
    return out


@dataclass
class QuantReport:
    backend: str
    modules: list[str] = field(default_factory=list)
    weights: int = 0  # quantised weight elements
    packed_bytes: int = 0  # bytes of codes + block scales + per-tensor scales, as stored
    dense_bytes: int = 0  # the same weights in their original dtype

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.packed_bytes / max(1, self.weights)

    def summary(self) -> str:
        return (
            f"{self.backend}: {len(self.modules)} Linear layers, {self.weights:,} weights, "
            f"{self.packed_bytes:,} B packed ({self.bits_per_weight:.3f} bits/weight) vs {self.dense_bytes:,} B dense"
        )
