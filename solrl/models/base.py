"""The policy interface every model family implements, and the LoRA machinery they share.

A family (shapes, flux, sd3, sana) is one class. Its class attributes are every fact about it:
`repo` (default Hugging Face weights), `pipeline_class` (the diffusers pipeline its LoRA
exports to), `lora_targets`, `quant_skip` / `quant_min_dim` (NVFP4 rules), `sigma_kind`.
It implements `encode(prompts) -> conditioning`, `transformer_velocity(transformer, x_t, t,
conditioning) -> v`, `decode(x0) -> images in [-1, 1]`, `latent_shape`, and the class methods
`prompt_sets(cfg)` and `check(cfg)` (which need no model).

The shared part holds one peft-wrapped transformer with two LoRA adapters:
"default" (θ, trainable) and "old" (the sampling policy, updated by decay), and gives
  - `velocity(x_t, t, cond, adapter)` with adapter "default", "old" or None (adapters off = reference);
  - `sampler_copy(quant)` : a detached transformer = base + merged "old" adapter, optionally
    quantised (the explore copy) or not (the regenerate copy);
  - adapter state as plain tensors (save, restore, decay, EMA).

Precision ("BF16 train"): the transformer's weights and activations run in `self.dtype`
(bf16 on a GPU, and on a CPU with bf16 matrix instructions); the LoRA tensors, their gradients,
AdamW's moments and the EMA stay float32 (peft keeps adapters in float32 over a bf16 base), as
mixed-precision training does.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Resolved, RunConfig
from ..cpu import cpu_has_bf16_matmul  # noqa: F401 - re-exported: model.dtype auto reads it here
from ..errors import ConfigError, MissingInput
from ..quant import QuantConfig, QuantReport, quantize_
from ..sampling import solve
from ..seeds import noise_batch, stream_seed

ADAPTERS = ("default", "old")
SAMPLER_ADAPTER = "sampler"  # the slot a shared (low-memory) sampler loads its adapter state into


class CastLinear(nn.Linear):
    """A LoRA factor with a float32 master weight computed in its input's dtype: on bf16
    activations the matmul runs in bf16 and autograd saves the bf16 input (which the frozen
    base layer saves anyway), not a float32 copy of it; the gradient reaches the float32 weight
    through the cast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def lora_in_input_dtype(model: nn.Module) -> None:
    """Make every LoRA layer of a peft model compute in the activations' dtype (see CastLinear)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False  # peft would cast x to the float32 adapter dtype
            for factors in (module.lora_A, module.lora_B):
                for lin in factors.values():
                    if type(lin) is nn.Linear:
                        lin.__class__ = CastLinear


class SharedSampler:
    """A sampler that shares the policy's base weights (model.low_memory): it runs the peft model
    with its own snapshot of an adapter loaded into a spare adapter slot (unmerged LoRA), so a
    regenerate or evaluation sampler costs no transformer copy. Called like the merged copy."""

    def __init__(self, policy: Policy, state: dict[str, torch.Tensor]):
        self.policy, self.state = policy, {k: v.detach().clone() for k, v in state.items()}
        self.config = policy.peft.config

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        p = self.policy
        if p._sampler_owner is not self:  # another sampler's snapshot is in the slot
            p.load_adapter(SAMPLER_ADAPTER, self.state)
            p._sampler_owner = self
        with p._adapter(SAMPLER_ADAPTER):
            return p.peft(*args, **kwargs)

    def eval(self):
        return self


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is cuda but no CUDA GPU is visible: use device auto or cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> str:
    """auto: bf16 on a GPU and on a CPU with bf16 matrix units, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.type == "cuda" or cpu_has_bf16_matmul() else "float32"


def read_prompt_file(path: str | Path, what: str = "prompts.file") -> tuple[str, ...]:
    """One prompt per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    if not p.is_file():
        raise MissingInput(f"{what} {p} does not exist: give a text file with one prompt per line")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not prompts:
        raise MissingInput(f"{what} {p} holds no prompts: put one prompt per line")
    return prompts


class Policy(ABC):
    family: str = "?"
    repo: str | None = None  # default weights on the Hugging Face hub (None: shipped with the package)
    pipeline_class: str = ""  # the diffusers pipeline an exported LoRA loads into
    latent_shape: tuple[int, ...] = ()
    lora_targets: tuple[str, ...] = ()
    quant_skip: tuple[str, ...] = ()
    quant_min_dim: int = 0
    sigma_kind: str = "linear"
    device: torch.device = torch.device("cpu")  # where the transformer runs; samples come back to the CPU
    dtype: torch.dtype = torch.float32  # the transformer's compute dtype

    # --- what a family says about itself without loading a model -------------------------------
    @classmethod
    @abstractmethod
    def prompt_sets(cls, cfg: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(training prompts, held-out prompts), each in a fixed order."""

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Raise FileNotFoundError (one sentence) when weights or prompt files are missing."""
        cls.prompt_sets(cfg)

    @classmethod
    def held_out_eval_prompts(cls, cfg: RunConfig, held: tuple[str, ...]) -> tuple[str, ...]:
        """The `held_out` evaluation set: a stratified sample of the held-out prompts (a family
        with structure overrides this; by default the first ones)."""
        return held[: cfg.eval.held_out_prompts] if cfg.eval.held_out_prompts else held

    @classmethod
    def pool_candidates(cls, cfg: RunConfig, train: tuple[str, ...]) -> tuple[str, ...]:
        """The training prompts a pool is drawn from (a family may prefer those with headroom)."""
        return train

    @classmethod
    def resolve(cls, cfg: RunConfig) -> Resolved:
        """What `auto` and the prompt settings mean on this machine (stored in run.json)."""
        device = pick_device(cfg.model.device)
        int8 = cfg.explore.precision == "int8" or (
            cfg.fidelity.guard.enabled and cfg.fidelity.guard.fallback_precision == "int8"
        )
        if int8 and device.type != "cpu":
            raise ConfigError(
                f"explore precision int8 runs on the CPU's integer kernels and this run's model is on {device.type}: "
                "use explore.precision nvfp4 or fp8 on a GPU, or model.device: cpu"
            )
        train, held = cls.prompt_sets(cfg)
        digest = hashlib.sha256(("\n".join(train) + "\0" + "\n".join(held)).encode()).hexdigest()
        pool = None
        if cfg.prompts.pool:
            candidates = cls.pool_candidates(cfg, train)
            if cfg.prompts.pool > len(candidates):
                raise ConfigError(
                    f"prompts.pool ({cfg.prompts.pool}) exceeds the {len(candidates)} training prompts it is drawn from: lower it"
                )
            # Keyed on a constant, not run.seed: every run and every seed trains and evaluates on one pool.
            g = torch.Generator().manual_seed(stream_seed(0, len(candidates), name="pool"))
            chosen = torch.randperm(len(candidates), generator=g)[: cfg.prompts.pool].tolist()
            pool = tuple(sorted((candidates[i] for i in chosen), key=train.index))
        return Resolved(device=str(device), dtype=pick_dtype(cfg.model.dtype, device), prompts_digest=digest, pool=pool)

    # --- family hooks -----------------------------------------------------------------------
    @abstractmethod
    def encode(self, prompts: list[str]) -> Any:
        """Family hook."""

    @abstractmethod
    def transformer_velocity(self, transformer: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Family hook: v (float32) for x_t at times t."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Family hook."""

    def setup(self, cfg: RunConfig, resolved: Resolved) -> None:
        """Common state every family sets before loading its weights."""
        self.cfg, self.resolved = cfg, resolved
        self.device = torch.device(resolved.device)
        self.dtype = DTYPES[resolved.dtype]
        self._train, self._held = type(self).prompt_sets(cfg)

    def train_prompts(self) -> tuple[str, ...]:
        return self._train

    def eval_prompts(self) -> tuple[str, ...]:
        return self._held

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
        # autocast_adapter_dtype: the adapters stay float32 over a bf16 base (mixed precision)
        self.peft = get_peft_model(transformer, cfg, adapter_name="default", autocast_adapter_dtype=True)
        self.peft.add_adapter("old", cfg)
        self._pairs = self._param_pairs()
        for p in (p for pairs in self._pairs.values() for p in pairs.values()):
            p.data = p.data.float()  # add_adapter() casts "old" to the base dtype: keep every adapter float32
        self.load_adapter("old", self.adapter_state("default"))
        self.peft.set_adapter("default")
        if getattr(self, "lora_bf16", False):
            lora_in_input_dtype(self.peft)

    def _param_pairs(self) -> dict[str, dict[str, nn.Parameter]]:
        adapters = (*ADAPTERS, SAMPLER_ADAPTER) if SAMPLER_ADAPTER in self.peft.peft_config else ADAPTERS
        out: dict[str, dict[str, nn.Parameter]] = {a: {} for a in adapters}
        for name, p in self.peft.named_parameters():
            for a in adapters:
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
    def sampler_copy(self, quant: QuantConfig | None = None, adapter: str = "old") -> tuple[nn.Module, QuantReport]:
        """Base weights + merged "old" adapter (W = W0 + (α/r) B A), detached from training;
        quantised when `quant` says so (layer by layer), torch.compile'd when the config's
        `model.compile_samplers` says so. The explore and regenerate copies (docs/algorithm.md, "Explore").
        With `model.low_memory` (real families) an unquantised sampler is a SharedSampler."""
        if quant is None and getattr(self, "low_memory", False):
            return self.shared_sampler(adapter), QuantReport(backend="none")
        model = copy.deepcopy(self.peft)
        model.set_adapter(adapter)
        merged = model.merge_and_unload(adapter_names=[adapter])
        merged.requires_grad_(False).eval()
        report = quantize_(merged, quant) if quant is not None else QuantReport(backend="none")
        cfg = getattr(self, "cfg", None)  # set by setup(); absent only in hand-built policies
        if cfg is not None and cfg.model.compile_samplers:
            # In place (the module keeps its class and `config`); compiled on its first call. On a
            # GPU as the official code does it; CUDA graphs off (the batch shapes vary).
            merged.compile(mode="max-autotune-no-cudagraphs" if self.device.type == "cuda" else None)
        return merged, report

    def shared_sampler(self, adapter: str = "old") -> SharedSampler:
        """A sampler over the policy's own weights with a snapshot of `adapter` (see SharedSampler)."""
        if SAMPLER_ADAPTER not in self.peft.peft_config:
            self.peft.add_adapter(SAMPLER_ADAPTER, self.peft.peft_config["default"])
            if getattr(self, "lora_bf16", False):
                lora_in_input_dtype(self.peft)
            self._pairs = self._param_pairs()
            for p in self._pairs[SAMPLER_ADAPTER].values():
                p.data = p.data.float()
                p.requires_grad_(False)
            self.peft.set_adapter("default")
        self._sampler_owner = None
        return SharedSampler(self, self.adapter_state(adapter))

    _sampler_owner = None

    @torch.no_grad()
    def sample(
        self,
        transformer: nn.Module,
        prompts: list[str],
        seeds: list[int],
        steps: int,
        solver: str = "euler",
        cond: Any = None,
    ) -> torch.Tensor:
        """Clean samples x0 (float32, CPU) for prompts[i] from noise(seeds[i]), deterministic ODE."""
        cond = self.encode_rows(prompts) if cond is None else cond
        x1 = noise_batch(seeds, self.latent_shape).to(self.device)

        def v(x, sigma):
            t = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            return self.transformer_velocity(transformer, x, t, cond)

        return solve(v, x1, self.sigmas(steps), solver).cpu()
