"""NVFP4 (Blackwell, sm_100+) and FP8 (Ada/Hopper/Blackwell, sm_89+) through NVIDIA Transformer
Engine, used as TE documents it: the selected Linear layers become `te.Linear` holding the bf16
weights, and ONE autocast with the recipe (`te.autocast`, `te.fp8_autocast` before TE 2.10) is
entered around each forward of the whole model, not per layer.

The recipes and their flags (1×16 blocks, no 2-D weight blocks, no Hadamard transform, no
stochastic rounding: the emulation's numerics) are built by `solrl.accelerator`, which also
checks the machine before a run loads anything. Import-guarded: this module imports without TE;
`require_te(fmt)` raises TransformerEngineUnavailable, one sentence naming a config that works.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch
from torch import nn

from ..accelerator import (
    GPU_NAMES as _GPU,
)
from ..accelerator import (
    TE_MIN_CAPABILITY,
    TE_MIN_VERSION,
    TransformerEngineUnavailable,
    build_te_recipe,
)

__all__ = [
    "TransformerEngineUnavailable",
    "require_te",
    "TELinear",
    "make_te_linear",
    "autocast_forward",
    "te_autocast",
]


def require_te(fmt: str = "nvfp4"):
    """(transformer_engine.pytorch, the recipe for `fmt`), or raise one sentence saying what is
    missing (the package, a CUDA device, a GPU of the right generation) and what to set instead."""
    minimum = ".".join(map(str, TE_MIN_VERSION))
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe as te_recipe
    except ImportError:
        raise TransformerEngineUnavailable(
            f"explore.backend: transformer_engine needs NVIDIA Transformer Engine >= {minimum}, which is not installed: "
            f"install the gpu extra (pip install -e '.[gpu]') on {_GPU[fmt]}, or set explore.backend: emulated"
        ) from None
    if not torch.cuda.is_available():
        raise TransformerEngineUnavailable(
            f"explore.backend: transformer_engine needs a CUDA GPU and none is visible: run on {_GPU[fmt]} or set explore.backend: emulated"
        )
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < TE_MIN_CAPABILITY[fmt]:
        fix = (
            "explore.precision: fp8 or explore.backend: emulated"
            if fmt == "nvfp4" and (major, minor) >= TE_MIN_CAPABILITY["fp8"]
            else "explore.backend: emulated"
        )
        raise TransformerEngineUnavailable(
            f"explore.backend: transformer_engine with {fmt} needs {_GPU[fmt]}, this one is sm_{major}{minor}: set {fix}"
        )
    return te, build_te_recipe(fmt, te_recipe)


def te_autocast(te, recipe) -> Callable[[], ContextManager]:
    """A factory of TE's autocast context with `recipe` (TE >= 2.10 names it `autocast(recipe=)`,
    earlier releases `fp8_autocast(fp8_recipe=)`)."""
    if hasattr(te, "autocast"):
        return lambda: te.autocast(enabled=True, recipe=recipe)
    return lambda: te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def _forward_in_context(self, *args, **kwargs):
    with self._solrl_forward_context():
        return type(self).forward(self, *args, **kwargs)


def autocast_forward(model: nn.Module, context: Callable[[], ContextManager]) -> nn.Module:
    """Run every forward of `model` inside one `context()`: the model's own forward, wrapped once
    at the top (what TE documents: one autocast around the model, however many TE layers it
    holds). `model` keeps its class, attributes and `config`; a deep copy stays wrapped, bound to
    the copy. Returns `model`."""
    model._solrl_forward_context = context
    model.forward = types.MethodType(_forward_in_context, model)
    return model


class TELinear(nn.Module):
    """A `te.Linear` with the bf16 weight and bias of `linear`, inference only. It quantises under
    the recipe of the autocast around the model's forward (see `autocast_forward`); outside one
    it runs in bf16. Input is cast to bf16, the output back to the input's dtype."""

    def __init__(self, linear: nn.Linear, te, fmt: str):
        super().__init__()
        self.in_features, self.out_features, self.fmt = linear.in_features, linear.out_features, fmt
        device = linear.weight.device if linear.weight.device.type == "cuda" else torch.device("cuda")
        self.inner = te.Linear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            params_dtype=torch.bfloat16,
            device=device,
        )
        with torch.no_grad():
            self.inner.weight.copy_(linear.weight.to(torch.bfloat16))
            if linear.bias is not None:
                self.inner.bias.copy_(linear.bias.to(torch.bfloat16))
        n = linear.weight.numel()
        # the format's size (E2M1 codes + E4M3 block scales + FP32 tensor scale, or E4M3 + scale);
        # TE keeps the bf16 master weight and quantises it on each forward
        self.packed_bytes = (n // 2 + n // 16 + 4) if fmt == "nvfp4" else (n + 4)
        self.dense_bytes = n * 2
        self.inner.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16).contiguous()).to(x.dtype)  # contiguous: SANA's 1×1 convs arrive permuted

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.fmt} (Transformer Engine)"


def make_te_linear(linear: nn.Linear, te=None, fmt: str = "nvfp4") -> nn.Module:
    if te is None:
        te, _ = require_te(fmt)
    return TELinear(linear, te, fmt)
