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

from .base import Policy

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def read_prompt_file(path: str | Path, what: str = "prompts.file") -> tuple[str, ...]:
    """One prompt per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist: give a text file with one prompt per line")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not prompts:
        raise ValueError(f"{what} {p} holds no prompts: put one prompt per line")
    return prompts


def split_prompts(train_file: str | None, eval_file: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held-out). Without an eval file every 10th line of the train file is held out."""
    if not train_file:
        raise ValueError("prompts.file is not set: real model families train on your prompts, give a text file with one prompt per line")
    prompts = read_prompt_file(train_file)
    if eval_file:
        return prompts, read_prompt_file(eval_file, "prompts.eval_file")
    if len(prompts) < 10:
        raise ValueError(f"prompts.file {train_file} has {len(prompts)} prompts: give at least 10 (every 10th is held out for evaluation) or set prompts.eval_file")
    held = tuple(p for i, p in enumerate(prompts) if i % 10 == 9)
    return tuple(p for i, p in enumerate(prompts) if i % 10 != 9), held


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is cuda but no CUDA GPU is visible: use device auto or cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 on the GPU, as the paper trains; float32 on the CPU (tests, debugging)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


class DiffusersPolicy(Policy):
    """A real family over its diffusers pipeline. Subclasses set the class attributes and
    implement `_encode`, `transformer_velocity`, `_decode_latents` (and `_latent_shape`, `sigmas`
    where the default does not fit)."""

    pipeline_class: str = ""  # diffusers class name
    default_resolution: int = 1024
    default_max_sequence_length: int = 256
    repo: str = ""

    def __init__(self, weights: str | Path | None = None, lora_rank: int = 32, lora_alpha: int = 64, seed: int = 0,
                 resolution: int | None = None, device: str = "auto", dtype: str = "auto", max_sequence_length: int | None = None,
                 prompt_file: str | None = None, eval_prompt_file: str | None = None, offload: bool = True):
        import diffusers

        from . import resolve_weights

        self._train, self._eval = split_prompts(prompt_file, eval_prompt_file)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.offload = offload and self.device.type == "cuda"
        path = resolve_weights(self.family, None if weights is None else str(weights))
        cls = getattr(diffusers, self.pipeline_class)
        self.pipe = cls.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        # Frozen parts: text encoders and VAE never train. The VAE decodes in float32 (as the
        # official code does) because bf16 decoding visibly bands the images.
        for name, module in self.pipe.components.items():
            if isinstance(module, nn.Module) and name != "transformer":
                module.requires_grad_(False).eval()
        if self.dtype != torch.float32:
            self.pipe.vae.to(dtype=torch.float32)
        self.resolution = int(resolution or self.default_resolution)
        self.max_sequence_length = int(max_sequence_length or self.default_max_sequence_length)
        transformer = self.pipe.transformer
        transformer.to(self.device)
        self.latent_shape = self._latent_shape(self.resolution)
        self.attach_lora(transformer, lora_rank, lora_alpha, seed)
        if not self.offload:
            self._frozen_to(self.device)

    # --- prompts ---------------------------------------------------------------------------------
    def train_prompts(self):
        return self._train

    def eval_prompts(self):
        return self._eval

    # --- memory hygiene -----------------------------------------------------------------------
    def _frozen_to(self, device: torch.device) -> None:
        for name, module in self.pipe.components.items():
            if isinstance(module, nn.Module) and name != "transformer":
                module.to(device)

    def _with_frozen_on_device(self, fn):
        """Run fn with the text encoders / VAE on the accelerator, then send them back to the
        CPU when offloading (they are needed once per prompt, the memory is for training)."""
        if self.offload:
            self._frozen_to(self.device)
        try:
            return fn()
        finally:
            if self.offload:
                self._frozen_to(torch.device("cpu"))
                torch.cuda.empty_cache()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Any:
        return self._with_frozen_on_device(lambda: self._encode(list(prompts)))

    def _encode(self, prompts: list[str]) -> Any:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """Images in [-1, 1], float32 on the CPU; decoded a few at a time (VAE memory)."""

        def run():
            out = []
            for lo in range(0, x0.shape[0], chunk):
                lat = x0[lo : lo + chunk].to(self.device, torch.float32)
                out.append(self._decode_latents(lat).float().clamp(-1, 1).cpu())
            return torch.cat(out)

        return self._with_frozen_on_device(run)

    def _scaled_for_vae(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.pipe.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return latents / cfg.scaling_factor + shift

    # --- shared helpers for the families -------------------------------------------------------
    def _latent_shape(self, resolution: int) -> tuple[int, ...]:
        """C × H/f × W/f, unpacked (SD3, SANA: the transformer patchifies); FLUX overrides."""
        f = self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size
        if resolution % f:
            raise ValueError(f"model.resolution {resolution} must be a multiple of {f} for {self.family} (VAE factor × patch size)")
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
    def export_lora(self, out_dir: str | Path, adapter: str = "default", state: dict[str, torch.Tensor] | None = None) -> Path:
        """Save an adapter (or a given adapter-free state such as the EMA) in the diffusers LoRA
        format, loadable with `pipeline.load_lora_weights(out_dir)`."""
        tensors = state if state is not None else self.adapter_state(adapter)
        cfg = self.peft.peft_config["default"]
        return export_diffusers_lora(self.pipeline_class, tensors, out_dir, cfg.r, cfg.lora_alpha, sorted(cfg.target_modules))


def export_diffusers_lora(pipeline_class: str, tensors: dict[str, torch.Tensor], out_dir: str | Path, rank: int, alpha: int, targets) -> Path:
    """Adapter-free peft names ('base_model.model.<module>.lora_A.weight') -> diffusers' files."""
    import diffusers

    prefix = "base_model.model."
    layers = {(k[len(prefix) :] if k.startswith(prefix) else k): v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    meta = {"r": int(rank), "lora_alpha": int(alpha), "target_modules": list(targets)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, pipeline_class).save_lora_weights(out, transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta)
    return out
