"""What the three real families (flux, sd3, sana) share: a diffusers pipeline loaded with
`from_pretrained`, frozen text encoders and VAE, prompts from files, device and dtype, and the
LoRA export in the diffusers format.

A family file (flux.py, sd3.py, sana.py) adds only what differs: the pipeline class, how a
prompt is encoded, the latent shape and packing, the σ grid, the transformer's call
convention, how latents are decoded, the LoRA targets and the NVFP4 skip rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Resolved, RunConfig
from ..errors import MissingInput
from .base import Policy, read_prompt_file


def split_prompts(train_file: str | None, eval_file: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held-out). Without an eval file every 10th line of the train file is held out."""
    if not train_file:
        raise MissingInput(
            "prompts.file is not set: real model families train on your prompts, give a text file with one prompt per line"
        )
    prompts = read_prompt_file(train_file)
    if eval_file:
        return prompts, read_prompt_file(eval_file, "prompts.eval_file")
    if len(prompts) < 10:
        raise MissingInput(
            f"prompts.file {train_file} has {len(prompts)} prompts: give at least 10 (every 10th is held out for evaluation) or set prompts.eval_file"
        )
    held = tuple(p for i, p in enumerate(prompts) if i % 10 == 9)
    return tuple(p for i, p in enumerate(prompts) if i % 10 != 9), held


def resolve_weights(family: str, repo: str, weights: str | None) -> Path:
    """The local diffusers folder of a family's weights: `model.weights`, else the Hugging Face
    cache (found by huggingface_hub, offline). One sentence naming where we looked otherwise."""
    from huggingface_hub import snapshot_download

    from ..settings import settings

    cache = settings().hub_cache
    looked = []
    if weights:
        p = Path(weights)
        if (p / "model_index.json").exists():
            return p
        looked.append(str(p))
    try:
        return Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError, or an incomplete snapshot)
        looked.append(f"the Hugging Face cache under {cache} ({repo})")
    raise MissingInput(
        f"the {family} weights are missing: looked in {', '.join(looked)}; download {repo} with `huggingface-cli download {repo}` "
        f"on a machine with access and set model.weights to its local path"
    )


class DiffusersPolicy(Policy):
    """A real family over its diffusers pipeline. Subclasses set the class attributes and
    implement `_encode`, `transformer_velocity`, `_decode_latents` (and `_latent_shape`, `sigmas`
    where the default does not fit)."""

    default_resolution: int = 1024
    default_max_sequence_length: int = 256

    @classmethod
    def prompt_sets(cls, cfg: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return split_prompts(cfg.prompts.file, cfg.prompts.eval_file)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        resolve_weights(cls.family, cls.repo, cfg.model.weights)
        cls.prompt_sets(cfg)

    def __init__(self, cfg: RunConfig, resolved: Resolved):
        import diffusers

        self.setup(cfg, resolved)
        path = resolve_weights(self.family, self.repo, cfg.model.weights)
        pipe = getattr(diffusers, self.pipeline_class).from_pretrained(path, dtype=self.dtype, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        self.setup_pipeline(pipe)

    def setup_pipeline(self, pipe) -> None:
        """Everything after the weights load: frozen parts, dtypes, placement, checkpointing,
        LoRA. The memory plan (solrl/memplan.py) calls this on a pipeline built on the meta device."""
        m, cfg = self.cfg.model, self.cfg
        self.pipe = pipe
        self.offload = m.offload and self.device.type == "cuda"
        self.low_memory = m.low_memory
        self.lora_bf16 = cfg.nft.lora_bf16
        self._cond_cache: dict[str, tuple] = {}
        # Frozen parts: text encoders and VAE never train. The VAE decodes in float32 (as the
        # official code does) because bf16 decoding visibly bands the images.
        for name, module in self.pipe.components.items():
            if isinstance(module, nn.Module) and name != "transformer":
                module.requires_grad_(False).eval()
        if self.dtype != torch.float32:
            self.pipe.vae.to(dtype=torch.float32)
        self.resolution = int(m.resolution or self.default_resolution)
        self.max_sequence_length = int(m.max_sequence_length or self.default_max_sequence_length)
        transformer = self.pipe.transformer
        transformer.to(self.device)
        if cfg.nft.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()  # diffusers' own: per block, recomputed in backward
        self.latent_shape = self._latent_shape(self.resolution)
        self.attach_lora(transformer, m.lora_rank, m.lora_alpha, cfg.run.seed)
        self._place("idle")

    # --- memory hygiene -----------------------------------------------------------------------
    def frozen_modules(self) -> dict[str, nn.Module]:
        """The frozen components by memory-plan component: text encoders, VAE."""
        return {
            name: module
            for name, module in self.pipe.components.items()
            if isinstance(module, nn.Module) and name != "transformer"
        }

    def _place(self, phase: str) -> None:
        """Move the text encoders and the VAE where the memory plan's residency schedule puts
        them in `phase` (solrl/memplan.py: the same schedule the plan adds up)."""
        from ..residency import frozen_on_device

        wanted = frozen_on_device(self.cfg, phase, self.device.type)
        moved = False
        for name, module in self.frozen_modules().items():
            component = "vae" if name == "vae" else "text_encoders"
            target = self.device if component in wanted else torch.device("cpu")
            if next(module.parameters(), torch.empty(0)).device != target:
                module.to(target)
                moved = True
        if moved and self.device.type == "cuda" and phase == "idle":
            torch.cuda.empty_cache()

    def _with_frozen_on_device(self, fn, phase: str = "encode"):
        """Run fn with the frozen parts placed for `phase`, then as when idle."""
        self._place(phase)
        try:
            return fn()
        finally:
            self._place("idle")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Any:
        """Conditioning of each prompt, encoded once per process and reused (explore, regenerate,
        audit, update and eval of an iteration encode the same prompts): each prompt is encoded
        alone, so its embedding does not depend on the batch it first came in; kept on the CPU."""
        prompts = list(prompts)
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cond_cache]
        if todo:

            def run():
                for p in todo:
                    self._cond_cache[p] = tuple(c.detach().to("cpu") for c in self._encode([p]))

            self._with_frozen_on_device(run, "encode")
            while len(self._cond_cache) > self.cond_cache_size:  # oldest first
                self._cond_cache.pop(next(iter(self._cond_cache)))
        rows = [self._cond_cache[p] for p in prompts]
        return tuple(torch.cat([r[i] for r in rows]).to(self.device) for i in range(len(rows[0])))

    cond_cache_size = 512  # prompts (FLUX: ~2 MB each on the CPU); an iteration needs its prompts + the eval sets

    def _encode(self, prompts: list[str]) -> Any:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Images in [-1, 1], float32 on the CPU; decoded a few at a time (VAE memory: the
        memory plan's decode_chunk, which it measures)."""
        from ..residency import decode_chunk

        chunk = chunk or decode_chunk(self.cfg)

        def run():
            out = []
            for lo in range(0, x0.shape[0], chunk):
                lat = x0[lo : lo + chunk].to(self.device, torch.float32)
                out.append(self._decode_latents(lat).float().clamp(-1, 1).cpu())
            return torch.cat(out)

        return self._with_frozen_on_device(run, "decode")

    def _scaled_for_vae(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.pipe.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return latents / cfg.scaling_factor + shift

    # --- shared helpers for the families -------------------------------------------------------
    def _latent_shape(self, resolution: int) -> tuple[int, ...]:
        """C × H/f × W/f, unpacked (SD3, SANA: the transformer patchifies); FLUX overrides."""
        f = self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size
        if resolution % f:
            raise ValueError(
                f"model.resolution {resolution} must be a multiple of {f} for {self.family} (VAE factor × patch size)"
            )
        side = resolution // self.pipe.vae_scale_factor
        return (self.pipe.transformer.config.in_channels, side, side)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype)

    def _family_min_dim(self) -> int:
        return 0

    @property
    def quant_min_dim(self) -> int:  # type: ignore[override]
        return self._family_min_dim()

    # --- LoRA export ---------------------------------------------------------------------------
    def export_lora(
        self, out_dir: str | Path, adapter: str = "default", state: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Save an adapter (or a given adapter-free state such as the EMA) in the diffusers LoRA
        format, loadable with `pipeline.load_lora_weights(out_dir)`."""
        tensors = state if state is not None else self.adapter_state(adapter)
        cfg = self.peft.peft_config["default"]
        return export_diffusers_lora(
            self.pipeline_class, tensors, out_dir, cfg.r, cfg.lora_alpha, sorted(cfg.target_modules)
        )


def export_diffusers_lora(
    pipeline_class: str, tensors: dict[str, torch.Tensor], out_dir: str | Path, rank: int, alpha: int, targets
) -> Path:
    """Adapter-free peft names ('base_model.model.<module>.lora_A.weight') -> diffusers' files."""
    import diffusers

    prefix = "base_model.model."
    layers = {
        (k[len(prefix) :] if k.startswith(prefix) else k): v.detach().float().cpu().contiguous()
        for k, v in tensors.items()
    }
    meta = {"r": int(rank), "lora_alpha": int(alpha), "target_modules": list(targets)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, pipeline_class).save_lora_weights(
        out, transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta
    )
    return out
