"""The `shapes` family: the embedded tiny FluxTransformer2DModel in pixel space (32x32 RGB,
4x4 patches packed into 64 tokens of 48 channels), CPU float32."""

from __future__ import annotations

from pathlib import Path

import torch

from ..shapes import model as M
from ..shapes.prompts import eval_prompts, train_prompts
from .base import Policy


class ShapesPolicy(Policy):
    family = "shapes"
    latent_shape = (M.TOKENS_PER_SIDE**2, M.CHANNELS * M.PATCH * M.PATCH)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    quant_skip = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")
    quant_min_dim = 0
    sigma_kind = "linear"

    def __init__(self, weights: str | Path | None = None, lora_rank: int = 32, lora_alpha: int = 64, seed: int = 0):
        self.model_config, transformer, self.text_encoder = M.load(weights)
        self.attach_lora(transformer, lora_rank, lora_alpha, seed)

    def train_prompts(self):
        return train_prompts()

    def eval_prompts(self):
        return eval_prompts()

    @torch.no_grad()
    def encode(self, prompts: list[str]):
        return M.encode(self.text_encoder, list(prompts))

    def transformer_velocity(self, transformer, x, t, cond):
        enc, pooled = cond
        return M.velocity(transformer, x, t, enc, pooled)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return M.unpack(x0.float()).clamp(-1, 1)
