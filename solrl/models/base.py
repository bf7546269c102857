"""The policy interface every model family implements, and the LoRA machinery they share.

A family (shapes, flux, sd3, sana) supplies: `encode(prompts) -> conditioning`,
`sigmas(steps) -> σ grid`, `transformer_velocity(transformer, x_t, t, conditioning) -> v`,
`decode(x0) -> images in [-1, 1]`, `latent_shape`, `lora_targets`, `quant_skip`, `quant_min_dim`.

The shared part holds one peft-wrapped transformer with two LoRA adapters:
"default" (θ, trainable) and "old" (the sampling policy, updated by decay), and gives
  - `velocity(x_t, t, cond, adapter)` with adapter "default", "old" or None (adapters off = reference);
  - `sampler_copy(quant)` : a detached transformer = base + merged "old" adapter, optionally
    quantised (the explore copy) or not (the regenerate copy);
  - adapter state as plain tensors (save, restore, decay, EMA).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..quant import NVFP4Config, QuantReport, quantize_
from ..sampling import solve
from ..seeds import noise_batch

ADAPTERS = ("default", "old")


class Policy(ABC):
    family: str = "?"
    latent_shape: tuple[int, ...] = ()
    lora_targets: tuple[str, ...] = ()
    quant_skip: tuple[str, ...] = ()
    quant_min_dim: int = 0
    sigma_kind: str = "linear"
    device: torch.device = torch.device("cpu")  # where the transformer runs; samples come back to the CPU

    # --- family hooks --------------------------------------------------------------------
    @abstractmethod
    def encode(self, prompts: list[str]) -> Any:
        """Family hook."""

    @abstractmethod
    def transformer_velocity(self, transformer: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Family hook."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Family hook."""

    @abstractmethod
    def train_prompts(self) -> tuple[str, ...]:
        """Family hook: the training prompt set (deterministic order)."""

    @abstractmethod
    def eval_prompts(self) -> tuple[str, ...]:
        """Family hook: the held-out evaluation prompts."""

    def sigmas(self, steps: int):
        from ..sampling import sigma_grid

        return sigma_grid(self.sigma_kind, steps)

    def encode_rows(self, prompts: list[str]) -> Any:
        """Conditioning for each row of `prompts`, running the text encoders once per distinct
        prompt (an explore batch repeats one prompt N times)."""
        distinct = list(dict.fromkeys(prompts))
        where = {p: i for i, p in enumerate(distinct)}
        return self.select_cond(self.encode(distinct), torch.tensor([where[p] for p in prompts], dtype=torch.long))

    def select_cond(self, cond: Any, index: torch.Tensor) -> Any:
        """Rows `index` of a conditioning (a tuple of batch-first tensors by default)."""
        return tuple(c[index] for c in cond)

    # --- LoRA ------------------------------------------------------------------------------
    def attach_lora(self, transformer: nn.Module, rank: int = 32, alpha: int = 64, seed: int = 0) -> None:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(self.lora_targets))
        torch.manual_seed(seed)  # gaussian init of A is drawn from the global RNG: pin it
        self.peft = get_peft_model(transformer, cfg, adapter_name="default")
        self.peft.add_adapter("old", cfg)
        self._pairs = self._param_pairs()
        self.load_adapter("old", self.adapter_state("default"))
        self.peft.set_adapter("default")

    def _param_pairs(self) -> dict[str, dict[str, nn.Parameter]]:
        out: dict[str, dict[str, nn.Parameter]] = {a: {} for a in ADAPTERS}
        for name, p in self.peft.named_parameters():
            for a in ADAPTERS:
                tag = f".{a}."
                if "lora_" in name and tag in name:
                    out[a][name.replace(tag, ".")] = p
        return out

    def adapter_state(self, adapter: str) -> dict[str, torch.Tensor]:
        """A copy of one adapter's LoRA tensors, keyed by adapter-free names."""
        return {k: p.detach().clone() for k, p in self._pairs[adapter].items()}

    @torch.no_grad()
    def load_adapter(self, adapter: str, state: dict[str, torch.Tensor]) -> None:
        params = self._pairs[adapter]
        missing = set(params) - set(state)
        if missing:
            raise ValueError(f"adapter state for {adapter!r} lacks {len(missing)} tensors, e.g. {sorted(missing)[:2]}")
        for k, p in params.items():
            p.copy_(state[k])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._pairs["default"].values())

    @contextmanager
    def _adapter(self, adapter: str | None):
        if adapter is None:
            with self.peft.disable_adapter():
                yield
            return
        self.peft.set_adapter(adapter)
        try:
            yield
        finally:
            # peft's set_adapter flips requires_grad; the trainable adapter is always "default".
            self.peft.set_adapter("default")

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Any, adapter: str | None = "default") -> torch.Tensor:
        with self._adapter(adapter):
            return self.transformer_velocity(self.peft, x, t, cond)

    # --- sampler copies ----------------------------------------------------------------------
    @torch.no_grad()
    def sampler_copy(self, quant: NVFP4Config | None = None, adapter: str = "old") -> tuple[nn.Module, QuantReport]:
        """Base weights + merged "old" adapter (W = W0 + (α/r) B A), detached from training;
        quantised when `quant` says so. The explore and regenerate copies of ALGORITHM §4/§6."""
        model = copy.deepcopy(self.peft)
        model.set_adapter(adapter)
        merged = model.merge_and_unload(adapter_names=[adapter])
        merged.requires_grad_(False).eval()
        report = quantize_(merged, quant) if quant is not None else QuantReport(backend="none")
        return merged, report

    @torch.no_grad()
    def sample(self, transformer: nn.Module, prompts: list[str], seeds: list[int], steps: int, solver: str = "euler", cond: Any = None) -> torch.Tensor:
        """Clean samples x0 for prompts[i] from noise(seeds[i]), deterministic ODE."""
        cond = self.encode_rows(prompts) if cond is None else cond
        x1 = noise_batch(seeds, self.latent_shape).to(self.device)

        def v(x, sigma):
            t = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            return self.transformer_velocity(transformer, x, t, cond)

        return solve(v, x1, self.sigmas(steps), solver).cpu()
