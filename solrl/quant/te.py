"""NVFP4 through NVIDIA Transformer Engine (Blackwell GPUs, sm_100+), recipe NVFP4BlockScaling.

Import-guarded: this module imports without Transformer Engine; `require_te()` raises one
sentence naming what is missing (the package, a CUDA device, or a Blackwell GPU).
"""

from __future__ import annotations

import torch
from torch import nn


class TransformerEngineUnavailable(RuntimeError):
    pass


def require_te():
    """Return the transformer_engine.pytorch module and the NVFP4 recipe class, or raise."""
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common.recipe import NVFP4BlockScaling
    except ImportError:
        raise TransformerEngineUnavailable(
            "backend 'transformer_engine' needs NVIDIA Transformer Engine >= 2.8, which is not installed: "
            "install the gpu extra (pip install 'sol-rl[gpu]') on a Blackwell GPU machine, or use backend 'emulated'"
        ) from None
    if not torch.cuda.is_available():
        raise TransformerEngineUnavailable(
            "backend 'transformer_engine' needs a CUDA GPU and none is visible: run on a Blackwell GPU (sm_100+) or use backend 'emulated'"
        )
    major, minor = torch.cuda.get_device_capability()
    if major < 10:
        raise TransformerEngineUnavailable(
            f"backend 'transformer_engine' NVFP4 needs a Blackwell GPU (sm_100+), this one is sm_{major}{minor}: use backend 'emulated' or 'fp8'"
        )
    return te, NVFP4BlockScaling


class TENVFP4Linear(nn.Module):
    """A te.Linear whose forward runs under the NVFP4BlockScaling recipe (W4A4, 16-element
    blocks, E4M3 block scales, FP32 tensor scale), inference only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        te, recipe_cls = require_te()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.inner = te.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, params_dtype=torch.bfloat16, device="cuda")
        with torch.no_grad():
            self.inner.weight.copy_(linear.weight.to(torch.bfloat16))
            if linear.bias is not None:
                self.inner.bias.copy_(linear.bias.to(torch.bfloat16))
        self.recipe = recipe_cls()
        # TE >= 2.10 renamed fp8_autocast to autocast; accept both.
        self._autocast = getattr(te, "autocast", None) or te.fp8_autocast
        self.packed_bytes = linear.weight.numel() // 2 + linear.weight.numel() // 16 + 4
        self.dense_bytes = linear.weight.numel() * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            ctx = self._autocast(enabled=True, recipe=self.recipe)
        except TypeError:
            ctx = self._autocast(enabled=True, fp8_recipe=self.recipe)
        with ctx:
            return self.inner(x.to(torch.bfloat16)).to(x.dtype)


def make_te_linear(linear: nn.Linear) -> nn.Module:
    return TENVFP4Linear(linear)
