"""FLUX.1 (black-forest-labs/FLUX.1-dev) over diffusers' FluxPipeline.

- conditioning: CLIP-L pooled embedding + T5-XXL sequence (`FluxPipeline.encode_prompt`);
- latents: 16 × H/8 × W/8, packed as 2×2 patches into (H/16 · W/16) tokens of 64 channels;
  the packed layout is what we sample, store and train on (packing is a permutation), with
  the image position ids FLUX's rotary embedding needs;
- σ grid: linspace(1, 1/n, n) with the dynamic μ-shift from the image sequence length, then 0;
- transformer: timestep = σ in the model dtype (diffusers' FluxPipeline casts it to the latents'
  dtype and divides its 0–1000 timesteps by 1000), distilled
  guidance embedding = 1.0 (CFG off), v = ε − x0;
- decode: unpack, x / scaling_factor + shift_factor, VAE (float32);
- LoRA on to_q/to_k/to_v/to_out.0; NVFP4 skips the embedders and norm_out (docs/algorithm.md, "Presets").
"""

from __future__ import annotations

import torch

from ..sampling import flux_mu, sigma_grid
from .diffusers_base import DiffusersPolicy


class FluxPolicy(DiffusersPolicy):
    family = "flux"
    repo = "black-forest-labs/FLUX.1-dev"
    pipeline_class = "FluxPipeline"
    default_resolution = 512
    default_max_sequence_length = 128  # T5 tokens, as the official Sol-RL presets
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    quant_skip = ("x_embedder", "context_embedder", "time_text_embed", "norm_out")

    def _family_min_dim(self) -> int:
        # The official 1000; on FLUX.1 every Linear is wider than that, so it removes nothing there.
        c = self.pipe.transformer.config
        return 1000 if c.num_attention_heads * c.attention_head_dim > 1000 else 0

    def _latent_shape(self, resolution: int) -> tuple[int, int]:
        f = self.pipe.vae_scale_factor * 2  # VAE downsampling, then 2×2 packing
        if resolution % f:
            raise ValueError(
                f"model.resolution {resolution} must be a multiple of {f} for FLUX (VAE factor × 2×2 packing)"
            )
        channels = self.pipe.transformer.config.in_channels // 4
        side = resolution // f
        self._side = side
        self._img_ids = self.pipe._prepare_latent_image_ids(1, side, side, self.device, self.dtype)
        return (side * side, channels * 4)

    def sigmas(self, steps: int):
        s = self.pipe.scheduler.config
        mu = flux_mu(
            self.latent_shape[0],
            s.get("base_image_seq_len", 256),
            s.get("max_image_seq_len", 4096),
            s.get("base_shift", 0.5),
            s.get("max_shift", 1.15),
        )
        return sigma_grid("flux", steps, mu=mu)

    def _encode(self, prompts: list[str]):
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return embeds.to(self.dtype), pooled.to(self.dtype)

    def transformer_velocity(self, transformer, x, t, cond):
        embeds, pooled = cond
        n = x.shape[0]
        guidance = (
            torch.full((n,), 1.0, device=self.device, dtype=torch.float32)
            if transformer.config.guidance_embeds
            else None
        )
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        out = transformer(
            hidden_states=self._model_input(x),
            timestep=t.to(self.device, self.dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=self._img_ids,
            return_dict=False,
        )[0]
        return out.float()

    def _decode_latents(self, x0: torch.Tensor) -> torch.Tensor:
        side = self._side * 2 * self.pipe.vae_scale_factor
        lat = self.pipe._unpack_latents(x0, side, side, self.pipe.vae_scale_factor)
        return self.pipe.vae.decode(self._scaled_for_vae(lat), return_dict=False)[0]
