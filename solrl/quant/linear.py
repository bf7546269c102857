"""Layer swap: replace selected nn.Linear layers by low-precision ones."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import NVFP4Config, QuantReport, select_linears
from .numerics import fake_quantize_fp8, fake_quantize_nvfp4, nvfp4_pack, nvfp4_unpack


class EmulatedLinear(nn.Module):
    """W4A4 NVFP4 (or FP8) fake-quantised Linear.

    The weight is quantised once, here (static per-tensor scale); its packed codes and scales
    are kept as buffers and the dequantised weight is cached for the matmul. The input is
    quantised on every call (dynamic per-tensor scale). The product accumulates in float32 and
    the bias is added in high precision."""

    def __init__(self, linear: nn.Linear, fmt: str = "nvfp4"):
        super().__init__()
        self.in_features, self.out_features, self.fmt = linear.in_features, linear.out_features, fmt
        w = linear.weight.detach().float()
        if fmt == "nvfp4":
            q, s, S = nvfp4_pack(w)
            self.register_buffer("qdata", q)
            self.register_buffer("block_scale", s)
            self.register_buffer("tensor_scale", S)
            w_hat = nvfp4_unpack(q, s, S, w.shape)
            self.packed_bytes = q.numel() * q.element_size() + s.numel() * s.element_size() + 4
        elif fmt == "fp8":
            w_hat = fake_quantize_fp8(w)
            self.packed_bytes = w.numel() + 4
        else:
            raise ValueError(f"unknown emulated format {fmt!r}")
        self.register_buffer("weight_hat", w_hat)
        self.dense_bytes = linear.weight.numel() * linear.weight.element_size()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        self._act = fake_quantize_nvfp4 if fmt == "nvfp4" else fake_quantize_fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # bf16 on a GPU: quantise and multiply in float32, hand back bf16
        y = F.linear(self._act(x.float()), self.weight_hat)
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.fmt}"


class PointwiseConv(nn.Module):
    """A 1×1 Conv2d run as a (quantised) Linear over the channel axis: [B, C, H, W] -> [B, H, W, C]
    -> Linear -> back. The inner Linear is what the backend built (emulated or TE)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.in_features, self.out_features = inner.in_features, inner.out_features
        self.packed_bytes = getattr(inner, "packed_bytes", 0)
        self.dense_bytes = getattr(inner, "dense_bytes", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def as_linear(conv: nn.Conv2d) -> nn.Linear:
    lin = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(conv.out_channels, conv.in_channels))
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    return lin


def _pointwise_aware(factory: Callable[[nn.Linear], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    return lambda mod: PointwiseConv(factory(as_linear(mod))) if isinstance(mod, nn.Conv2d) else factory(mod)


def _swap(model: nn.Module, names: list[str], factory: Callable[[nn.Linear], nn.Module]) -> list[nn.Module]:
    """Build every replacement first, then swap them in: a failing factory leaves `model` as it was."""
    built = []
    for name in names:
        built.append((name, factory(model.get_submodule(name))))
    for name, new in built:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return [b for _, b in built]


def quantize_(model: nn.Module, config: NVFP4Config) -> QuantReport:
    """Quantise the selected Linear layers of `model` in place; returns what was done."""
    report = QuantReport(backend=config.backend)
    if config.backend == "none":
        return report
    names = select_linears(model, config)
    if config.backend == "transformer_engine":
        from .te import make_te_linear, require_te

        require_te()  # one clear sentence, before any layer is touched
        factory: Callable[[nn.Linear], nn.Module] = make_te_linear
    else:
        fmt = "nvfp4" if config.backend == "emulated" else "fp8"
        factory = lambda lin: EmulatedLinear(lin, fmt)  # noqa: E731
    for new in _swap(model, names, _pointwise_aware(factory)):
        report.packed_bytes += getattr(new, "packed_bytes", 0)
        report.dense_bytes += getattr(new, "dense_bytes", 0)
        report.weights += new.in_features * new.out_features
    report.modules = names
    return report
