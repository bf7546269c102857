"""Run configuration: one YAML file = one experiment, validated before any compute.

Torch-free: a bad key is reported in about a second, before torch or a model is imported.
Names of modes, model families and rewards are checked against solrl/modes.py and
solrl/registry.py, the only places that list them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .modes import MODES, Mode
from .registry import FAMILIES, REWARDS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Keys that never change what a run computes: a resumed run may change them freely
# (extend a run, move it, scale it out).
NOT_HASHED = {"run": ("iterations",), "model": ("memory_check",), "storage": "*", "cluster": "*"}
# Keys added after runs existed: hashed only when set away from this default, so a run made
# before the key existed keeps its hash (and resumes).
HASHED_UNLESS_DEFAULT = {"explore": {"emulation_output": "float32"}}
# Keys removed from the config, each with the value that made it a no-op. A run made before the
# removal with that value computed what the current code computes: its run.json still opens and
# the run resumes under the hash it was made with (tasks/run.py). A key added to the config must
# likewise default to what the code did before it existed.
REMOVED = {"fidelity": {"proxy_noise": 0.0}}


def split_removed(data: dict) -> tuple[dict, dict]:
    """(a stored config without the removed keys, the removed keys it had). A removed key with
    another value than its no-op one is refused: the run computed something this version cannot."""
    data = json.loads(json.dumps(data))
    legacy: dict = {}
    for section, keys in REMOVED.items():
        for k, noop in keys.items():
            if k in data.get(section, {}):
                value = data[section].pop(k)
                if value != noop:
                    raise ConfigError(
                        f"this run was made with {section}.{k} = {value!r}, which this version no longer has "
                        f"(only {noop!r} is the same computation): open it with the version that made it"
                    )
                legacy.setdefault(section, {})[k] = value
    return data, legacy


def _one_of(v: str, known, what: str) -> str:
    if v not in known:
        raise ValueError(f"unknown {what} {v!r}: choose one of {', '.join(known)}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(_Strict):
    # The run seed: keys every candidate seed, prompt draw and training-noise stream.
    seed: int = 0
    mode: str = "sol_rl"  # a key of solrl.modes.MODES
    # Iterations to run in total (a resumed run may raise it to extend the run).
    iterations: int = Field(3, ge=1)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        return _one_of(v, MODES, "mode")


class ModelSection(_Strict):
    family: str = "shapes"  # a key of solrl.registry.FAMILIES
    weights: str | None = None  # a local path; None = the family's default location
    # LoRA rank r and alpha of the trained adapter (the merged update is (alpha/r)·B·A).
    lora_rank: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    # Image side in pixels (None = the family's: flux 512, sd3/sana 1024; shapes is 32 px).
    resolution: int | None = Field(None, ge=16)
    # Where and in which dtype the transformer runs. auto: a GPU if there is one; bf16 on a GPU
    # and on a CPU with bf16 matrix instructions (avx512_bf16 or AMX), float32 elsewhere. The
    # resolved values are stored in run.json and are part of the resume hash.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    # Text tokens per prompt for the real families' encoders (None = the family's: 128, SANA 300).
    max_sequence_length: int | None = Field(None, ge=1)
    offload: bool = True  # real families: text encoders and VAE leave the GPU between uses
    # torch.compile the sampler copies (explore and regenerate), as the official code does: on in
    # the GPU presets, off for shapes (on a CPU the compile costs more than it saves).
    compile_samplers: bool = False
    # Real families: the regenerate and evaluation samplers run the policy itself with the
    # adapter active (unmerged LoRA) instead of a merged copy of the transformer: one transformer
    # copy less on the GPU, each sampling step a little slower (docs/gpus.md).
    low_memory: bool = False
    # Refuse a GPU run whose memory plan (solrl/memplan.py, `sol-rl plan`) exceeds the GPU, before
    # any weight loads (`sol-rl run --no-memory-check` overrides).
    memory_check: bool = True

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        return _one_of(v, FAMILIES, "model family")


class PromptSection(_Strict):
    # Prompts per iteration, drawn without repetition from the pool (or all training prompts).
    per_iteration: int = Field(4, ge=1)
    # A text file with one prompt per line: the training prompts (real families need one;
    # shapes takes prompts of its grammar, default: its training split). `eval_file`: held-out
    # prompts (default: shapes' held-out split; real families hold out every 10th line).
    file: str | None = None
    eval_file: str | None = None
    # The training pool: this many prompts, chosen once per run (not per seed) from the training
    # prompts; every iteration draws `per_iteration` of them (all of them when equal). For shapes
    # the draw prefers prompts with headroom (two-object prompts below the median base reward).
    # None = the whole training set.
    pool: int | None = Field(None, ge=1)


class ExploreSection(_Strict):
    # Candidates (seeds) per prompt, and the solver steps of each.
    n: int = Field(96, ge=2)
    steps: int = Field(6, ge=1)
    # The explore copy's numerics (high = unquantised: the mode naive_scaling) and, for nvfp4/fp8,
    # how they run: exact emulation anywhere, or Transformer Engine on a GPU. int8: W8A8 on the
    # CPU's integer GEMM kernels (solrl/quant/int8.py), CPU only.
    precision: Literal["nvfp4", "fp8", "int8", "high"] = "nvfp4"
    backend: Literal["emulated", "transformer_engine"] = "emulated"
    # SVDQuant-style low-rank high-precision branch of rank r beside the 4-bit residual (nvfp4
    # only; 0 = plain NVFP4).
    lowrank: int = Field(0, ge=0)
    # What the emulated NVFP4 layer's GEMM emits (backend emulated): float32 = the exact block
    # product, bfloat16 = a bf16 GEMM rounded to bf16 as a real NVFP4 GEMM does (faster on a CPU
    # with AMX / avx512_bf16), auto = bfloat16 where the model runs in bf16 on a GPU or on such
    # a CPU, float32 elsewhere. The value used is in run.json (explore_engine);
    # docs/cpu-explore.md has the measurements.
    emulation_output: Literal["float32", "bfloat16", "auto"] = "float32"
    # A Linear is quantised unless a skip pattern is a substring of its name, or max(in, out) <= min_dim.
    skip: tuple[str, ...] | None = None  # None = the family's default skip patterns
    min_dim: int | None = None
    # Candidates per forward pass.
    batch: int = Field(96, ge=1)
    # A small PNG preview of every explored candidate (the decoded low-precision x0), side in px
    # (None: the model's own size up to 64 px).
    thumbnails: bool = True
    thumbnail_px: int | None = Field(None, ge=8)


class SelectSection(_Strict):
    # Seeds kept per prompt: K/2 best + K/2 worst by proxy reward. A prompt with fewer than K
    # finite rewards stops the run (error) or is left out of the iteration (skip).
    k: int = Field(24, ge=2)
    on_short_prompt: Literal["error", "skip"] = "error"

    @field_validator("k")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"select.k must be even (K/2 top + K/2 bottom), got {v}")
        return v


class RolloutSection(_Strict):
    # High-precision sampling (regenerate, audit; explore in the naive modes): steps, ODE solver,
    # samples per forward pass.
    steps: int = Field(10, ge=1)
    solver: Literal["euler", "dpm2"] = "euler"
    batch: int = Field(96, ge=1)


class RewardSection(_Strict):
    # The training reward: a weighted sum of these rewards. `report`: rewards also scored and
    # stored (explore, regenerate, eval) but not trained on.
    weights: dict[str, float] = {"shapes": 1.0}
    report: tuple[str, ...] = ("shapes_strict",)

    @field_validator("weights")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in REWARDS]
        if bad or not v:
            raise ValueError(f"reward.weights names unknown rewards {bad}: choose from {list(REWARDS)}")
        return v

    @field_validator("report")
    @classmethod
    def _known_report(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [k for k in v if k not in REWARDS]
        if bad:
            raise ValueError(f"reward.report names unknown rewards {bad}: choose from {list(REWARDS)}")
        return v


class NFTSection(_Strict):
    # DiffusionNFT's β (the implicit policies v± around the old policy) and the weight of the
    # penalty on the distance to the base model's velocity.
    beta: float = Field(1.0, gt=0)
    kl_beta: float = Field(1e-4, ge=0)
    # AdamW (betas 0.9/0.999, eps 1e-8, constant learning rate) and the gradient-norm clip.
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = 1e-4
    max_grad_norm: float = Field(1.0, gt=0)
    # Training times per sample = int(rollout.steps × this), drawn from the rollout's σ grid.
    timestep_fraction: float = Field(0.6, gt=0, le=1)
    # Old-policy decay d(step): 0 = none, 1 = min(0.001·step, 0.5), 2 = 0 for 75 steps, then +0.0075/step.
    decay_type: Literal[0, 1, 2] = 1
    # Samples per forward/backward pass (gradients accumulate to one optimizer step).
    micro_batch: int = Field(48, ge=1)
    # Optimizer steps per iteration (the official gradient_step_per_epoch): the kept samples are
    # split into this many parts; "old" stays fixed within the iteration, the EMA follows every step.
    steps_per_iteration: int = Field(1, ge=1)
    # Real families: diffusers' gradient checkpointing of the transformer blocks in the update
    # (activations recomputed in the backward pass instead of kept).
    gradient_checkpointing: bool = False
    # LoRA matmuls in the model's dtype (bf16) on the bf16 activations; the adapters, their
    # gradients, AdamW and the EMA stay float32. False: peft's float32 LoRA path, which keeps a
    # float32 copy of every LoRA input for the backward pass.
    lora_bf16: bool = False


class EvalSection(_Strict):
    every: int = Field(1, ge=0)  # 0 = never (and no baseline)
    # Euler steps of the evaluation samples, and fixed seeds per evaluation prompt.
    steps: int = Field(20, ge=1)
    seeds_per_prompt: int = Field(2, ge=1)
    # The `train` set is the training pool (at most `train_prompts` of it); `held_out` is a
    # stratified sample of the held-out prompts (one per held-out pairing for shapes), at most
    # `held_out_prompts`. None = all of them.
    train_prompts: int | None = Field(None, ge=1)
    held_out_prompts: int | None = Field(None, ge=1)
    sets: tuple[Literal["train", "held_out"], ...] = ("train", "held_out")


class GuardSection(_Strict):
    """When the audited proxy stops ranking, explore differently until it recovers."""

    # Needs fidelity.audit_prompts >= 1.
    enabled: bool = False
    # The audit metric watched.
    metric: Literal["top_hit", "spearman", "kendall"] = "top_hit"
    threshold: float = 0.5  # switch to the fallback when the window's mean falls below this
    recover: float | None = None  # switch back when it rises above this (None = threshold)
    window: int = Field(2, ge=1)  # audits averaged
    # The explore used while the proxy is distrusted (None = keep the configured one).
    fallback_precision: Literal["nvfp4", "fp8", "int8", "high"] | None = "fp8"
    fallback_steps: int | None = Field(None, ge=1)


class FidelitySection(_Strict):
    # Every `every` iterations, the first `audit_prompts` prompts have all N explored seeds
    # regenerated in high precision (not trained on): unbiased proxy-fidelity metrics.
    audit_prompts: int = Field(0, ge=0)
    every: int = Field(1, ge=1)
    guard: GuardSection = GuardSection()


class ClusterSection(_Strict):
    """Where explore and regenerate shards run. Default: in this process, one after another."""

    address: str | None = None  # an existing Dask scheduler, tcp://host:8786
    workers: int = Field(0, ge=0)  # > 0: a local Dask cluster of this many worker processes, started by the run
    # Threads per Dask worker, and GPUs per worker process (0 = CPU workers).
    threads_per_worker: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)
    # > 1: the update runs data parallel on this many Dask workers (tasks/ddp.py); 1 = in the
    # flow's process. Equal to the 1-rank update up to float summation order (docs/scale-out-gpus.md).
    update_ranks: int = Field(1, ge=1)


class StorageSection(_Strict):
    # Where runs live: a local folder or s3://bucket/prefix (overridden by --run-root).
    run_root: str = "runs"
    # s3:// only; unset = the environment (SOLRL_S3_ENDPOINT, AWS_ENDPOINT_URL, AWS_REGION, ...)
    s3_endpoint: str | None = None
    s3_region: str | None = None


class Resolved(_Strict):
    """What `auto` and the prompt sets turned into on the machine that created a run."""

    device: str
    dtype: str
    prompts_digest: str  # sha256 of the training and held-out prompt lists
    pool: tuple[str, ...] | None = None  # the training pool, when prompts.pool is set


class RunConfig(_Strict):
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    prompts: PromptSection = PromptSection()
    explore: ExploreSection = ExploreSection()
    select: SelectSection = SelectSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    nft: NFTSection = NFTSection()
    eval: EvalSection = EvalSection()
    fidelity: FidelitySection = FidelitySection()
    cluster: ClusterSection = ClusterSection()
    storage: StorageSection = StorageSection()

    @property
    def mode(self) -> Mode:
        return MODES[self.run.mode]

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        m = self.mode
        if m.explores and self.explore.n < self.select.k:
            raise ValueError(
                f"explore.n ({self.explore.n}) must be >= select.k ({self.select.k}): explore at least as many seeds as you keep"
            )
        if m.explore_precision == "low" and self.explore.precision == "high":
            raise ValueError(
                f"mode {m.name} explores in low precision: set explore.precision to nvfp4, fp8 or int8 (or use mode naive_scaling)"
            )
        if m.explore_precision == "high" and self.explore.precision != "high":
            raise ValueError(
                f"mode {m.name} explores in high precision: set explore.precision: high (or use mode naive_quant)"
            )
        if self.explore.lowrank and self.explore.precision != "nvfp4":
            raise ValueError(
                f"explore.lowrank ({self.explore.lowrank}) is a branch beside NVFP4 weights: set explore.precision: nvfp4 or explore.lowrank: 0"
            )
        if self.fidelity.audit_prompts and self.fidelity.audit_prompts > self.prompts.per_iteration:
            raise ValueError(
                f"fidelity.audit_prompts ({self.fidelity.audit_prompts}) exceeds "
                f"prompts.per_iteration ({self.prompts.per_iteration}): audit at most every prompt"
            )
        if self.fidelity.guard.enabled and not self.fidelity.audit_prompts:
            raise ValueError("fidelity.guard needs audits to watch: set fidelity.audit_prompts >= 1")
        if self.prompts.pool is not None and self.prompts.pool < self.prompts.per_iteration:
            raise ValueError(
                f"prompts.pool ({self.prompts.pool}) must be >= prompts.per_iteration ({self.prompts.per_iteration}): an iteration draws from the pool"
            )
        if self.cluster.update_ranks > 1 and self.cluster.workers and self.cluster.workers < self.cluster.update_ranks:
            raise ValueError(
                f"cluster.update_ranks ({self.cluster.update_ranks}) runs one rank per Dask worker, but cluster.workers is {self.cluster.workers}: "
                "raise cluster.workers or lower cluster.update_ranks"
            )
        if self.cluster.address and self.cluster.workers:
            raise ValueError(
                "set either cluster.address (an existing Dask scheduler) or cluster.workers (a local cluster), not both"
            )
        return self

    def hashed(self) -> dict:
        """The settings that determine what a run computes (the config minus NOT_HASHED)."""
        data = self.model_dump(mode="json")
        for section, keys in NOT_HASHED.items():
            if keys == "*":
                data.pop(section, None)
            else:
                for k in keys:
                    data[section].pop(k, None)
        for section, defaults in HASHED_UNLESS_DEFAULT.items():
            for k, default in defaults.items():
                if data[section].get(k) == default:
                    data[section].pop(k)
        return data

    def hash(self, resolved: Resolved | None = None) -> str:
        """sha256 of the canonical JSON of the hashed settings (and what `auto` resolved to):
        what a new run records in run.json and its commits. (A run keeps the hash it was made
        with: tasks/run.py compares configs, not hashes, when a version added or removed keys.)"""
        data = {"config": self.hashed(), "resolved": resolved.model_dump(mode="json") if resolved else None}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def with_overrides(self, **dotted) -> RunConfig:
        """A copy with dotted keys replaced, e.g. with_overrides(**{"explore.n": 16})."""
        data = self.model_dump(mode="json")
        for key, value in dotted.items():
            *path, last = key.split(".")
            node = data
            for part in path:
                node = node[part]
            node[last] = value
        return RunConfig.model_validate(data)


def _sentence(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {msg} (fix that key and run again)"


def load_config(path: str | Path) -> RunConfig:
    """Load and validate a YAML config; errors are one sentence naming the file and key."""
    p = Path(path)
    for candidate in (
        CONFIG_DIR / f"{path}.yaml",
        CONFIG_DIR.parent / path,
    ):  # a preset name, or a path relative to the checkout
        if not p.exists() and candidate.exists():
            p = candidate
    if not p.exists():
        raise ConfigError(
            f"config file {path} does not exist: pass a YAML path or a preset name ({', '.join(sorted(x.stem for x in CONFIG_DIR.glob('*.yaml')))})"
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    return validate(data, str(p))


def validate(data: dict, where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_sentence(e, where)) from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and not key.startswith("reward.weights"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two nested dicts (configs, resolved values)."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
