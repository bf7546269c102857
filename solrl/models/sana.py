"""SANA (Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers) over diffusers' SanaPipeline.

- conditioning: Gemma-2 hidden states and their attention mask (`SanaPipeline.encode_prompt`,
  CFG off, no "complex human instruction" prefix);
- latents: 32 × H/32 × W/32 (DC-AE), unpacked;
- σ grid: linspace(1, 0, n + 1), unshifted (docs/algorithm.md, "Solvers and sigma grids");
- transformer: timestep = 1000 σ × config.timestep_scale in float32 (as diffusers' pipeline passes it;
  bf16 would round it to a multiple of 4 above 512), v = ε − x0 (the first half of the
  channels when the model also predicts a variance);
- decode: x / scaling_factor, DC-AE (float32);
- LoRA on the self- and cross-attention projections. NVFP4 (docs/algorithm.md, "Presets": "embedders, final
  layer, attn qkv"): in diffusers' layout the official rule keeps the embedders, the final layer
  and the self-attention in bf16 and quantises the cross-attention K/V and the FFN. diffusers'
  SANA FFN is 1×1 convolutions around a depthwise 3×3 where the official LinearFFN variant has
  Linear layers: the 1×1 convolutions are quantised as the Linear layers they are
  (solrl/quant PointwiseConv); the depthwise one stays bf16.
"""

from __future__ import annotations

import torch

from ..sampling import sigma_grid
from .diffusers_base import DiffusersPolicy


class SanaPolicy(DiffusersPolicy):
    family = "sana"
    repo = "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers"
    pipeline_class = "SanaPipeline"
    default_resolution = 1024
    default_max_sequence_length = 300
    lora_targets = (
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
    )
    # Official: per block only cross_attn.kv_linear and the (Linear) FFN; self-attention q/k/v/proj
    # and the cross-attention q/proj stay bf16. The same layers in diffusers' names:
    quant_skip = (
        "patch_embed",
        "time_embed",
        "caption_projection",
        "caption_norm",
        "norm_out",
        "proj_out",
        "attn1.",
        "attn2.to_q",
        "attn2.to_out",
    )

    def sigmas(self, steps: int):
        return sigma_grid("linear", steps)

    def _encode(self, prompts: list[str]):
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            complex_human_instruction=None,
        )
        return embeds.to(self.dtype), mask

    def transformer_velocity(self, transformer, x, t, cond):
        embeds, mask = cond
        scale = transformer.config.timestep_scale
        out = transformer(
            self._model_input(x),
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=(t * 1000.0 * scale).to(self.device, torch.float32),
            return_dict=False,
        )[0]  # float32, as diffusers passes it
        if transformer.config.out_channels // 2 == self.latent_shape[0]:
            out = out.chunk(2, dim=1)[0]
        return out.float()

    def _decode_latents(self, x0: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.decode(x0 / self.pipe.vae.config.scaling_factor, return_dict=False)[0]
