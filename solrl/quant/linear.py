"""Layer swap: replace selected nn.Linear layers by low-precision ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig, QuantReport, resolve_output, select_linears
from .lowrank import lowrank_split
from .numerics import bf16_epilogue, block_mm, fp8_factors, nvfp4_factors, nvfp4_pack, nvfp4_unpack_factors

OUTPUTS = ("float32", "bfloat16")


def factor_dtype_for(device: torch.device) -> torch.dtype:
    """The dtype an EmulatedLinear holds its weight factor W′ in on `device`: float32 on the CPU
    (what its GEMM takes, see block_mm), bfloat16 elsewhere (exact, half the memory, bf16 GEMMs)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


class EmulatedLinear(nn.Module):
    """W4A4 NVFP4 (or FP8) Linear, emulated as a block-scaled MMA.

    The weight is quantised once, here (static per-tensor scale S_w), into its block-product
    factor W′ = q·s, cached in `weight_qs`: exact in bfloat16 (q·s has <= 6 significant bits).
    `factor_dtype` (default: by the weight's device, `factor_dtype_for`) is the container:
    float32 on the CPU, where the GEMM takes float32 operands, and where the torchao-packed codes
    and block scales are kept too (`qdata`, `block_scale`: what the report counts and the tests
    compare with torchao); bfloat16 on an accelerator, where only W′ is kept (2 bytes per weight,
    no float32 copy) and the GEMM runs on bf16 operands with float32 accumulation. The input is
    quantised on every call (dynamic per-tensor scale S_a) into A′ = q·s, and

        y = (S_a·S_w) · (A′ @ W′ᵀ) [+ (x @ L₂ᵀ) @ L₁ᵀ] + b

    with exact products and float32 accumulation (`block_mm`), the bias added in float32. Both
    containers give the same products; on the CPU the result is bit-identical either way.
    `lowrank` = r > 0 adds SVDQuant's high-precision branch: W = L₁L₂ + R with L₁ [out, r],
    L₂ [r, in] in bfloat16 from the SVD of W, and the 4-bit factors quantise the residual R.
    r = 0 is the plain layer (no SVD, no extra buffers).

    `output` = "bfloat16" (NVFP4Config.output; the explore's `explore.emulation_output`) is the
    GEMM of a real NVFP4 MMA that emits bf16: A′ and W′ in bfloat16 containers, a bf16 GEMM with
    float32 accumulation whose result is rounded to bf16 (on an AMX CPU: oneDNN's bf16 kernel, no
    float32 copies of the operands), then (S_a·S_w)·y + b in float32 rounded once more to bf16
    (`bf16_epilogue`). Two roundings of a float32 result instead of none before the final cast:
    within 2 bf16 ulps of the "float32" layer (tests), and measured for ranking fidelity in
    docs/cpu-explore.md. "float32" (default) is the exact block product described above."""

    def __init__(
        self,
        linear: nn.Linear,
        fmt: str = "nvfp4",
        lowrank: int = 0,
        factor_dtype: torch.dtype | None = None,
        output: str = "float32",
    ):
        super().__init__()
        self.in_features, self.out_features, self.fmt = linear.in_features, linear.out_features, fmt
        if output not in OUTPUTS:
            raise ValueError(f"the emulated layer's output is float32 or bfloat16, not {output!r}")
        self.output = output
        if output == "bfloat16":
            factor_dtype = torch.bfloat16  # the operands of the bf16 GEMM (exact: <= 6 significant bits)
        factor_dtype = factor_dtype or factor_dtype_for(linear.weight.device)
        if factor_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the weight factor is held in float32 or bfloat16, not {factor_dtype}")
        w = linear.weight.detach().float()
        self.rank = 0
        if lowrank > 0:
            l1, l2, w = lowrank_split(w, lowrank)  # w is now the residual the 4-bit path quantises
            self.rank = l1.shape[1]
            self.register_buffer("lowrank_up", l1)  # L₁ [out, r]
            self.register_buffer("lowrank_down", l2)  # L₂ [r, in]
        if fmt == "nvfp4":
            q, s, S = nvfp4_pack(w)
            if factor_dtype == torch.float32:
                self.register_buffer("qdata", q)
                self.register_buffer("block_scale", s)
            self.register_buffer("tensor_scale", S)
            w_qs = nvfp4_unpack_factors(q, s, w.shape, factor_dtype)
            self.packed_bytes = q.numel() * q.element_size() + s.numel() * s.element_size() + 4
            del q, s
            self._act = nvfp4_factors
        elif fmt == "fp8":
            w_qs, S = fp8_factors(w, factor_dtype, compiled=False)
            self.register_buffer("tensor_scale", S)
            self.packed_bytes = w.numel() + 4
            self._act = fp8_factors
        else:
            raise ValueError(f"unknown emulated format {fmt!r}")
        del w  # the float32 copy of this one layer: gone before the next layer is built
        self.register_buffer("weight_qs", w_qs)
        if self.rank:
            self.packed_bytes += (l1.numel() * l1.element_size()) + (l2.numel() * l2.element_size())
        self.dense_bytes = linear.weight.numel() * linear.weight.element_size()
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "bfloat16":
            return self._forward_bf16(x)
        dtype = x.dtype  # bf16 on a GPU: quantise, multiply, accumulate in float32, hand back bf16
        a, s_a = self._act(x, self.weight_qs.dtype)  # the factor in W′'s container (see block_mm)
        y = block_mm(a, self.weight_qs)
        y = y.mul_(s_a * self.tensor_scale)
        if self.rank:
            y = y.add_(F.linear(F.linear(x.float(), self.lowrank_down.float()), self.lowrank_up.float()))
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(dtype)

    def _forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        a, s_a = self._act(x, torch.bfloat16)
        y = F.linear(a, self.weight_qs)  # bf16 GEMM, float32 accumulation, bf16 result
        scale = s_a * self.tensor_scale
        if self.rank:  # the low-rank branch joins in float32, as in the float32 layer
            y = y.float().mul_(scale)
            y = y.add_(F.linear(F.linear(x.float(), self.lowrank_down.float()), self.lowrank_up.float()))
            if self.bias is not None:
                y = y.add_(self.bias)
            return y.to(torch.bfloat16).to(x.dtype)
        return bf16_epilogue(y, scale, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, fmt={self.fmt}"
            + (f", lowrank={self.rank}" if self.rank else "")
            + (f", output={self.output}" if self.output != "float32" else "")
        )


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
    lin = nn.Linear(
        conv.in_channels,
        conv.out_channels,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(conv.out_channels, conv.in_channels))
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    return lin


def _pointwise_aware(factory: Callable[[nn.Linear], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    return lambda mod: PointwiseConv(factory(as_linear(mod))) if isinstance(mod, nn.Conv2d) else factory(mod)


def _swap(
    model: nn.Module, names: list[str], factory: Callable[[nn.Linear], nn.Module], atomic: bool = True
) -> list[nn.Module]:
    """Replace each named layer by `factory(layer)`, one layer at a time: build one replacement,
    put it in, go on, so at most one layer exists twice (the explore copy of a 12B model is
    never built beside a whole second copy).

    atomic (default): when a factory fails, the layers already replaced are put back, so `model`
    is as it was; that keeps each replaced original alive until the end. atomic=False drops each
    original as soon as its replacement is in (what `quantize_` does: its model is a fresh copy
    that a failure throws away, and the backend was checked before the first layer)."""
    built, replaced = [], []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = factory(getattr(parent, child))
            original = getattr(parent, child)
            setattr(parent, child, new)
            built.append(new)
            if atomic:
                replaced.append((parent, child, original))
            del original
    except BaseException:
        for parent, child, original in reversed(replaced):
            setattr(parent, child, original)
        raise
    return built


def quantize_(model: nn.Module, config: QuantConfig) -> QuantReport:
    """Quantise the selected Linear layers of `model` in place, one layer at a time; returns
    what was done. `config` is an NVFP4Config, FP8Config or Int8Config; backend `transformer_engine`
    also wraps the model's forward in one TE autocast with the scheme's recipe. Each original
    layer is dropped as soon as its replacement is in: should building a layer fail part-way
    (the backend itself is checked before the first), the model is left part-quantised — the
    sampler copies it is meant for are fresh copies, thrown away on failure."""
    report = QuantReport(backend=f"{config.fmt} {config.backend}")
    if config.backend == "none":
        return report
    names = select_linears(model, config)
    if config.backend == "transformer_engine":
        from .te import autocast_forward, make_te_linear, require_te, te_autocast

        te, recipe = require_te(config.fmt)  # one clear sentence, before any layer is touched
        factory: Callable[[nn.Linear], nn.Module] = lambda lin: make_te_linear(lin, te, config.fmt)  # noqa: E731
    elif config.fmt == "int8":
        from .int8 import Int8Linear, int8_engine

        engine = int8_engine()
        report.backend = f"int8 ({engine})"
        factory = lambda lin: Int8Linear(lin, engine)  # noqa: E731
    else:
        output = resolve_output(config, model)
        if output != "float32":
            report.backend += f" ({output} output)"
        factory = lambda lin: EmulatedLinear(lin, config.fmt, lowrank=config.lowrank, output=output)  # noqa: E731
    for new in _swap(model, names, _pointwise_aware(factory), atomic=False):
        report.packed_bytes += getattr(new, "packed_bytes", 0)
        report.dense_bytes += getattr(new, "dense_bytes", 0)
        report.weights += new.in_features * new.out_features
    if config.backend == "transformer_engine":
        autocast_forward(model, te_autocast(te, recipe))  # once around the model, not per layer
    report.modules = names
    return report
