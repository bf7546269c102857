"""Stable Diffusion 3.5 (stabilityai/stable-diffusion-3.5-large) over StableDiffusion3Pipeline.

- conditioning: CLIP-L + CLIP-G (pooled, concatenated) and CLIP hidden states + T5-XXL
  sequence (`StableDiffusion3Pipeline.encode_prompt`, CFG off);
- latents: 16 × H/8 × W/8, unpacked (the transformer patchifies);
- σ grid: diffusers' FlowMatchEulerDiscreteScheduler grid with the static shift of the
  scheduler config (3.0 for SD3.5), then 0;
- transformer: timestep = 1000 σ in float32 (as diffusers' pipeline passes it), v = ε − x0;
- decode: x / scaling_factor + shift_factor, VAE (float32);
- LoRA on the joint attention's image and text projections; NVFP4 skips the embedders, the
  AdaLN norms and the text-stream FFN, and every Linear no wider than the hidden size (so on
  SD3.5-L only the image-stream FFN is quantised, as in the official code).
"""

from __future__ import annotations

import torch

from ..sampling import sigma_grid
from .diffusers_base import DiffusersPolicy


class SD3Policy(DiffusersPolicy):
    family = "sd3"
    repo = "stabilityai/stable-diffusion-3.5-large"
    pipeline_class = "StableDiffusion3Pipeline"
    default_resolution = 1024
    default_max_sequence_length = 128  # T5 tokens, as the official Sol-RL presets
    lora_targets = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
    )
    quant_skip = ("pos_embed", "context_embedder", "time_text_embed", "norm_out", "norm1", "ff_context")

    def _family_min_dim(self) -> int:
        c = self.pipe.transformer.config
        return c.num_attention_heads * c.attention_head_dim  # 2432 on SD3.5-L

    def sigmas(self, steps: int):
        return sigma_grid("sd3", steps, shift=self.pipe.scheduler.config.get("shift", 3.0))

    def _encode(self, prompts: list[str]):
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts,
            None,
            None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds.to(self.dtype), pooled.to(self.dtype)

    def transformer_velocity(self, transformer, x, t, cond):
        embeds, pooled = cond
        # float32 timesteps, as diffusers' pipeline passes them: in bf16, 1000σ rounds to a
        # multiple of 4 above 512 (the sinusoidal embedding is computed in float32 anyway)
        out = transformer(
            hidden_states=self._model_input(x),
            timestep=(t * 1000.0).to(self.device, torch.float32),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return out.float()

    def _decode_latents(self, x0: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.decode(self._scaled_for_vae(x0), return_dict=False)[0]
